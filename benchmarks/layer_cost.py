"""Cost of one amortised posterior (``bnnp.posterior_samples``): time and peak
memory against the number of context points N (with and without within-task
minibatching) and against the BNN width, for the paper's unitwise layer and
the width-scalable fast path (``prior_kind="shared"``, ``pseudo_precision="per_point"``,
SPEC section 9).

Each configuration runs in its own subprocess (fresh compile, own peak RSS);
a baseline subprocess that imports jax and builds the same parameters and data
is subtracted from the peak. Compile time and run time are reported apart.
Each row also carries the call's matrix FLOPs (:func:`posterior_flops`, counted
from the shapes) and the achieved FLOP/s; on a GPU in :data:`MATRIX_RATES` it
adds the fraction of the card's TF32 and FP32 matrix rates.

    python benchmarks/layer_cost.py [--quick] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common as C

LAYERS = {
    "unitwise": {"prior_kind": "unitwise", "pseudo_precision": "per_unit"},
    "fast": {"prior_kind": "shared", "pseudo_precision": "per_point"},
}


def _setup(cfg):
    import jax
    import jax.numpy as jnp

    from bnnp_jax.bnnp import model as bnnp

    config = bnnp.BNNPConfig(hidden=(cfg["width"],) * 2, dtype=cfg["dtype"], **LAYERS[cfg["layer"]])
    params = bnnp.init(jax.random.PRNGKey(0), config)
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.uniform(k1, (cfg["n"], 1), jnp.dtype(cfg["dtype"]), -2.0, 2.0)
    y = jnp.sin(3 * x) + 0.05 * jax.random.normal(k2, x.shape, x.dtype)
    return params, C.block((x, y))


def _mlp_flops(n: int, dims) -> int:
    return 2 * n * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def posterior_flops(config, n: int, S: int) -> int:
    """Matrix FLOPs of one ``posterior_samples`` call of a BNNP with ``config``
    (independent inference networks, ``unitwise`` or ``shared`` prior), counted from the
    shapes the code uses. Per layer (``D`` inputs with bias, ``O`` units, ``F`` = ``O``
    factors unitwise or 1 shared):

    - once: the inference network on the ``n`` points (the prior's covariance factor ``L``
      is used as it is: the whitened form of ``blr.sample_posterior``);
    - per path: the features' forward pass through earlier draws, the statistics
      ``S = Phi^T diag(lambda) Phi`` (``2 n D^2 F``) and ``b = Phi^T (lambda yhat)``,
      ``M = I + L^T S L`` (``4 F D^3``), ``r = L^T (b - S mu)`` (``4 O D^2``), the Cholesky
      of ``M`` (``F D^3 / 3``), the first solve (``D^2`` per right-hand side: ``O`` + the
      ``F D`` trace columns), the second (``2 O D^2``) and ``w = mu + L u`` (``2 O D^2``).

    Layer 1's statistics, ``M``, ``r``, factor and first solve do not depend on the path
    (vmap leaves them unbatched) and are counted once."""
    widths, specs = config.widths, config.specs
    total = 0
    for l, spec in enumerate(specs):
        d, o = widths[l] + 1, widths[l + 1]
        f = o if config.prior_kind == "unitwise" else 1
        once = _mlp_flops(n, (spec.in_dim, *config.net_hidden, max(spec.out_dim, 1)))
        forward = sum(2 * n * (widths[j] + 1) * widths[j + 1] for j in range(l))
        shared = 2 * n * d * d * f + 2 * n * d * o + 4 * f * d**3 + 4 * o * d * d + f * d**3 / 3 + d * d * (o + f * d)
        per_path = forward + 2 * o * d * d + 2 * o * d * d
        total += once + S * per_path + (S if l > 0 else 1) * shared
    return int(total)


# Dense matrix rates (FLOP/s) for float32 inputs, from the vendors' data sheets: TF32
# tensor cores and plain FP32 (Cholesky and triangular solves run in FP32). The
# first key found in the device kind wins, so the PCIe card comes before the SXM one.
MATRIX_RATES = {
    "H100 PCIe": {"tf32": 378e12, "fp32": 51.2e12},
    "H100": {"tf32": 494.7e12, "fp32": 66.9e12},  # SXM (HBM3)
    "H200": {"tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"tf32": 156e12, "fp32": 19.5e12},
}


def matrix_rates(device_kind: str) -> tuple[str, dict] | tuple[None, None]:
    """``(card, rates)`` for the first :data:`MATRIX_RATES` key in ``device_kind``."""
    return next(((k, v) for k, v in MATRIX_RATES.items() if k in device_kind), (None, None))


def worker(cfg: dict) -> dict:
    import jax

    from bnnp_jax.bnnp import model as bnnp

    params, (x, y) = _setup(cfg)
    if cfg.get("baseline"):
        return {}
    fn = lambda: bnnp.posterior_samples(jax.random.PRNGKey(2), params, x, y, cfg["S"], batch_size=cfg["batch_size"])
    t = C.time_fn(fn, repeats=1)
    if t["run_median_s"] < 10:  # more repeats only where they are cheap
        more = C.time_fn(fn, repeats=3)
        t.update({k: more[k] for k in ("run_median_s", "run_min_s", "run_median_cpu_s", "repeats")})
        t["compile_s_est"] = max(t["first_call_s"] - t["run_median_s"], 0.0)
        t["compile_cpu_s_est"] = max(t["first_call_cpu_s"] - t["run_median_cpu_s"], 0.0)
    out = dict(t)
    out["flops"] = posterior_flops(params.config, cfg["n"], cfg["S"])
    out["achieved_flops_per_s"] = out["flops"] / t["run_median_s"]
    card, rates = matrix_rates(jax.devices()[0].device_kind)
    if rates:
        out["matrix_rate_card"] = card
        out.update({f"fraction_of_{k}_rate": out["achieved_flops_per_s"] / v for k, v in rates.items()})
    if cfg["device"] == "gpu":
        out["peak_memory_bytes"] = C.gpu_peak_bytes()
    return out


def configs(quick: bool) -> list[dict]:
    base = {"dtype": "float32", "S": 8}
    ns = [100, 1_000, 10_000] if quick else [100, 1_000, 10_000, 100_000]
    widths = [16, 32, 64, 128] if quick else [16, 32, 64, 128, 256]
    out = []
    for layer in LAYERS:
        for n in ns:
            for bs in (None, 1000):
                if bs is not None and bs >= n:
                    continue
                out.append({**base, "sweep": "n", "layer": layer, "n": n, "width": 32, "batch_size": bs})
        for w in widths:
            out.append({**base, "sweep": "width", "layer": layer, "n": 1000, "width": w, "batch_size": None})
    return out


def measure(cfg: dict, device: str, baselines: dict) -> dict:
    key = (cfg["n"], cfg["width"], cfg["layer"], cfg["dtype"])
    res = C.run_worker(Path(__file__), {**cfg, "device": device}, device, timeout=1800)
    row = {k: cfg[k] for k in ("sweep", "layer", "n", "width", "batch_size", "S", "dtype")}
    if "error" in res:
        return {**row, "error": res["error"][-300:]}
    row.update(C.timing(res))
    row.update({k: v for k, v in res.items() if k in ("flops", "matrix_rate_card")
                or k.startswith(("achieved_", "fraction_of_"))})
    if device == "gpu":
        row["peak_memory_bytes"] = res.get("peak_memory_bytes")
    else:
        if key not in baselines:
            baselines[key] = C.run_worker(Path(__file__), {**cfg, "device": device, "baseline": True}, device).get(
                "maxrss_bytes")
        row["maxrss_bytes"] = res.get("maxrss_bytes")
        row["baseline_maxrss_bytes"] = baselines[key]
        if row["maxrss_bytes"] and baselines[key]:
            row["peak_memory_bytes"] = row["maxrss_bytes"] - baselines[key]
    return row


def summarise(rows: list[dict]) -> dict:
    """Width exponents of the run time (CPU seconds: the machine is shared, so wall
    time depends on the load) and the fast-path speed-up per width."""
    out = {}
    by = {}
    for r in rows:
        if r["sweep"] == "width" and "run_median_cpu_s" in r:
            by.setdefault(r["layer"], {})[r["width"]] = r["run_median_cpu_s"]
    for layer, d in by.items():
        ws = sorted(d)
        out[f"width_exponent_{layer}"] = C.loglog_slope(ws, [d[w] for w in ws])
    for r in rows:
        if r["sweep"] == "width" and "achieved_flops_per_s" in r:
            out.setdefault(f"achieved_flops_per_s_{r['layer']}", {})[r["width"]] = r["achieved_flops_per_s"]
    if "unitwise" in by and "fast" in by:
        out["fast_speedup_by_width"] = {w: by["unitwise"][w] / by["fast"][w] for w in by["fast"] if w in by["unitwise"]}
    return out


def main(argv=None):
    args = C.parse_args(argparse.ArgumentParser(description=__doc__), argv)
    cfg = C.worker_config(args)
    if cfg is not None:
        return C.emit(worker(cfg))
    baselines: dict = {}
    rows = []
    for c in configs(args.quick):
        rows.append(measure(c, args.device, baselines))
        C.print_table(rows[-1:], ["sweep", "layer", "n", "width", "batch_size", "first_call_s", "run_median_s",
                                  "compile_s_est", "peak_memory_bytes", "error"])
    cols = ["sweep", "layer", "n", "width", "batch_size", "first_call_s", "run_median_s", "run_median_cpu_s",
            "compile_s_est", "peak_memory_bytes", "achieved_flops_per_s"]
    C.print_table(rows, cols, "posterior_samples: one call (S=8, float32)")
    summary = summarise(rows)
    print(summary)
    C.write_json("layer_cost", args, rows, summary=summary,
                 memory_method="gpu memory_stats peak_bytes_in_use" if args.device == "gpu" else
                 "subprocess ru_maxrss (RUSAGE_CHILDREN via wrapper) minus a baseline subprocess with the same "
                 "imports, parameters and data",
                 settings={"S": 8, "dtype": "float32", "n_sweep_width": 32, "width_sweep_n": 1000,
                           "layers": LAYERS})


if __name__ == "__main__":
    sys.exit(main())

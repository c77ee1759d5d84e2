"""Within-task minibatching (SPEC section 6): peak memory and time of the BNNP
posterior (``bnnp.posterior_samples``) and predictive (``bnnp.predict``, 1000
target points) against the number of context points N = 1e3 .. 1e6, with
``batch_size`` set. Target: the peak at N = 1e6 is at most 1.5x the peak at 1e3.

Model: BNN [32, 32] (unitwise prior, per-unit pseudo-precisions: the paper's
layer), S = 4, float32, batch_size = 1000. Each configuration runs in its own
subprocess; a baseline subprocess with the same imports, parameters and data
is subtracted from its peak RSS (on CPU; GPU uses ``memory_stats``).

    python benchmarks/minibatch_memory.py [--quick] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common as C

SETTINGS = {"hidden": [32, 32], "S": 4, "dtype": "float32", "batch_size": 1000, "num_targets": 1000}


def worker(cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from bnnp_jax.bnnp import model as bnnp

    params = bnnp.init(jax.random.PRNGKey(0), bnnp.BNNPConfig(hidden=tuple(SETTINGS["hidden"])))
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.uniform(k1, (cfg["n"], 1), jnp.float32, -2.0, 2.0)
    y = jnp.sin(3 * x) + 0.05 * jax.random.normal(k2, x.shape)
    x_t = jax.random.uniform(k3, (SETTINGS["num_targets"], 1), jnp.float32, -2.0, 2.0)
    C.block((params, x, y, x_t))
    if cfg.get("baseline"):
        return {}
    key, s, bs = jax.random.PRNGKey(2), SETTINGS["S"], cfg["batch_size"]
    if cfg["what"] == "posterior":
        fn = lambda: bnnp.posterior_samples(key, params, x, y, s, batch_size=bs)
    else:
        fn = lambda: bnnp.predict(key, params, x, y, x_t, s, batch_size=bs)
    out = C.time_fn(fn, repeats=1 if cfg["n"] >= 1_000_000 else 3)
    if cfg["device"] == "gpu":
        out["peak_memory_bytes"] = C.gpu_peak_bytes()
    return out


def main(argv=None):
    args = C.parse_args(argparse.ArgumentParser(description=__doc__), argv)
    cfg = C.worker_config(args)
    if cfg is not None:
        return C.emit(worker(cfg))
    ns = [1_000, 10_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    rows, base = [], {}
    cols = ["what", "n", "batch_size", "first_call_s", "run_median_s", "compile_s_est", "peak_memory_bytes",
            "maxrss_bytes", "error"]
    for what in ("posterior", "predictive"):
        for n in ns:
            c = {"what": what, "n": n, "batch_size": SETTINGS["batch_size"], "device": args.device}
            res = C.run_worker(Path(__file__), c, args.device, timeout=1800)
            row = {"what": what, "n": n, "batch_size": c["batch_size"], "S": SETTINGS["S"]}
            if "error" in res:
                row["error"] = res["error"][-300:]
            else:
                row.update(C.timing(res))
                row["seconds"] = res["run_median_s"]
                if args.device == "gpu":
                    row["peak_memory_bytes"] = res.get("peak_memory_bytes")
                else:
                    if n not in base:
                        base[n] = C.run_worker(Path(__file__), {**c, "baseline": True}, args.device).get("maxrss_bytes")
                    row.update(maxrss_bytes=res.get("maxrss_bytes"), baseline_maxrss_bytes=base[n])
                    if res.get("maxrss_bytes") and base[n]:
                        row["peak_memory_bytes"] = res["maxrss_bytes"] - base[n]
            rows.append(row)
            C.print_table(rows[-1:], cols)
    C.print_table(rows, cols, "minibatched posterior / predictive (batch_size=1000)")
    summary = {}
    for what in ("posterior", "predictive"):
        pk = {r["n"]: r.get("peak_memory_bytes") for r in rows if r["what"] == what}
        lo, hi = pk.get(ns[0]), pk.get(ns[-1])
        summary[what] = {"peak_ratio_largest_to_smallest": hi / lo if lo and hi else None,
                         "largest_n": ns[-1], "target_ratio": 1.5}
    print(summary)
    C.write_json("minibatch_memory", args, rows, summary=summary, settings=SETTINGS,
                 memory_method="gpu memory_stats peak_bytes_in_use" if args.device == "gpu" else
                 "subprocess ru_maxrss (includes XLA compilation) minus a baseline subprocess with the same imports, "
                 "parameters and data")


if __name__ == "__main__":
    sys.exit(main())

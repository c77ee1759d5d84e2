"""Training throughput: tasks per second of one jitted PP-AVI step
(``value_and_grad`` of ``objectives.pp_avi`` plus an Adam update) against the
BNN width, the number of posterior samples S and the dtype, for the paper's
unitwise layer and the width-scalable fast path (SPEC section 9).

It includes SPEC section 14's anchor (BNN [64, 64], inference networks
[128, 128], S = 32, 5 sawtooth tasks per step, PP-AVI) in float32 and float64,
next to the PyTorch reference's 8.9 s (float32) and 15.9 s (float64) per step.
Those two figures are *quoted* from SPEC section 14 (measured there on a
2-core CPU machine of the kind CI uses); torch is not installed here and the
reference is not re-run.

Every configuration runs in a fresh subprocess (own compile, own peak RSS).

    python benchmarks/train_throughput.py [--quick] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common as C

REFERENCE_S_PER_STEP = {"float32": 8.9, "float64": 15.9}  # SPEC section 14, PyTorch 2.13 CPU, quoted
LAYERS = {
    "unitwise": {"prior_kind": "unitwise", "pseudo_precision": "per_unit"},
    "fast": {"prior_kind": "shared", "pseudo_precision": "per_point"},
}


def worker(cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    if cfg["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    from bnnp_jax import bnnp
    from bnnp_jax.data.registry import make_batch_sampler

    w = cfg["width"]
    config = bnnp.BNNPConfig(hidden=(w, w), inference_hidden=tuple(cfg.get("inference_hidden") or (2 * w, 2 * w)),
                             dtype=cfg["dtype"], **LAYERS[cfg["layer"]])
    params = bnnp.init(jax.random.PRNGKey(0), config)
    batch = make_batch_sampler("sawtooth", dtype=jnp.dtype(cfg["dtype"]))(jax.random.PRNGKey(1), cfg["tasks"])
    opt = optax.adam(1e-3)
    state = opt.init(params)
    C.block((params, batch, state))
    if cfg.get("baseline"):
        return {}
    step = C.bnnp_train_step(opt, cfg["S"])
    keys = iter(jax.random.split(jax.random.PRNGKey(2), 100))
    t = C.time_fn(lambda: step(params, state, next(keys), batch), repeats=cfg.get("repeats", 3))
    if cfg["device"] == "gpu":
        t["peak_memory_bytes"] = C.gpu_peak_bytes()
    return t


def configs(quick: bool) -> list[dict]:
    base = {"tasks": 5, "dtype": "float32"}
    out = []
    for dtype in ("float32", "float64"):  # the anchor, both layers
        for layer in LAYERS:
            out.append({**base, "sweep": "anchor", "layer": layer, "width": 64, "inference_hidden": [128, 128],
                        "S": 32, "dtype": dtype})
    widths = [16, 32, 64, 128] if quick else [16, 32, 64, 128, 256]
    for layer in LAYERS:
        for w in widths:
            out.append({**base, "sweep": "width", "layer": layer, "width": w, "S": 8,
                        "repeats": 1 if w >= 128 and layer == "unitwise" else 3})
        for s in ([8, 64] if quick else [8, 16, 64]):  # S = 32 is the anchor row
            out.append({**base, "sweep": "S", "layer": layer, "width": 64, "inference_hidden": [128, 128], "S": s})
    return out


def measure(cfg: dict, device: str) -> dict:
    row = {k: cfg.get(k) for k in ("sweep", "layer", "width", "S", "tasks", "dtype")}
    res = C.run_worker(Path(__file__), {**cfg, "device": device}, device, timeout=2400)
    if "error" in res:
        return {**row, "error": res["error"][-300:]}
    row.update(C.timing(res))
    row["tasks_per_s"] = cfg["tasks"] / res["run_median_s"]
    row["tasks_per_cpu_s"] = cfg["tasks"] / res["run_median_cpu_s"]
    if device == "gpu":
        row["peak_memory_bytes"] = res.get("peak_memory_bytes")
    else:
        base = C.run_worker(Path(__file__), {**cfg, "device": device, "baseline": True}, device)
        if res.get("maxrss_bytes") and base.get("maxrss_bytes"):
            row["peak_memory_bytes"] = res["maxrss_bytes"] - base["maxrss_bytes"]
    if cfg["sweep"] == "anchor":
        ref = REFERENCE_S_PER_STEP[cfg["dtype"]]
        row["reference_s_per_step"] = ref
        row["speedup_vs_reference"] = ref / res["run_median_s"]
        # Conservative on a shared machine: our CPU seconds (all threads) against the reference's wall seconds.
        row["speedup_vs_reference_cpu"] = ref / res["run_median_cpu_s"]
    return row


def summarise(rows):
    out = {}
    for layer in LAYERS:
        pts = sorted((r["width"], r["run_median_cpu_s"]) for r in rows
                     if r["sweep"] == "width" and r["layer"] == layer and "run_median_s" in r)
        out[f"width_exponent_{layer}"] = C.loglog_slope([p[0] for p in pts], [p[1] for p in pts])
    out["anchor"] = {f"{r['layer']}_{r['dtype']}": {k: r.get(k) for k in (
        "run_median_s", "run_median_cpu_s", "speedup_vs_reference", "speedup_vs_reference_cpu")}
        for r in rows if r["sweep"] == "anchor"}
    return out


def main(argv=None):
    args = C.parse_args(argparse.ArgumentParser(description=__doc__), argv)
    cfg = C.worker_config(args)
    if cfg is not None:
        return C.emit(worker(cfg))
    rows = []
    cols = ["sweep", "layer", "width", "S", "dtype", "first_call_s", "run_median_s", "run_median_cpu_s",
            "compile_s_est", "tasks_per_s", "peak_memory_bytes", "speedup_vs_reference_cpu", "error"]
    for c in configs(args.quick):
        rows.append(measure(c, args.device))
        C.print_table(rows[-1:], cols)
    C.print_table(rows, cols, "PP-AVI training step (5 sawtooth tasks per step)")
    summary = summarise(rows)
    print(summary)
    C.write_json("train_throughput", args, rows, summary=summary,
                 reference={"s_per_step": REFERENCE_S_PER_STEP,
                            "source": "SPEC section 14 (PyTorch reference BNNP, torch 2.13 CPU, 2-core machine); "
                                      "quoted, not re-measured here"},
                 memory_method="gpu memory_stats peak_bytes_in_use" if args.device == "gpu" else
                 "subprocess ru_maxrss minus a baseline subprocess (same imports, parameters, batch and optimizer state)")


if __name__ == "__main__":
    sys.exit(main())

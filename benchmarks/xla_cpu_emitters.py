"""Compile and step time of the PP-AVI training step under XLA CPU's two fusion emitters.

XLA's CPU backend compiles fusions with MLIR fusion emitters by default;
``--xla_cpu_use_fusion_emitters=false`` selects the classic elemental emitter. The
test suite uses the classic one (``tests/conftest.py``) because it compiles several
times faster at optimisation level 0. This script measures, at XLA's default
optimisation level as the CLI runs, whether the choice also pays for training: the
compile time and the per-step time of :mod:`train_throughput`'s step (unitwise layer,
5 sawtooth tasks per step), side by side, each configuration in a fresh subprocess
(the flag is per process). Rows alternate between the two emitters so a change in the
machine's load hits both.

    python benchmarks/xla_cpu_emitters.py [--quick] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _common as C
import train_throughput

CLASSIC = "--xla_cpu_use_fusion_emitters=false"
EMITTERS = {"mlir (default)": "", "classic": CLASSIC}


def configs(quick: bool) -> list[dict]:
    """The sawtooth long run's shape ([32, 32], S = 16) and SPEC section 14's anchor ([64, 64], S = 32)."""
    shapes = [{"width": 32, "inference_hidden": [64, 64], "S": 16}]
    if not quick:
        shapes.append({"width": 64, "inference_hidden": [128, 128], "S": 32})
    return [{"sweep": "emitter", "layer": "unitwise", "tasks": 5, "dtype": "float32", "repeats": 6, **s}
            for s in shapes]


def measure(cfg: dict, emitter: str, device: str) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} {EMITTERS[emitter]}".strip()
    res = C.run_worker(Path(train_throughput.__file__), {**cfg, "device": device}, device, timeout=2400,
                       env={"XLA_FLAGS": flags})
    row = {"emitter": emitter, "width": cfg["width"], "S": cfg["S"], "dtype": cfg["dtype"], "xla_flags": flags}
    if "error" in res:
        return {**row, "error": res["error"][-300:]}
    return {**row, **C.timing(res)}


def main(argv=None):
    args = C.parse_args(argparse.ArgumentParser(description=__doc__), argv)
    rows = []
    cols = ["emitter", "width", "S", "dtype", "compile_s_est", "run_mean_s", "run_median_s", "run_median_cpu_s",
            "error"]
    for cfg in configs(args.quick):
        pair = {}
        for emitter in EMITTERS:
            pair[emitter] = measure(cfg, emitter, args.device)
            rows.append(pair[emitter])
            C.print_table(rows[-1:], cols)
        base, classic = pair["mlir (default)"], pair["classic"]
        if "error" not in base and "error" not in classic:
            classic["compile_ratio_vs_default"] = classic["compile_s_est"] / base["compile_s_est"]
            classic["step_ratio_vs_default"] = classic["run_mean_s"] / base["run_mean_s"]
    C.print_table(rows, cols + ["compile_ratio_vs_default", "step_ratio_vs_default"],
                  "PP-AVI step under XLA CPU's fusion emitters (ratios: classic / default)")
    C.write_json("xla_cpu_emitters", args, rows)


if __name__ == "__main__":
    sys.exit(main())

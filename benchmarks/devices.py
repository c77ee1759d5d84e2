"""Sharded training throughput against the number of devices: the task batch
is split over a 1-D device mesh (``NamedSharding``, axis ``tasks``), parameters
are replicated, and one jitted PP-AVI step is timed.

On CPU the "devices" are ``--xla_force_host_platform_device_count=N`` virtual
devices carved out of the same cores, so this shows the partitioning overhead
only, not a speed-up; run it on a multi-GPU host for real scaling. Each device
count runs in its own subprocess (the flag is read when jax starts).

    python benchmarks/devices.py [--quick] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _common as C

# family and dtype come from the config (sawtooth, float32)
SETTINGS = {"config": "configs/sawtooth_quick.yaml", "hidden": [32, 32], "S": 8, "tasks": 8, "steps_per_call": 5}


DEADLOCK = (" (jaxlib 0.10 CPU: each virtual device's batched Cholesky/triangular-solve kernel waits in"
            " jax::ParallelBatchMap for sub-tasks queued on the same intra-op pool, whose threads the other"
            " devices' kernels hold; seen with gdb, benchmarks/README.md)")


def worker(cfg: dict) -> dict:
    """Time the library's own sharded chunk (``train.make_train_chunk`` with
    ``training.shard``: tasks generated on device, batch constrained to the
    ``tasks`` axis, parameters replicated), the path tests/test_train.py checks
    against one device."""
    import dataclasses

    import jax

    from bnnp_jax.training import config as run_config
    from bnnp_jax.training import loop as train

    n = cfg["num_devices"]
    if jax.device_count() < n:
        return {"error": f"only {jax.device_count()} devices visible"}
    c = run_config.load(C.ROOT / SETTINGS["config"])
    t = dataclasses.replace(c.training, tasks_per_step=SETTINGS["tasks"], num_samples=SETTINGS["S"], shard=n > 1)
    c = dataclasses.replace(c, bnnp=dataclasses.replace(c.bnnp, hidden=tuple(SETTINGS["hidden"])), training=t)
    state, opt = train.init_state(c)
    mesh = jax.sharding.Mesh(jax.devices()[:n], ("tasks",)) if n > 1 else None
    chunk = train.make_train_chunk(c, opt, mesh)
    return C.time_fn(lambda: chunk(state, SETTINGS["steps_per_call"]), repeats=3)  # times are per chunk


def main(argv=None):
    args = C.parse_args(argparse.ArgumentParser(description=__doc__), argv)
    cfg = C.worker_config(args)
    if cfg is not None:
        return C.emit(worker(cfg))
    counts = [1, 2] if args.quick else [1, 2, 4]
    rows = []
    cols = ["num_devices", "first_call_s", "run_median_s", "compile_s_est", "tasks_per_s", "relative_throughput",
            "error"]
    for n in counts:
        env = {}
        if args.device == "cpu":
            flags = os.environ.get("XLA_FLAGS", "")
            env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        res = C.run_worker(Path(__file__), {"num_devices": n}, args.device, timeout=300 if n > 1 else 900, env=env)
        if n > 1 and args.device == "cpu" and res.get("error", "").startswith("timed out"):
            res["error"] += DEADLOCK
        row = {"num_devices": n}
        if "error" in res:
            row["error"] = res["error"][-300:]
        else:
            row.update(C.timing(res))
            row["tasks_per_s"] = SETTINGS["tasks"] * SETTINGS["steps_per_call"] / res["run_median_s"]
        rows.append(row)
        C.print_table(rows[-1:], cols)
    one = next((r.get("tasks_per_s") for r in rows if r["num_devices"] == 1), None)
    for r in rows:
        if one and r.get("tasks_per_s"):
            r["relative_throughput"] = r["tasks_per_s"] / one
    C.print_table(rows, cols, "sharded PP-AVI step, task batch split over devices")
    note = ("CPU virtual devices share the same cores (--xla_force_host_platform_device_count): the numbers show "
            "partitioning overhead, not scaling." if args.device == "cpu" else "real devices")
    print(note)
    C.write_json("devices", args, rows, settings=SETTINGS, note=note)


if __name__ == "__main__":
    sys.exit(main())

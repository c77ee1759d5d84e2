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

SETTINGS = {"hidden": [32, 32], "S": 8, "tasks": 8, "dtype": "float32", "family": "sawtooth"}


def worker(cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from bnnp_jax import bnnp
    from bnnp_jax.data.registry import make_batch_sampler

    n = cfg["num_devices"]
    if jax.device_count() < n:
        return {"error": f"only {jax.device_count()} devices visible"}
    mesh = Mesh(jax.devices()[:n], ("tasks",))
    params = bnnp.init(jax.random.PRNGKey(0), bnnp.BNNPConfig(hidden=tuple(SETTINGS["hidden"])))
    batch = make_batch_sampler(SETTINGS["family"], dtype=jnp.float32)(jax.random.PRNGKey(1), SETTINGS["tasks"])
    batch = jax.device_put(batch, NamedSharding(mesh, P("tasks")))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    opt = optax.adam(1e-3)
    state = jax.device_put(opt.init(params), NamedSharding(mesh, P()))
    step = C.bnnp_train_step(opt, SETTINGS["S"])
    keys = iter(jax.random.split(jax.random.PRNGKey(2), 100))
    return C.time_fn(lambda: step(params, state, next(keys), batch), repeats=5)


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
        res = C.run_worker(Path(__file__), {"num_devices": n}, args.device, timeout=1800, env=env)
        row = {"num_devices": n}
        if "error" in res:
            row["error"] = res["error"][-300:]
        else:
            row.update(C.timing(res))
            row["tasks_per_s"] = SETTINGS["tasks"] / res["run_median_s"]
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

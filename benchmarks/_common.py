"""Shared plumbing for the benchmark scripts: device selection, machine and
version records, compile-vs-run timing, peak memory, tables and JSON results.

Every script imports this module *before* jax: :func:`parse_args` reads
``--device cpu|gpu`` and sets ``JAX_PLATFORMS`` accordingly, so the choice
takes effect when jax initialises. Scripts run from the repository root as
``python benchmarks/NAME.py``; the repository root is put on ``sys.path``.

Timing convention (all scripts): the first call of a jitted function is
"compile + run" (``first_call_s``); then the function is called ``repeats``
more times with ``block_until_ready`` and we report the median
(``run_median_s``) and minimum. Compile time is estimated as
``first_call_s - run_median_s``.

Peak memory: on CPU a configuration runs in a fresh subprocess (this script
re-invoked with ``--worker``) under a tiny wrapper process that reads
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` after the child exits; a
baseline subprocess that imports jax and builds the same data but does not
run the computation is subtracted. On GPU we read
``jax.devices()[0].memory_stats()["peak_bytes_in_use"]`` instead. The JSON
states which (``memory_method``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

START_LOAD = list(os.getloadavg())  # other users share the machine: recorded with every result
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(p.stderr[-4000:])\n"
    "print(p.stdout, end='')\n"
    "print(json.dumps({'__rc__': p.returncode,"
    " '__maxrss_kb__': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Add ``--device``, ``--quick`` and the internal ``--worker``; set ``JAX_PLATFORMS``."""
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="JAX platform to run on")
    parser.add_argument("--quick", action="store_true", help="smaller sweep (minutes, not tens of minutes)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return args


def matmul_rates(dtypes=("float32", "float64"), n: int = 2048, repeats: int = 5) -> dict:
    """This machine's rate on one large square ``jnp.dot`` per dtype, in FLOP/s (the
    yardstick for achieved FLOP/s; measured in the same process as the rows it divides)."""
    import jax
    import jax.numpy as jnp

    out = {}
    for name in dtypes:
        if name == "float64" and not jax.config.jax_enable_x64:
            continue
        a = jnp.ones((n, n), name)
        f = jax.jit(lambda a: a @ a)
        block(f(a))
        tic = time.perf_counter()
        for _ in range(repeats):
            block(f(a))
        out[name] = 2 * n**3 / ((time.perf_counter() - tic) / repeats)
    return out


def xla_flops(jitted, *args) -> float | None:
    """XLA's FLOP count for one call of a jitted function (``cost_analysis``); a
    conditional's branches are all counted, so it is an upper bound when a switch picks one."""
    try:
        cost = jitted.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # cost analysis is best-effort: backends may not provide it
        return None


def machine_info() -> dict:
    """Platform, CPU model and count, total memory and the load average now."""
    mem = None
    cpu_model = platform.processor() or None
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(l for l in f if l.startswith("MemTotal")).split()[1]) * 1024
        with open("/proc/cpuinfo") as f:
            cpu_model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu_model)
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": mem,
        "load_average_at_start": list(os.getloadavg()),
    }


def device_info() -> dict:
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": d.device_kind, "num_devices": jax.device_count()}


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpyro", "blackjax"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def block(x):
    import jax

    return jax.block_until_ready(x)


def time_fn(fn: Callable, *args, repeats: int = 5, **kwargs) -> dict:
    """First call (compile + run) and the median/min of ``repeats`` further calls, in seconds.

    Wall time (``*_s``) and this process's CPU time over all threads
    (``*_cpu_s``, from ``time.process_time``) are both kept: the machine is
    shared, so wall time depends on the load while CPU time measures our work.
    """
    w0, c0 = time.perf_counter(), time.process_time()
    block(fn(*args, **kwargs))
    first, first_cpu = time.perf_counter() - w0, time.process_time() - c0
    runs, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        block(fn(*args, **kwargs))
        runs.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    med, med_cpu = statistics.median(runs), statistics.median(cpus)
    return {"first_call_s": first, "run_median_s": med, "run_min_s": min(runs), "run_mean_s": statistics.mean(runs),
            "compile_s_est": max(first - med, 0.0), "first_call_cpu_s": first_cpu, "run_median_cpu_s": med_cpu,
            "compile_cpu_s_est": max(first_cpu - med_cpu, 0.0), "repeats": repeats}


TIMING_KEYS = ("first_call_s", "run_median_s", "run_min_s", "run_mean_s", "compile_s_est", "first_call_cpu_s", "run_median_cpu_s",
               "compile_cpu_s_est")


def timing(res: dict) -> dict:
    """The timing entries of a :func:`time_fn` result (as returned by a worker)."""
    return {k: res[k] for k in TIMING_KEYS if k in res}


def gpu_peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run_worker(script: str, config: dict, device: str, timeout: float = 1800.0, env: dict | None = None) -> dict:
    """Run ``script --worker JSON`` in a fresh subprocess under the rusage wrapper.

    Returns the worker's last JSON line plus ``maxrss_bytes`` (the child's peak
    resident set), ``rc`` and ``wall_s``; ``{"error": ...}`` on failure or timeout.
    """
    cmd = [sys.executable, "-c", _WRAPPER, sys.executable, str(script), "--device", device,
           "--worker", json.dumps(config)]
    t0 = time.perf_counter()
    # A session of its own, so that a timeout kills the worker too, not only the wrapper.
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, start_new_session=True) as p:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    meta = json.loads(lines[-1]) if lines else {}
    out = json.loads(lines[-2]) if len(lines) >= 2 else {}
    out.update(rc=meta.get("__rc__", p.returncode), wall_s=time.perf_counter() - t0)
    if "__maxrss_kb__" in meta:
        out["maxrss_bytes"] = int(meta["__maxrss_kb__"]) * 1024
    if out["rc"] != 0 or not lines:
        out["error"] = (stderr or "")[-1500:]
    return out


def worker_config(args) -> dict | None:
    return json.loads(args.worker) if args.worker else None


def emit(result: dict) -> None:
    """A worker's result: one JSON line on stdout."""
    print(json.dumps(result), flush=True)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return "-" if v is None else str(v)


def print_table(rows: list[dict], columns: Sequence[str], title: str = "") -> None:
    """A plain-text table of ``columns`` over ``rows`` (missing entries print as ``-``)."""
    if title:
        print(f"\n== {title}")
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)), flush=True)


def write_json(name: str, args, results: list[dict], **extra) -> Path:
    """``benchmarks/results/NAME.json`` (``NAME.gpu.json`` off the CPU) with machine, device,
    versions, settings and rows."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "quick": bool(args.quick),
        "machine": {**machine_info(), "load_average_at_end": list(os.getloadavg())},
        "device": device_info(),
        "versions": versions(),
        **extra,
        "results": results,
    }
    payload["machine"]["load_average_at_start"] = START_LOAD  # when the script started
    # a GPU run sits beside the CPU one instead of replacing it (benchmarks/gpu_suite.sh)
    path = RESULTS / (f"{name}.json" if payload["device"]["platform"] == "cpu" else f"{name}.gpu.json")
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path



def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``log y`` against ``log x`` (the scaling exponent)."""
    import math

    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else None


def bnnp_train_step(optimizer, num_samples: int, beta: float = 1.0, batch_size=None, context_buckets=None):
    """The jitted PP-AVI training step that the throughput numbers time:
    ``step(params, opt_state, key, batch) -> (params, opt_state, loss)``
    (``value_and_grad`` of ``-objectives.pp_avi`` plus an optax update)."""
    import jax
    import optax

    from bnnp_jax.bnnp import objectives

    buckets = objectives.DEFAULT_CONTEXT_BUCKETS if context_buckets is None else context_buckets

    def loss(params, key, batch):
        return -objectives.pp_avi(key, params, batch, num_samples, beta, batch_size, buckets)

    @jax.jit
    def step(params, opt_state, key, batch):
        value, grads = jax.value_and_grad(loss)(params, key, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def train_bnnp(key, config, family: str, num_steps: int, num_tasks: int = 5, num_samples: int = 8,
               lr: float = 3e-3, beta: float = 1.0, progress: bool = True, **family_kwargs):
    """A short PP-AVI training run on a task family; returns ``(params, losses)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from tqdm import tqdm

    from bnnp_jax.bnnp import model as bnnp
    from bnnp_jax.data.registry import make_batch_sampler

    k_init, k_run = jax.random.split(key)
    params = bnnp.init(k_init, config)
    sampler = jax.jit(make_batch_sampler(family, dtype=jnp.dtype(config.dtype), **family_kwargs), static_argnums=1)
    opt = optax.adam(optax.linear_schedule(lr, lr / 10, num_steps))
    state = opt.init(params)
    step = bnnp_train_step(opt, num_samples, beta)
    losses = []
    for k in tqdm(jax.random.split(k_run, num_steps), desc=f"train {family}", disable=not progress):
        kb, ks = jax.random.split(k)
        params, state, value = step(params, state, ks, sampler(kb, num_tasks))
        losses.append(value)
    return params, np.asarray(jax.device_get(losses))

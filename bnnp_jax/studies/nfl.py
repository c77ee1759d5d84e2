"""``bnnp nfl RUN_DIR [--out DIR]``: the "no free lunch" comparison (SPEC section 11).

Takes the learned BNNP prior of a meta-training run and asks, on held-out tasks
of that run's family: given this prior and ``sigma_y``, how good are the
posteriors of NUTS, the amortised BNNP (zero-shot, one forward pass), the
per-task BNNP (pseudo-observations optimised by the ELBO, SPEC section 9),
GIVI, MFVI and FCVI? Every method sees the same model (``model.from_bnnp``),
fits on the real context points of a task only and predicts function samples
``f [S, N_t, y_dim]`` at its real target points, scored with
:mod:`bnnp_jax.metrics` under the learned ``sigma_y``:

- ``lpd``: log of the mixture-mean predictive density per point (``log_predictive_density``);
- ``eld``: mean over samples of the per-point log density (``expected_log_density``);
- ``mae`` of the predictive mean, ``coverage`` of the central 90% interval;
- ``seconds``: wall time of fit + predict (includes jit compilation: task sizes
  differ, so every task compiles afresh, which is also what a user pays).

Seeds vary the inference randomness (inits, MCMC, Monte-Carlo gradients) on the
same held-out tasks; the first table gives the task-averaged metric's mean +-
standard error over seeds. The second gives, per method, the paired per-task
difference to NUTS (each task's metric averaged over seeds first) with a 95%
t-interval over tasks: the tasks, not the seeds, are the unit of replication.

NUTS records its convergence per task: split R-hat and ESS of the predicted
function at the target points (:func:`bnnp_jax.inference.nuts.function_diagnostics`;
the largest R-hat and the smallest ESS over points) and, for reference, of the
weights, whose R-hat is large whenever chains sit in different permutation modes
of the hidden units. A task whose function R-hat exceeds ``RHAT_FLAG`` is flagged
in the table. Outputs in ``DIR`` (default ``RUN_DIR/nfl``): ``results.json``
(settings, summaries and one record per seed, task and method), ``nfl_table.md``
and ``nfl.png``; ``records.jsonl`` grows record by record, so ``--resume`` continues
an interrupted study without recomputing what it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

__all__ = ["METHODS", "METRICS", "LABELS", "DEFAULTS", "QUICK", "RHAT_FLAG", "add_arguments", "settings",
           "split_task", "fit_predict", "score", "nuts_record", "load_records", "evaluate", "aggregate",
           "paired_differences", "table", "plot", "run"]

METHODS = ("nuts", "bnnp_amortised", "bnnp_per_task", "givi", "mfvi", "fcvi")
METRICS = ("lpd", "eld", "mae", "coverage", "seconds")
LABELS = {"lpd": "log mean density / point", "eld": "mean log density / point", "mae": "MAE",
          "coverage": "90% coverage", "seconds": "wall time (s)"}
DEFAULTS = dict(tasks=16, nuts_warmup=300, nuts_samples=300, nuts_chains=4, vi_steps=2000, num_samples=200)
QUICK = dict(tasks=2, nuts_warmup=100, nuts_samples=100, nuts_chains=2, vi_steps=300, num_samples=100)
RHAT_FLAG = 1.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="meta-training run directory (config.yaml + checkpoints/)")
    p.add_argument("--out", help="output directory (default RUN_DIR/nfl)")
    p.add_argument("--seeds", type=int, default=4, help="inference seeds (default 4)")
    p.add_argument("--quick", action="store_true",
                   help=f"smaller settings: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    for name, value in DEFAULTS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"default {value} (quick {QUICK[name]})")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--resume", action="store_true",
                   help="continue OUT/records.jsonl: records already there are kept, the rest are computed")
    p.add_argument("--no-progress", action="store_true")


def settings(args) -> dict:
    """The effective settings: explicit flags > ``--quick`` > defaults; validated."""
    base = QUICK if args.quick else DEFAULTS
    out = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
    out["seeds"] = args.seeds
    out["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in out["methods"] if m not in METHODS]
    if bad or not out["methods"]:
        raise ValueError(f"--methods: unknown {bad}; valid methods are {list(METHODS)}")
    for k in ("seeds", "tasks", "nuts_samples", "nuts_chains", "vi_steps", "num_samples"):
        if out[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {out[k]}")
    if out["nuts_warmup"] < 0:
        raise ValueError(f"--nuts-warmup must be >= 0, got {out['nuts_warmup']}")
    return out


def split_task(tasks, t: int, dtype) -> tuple[np.ndarray, ...]:
    """Real context and target points of task ``t`` (padding dropped):
    ``x_c [N_c, x_dim], y_c [N_c, y_dim], x_t [N_t, x_dim], y_t [N_t, y_dim]``."""
    x, y = np.asarray(tasks.x[t], dtype), np.asarray(tasks.y[t], dtype)
    c, tg = np.asarray(tasks.context[t]) > 0, np.asarray(tasks.target[t]) > 0
    if not c.any() or not tg.any():
        raise ValueError(f"held-out task {t} has {int(c.sum())} context and {int(tg.sum())} target points; need >= 1 of each")
    return x[c], y[c], x[tg], y[tg]


def fit_predict(key, method: str, model, params, data, s: dict):
    """Fit ``method`` on the context ``(x_c, y_c)`` -> ``(f [S, N_t, y_dim] at x_t, the fitted result)``."""
    from bnnp_jax.inference import registry

    x_c, y_c, x_t, _ = data
    fit_key, pred_key = jax.random.split(key)
    if method == "nuts":  # its budget is warm-up and draws, not optimisation steps
        settings = dict(num_warmup=s["nuts_warmup"], num_samples=s["nuts_samples"], num_chains=s["nuts_chains"],
                        progress_bar=False)
    else:
        settings = registry.budget(method, s["vi_steps"])
    fitted = registry.fit(method, fit_key, params if method == "bnnp_amortised" else model, x_c, y_c, **settings)
    f = registry.predict(pred_key, fitted, x_t, s["num_samples"])
    return np.asarray(jax.block_until_ready(f)), fitted


def nuts_record(fitted, x_t) -> dict:
    """NUTS convergence on one task: function-space R-hat (max) and ESS (min) at ``x_t``, the
    weight-space ones, divergences and acceptance, and ``rhat_flag`` (function R-hat > RHAT_FLAG)."""
    from bnnp_jax.inference import nuts

    fd, d = nuts.function_diagnostics(fitted, x_t), fitted.diagnostics
    nanmax = lambda a: float(np.nanmax(a)) if np.isfinite(a).any() else float("nan")
    nanmin = lambda a: float(np.nanmin(a)) if np.isfinite(a).any() else float("nan")
    rec = {"r_hat_f_max": nanmax(fd["r_hat"]), "ess_f_min": nanmin(fd["ess"]), "r_hat_w_max": nanmax(d.r_hat),
           "ess_w_min": nanmin(d.ess), "divergent": int(d.num_divergent), "accept_rate": float(d.accept_rate)}
    rec["rhat_flag"] = bool(rec["r_hat_f_max"] > RHAT_FLAG)
    return rec


def score(f: np.ndarray, sigma_y, y_t: np.ndarray) -> dict:
    """Per-point metrics of function samples ``f [S, N_t, y_dim]`` against ``y_t [N_t, y_dim]``."""
    from bnnp_jax import metrics

    mask = np.ones(y_t.shape[0], y_t.dtype)
    return {
        "lpd": float(metrics.log_predictive_density(f, sigma_y, y_t, mask)),
        "eld": float(metrics.expected_log_density(f, sigma_y, y_t, mask)),
        "mae": float(metrics.mae(f, y_t, mask)),
        "coverage": float(metrics.coverage(f, sigma_y, y_t, mask, 0.9)),
    }


RESUMABLE_KEYS = ("nuts_warmup", "nuts_samples", "nuts_chains", "vi_steps", "num_samples")


def load_records(log: Path, s: dict) -> list[dict]:
    """Records already in ``log`` (JSON lines after a settings header), checked against ``s``:
    the budgets must match; seeds, tasks and methods may grow. A line torn by a kill is dropped."""
    lines = log.read_text().splitlines()
    if not lines:
        return []
    header = json.loads(lines[0])
    want = {k: s[k] for k in RESUMABLE_KEYS}
    if header.get("settings") != want:
        raise ValueError(f"--out: {log} holds records made with {header.get('settings')}, not {want}; "
                         "choose another --out or the same settings")
    records = []
    for line in lines[1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the last line of a killed run
    return records


def evaluate(params, tasks, s: dict, progress: bool = True, log: Path | None = None) -> list[dict]:
    """One record per (seed, task, method). With ``log`` (a JSON-lines file), each record is
    appended and flushed as it is made, and records already there are kept, not recomputed:
    an interrupted study resumes where it stopped, with the same keys, so the same numbers."""
    from tqdm import tqdm

    from bnnp_jax.inference import model as bnn

    model = bnn.from_bnnp(params)
    dtype = np.dtype(model.sigma_y.dtype)
    sigma_y = np.asarray(model.sigma_y)
    n_tasks = min(s["tasks"], int(tasks.x.shape[0]))
    data = [split_task(tasks, t, dtype) for t in range(n_tasks)]
    records = load_records(log, s) if log is not None and log.exists() else []
    done = {(r["seed"], r["task"], r["method"]) for r in records}
    if log is not None:
        # Rewrite header and kept records atomically: a line torn by a kill is dropped here,
        # so new records never get appended onto it.
        lines = [json.dumps({"settings": {k: s[k] for k in RESUMABLE_KEYS}})] + [json.dumps(r) for r in records]
        tmp = log.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, log)
    sink = open(log, "a") if log is not None else None
    todo = [(seed, t, i, m) for seed in range(s["seeds"]) for t in range(n_tasks)
            for i, m in enumerate(s["methods"]) if (seed, t, m) not in done]
    bar = tqdm(total=len(todo), disable=not progress, desc="nfl", dynamic_ncols=True)
    try:
        for seed, t, i, method in todo:
            d = data[t]
            key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), t), i)
            tic = time.perf_counter()
            f, fitted = fit_predict(key, method, model, params, d, s)
            seconds = time.perf_counter() - tic
            rec = {"seed": seed, "task": t, "method": method, "num_context": int(d[0].shape[0]),
                   "num_target": int(d[2].shape[0]), **score(f, sigma_y, d[3]), "seconds": seconds,
                   **(nuts_record(fitted, d[2]) if method == "nuts" else {})}
            records.append(rec)
            if sink is not None:
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
            bar.set_postfix(method=method)
            bar.update(1)
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    keep = {(seed, t, m) for seed in range(s["seeds"]) for t in range(n_tasks) for m in s["methods"]}
    order = {m: i for i, m in enumerate(s["methods"])}
    return sorted((r for r in records if (r["seed"], r["task"], r["method"]) in keep),
                  key=lambda r: (r["seed"], r["task"], order[r["method"]]))


def aggregate(records: list[dict]) -> dict:
    """``{method: {metric: (mean, stderr)}}``: task-average per seed, then mean +- s.e. over seeds."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in records):
        seeds = sorted({r["seed"] for r in records if r["method"] == method})
        out[method] = {}
        for m in METRICS:
            per_seed = np.array([np.mean([r[m] for r in records if r["method"] == method and r["seed"] == sd])
                                 for sd in seeds])
            se = per_seed.std(ddof=1) / np.sqrt(len(per_seed)) if len(per_seed) > 1 else float("nan")
            out[method][m] = (float(per_seed.mean()), float(se))
    return out


def paired_differences(records: list[dict], metrics=("lpd", "eld", "mae", "coverage")) -> dict:
    """``{method: {metric: {"mean", "lo", "hi", "tasks"}}}``: per task, the metric averaged over
    seeds minus NUTS's; then the mean over tasks with a 95% Student-t interval (empty without
    NUTS; an interval needs at least two tasks)."""
    from scipy import stats

    if not any(r["method"] == "nuts" for r in records):
        return {}

    def per_task(method, m):
        tasks = sorted({r["task"] for r in records if r["method"] == method})
        return {t: np.mean([r[m] for r in records if r["method"] == method and r["task"] == t]) for t in tasks}

    out = {}
    for method in dict.fromkeys(r["method"] for r in records):
        if method == "nuts":
            continue
        out[method] = {}
        for m in metrics:
            ref, own = per_task("nuts", m), per_task(method, m)
            d = np.array([own[t] - ref[t] for t in own if t in ref])
            half = (stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            out[method][m] = {"mean": float(d.mean()), "lo": float(d.mean() - half), "hi": float(d.mean() + half),
                              "tasks": int(len(d))}
    return out


def table(summary: dict, s: dict, paired: dict | None = None, records: list[dict] | None = None) -> str:
    """The markdown report: metrics per method; paired differences to NUTS; NUTS convergence per task."""
    lines = [f"Held-out tasks: {s['tasks']}, seeds: {s['seeds']} (mean ± s.e. over seeds of the task mean).", "",
             "| method | " + " | ".join(LABELS[m] for m in METRICS) + " |",
             "|---" * (len(METRICS) + 1) + "|"]
    for method, vals in summary.items():
        cells = [f"{vals[m][0]:.3f} ± {vals[m][1]:.3f}" if np.isfinite(vals[m][1]) else f"{vals[m][0]:.3f}"
                 for m in METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if paired:
        names = list(next(iter(paired.values())))
        n = next(iter(next(iter(paired.values())).values()))["tasks"]
        lines += ["", f"Paired difference to NUTS over {n} tasks (method minus NUTS, each task averaged over seeds; "
                  "mean [95% t-interval]). For lpd, eld and coverage above 0 favours the method; for MAE below 0.", "",
                  "| method | " + " | ".join(LABELS[m] for m in names) + " |", "|---" * (len(names) + 1) + "|"]
        for method, vals in paired.items():
            lines.append(f"| {method} | " + " | ".join(
                f"{vals[m]['mean']:+.3f} [{vals[m]['lo']:+.3f}, {vals[m]['hi']:+.3f}]" for m in names) + " |")
    nuts_recs = [r for r in (records or []) if r["method"] == "nuts"]
    if nuts_recs:
        flagged = sorted({(r["seed"], r["task"]) for r in nuts_recs if r["rhat_flag"]})
        lines += ["", f"NUTS convergence ({s['nuts_chains']} chains, {s['nuts_warmup']} warm-up, "
                  f"{s['nuts_samples']} draws each): function-space split R-hat and ESS at the target points "
                  f"(max / min over points); tasks with R-hat > {RHAT_FLAG} are flagged.", "",
                  "| seed | task | R-hat f (max) | ESS f (min) | R-hat weights (max) | divergent | accept | flag |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in nuts_recs:
            lines.append(f"| {r['seed']} | {r['task']} | {r['r_hat_f_max']:.3f} | {r['ess_f_min']:.0f} | "
                         f"{r['r_hat_w_max']:.2f} | {r['divergent']} | {r['accept_rate']:.2f} | "
                         f"{'**R-hat**' if r['rhat_flag'] else ''} |")
        lines += ["", f"Flagged (seed, task): {flagged if flagged else 'none'}."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.4))
    for ax, m in zip(axes, METRICS):
        mean = [summary[k][m][0] for k in methods]
        se = [summary[k][m][1] for k in methods]
        ax.errorbar(range(len(methods)), mean, yerr=se if np.all(np.isfinite(se)) else None, fmt="o", capsize=3)
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
        ax.set_title(LABELS[m], fontsize=9)
        if m == "coverage":
            ax.axhline(0.9, color="grey", ls="--", lw=0.8)
        if m == "seconds":
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    from bnnp_jax.training import config as run_config
    from bnnp_jax.training import loop as train
    from bnnp_jax.training.report import heldout

    s = settings(args)
    run_dir = Path(args.run_dir)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file() and run_config.load(cfg_path).bnnp.dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # before anything is built, as `bnnp evaluate` does
    config, params, _ = train.load_run(run_dir)
    if config.model != "bnnp":
        raise ValueError(f"run_dir: nfl needs a BNNP run (a learned weight prior), got model {config.model!r}")
    out = Path(args.out) if args.out else run_dir / "nfl"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "records.jsonl"
    if log.exists() and not args.resume:
        raise ValueError(f"--out: {out} already holds records ({log.name}); pass --resume to continue them, "
                         "or choose another --out")
    records = evaluate(params, heldout(config), s, progress=not args.no_progress, log=log)
    summary, paired = aggregate(records), paired_differences(records)
    (out / "results.json").write_text(json.dumps(
        {"run_dir": str(run_dir), "family": config.data.family, "settings": s, "summary": summary,
         "paired_to_nuts": paired, "records": records}, indent=2))
    report = table(summary, s, paired, records)
    (out / "nfl_table.md").write_text(report)
    plot(summary, out / "nfl.png")
    print(report)
    return 0

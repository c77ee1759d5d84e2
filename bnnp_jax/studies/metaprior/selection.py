"""Validation-only selection of MetaPrior experiment settings, over seeds.

A sweep file (YAML) names the experiment, whether its ``quick:`` overrides apply, the seeds and,
per model, a few candidate overrides of the experiment config::

    experiment: moons
    quick: true
    seeds: [1, 2, 3]
    candidates:
      metaprior:
        shipped: {}                       # the config as it is
        warmup: {fit: {kl_warmup: 500}}   # nested mappings merge, scalars replace
      mlp:
        wd0: {mlp: {weight_decay: 0.0}}

Every candidate is fitted once per seed and scored by its mean validation score over the
seeds: accuracy for the classifiers (``moons``, ``digits``; ties broken by the lower mean
validation NLL) and the log predictive density per point for the ``cubic`` regression (ties
broken by the lower validation RMSE); :data:`SCORES`. Only validation metrics and convergence
diagnostics are kept: the test metrics the fitting functions also compute are dropped here, so
nothing recorded about the candidates can steer the choice towards the test set.

Run ``python -m bnnp_jax.studies.metaprior.selection select SWEEP.yaml --out DIR``; it writes
``DIR/selection.json`` and ``DIR/selection.md``. The chosen settings are then copied into
``configs/metaprior_<experiment>.yaml`` by hand and reported over seeds with
``bnnp metaprior EXPERIMENT --seeds ... --out RUN``; ``python -m
bnnp_jax.studies.metaprior.selection report RUN... --out FILE.md`` tabulates those runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import yaml

from bnnp_jax.studies.metaprior.experiments import ExperimentConfig, load_config

__all__ = ["SCORES", "with_overrides", "validation_only", "score_candidate", "run_sweep", "markdown_table", "seed_table",
           "main"]

# Keys kept from a fit's metrics: validation scores and convergence diagnostics, never test scores.
_KEPT = ("val_accuracy", "val_nll", "val_lpd", "val_rmse", "final_objective_per_point", "trace_drift")
# experiment -> (validation score, higher is better; tie-break, lower is better)
SCORES = {"moons": ("val_accuracy", "val_nll"), "digits": ("val_accuracy", "val_nll"), "cubic": ("val_lpd", "val_rmse")}


def with_overrides(cfg: ExperimentConfig, overrides: dict) -> ExperimentConfig:
    """``cfg`` with ``overrides`` applied: nested mappings merge key by key, other values replace.
    Unknown keys raise (through :class:`ExperimentConfig`)."""
    raw = dataclasses.asdict(cfg)
    unknown = sorted(set(overrides) - set(raw))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in overrides; valid keys: {sorted(raw)}")
    for k, v in overrides.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) else v
    return ExperimentConfig(**raw)


def validation_only(metrics: dict) -> dict:
    """The validation and convergence entries of one model's metrics (test entries dropped)."""
    return {k: metrics[k] for k in _KEPT if k in metrics}


def _evaluator(experiment: str):
    if experiment == "moons":
        from bnnp_jax.studies.metaprior.toys import evaluate_moons

        return evaluate_moons
    if experiment == "cubic":
        from bnnp_jax.studies.metaprior.toys import evaluate_cubic

        return evaluate_cubic
    if experiment == "digits":
        from bnnp_jax.studies.metaprior.digits import evaluate_digits

        return evaluate_digits
    raise ValueError(f"selection is implemented for {tuple(SCORES)}, got {experiment!r}")


def score_candidate(experiment: str, cfg: ExperimentConfig, model: str, seeds: list[int]) -> dict:
    """Fit ``model`` under ``cfg`` once per seed; mean and s.d. of the validation score
    (``SCORES[experiment]``, e.g. ``val_accuracy_mean`` / ``val_accuracy_sd``), the mean
    tie-break metric (e.g. ``val_nll_mean``), and the per-seed validation metrics and wall times."""
    if cfg.n_val < 1:
        raise ValueError("selection needs a validation split: set n_val > 0")
    evaluate, per_seed = _evaluator(experiment), []
    score, tie = SCORES[experiment]
    for seed in seeds:
        start = time.perf_counter()
        metrics = evaluate(dataclasses.replace(cfg, seed=seed), (model,))[model]
        per_seed.append({"seed": seed, **validation_only(metrics), "wall_seconds": round(time.perf_counter() - start, 1)})
    values = np.array([r[score] for r in per_seed])
    return {f"{score}_mean": float(values.mean()), f"{score}_sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            f"{tie}_mean": float(np.mean([r[tie] for r in per_seed])), "per_seed": per_seed}


def run_sweep(sweep: dict, progress=print) -> dict:
    """Score every candidate of a sweep (see the module docstring); returns the record written to
    ``selection.json``, with ``chosen[model]`` the name of the best candidate by validation."""
    experiment, quick, seeds = sweep["experiment"], bool(sweep.get("quick", False)), list(sweep["seeds"])
    base = load_config(experiment, sweep.get("config"), quick)
    score, tie = SCORES[experiment]
    record = {"experiment": experiment, "quick": quick, "seeds": seeds, "config_file": sweep.get("config"),
              "base_config": dataclasses.asdict(base),
              "rule": f"highest mean {score} over the seeds; ties: lower mean {tie}", "score": score,
              "tiebreak": tie, "candidates": {}, "chosen": {}}
    for model, candidates in sweep["candidates"].items():
        rows = {}
        for name, overrides in candidates.items():
            cfg = with_overrides(base, overrides or {})
            rows[name] = {"overrides": overrides or {}, **score_candidate(experiment, cfg, model, seeds)}
            progress(f"{model} {name}: {score} {rows[name][f'{score}_mean']:.4f} "
                     f"+- {rows[name][f'{score}_sd']:.4f}")
        record["candidates"][model] = rows
        record["chosen"][model] = max(rows, key=lambda n: (round(rows[n][f"{score}_mean"], 6),
                                                          -rows[n][f"{tie}_mean"]))
    return record


def markdown_table(record: dict) -> str:
    """One table per model: candidate, overrides, mean +- s.d. validation score, mean tie-break
    metric, per-seed score (``record['score']``; records without one scored validation accuracy)."""
    score, tie = record.get("score", "val_accuracy"), record.get("tiebreak", "val_nll")
    settings = f"`{record['config_file']}`" if record.get("config_file") else "full"
    lines = [f"Selection for `{record['experiment']}` ({'quick' if record['quick'] else settings} settings), "
             f"seeds {record['seeds']}; rule: {record['rule']}. Validation metrics only.", ""]
    for model, rows in record["candidates"].items():
        lines += [f"**{model}**", "", f"| candidate | overrides | {score} (mean ± s.d.) | {tie} | per seed | "
                  "final objective / point | drift over last 10% | s / seed |", "|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            mark = " (chosen)" if record["chosen"][model] == name else ""
            per = ", ".join(f"{p[score]:.3f}" for p in r["per_seed"])
            obj = np.mean([p["final_objective_per_point"] for p in r["per_seed"]])
            drift = np.mean([p["trace_drift"] for p in r["per_seed"]])
            wall = np.mean([p["wall_seconds"] for p in r["per_seed"]])
            lines.append(f"| {name}{mark} | `{json.dumps(r['overrides'])}` | {r[f'{score}_mean']:.4f} ± "
                         f"{r[f'{score}_sd']:.4f} | {r[f'{tie}_mean']:.4f} | {per} | {obj:.4f} | {drift:+.4f} | "
                         f"{wall:.0f} |")
        lines.append("")
    return "\n".join(lines)


def seed_table(summary: dict, title: str, models: tuple[str, ...] = ("metaprior", "mfvi", "mlp")) -> str:
    """Markdown table of one ``bnnp metaprior ... --seeds`` summary (mean ± sample s.d. over the
    seeds), and the wall time. Classifiers: test accuracy, per-seed accuracy, test NLL and
    validation accuracy; the cubic regression (``test_lpd`` in the summary): test log predictive
    density per point, per-seed values, test RMSE and validation log density."""
    m = summary["mean_sd"]
    regression = any(k.endswith("/test_lpd") for k in m)
    main_k, second_k, val_k = ("test_lpd", "test_rmse", "val_lpd") if regression else ("accuracy", "nll", "val_accuracy")
    header = ("| model | test log density / point (mean ± s.d.) | per seed | test RMSE | val log density / point |"
              if regression else "| model | test accuracy (mean ± s.d.) | per seed | test NLL | val accuracy |")
    lines = [f"**{title}** (seeds {summary['seeds']})", "", header, "|---|---|---|---|---|"]
    for model in models:
        if f"{model}/{main_k}" not in m:
            continue
        acc, nll = m[f"{model}/{main_k}"], m[f"{model}/{second_k}"]
        val = m.get(f"{model}/{val_k}")
        val_s = f"{val['mean']:.4f} ± {val['sd']:.4f}" if val else "-"
        per = ", ".join(f"{v:.3f}" for v in acc["values"])
        lines.append(f"| {model} | {acc['mean']:.4f} ± {acc['sd']:.4f} | {per} | {nll['mean']:.3f} ± {nll['sd']:.3f} | "
                     f"{val_s} |")
    wall = m["wall_seconds"]["values"]
    # the first seed of a run pays for compilation, the later ones reuse it
    timing = f"{wall[0]:.0f} s for the first seed (compilation included)"
    if len(wall) > 1:
        timing += f", {np.mean(wall[1:]):.0f} s for each later one"
    return "\n".join(lines) + f"\n\nWall time per seed, every model and the plots: {timing}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnnp_jax.studies.metaprior.selection",
                                     description="validation-only selection of MetaPrior settings over seeds")
    sub = parser.add_subparsers(dest="command", required=True)
    sel = sub.add_parser("select", help="score a sweep's candidates on validation")
    sel.add_argument("sweep", help="sweep YAML (see the module docstring)")
    sel.add_argument("--out", required=True, help="folder for selection.json and selection.md")
    sel.add_argument("--only", nargs="+", default=None, metavar="MODEL", help="score only these models")
    sel.add_argument("--candidates", nargs="+", default=None, metavar="NAME",
                     help="score only the candidates of these names (e.g. ones added in a later round)")
    rep = sub.add_parser("report", help="tabulate bnnp metaprior --seeds runs (their summary.json)")
    rep.add_argument("runs", nargs="+", help="folders holding summary.json")
    rep.add_argument("--out", required=True, help="markdown file to write")
    args = parser.parse_args(argv)
    if args.command == "report":
        tables = []
        for run in args.runs:
            summary = json.loads((Path(run) / "summary.json").read_text())
            tables.append(seed_table(summary, f"{Path(run).name}: {'quick' if summary['quick'] else 'full'} settings"))
        Path(args.out).write_text("\n".join(tables))
        print(f"wrote {args.out}")
        return 0
    sweep = yaml.safe_load(Path(args.sweep).read_text())
    if args.only:
        sweep["candidates"] = {m: c for m, c in sweep["candidates"].items() if m in args.only}
    if args.candidates:
        sweep["candidates"] = {m: {n: o for n, o in c.items() if n in args.candidates}
                               for m, c in sweep["candidates"].items()}
        sweep["candidates"] = {m: c for m, c in sweep["candidates"].items() if c}
    record = run_sweep(sweep, progress=lambda s: print(s, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    (out / "selection.md").write_text(markdown_table(record) + "\n")
    print(f"wrote {out / 'selection.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Large- versus small-meta-dataset contrast on the sawtooth family (the other side of
the Goldilocks study, :mod:`bnnp_jax.studies.goldilocks`).

The same contenders (the BNNP and the neural processes) are meta-trained for the
same number of steps on ``K`` fixed sawtooth datasets (``K`` functions drawn once,
99 noisy points each; tasks are random subsets with random context/target splits)
for growing ``K``, and on an unlimited stream of fresh tasks (``K = 0`` in the
config, shown as "inf"). All are scored on the same held-out tasks from the
generator: mean log predictive density per target point and MAE.

Run: ``bnnp large-meta configs/large_meta_sawtooth.yaml --out DIR``
(writes ``results.json``, resumable, ``summary.md`` and ``large_meta.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from bnnp_jax.bnnp.model import BNNPConfig
from bnnp_jax.config import ConfigError, from_dict, load_yaml
from bnnp_jax.neural_processes import NPConfig
from bnnp_jax.training.config import DataConfig, TrainingConfig
from bnnp_jax.studies import study_runs

__all__ = ["DATA_STREAM", "StudySection", "LargeMetaConfig", "fixed_datasets_sampler", "heldout",
           "run_one", "summarise", "markdown_table", "plot", "add_arguments", "run", "main"]

DATA_STREAM = 2**31 - 3  # fold_in index of the fixed training datasets' key


@dataclass(frozen=True)
class StudySection:
    """``num_datasets``: the ``K`` values (0 = unlimited fresh tasks); ``models``: bnnp,
    ``bnnp_pX_side`` for a partially trainable prior, or a neural process name."""

    seeds: tuple[int, ...] = (0,)
    num_datasets: tuple[int, ...] = (2, 16, 128, 0)
    models: tuple[str, ...] = ("bnnp", "cnp", "np", "anp", "tnp")
    eval_tasks: int = 64
    eval_samples: int = 32

    def __post_init__(self):
        if any(k < 0 for k in self.num_datasets):
            raise ConfigError(f"study.num_datasets: each must be >= 0 (0 = unlimited), got {list(self.num_datasets)}")
        for m in self.models:
            _model_settings(m)


@dataclass(frozen=True)
class LargeMetaConfig:
    data: DataConfig = field(default_factory=DataConfig)
    bnnp: BNNPConfig = field(default_factory=lambda: BNNPConfig(hidden=(32, 32)))
    np: NPConfig = field(default_factory=NPConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    np_training: dict = field(default_factory=dict)
    study: StudySection = field(default_factory=StudySection)

    def __post_init__(self):
        if self.data.family != "sawtooth":
            raise ConfigError(f"data.family: this study is defined on 'sawtooth', got {self.data.family!r}")


def _model_settings(name: str) -> tuple[str, float, str]:
    """``(model, prior_fraction, side)`` from a contender name."""
    from bnnp_jax.neural_processes import KINDS

    if name == "bnnp" or name in KINDS:
        return name, 1.0, "front"
    parts = name.split("_")
    if len(parts) == 3 and parts[0] == "bnnp" and parts[1].startswith("p") and parts[2] in ("front", "back"):
        try:
            return "bnnp", float(parts[1][1:]), parts[2]
        except ValueError:
            pass
    raise ConfigError(f"study.models: unknown contender {name!r}; use bnnp, bnnp_p0.5_back, or one of {sorted(KINDS)}")


def fixed_datasets_sampler(cfg: LargeMetaConfig, num_datasets: int):
    """``sampler(key, T) -> TaskBatch`` over ``num_datasets`` fixed sawtooth datasets (or the
    family's unlimited stream for 0). The datasets depend only on ``num_datasets``."""
    from bnnp_jax.data import registry, synthetic
    from bnnp_jax.data.tasks import split
    from bnnp_jax.training.loop import make_sampler
    from bnnp_jax.training import config as run_config

    stream = make_sampler(run_config.RunConfig(data=cfg.data, bnnp=cfg.bnnp, training=cfg.training))
    if num_datasets == 0:
        return stream
    n_range = tuple(cfg.data.n_range or registry.family_info("sawtooth")["n_range"])
    full = registry.make_sampler("sawtooth", n_range=(n_range[1] - 1, n_range[1]), **cfg.data.params)
    key = jax.random.fold_in(jax.random.PRNGKey(num_datasets), DATA_STREAM)
    x_pool, y_pool, valid = full(key, num_datasets)
    proportion = tuple(cfg.data.context_proportion or registry.family_info("sawtooth")["context_proportion"])

    def sampler(key, num_tasks):
        k_tasks, k_split = jax.random.split(key)
        base = synthetic.sample_from_pool(k_tasks, x_pool, y_pool, valid, num_tasks, n_range[1] - 1, n_range)
        return split(k_split, *base, proportion)

    return sampler


def heldout(cfg: LargeMetaConfig):
    """The held-out tasks: fresh functions from the generator, one fixed key for every run."""
    from bnnp_jax.training import evaluation
    from bnnp_jax.data import registry

    d = cfg.data
    sampler = registry.make_batch_sampler("sawtooth", tuple(d.context_proportion) if d.context_proportion else None,
                                          **({"n_range": tuple(d.n_range)} if d.n_range else {}), **d.params)
    return evaluation.heldout_tasks(sampler, 12345, cfg.study.eval_tasks)


def run_one(cfg: LargeMetaConfig, name: str, num_datasets: int, seed: int, sampler, tasks, progress: bool) -> dict:
    from bnnp_jax.training import evaluation
    from bnnp_jax.training import config as run_config
    from bnnp_jax.training import loop as train

    model, fraction, side = _model_settings(name)
    training = dataclasses.replace(cfg.training, seed=seed, prior_fraction=fraction, prior_side=side)
    if model != "bnnp":
        training = from_dict(TrainingConfig, {**dataclasses.asdict(training), **cfg.np_training}, "np_training")
    rc = run_config.RunConfig(model=model, data=None, bnnp=cfg.bnnp, np=cfg.np, training=training)
    tic = time.perf_counter()
    state, history = train.fit(rc, None, progress=progress, sampler=sampler, shared_compile=True)
    scores = evaluation.make_evaluator(tasks, cfg.study.eval_samples, seed)(state.params)
    loss = np.asarray(history["loss"])
    return {**scores, "final_loss": float(loss[-max(1, loss.size // 10):].mean()),
            "seconds": time.perf_counter() - tic}


def summarise(results: dict) -> dict:
    """``{model: {K: {metric: (mean, standard error, n)}}}`` over seeds."""
    groups: dict = {}
    for r in results.values():
        groups.setdefault(r["model"], {}).setdefault(r["num_datasets"], []).append(r)
    out = {}
    for m, by_k in groups.items():
        out[m] = {}
        for k, recs in by_k.items():
            out[m][k] = {}
            for metric in ("log_predictive_density", "mae"):
                v = np.array([r[metric] for r in recs], float)
                se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
                out[m][k][metric] = (float(v.mean()), se, int(v.size))
    return out


def _k_label(k: int) -> str:
    return "inf" if k == 0 else str(k)


def markdown_table(summary: dict, ks: list[int], metric: str) -> str:
    head = "| model | " + " | ".join(f"K = {_k_label(k)}" for k in ks) + " |"
    rows = [head, "|---" * (len(ks) + 1) + "|"]
    for m, by_k in summary.items():
        cells = [f"{by_k[k][metric][0]:.3f}" + (f" ± {by_k[k][metric][1]:.3f}" if by_k[k][metric][2] > 1 else "")
                 if k in by_k else "-" for k in ks]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(summary: dict, ks: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = {k: i for i, k in enumerate(sorted(k for k in ks if k) + [0] * (0 in ks))}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in zip(axes, ("log_predictive_density", "mae"),
                                 ("log predictive density / target point", "MAE")):
        for m, by_k in summary.items():
            kk = [k for k in pos if k in by_k]
            ax.errorbar([pos[k] for k in kk], [by_k[k][metric][0] for k in kk],
                        [0.0 if by_k[k][metric][2] < 2 else by_k[k][metric][1] for k in kk], marker="o", capsize=3, label=m,
                        lw=2.5 if m.startswith("bnnp") else 1.2)
        ax.set_xticks(list(pos.values()), [_k_label(k) for k in pos])
        ax.set(xlabel="number of meta-training datasets K", ylabel=label)
    axes[0].set_yscale("symlog", linthresh=1.0)  # overfitted NPs reach -50; keep [-1, 1] linear
    axes[0].legend(fontsize=8)
    fig.suptitle("Sawtooth: meta-dataset size vs held-out performance (same training steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    study_runs.add_arguments(parser, "configs/large_meta_sawtooth.yaml", "results.json, summary.md, large_meta.png")


def run(args) -> int:
    cfg = load_yaml(LargeMetaConfig, args.config)
    out = Path(args.out)
    store = study_runs.Results(out)
    seeds = tuple(args.seeds) if args.seeds else cfg.study.seeds
    tasks = None if args.report_only else heldout(cfg)
    for k in [] if args.report_only else cfg.study.num_datasets:
        sampler = fixed_datasets_sampler(cfg, k)
        for seed in seeds:
            for name in cfg.study.models:
                key = f"{name}/K{_k_label(k)}/seed{seed}"
                if key not in store:
                    rec = run_one(cfg, name, k, seed, sampler, tasks, not args.no_progress)
                    store.add(key, {"model": name, "num_datasets": k, "seed": seed, **rec})
    results = store.require()
    summary = summarise(results)
    ks = [k for k in cfg.study.num_datasets if any(k in by_k for by_k in summary.values())]
    text = ["## Log predictive density per target point (higher is better)", markdown_table(summary, ks,
            "log_predictive_density"), "", "## MAE (lower is better)", markdown_table(summary, ks, "mae")]
    (out / "summary.md").write_text("\n".join(text) + "\n")
    plot(summary, ks, out / "large_meta.png")
    print("\n".join(text))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnnp_jax.studies.large_meta", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

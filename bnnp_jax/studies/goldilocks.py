"""The small-meta-dataset ("Goldilocks") study (SPEC section 11; seed paper, "adjustable prior flexibility").

Meta-dataset: scikit-learn's bundled diabetes data (442 patients, 10 inputs,
disease progression as target) split into tasks by age group (tertiles by
default). Two groups are the meta-training datasets; the third is the held-out
test task, with a seeded 25% of its points as context and the rest as targets.
Inputs and target are standardised with the *training* groups' statistics.

Meta-training tasks are random subsets of one training group with a random
context/target split (SPEC section 5). Contenders, each over several seeds
(the seed sets the test split, initialisation and task stream):

- BNNP with a trainable-prior fraction ``p`` (SPEC section 3) from the front
  (input end) and from the back (output end); ``p = 0`` is the fixed prior
  ``N(0, I/(D_in+1))`` with meta-learned inference networks only;
- neural processes (cnp, np, anp, tnp), fully flexible;
- MFVI and GIVI fitted to the test context alone under the fixed prior, with
  ``sigma_y`` set to the residual standard deviation of a least-squares fit on the
  training groups (information every method has).

Reported per target point: mean log predictive density (log of the Monte-Carlo
mixture density) and MAE of the predictive mean, as mean +- standard error
over seeds. ``bnnp goldilocks CONFIG --out DIR`` writes ``results.json`` (one
record per run, so an interrupted study resumes), ``summary.md`` and ``goldilocks.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.bnnp.model import BNNPConfig
from bnnp_jax.config import ConfigError, from_dict, load_yaml
from bnnp_jax.data.tasks import TaskBatch, split
from bnnp_jax.neural_processes import NPConfig
from bnnp_jax.training.config import TrainingConfig
from bnnp_jax.studies import study_runs

__all__ = ["NP_KINDS", "BASELINES", "DataSection", "BaselineSection", "StudySection", "GoldilocksConfig",
           "MetaDataset", "age_groups", "split_groups", "make_metadataset", "make_sampler",
           "train_and_score", "baseline_score", "contenders", "run_one", "summarise", "markdown_table",
           "plot", "write_outputs", "add_arguments", "run"]

NP_KINDS = ("cnp", "np", "anp", "tnp")
BASELINES = ("mfvi", "givi")


@dataclass(frozen=True)
class DataSection:
    """``age_edges``: group boundaries in years (default: tertiles); ``test_group``:
    index of the held-out group (0 = youngest); ``context_fraction`` of the test task;
    meta-training task sizes ``train_n_range`` and context shares ``train_context_proportion``."""

    age_edges: tuple[float, ...] | None = None
    test_group: int = 2
    context_fraction: float = 0.25
    train_n_range: tuple[int, ...] = (40, 141)
    train_context_proportion: tuple[float, ...] = (0.1, 0.5)

    def __post_init__(self):
        if not 0.0 < self.context_fraction < 1.0:
            raise ConfigError(f"data.context_fraction: must be in (0, 1), got {self.context_fraction}")
        if len(self.train_n_range) != 2 or not 2 <= self.train_n_range[0] < self.train_n_range[1]:
            raise ConfigError(f"data.train_n_range: need [lo, hi] with 2 <= lo < hi, got {list(self.train_n_range)}")


@dataclass(frozen=True)
class BaselineSection:
    """Per-task VI baselines on the test context (SPEC section 8)."""

    num_steps: int = 5000
    lr: tuple[float, ...] = (5e-3, 5e-5)
    num_particles: int = 8
    num_inducing: int = 20


@dataclass(frozen=True)
class StudySection:
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    sides: tuple[str, ...] = ("front", "back")
    neural_processes: tuple[str, ...] = NP_KINDS
    baselines: tuple[str, ...] = BASELINES
    eval_samples: int = 100

    def __post_init__(self):
        for name, valid in (("neural_processes", NP_KINDS), ("baselines", BASELINES), ("sides", ("front", "back"))):
            bad = sorted(set(getattr(self, name)) - set(valid))
            if bad:
                raise ConfigError(f"study.{name}: unknown {bad}; valid: {list(valid)}")
        if any(not 0.0 <= p <= 1.0 for p in self.fractions):
            raise ConfigError(f"study.fractions: each must be in [0, 1], got {list(self.fractions)}")


@dataclass(frozen=True)
class GoldilocksConfig:
    """``configs/goldilocks*.yaml``. ``np_training`` overrides ``training`` fields for the
    neural processes (e.g. a smaller learning rate)."""

    data: DataSection = field(default_factory=DataSection)
    bnnp: BNNPConfig = field(default_factory=lambda: BNNPConfig(x_dim=10, hidden=(32, 32)))
    np: NPConfig = field(default_factory=lambda: NPConfig(x_dim=10))
    training: TrainingConfig = field(default_factory=TrainingConfig)
    np_training: dict = field(default_factory=dict)
    baselines: BaselineSection = field(default_factory=BaselineSection)
    study: StudySection = field(default_factory=StudySection)

    def __post_init__(self):
        for section in ("bnnp", "np"):
            if (getattr(self, section).x_dim, getattr(self, section).y_dim) != (10, 1):
                raise ConfigError(f"{section}.x_dim/y_dim: the diabetes tasks have x_dim=10, y_dim=1")


# ----- the meta-dataset -----------------------------------------------------------


class MetaDataset(NamedTuple):
    """Training pools ``x [2, P, 10]``, ``y [2, P, 1]``, ``valid [2, P]`` (groups padded
    to ``P`` points), the test task (a one-task :class:`TaskBatch`), the indices
    (into the 442 patients) of each training group and of the test context/targets,
    and the least-squares residual scale of the training groups."""

    x: np.ndarray
    y: np.ndarray
    valid: np.ndarray
    test: TaskBatch
    train_index: list
    context_index: np.ndarray
    target_index: np.ndarray
    residual_scale: float


def age_groups(edges=None) -> np.ndarray:
    """Group label ``[442]`` of every patient: ``digitize(age, edges)`` (default: tertiles)."""
    from sklearn.datasets import load_diabetes

    age = load_diabetes(scaled=False).data[:, 0]
    edges = np.quantile(age, [1 / 3, 2 / 3]) if edges is None else np.asarray(edges, float)
    return np.digitize(age, edges)


def split_groups(seed: int, groups: np.ndarray, test_group: int, context_fraction: float):
    """Training-group indices and the test group's seeded, disjoint context/target indices."""
    labels = np.unique(groups)
    if test_group not in labels:
        raise ValueError(f"test_group: must be one of {labels.tolist()}, got {test_group}")
    train = [np.flatnonzero(groups == g) for g in labels if g != test_group]
    test = np.random.default_rng(seed).permutation(np.flatnonzero(groups == test_group))
    n_ctx = int(np.clip(round(context_fraction * test.size), 1, test.size - 1))
    return train, np.sort(test[:n_ctx]), np.sort(test[n_ctx:])


def make_metadataset(seed: int, data: DataSection, dtype=np.float32) -> MetaDataset:
    """The study's meta-dataset for one seed (module docstring)."""
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(scaled=False)
    train, ctx, tgt = split_groups(seed, age_groups(data.age_edges), data.test_group, data.context_fraction)
    pooled = np.concatenate(train)
    x_mu, x_sd = raw.data[pooled].mean(0), raw.data[pooled].std(0)
    y_mu, y_sd = raw.target[pooled].mean(), raw.target[pooled].std()
    x = ((raw.data - x_mu) / x_sd).astype(dtype)
    y = ((raw.target - y_mu) / y_sd).astype(dtype)[:, None]
    size = max(t.size for t in train)
    pad = lambda a, idx: np.concatenate([a[idx], np.zeros((size - idx.size,) + a.shape[1:], dtype)])
    valid = np.stack([(np.arange(size) < t.size).astype(dtype) for t in train])
    design = np.concatenate([x[pooled], np.ones((pooled.size, 1), dtype)], 1)
    residual = y[pooled] - design @ np.linalg.lstsq(design, y[pooled], rcond=None)[0]
    order = np.concatenate([ctx, tgt])
    n = order.size
    test = TaskBatch(x[order][None], y[order][None], np.ones((1, n), dtype),
                     (np.arange(n) < ctx.size).astype(dtype)[None], (np.arange(n) >= ctx.size).astype(dtype)[None])
    return MetaDataset(np.stack([pad(x, t) for t in train]), np.stack([pad(y, t) for t in train]), valid, test,
                       train, ctx, tgt, float(residual.std()))


def make_sampler(meta: MetaDataset, data: DataSection) -> Callable:
    """``sampler(key, num_tasks) -> TaskBatch``: random subsets of a random training group
    with a random context/target split (jittable, for :func:`bnnp_jax.training.loop.fit`)."""
    from bnnp_jax.data import synthetic

    x, y, valid = jnp.asarray(meta.x), jnp.asarray(meta.y), jnp.asarray(meta.valid)
    lo, hi = data.train_n_range
    hi = min(hi, x.shape[1] + 1)
    proportion = tuple(data.train_context_proportion)

    def sampler(key, num_tasks: int) -> TaskBatch:
        k_tasks, k_split = jax.random.split(key)
        base = synthetic.sample_from_pool(k_tasks, x, y, valid, num_tasks, hi - 1, (lo, hi))
        return split(k_split, *base, proportion)

    return sampler


# ----- one run per contender -------------------------------------------------------


def _run_config(cfg: GoldilocksConfig, model: str, seed: int, fraction: float = 1.0, side: str = "front"):
    from bnnp_jax.training import config as run_config

    training = dataclasses.replace(cfg.training, seed=seed, prior_fraction=fraction, prior_side=side)
    if model != "bnnp":
        training = from_dict(TrainingConfig, {**dataclasses.asdict(training), **cfg.np_training}, "np_training")
    return run_config.RunConfig(model=model, data=None, bnnp=cfg.bnnp, np=cfg.np, training=training)


def train_and_score(cfg: GoldilocksConfig, meta: MetaDataset, sampler, model: str, seed: int,
                    fraction: float = 1.0, side: str = "front", progress: bool = True) -> dict:
    """Meta-train one model on the training groups, score it on the test task."""
    from bnnp_jax.training import evaluation
    from bnnp_jax.training import loop as train

    rc = _run_config(cfg, model, seed, fraction, side)
    tic = time.perf_counter()
    # Runs differing only in seed / prior fraction / side share one compiled training chunk.
    state, history = train.fit(rc, None, progress=progress, sampler=sampler, shared_compile=True)
    scores = evaluation.make_evaluator(meta.test, cfg.study.eval_samples, seed)(state.params)
    loss = np.asarray(history["loss"])
    return {**scores, "final_loss": float(loss[-max(1, loss.size // 10):].mean()),
            "seconds": time.perf_counter() - tic}


def baseline_score(cfg: GoldilocksConfig, meta: MetaDataset, method: str, seed: int, progress: bool = True) -> dict:
    """MFVI or GIVI on the test context under the fixed prior; scored on the test targets."""
    from bnnp_jax import metrics
    from bnnp_jax.inference import model as bnn
    from bnnp_jax.inference import registry

    b, c = cfg.baselines, cfg.bnnp
    model = bnn.fixed_prior_model((c.x_dim, *c.hidden, c.y_dim), c.activation, meta.residual_scale, jnp.float32)
    t = meta.test
    ctx, tgt = t.context[0] > 0, t.target[0] > 0
    x_c, y_c, x_t, y_t = (jnp.asarray(a) for a in (t.x[0][ctx], t.y[0][ctx], t.x[0][tgt], t.y[0][tgt]))
    key_fit, key_pred = jax.random.split(jax.random.PRNGKey(seed))
    tic = time.perf_counter()
    own = {"givi": {"num_inducing": b.num_inducing}}.get(method, {})
    result = registry.fit(method, key_fit, model, x_c, y_c,
                          **registry.budget(method, b.num_steps, tuple(b.lr), b.num_particles, progress), **own)
    f = registry.predict(key_pred, result, x_t, cfg.study.eval_samples)
    scores = metrics.summary(f, model.sigma_y, y_t, jnp.ones(y_t.shape[0], f.dtype))
    return {**{k: float(v) for k, v in scores.items()}, "seconds": time.perf_counter() - tic}


# ----- the study --------------------------------------------------------------------


def contenders(cfg: GoldilocksConfig) -> list[tuple[str, dict]]:
    """``(name, settings)`` of every run per seed. ``p = 0`` and ``p = 1`` freeze or train the
    whole prior whichever the side, so they run once (listed as ``front``)."""
    s = cfg.study
    out = []
    for p in s.fractions:
        for side in s.sides if 0.0 < p < 1.0 else ("front",):
            out.append((f"bnnp_p{p:.2f}_{side}", {"kind": "bnnp", "fraction": float(p), "side": side}))
    out += [(k, {"kind": "np_model", "model": k}) for k in s.neural_processes]
    return out + [(b, {"kind": "baseline", "method": b}) for b in s.baselines]


def run_one(cfg, meta, sampler, settings: dict, seed: int, progress: bool) -> dict:
    if settings["kind"] == "bnnp":
        return train_and_score(cfg, meta, sampler, "bnnp", seed, settings["fraction"], settings["side"], progress)
    if settings["kind"] == "np_model":
        return train_and_score(cfg, meta, sampler, settings["model"], seed, progress=progress)
    return baseline_score(cfg, meta, settings["method"], seed, progress)


def summarise(results: dict) -> dict:
    """``{method: {metric: (mean, standard error, n)}}`` over seeds."""
    by_method: dict = {}
    for rec in results.values():
        by_method.setdefault(rec["method"], []).append(rec)
    out = {}
    for method, recs in by_method.items():
        out[method] = {}
        for k in ("log_predictive_density", "mae", "expected_log_density", "coverage"):
            v = np.array([r[k] for r in recs], float)
            se = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else float("nan")
            out[method][k] = (float(v.mean()), float(se), int(v.size))
    return out


def markdown_table(summary: dict, order: list[str]) -> str:
    rows = ["| method | log predictive density / point (↑) | MAE (↓) | mean log density (↑) | 90% coverage | seeds |",
            "|---|---|---|---|---|---|"]
    fmt = lambda t: f"{t[0]:.3f} ± {t[1]:.3f}"
    for m in [m for m in order if m in summary]:
        s = summary[m]
        rows.append(f"| {m} | {fmt(s['log_predictive_density'])} | {fmt(s['mae'])} | "
                    f"{fmt(s['expected_log_density'])} | {s['coverage'][0]:.2f} | {s['log_predictive_density'][2]} |")
    return "\n".join(rows)


def plot(summary: dict, cfg: GoldilocksConfig, path: Path, title: str = "") -> None:
    """Metrics against the trainable-prior fraction ``p`` (BNNP, front and back) with
    the other contenders as horizontal bands (mean +- standard error)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    others = [m for m in summary if not m.startswith("bnnp_")]
    for ax, metric, label in zip(axes, ("log_predictive_density", "mae"),
                                 ("log predictive density / target point", "MAE")):
        for i, side in enumerate(cfg.study.sides):
            ps = [p for p in cfg.study.fractions
                  if f"bnnp_p{p:.2f}_{side if 0 < p < 1 else 'front'}" in summary]
            vals = [summary[f"bnnp_p{p:.2f}_{side if 0 < p < 1 else 'front'}"][metric] for p in ps]
            ax.errorbar(np.array(ps) + 0.01 * (i - 0.5), [v[0] for v in vals], [v[1] for v in vals], marker="o",
                        capsize=3, lw=2, label=f"BNNP, trainable prior from the {side}")
        for j, m in enumerate(others):
            mean, se, _ = summary[m][metric]
            ax.axhline(mean, color=f"C{j + 2}", ls="--", lw=1, label=m)
            ax.axhspan(mean - se, mean + se, color=f"C{j + 2}", alpha=0.12)
        ax.set(xlabel="trainable prior fraction p", ylabel=label)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title or "Goldilocks: two training tasks (diabetes age groups), one held-out task, 25% context")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_outputs(out: Path, cfg: GoldilocksConfig, results: dict) -> dict:
    summary = summarise(results)
    order = [n for n, _ in contenders(cfg)]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(markdown_table(summary, order) + "\n")
    plot(summary, cfg, out / "goldilocks.png")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    study_runs.add_arguments(parser, "configs/goldilocks_quick.yaml", "results.json, summary.md, goldilocks.png")


def run(args) -> int:
    cfg = load_yaml(GoldilocksConfig, args.config)
    out = Path(args.out)
    store = study_runs.Results(out)
    seeds = tuple(args.seeds) if args.seeds else cfg.study.seeds
    for seed in [] if args.report_only else seeds:
        meta = make_metadataset(seed, cfg.data)
        sampler = make_sampler(meta, cfg.data)
        for name, settings in contenders(cfg):
            key = f"{name}/seed{seed}"
            if key not in store:
                rec = run_one(cfg, meta, sampler, settings, seed, not args.no_progress)
                store.add(key, {"method": name, "seed": seed, **rec})
    results = store.require()
    summary = write_outputs(out, cfg, results)
    print(markdown_table(summary, [n for n, _ in contenders(cfg)]))
    return 0

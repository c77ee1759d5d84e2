"""Beyond the seeds: a MetaPrior-generated BNNP prior vs the learned unitwise prior on a small
meta-dataset (few training tasks), ``bnnp metaprior prior [--quick] [--out DIR]``.

Three BNNPs share the architecture, inference networks and PP-AVI objective (SPEC section 5)
and differ only in the weight prior: ``fixed`` (``N(0, I/D)``, not learned: ``prior_fraction``
0), ``unitwise`` (learned full covariance per unit, SPEC section 3) and ``metaprior``
(``BNNPConfig.prior_kind = "metaprior"``: unit codes + a hypernetwork emitting each unit's
mean and low-rank-plus-diagonal covariance, :mod:`bnnp_jax.priors.metaprior_prior`). Each is
meta-trained by the training loop (:func:`bnnp_jax.training.loop.fit`, ``data: null``) on
``num_train_tasks`` sawtooth tasks, all of them each step with fresh random context/target
splits, and scored on fresh test tasks with 25% context by the mean per-point log predictive
density (the log of the Monte-Carlo mean density at each target point, pooled over points)
and the RMSE of the predictive mean.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import yaml

from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.bnnp.model import BNNPConfig
from bnnp_jax.config import with_quick
from bnnp_jax.core.gaussian import normal_log_prob
from bnnp_jax.data import synthetic, tasks
from bnnp_jax.training import loop
from bnnp_jax.training.config import RunConfig, TrainingConfig

__all__ = ["PRIORS", "PriorStudyConfig", "load_config", "run_config", "train", "evaluate", "run"]

Array = jax.Array
PRIORS = ("fixed", "unitwise", "metaprior")


@dataclasses.dataclass(frozen=True)
class PriorStudyConfig:
    """Settings of the prior comparison (YAML: ``configs/metaprior_prior.yaml``)."""

    seed: int = 0
    num_train_tasks: int = 4
    num_test_tasks: int = 32
    n_max: int = 60
    n_range: tuple[int, int] = (40, 61)
    train_context: tuple[float, float] = (0.1, 0.5)
    test_context: float = 0.25
    noise: float = 0.05
    hidden: tuple[int, ...] = (32, 32)
    activation: str = "relu"
    steps: int = 2000
    lr: float = 3e-3
    num_samples: int = 8
    eval_samples: int = 64
    code_dim: int = 4
    prior_hidden: tuple[int, ...] = (32,)
    rank: int = 2
    priors: tuple[str, ...] = PRIORS

    def __post_init__(self):
        for name in ("n_range", "train_context", "hidden", "prior_hidden", "priors"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not set(self.priors) <= set(PRIORS):
            raise ValueError(f"priors must be drawn from {PRIORS}, got {self.priors}")
        if not 0 < self.test_context < 1:
            raise ValueError(f"test_context must be in (0, 1), got {self.test_context}")
        if min(self.num_train_tasks, self.num_test_tasks, self.steps, self.num_samples) < 1:
            raise ValueError("num_train_tasks, num_test_tasks, steps and num_samples must be >= 1")


def load_config(path: str | Path, quick: bool = False) -> PriorStudyConfig:
    """YAML with an optional ``quick:`` mapping of overrides; unknown keys raise."""
    return PriorStudyConfig(**with_quick(PriorStudyConfig, yaml.safe_load(Path(path).read_text()), quick))


def run_config(cfg: PriorStudyConfig, kind: str, seed: int) -> RunConfig:
    """The training run of one prior ``kind``: a constant learning rate, every training task
    each step, PP-AVI with ``beta = 1``; ``fixed`` freezes the initial unitwise prior."""
    generated = {"prior_code_dim": cfg.code_dim, "prior_hypernet_hidden": cfg.prior_hidden, "prior_rank": cfg.rank}
    arch = BNNPConfig(x_dim=1, y_dim=1, hidden=cfg.hidden, activation=cfg.activation, sigma_y_init=0.1,
                      prior_kind="metaprior" if kind == "metaprior" else "unitwise",
                      **(generated if kind == "metaprior" else {}))
    chunk = min(100, cfg.steps)
    training = TrainingConfig(steps=cfg.steps, tasks_per_step=cfg.num_train_tasks, num_samples=cfg.num_samples,
                              objective="pp_avi", beta=1.0, lr_start=cfg.lr, lr_end=cfg.lr, steps_per_call=chunk,
                              checkpoint_every=chunk, eval_every=cfg.steps, seed=seed,
                              prior_fraction=0.0 if kind == "fixed" else 1.0)
    return RunConfig(model="bnnp", data=None, bnnp=arch, training=training)


def train(seed: int, cfg: PriorStudyConfig, kind: str, data: tuple) -> tuple[bnnp.BNNPParams, np.ndarray]:
    """Meta-train one BNNP on the training tasks ``data = (x, y, mask)``; returns its
    parameters and the per-step loss (the negative objective)."""
    x, y, mask = data
    sampler = lambda key, num_tasks: tasks.split(key, x, y, mask, cfg.train_context)  # noqa: E731
    state, history = loop.fit(run_config(cfg, kind, seed), progress=True, sampler=sampler)
    return state.params, np.asarray(history["loss"])


@partial(jax.jit, static_argnames=("num_samples",))
def evaluate(key, params: bnnp.BNNPParams, batch: tasks.TaskBatch, num_samples: int) -> dict:
    """Mean per-point target log predictive density and RMSE over test tasks."""
    sig = bnnp.sigma_y(params)

    def one(k, x, y, ctx, tgt):
        f = bnnp.masked_functions(k, params, x, y, ctx, x, num_samples)  # [S, N, 1]
        lp_pt = jnp.sum(normal_log_prob(y, f, sig), -1)
        lpd = jax.nn.logsumexp(lp_pt, 0) - math.log(num_samples)
        sq = jnp.sum((jnp.mean(f, 0) - y) ** 2, -1)
        return jnp.sum(lpd * tgt), jnp.sum(sq * tgt), jnp.sum(tgt)

    keys = jax.random.split(key, batch.x.shape[0])
    lpd, sq, n = jax.vmap(one)(keys, batch.x, batch.y, batch.context, batch.target)
    return {"target_lpd_per_point": jnp.sum(lpd) / jnp.sum(n), "target_rmse": jnp.sqrt(jnp.sum(sq) / jnp.sum(n)),
            "target_lpd_per_task_point": lpd / n}


def _data(cfg: PriorStudyConfig):
    k_tr, k_te, k_split = jax.random.split(jax.random.PRNGKey(cfg.seed + 12345), 3)
    train_data = synthetic.sample_sawtooth(k_tr, cfg.num_train_tasks, cfg.n_max, cfg.n_range, noise=cfg.noise)
    x, y, mask = synthetic.sample_sawtooth(k_te, cfg.num_test_tasks, cfg.n_max, cfg.n_range, noise=cfg.noise)
    share = (cfg.test_context, cfg.test_context)
    return train_data, tasks.split(k_split, x, y, mask, share)


def _plot(path: Path, cfg: PriorStudyConfig, fitted: dict, test: tasks.TaskBatch) -> None:
    kinds = list(fitted)
    fig, axes = plt.subplots(2, len(kinds), figsize=(5 * len(kinds), 7.5), squeeze=False, sharey="row")
    grid = jnp.linspace(-2.5, 2.5, 200)[:, None]
    for col, kind in enumerate(kinds):
        params = fitted[kind]
        f = bnnp.forward(bnnp.prior_samples(jax.random.PRNGKey(1), params, 8), grid, cfg.activation)
        axes[0, col].plot(grid[:, 0], f[..., 0].T, lw=1)
        axes[0, col].set_title(f"{kind} prior: function draws")
        t = 0
        x, y, ctx = test.x[t], test.y[t], test.context[t]
        fg = np.asarray(bnnp.masked_functions(jax.random.PRNGKey(2), params, x, y, ctx, grid, 64))[..., 0]
        ax = axes[1, col]
        ax.fill_between(grid[:, 0], fg.mean(0) - 2 * fg.std(0), fg.mean(0) + 2 * fg.std(0), alpha=0.3)
        ax.plot(grid[:, 0], fg.mean(0))
        sel_c, sel_t = np.asarray(ctx) > 0, np.asarray(test.target[t]) > 0
        ax.scatter(np.asarray(x)[sel_t, 0], np.asarray(y)[sel_t, 0], s=8, color="grey", label="targets")
        ax.scatter(np.asarray(x)[sel_c, 0], np.asarray(y)[sel_c, 0], s=14, color="k", label="context")
        ax.set_title(f"{kind}: test task posterior predictive (25% context)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: PriorStudyConfig, out: Path) -> dict:
    """Train each prior kind on the same few tasks; score on the same test tasks."""
    out.mkdir(parents=True, exist_ok=True)
    train_data, test = _data(cfg)
    results, fitted = {"num_train_tasks": cfg.num_train_tasks, "family": "sawtooth", "priors": {}}, {}
    for i, kind in enumerate(cfg.priors):
        params, loss = train(cfg.seed + i, cfg, kind, train_data)
        fitted[kind] = params
        ev = evaluate(jax.random.PRNGKey(cfg.seed + 99), params, test, cfg.eval_samples)
        n_prior = 0 if kind == "fixed" else sum(np.size(a) for a in jax.tree.leaves(params.prior))
        per_task = np.asarray(ev["target_lpd_per_task_point"])
        results["priors"][kind] = {"target_lpd_per_point": float(ev["target_lpd_per_point"]),
                                   "target_lpd_std_error_over_tasks": float(per_task.std() / np.sqrt(len(per_task))),
                                   "target_lpd_per_task_point": per_task.tolist(),
                                   "target_rmse": float(ev["target_rmse"]), "num_prior_parameters": int(n_prior),
                                   "final_train_loss_last_100_steps": float(np.mean(loss[-100:]))}
    _plot(out / "prior_comparison.png", cfg, fitted, test)
    return results

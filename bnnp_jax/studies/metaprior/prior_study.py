"""Beyond the seeds: a MetaPrior-generated BNNP prior vs the learned unitwise prior on a small
meta-dataset (few training tasks), ``bnnp metaprior prior [--quick] [--out DIR]``.

Three BNNPs share the architecture, inference networks and PP-AVI objective (SPEC section 5)
and differ only in the weight prior: ``fixed`` (``N(0, I/D)``, not learned), ``unitwise``
(learned full covariance per unit, SPEC section 3) and ``metaprior`` (unit codes + a
hypernetwork emitting each unit's mean and low-rank-plus-diagonal covariance,
:mod:`bnnp_jax.priors.metaprior_prior`). Each is meta-trained on ``num_train_tasks`` sawtooth tasks
(random context/target splits each step) and scored on fresh test tasks with 25% context by
the mean per-point log predictive density (the log of the Monte-Carlo mean density at each
target point) and the RMSE of the predictive mean.

The BNNP's own training loop does not take a MetaPrior prior yet, so this study calls the
BNNP's per-path posterior (``bnnp.sample_path``) with explicit layer priors.
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
import optax
import yaml

from bnnp_jax.config import with_quick
from bnnp_jax.core.gaussian import normal_log_prob
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.priors import metaprior_prior
from bnnp_jax.data import synthetic, tasks
from bnnp_jax.metaprior.fit import chunked_scan

__all__ = ["PRIORS", "PriorStudyConfig", "load_config", "layer_priors_for", "task_objective", "train",
           "evaluate", "run"]

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


def _widths(cfg: PriorStudyConfig) -> tuple[int, ...]:
    return (1, *cfg.hidden, 1)


def layer_priors_for(kind: str, params: tuple, widths: tuple[int, ...]) -> list:
    """The layer priors of ``params = (bnnp_params, metaprior_prior_params)`` under ``kind``."""
    bparams, pparams = params
    if kind == "metaprior":
        return metaprior_prior.layer_priors(pparams, widths)
    if kind == "fixed":  # no gradient reaches the prior, so Adam leaves it at its initial value
        bparams = dataclasses.replace(bparams, prior=jax.lax.stop_gradient(bparams.prior))
    return bnnp.layer_priors(bparams)


def task_objective(key, params, kind, widths, x, y, ctx, tgt, num_samples) -> Array:
    """PP-AVI for one padded task (objectives.task_terms with explicit layer priors)."""
    bparams = params[0]
    lp = layer_priors_for(kind, params, widths)
    path = lambda k: bnnp.sample_path(k, bparams, lp, x, y, ctx, None)
    weights, kl = jax.vmap(path)(jax.random.split(key, num_samples))
    ll = bnnp.log_likelihood_sums(bparams, weights, x, y, jnp.stack([ctx, tgt], -1))
    return jnp.mean(ll[:, 0]) + jax.nn.logsumexp(ll[:, 1]) - math.log(num_samples) - jnp.mean(kl)


@partial(jax.jit, static_argnames=("kind", "cfg"))
def _train_chunk(carry, keys, ts, data, *, kind, cfg):
    opt, widths = optax.adam(cfg.lr), _widths(cfg)
    x, y, mask = data

    def loss(params, key):
        k_split, k_obj = jax.random.split(key)
        batch = tasks.split(k_split, x, y, mask, cfg.train_context)
        keys = jax.random.split(k_obj, x.shape[0])
        f = lambda k, xx, yy, c, t: task_objective(k, params, kind, widths, xx, yy, c, t, cfg.num_samples)
        values = jax.vmap(f)(keys, batch.x, batch.y, batch.context, batch.target)
        return -jnp.mean(values / jnp.maximum(jnp.sum(batch.mask, -1), 1.0))

    def step(carry, inp):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params, inp[0])
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), -value

    return jax.lax.scan(step, carry, (keys, ts))


def train(key: Array, cfg: PriorStudyConfig, kind: str, data: tuple) -> tuple[tuple, Array]:
    """Meta-train one BNNP on the training tasks ``data = (x, y, mask)``."""
    k_b, k_p, k_fit = jax.random.split(key, 3)
    bcfg = bnnp.BNNPConfig(x_dim=1, y_dim=1, hidden=cfg.hidden, activation=cfg.activation, prior_kind="unitwise",
                           sigma_y_init=0.1)
    pparams = metaprior_prior.init(k_p, _widths(cfg), cfg.code_dim, cfg.prior_hidden, cfg.rank)
    params = (bnnp.init(k_b, bcfg), pparams)
    carry = (params, optax.adam(cfg.lr).init(params))
    run = partial(_train_chunk, data=data, kind=kind, cfg=cfg)
    (params, _), trace = chunked_scan(run, carry, k_fit, cfg.steps, 100, True, f"bnnp[{kind}]")
    return params, trace


@partial(jax.jit, static_argnames=("kind", "cfg"))
def evaluate(key, params, kind, cfg, batch: tasks.TaskBatch) -> dict:
    """Mean per-point target log predictive density and RMSE over test tasks."""
    widths, bparams = _widths(cfg), params[0]
    lp = layer_priors_for(kind, params, widths)
    sig = bnnp.sigma_y(bparams)

    def one(k, x, y, ctx, tgt):
        path = lambda kk: bnnp.sample_path(kk, bparams, lp, x, y, ctx, None)
        weights, _ = jax.vmap(path)(jax.random.split(k, cfg.eval_samples))
        f = bnnp.forward(weights, x, cfg.activation)  # [S, N, 1]
        lp_pt = jnp.sum(normal_log_prob(y, f, sig), -1)
        lpd = jax.nn.logsumexp(lp_pt, 0) - math.log(cfg.eval_samples)
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
        lp = layer_priors_for(kind, params, _widths(cfg))
        keys = jax.random.split(jax.random.PRNGKey(1), len(lp))
        w = [jnp.swapaxes(g.sample(k, (8,)), -1, -2) for k, g in zip(keys, lp)]
        f = bnnp.forward(w, grid, cfg.activation)
        axes[0, col].plot(grid[:, 0], f[..., 0].T, lw=1)
        axes[0, col].set_title(f"{kind} prior: function draws")
        t = 0
        x, y, ctx = test.x[t], test.y[t], test.context[t]
        path_fn = lambda k: bnnp.sample_path(k, params[0], lp, x, y, ctx, None)
        weights, _ = jax.vmap(path_fn)(jax.random.split(jax.random.PRNGKey(2), 64))
        fg = np.asarray(bnnp.forward(weights, grid, cfg.activation))[..., 0]
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
        params, trace = train(jax.random.PRNGKey(cfg.seed + i), cfg, kind, train_data)
        fitted[kind] = params
        ev = evaluate(jax.random.PRNGKey(cfg.seed + 99), params, kind, cfg, test)
        n_prior = (metaprior_prior.num_parameters(params[1]) if kind == "metaprior" else
                   0 if kind == "fixed" else sum(p.mean.size + p.scale.size for p in params[0].prior))
        per_task = np.asarray(ev["target_lpd_per_task_point"])
        results["priors"][kind] = {"target_lpd_per_point": float(ev["target_lpd_per_point"]),
                                   "target_lpd_std_error_over_tasks": float(per_task.std() / np.sqrt(len(per_task))),
                                   "target_rmse": float(ev["target_rmse"]), "num_prior_parameters": int(n_prior),
                                   "final_train_objective_per_point": float(jnp.mean(trace[-100:]))}
    _plot(out / "prior_comparison.png", cfg, fitted, test)
    return results

"""Held-out evaluation of a trained model and (for the BNNP) prior quality (MMD).

Metrics per held-out task (``bnnp_jax.metrics``), averaged over tasks:
mean predictive log density per target point (log of the Monte-Carlo mixture
density), the joint target log likelihood, MAE, and 90%-interval coverage.
Any registered model works (:mod:`bnnp_jax.training.models` dispatches on the
parameters); the neural processes' heteroscedastic predictives are scored
with the same conventions by :func:`bnnp_jax.training.models.mixture_summary`.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax import metrics
from bnnp_jax.bnnp import bnam
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.training import models
from bnnp_jax.data import registry
from bnnp_jax.data.tasks import TaskBatch

__all__ = ["heldout_tasks", "make_evaluator", "task_metrics", "prior_function_samples", "grid_for",
           "prior_mmd_tracker", "prior_mmd", "draw_params", "summarise"]


def heldout_tasks(sampler: Callable, seed: int, num_tasks: int) -> TaskBatch:
    """A fixed set of held-out tasks from a key stream no training step uses."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 2**31 - 2)
    return sampler(key, num_tasks)


def _task_functions(key, params, x, y, context, num_samples, context_index=None, x_eval=None):
    """Posterior function draws ``[S, N_eval, y_dim]`` at ``x_eval`` (default: every point
    of the padded task).

    With ``context_index [N_c]`` the posterior is built from the gathered context
    rows, as training builds it (:func:`bnnp_jax.bnnp.objectives.task_terms`), so
    evaluation uses the same layer forms as training: with ``N_c`` below a layer's
    input size that is the dual form, which needs no inverse of the prior's
    covariance factor (a learned one can be too ill-conditioned for the primal form)."""
    x_eval = x if x_eval is None else x_eval
    if context_index is not None:
        x, y, context = x[context_index], y[context_index], context[context_index]
    return bnnp.masked_functions(key, params, x, y, context, x_eval, num_samples)


def make_evaluator(tasks: TaskBatch, num_samples: int, seed: int = 0) -> Callable:
    """``evaluate(params) -> dict`` of task-averaged metrics on ``tasks`` (jitted once per
    model, shapes and ``num_samples``: the tasks are an argument, not a constant),
    for the parameters of any registered model."""
    key = jax.random.PRNGKey(seed + 1)
    return lambda params: {k: float(v) for k, v in _evaluate(params, tasks, key, num_samples).items()}


@partial(jax.jit, static_argnames="num_samples")
def _evaluate(params, tasks: TaskBatch, key, num_samples: int) -> dict:
    keys = jax.random.split(key, tasks.x.shape[0])
    if isinstance(params, bnnp.BNNPParams):
        sig = bnnp.sigma_y(params)

        def one(task):
            k, x, y, c, t, i = task
            f = _task_functions(k, params, x, y, c, num_samples, i)
            return metrics.summary(f, sig, y.astype(f.dtype), t)

        # One task at a time (lax.map): vmapped over 64 tasks at the paper's widths, the
        # per-unit layer matrices of every path take gigabytes in float64.
        per_task = jax.lax.map(one, (keys, tasks.x, tasks.y, tasks.context, tasks.target, tasks.context_index))
    else:
        per_task = jax.vmap(lambda *a: task_metrics(*a, params=params, num_samples=num_samples))(
            keys, tasks.x, tasks.y, tasks.context, tasks.target)
    return {k: jnp.mean(v) for k, v in per_task.items()}


def task_metrics(key, x, y, context, target, *, params, num_samples: int) -> dict:
    """Metrics of one padded task's targets under the model's predictive given its context."""
    f, scale = models.for_params(params).predictive(key, params, x, y, context, target, num_samples)
    return models.mixture_summary(f, scale, y.astype(f.dtype), target)


@partial(jax.jit, static_argnums=3)
def prior_function_samples(key, params, x_grid, num: int) -> jax.Array:
    """Noise-free functions from the prior of a BNNP or a BNAM on ``x_grid [G, x_dim]``:
    ``[num, G, y_dim]``. A BNAM's draws are its predictive with an empty context, joint
    over the grid (they depend on the whole grid, see :mod:`bnnp_jax.bnnp.bnam`)."""
    x_grid = x_grid.astype(params.config.dtype)
    if isinstance(params, bnam.BNAMParams):
        c = params.config
        empty_x, empty_y = jnp.zeros((0, c.x_dim), x_grid.dtype), jnp.zeros((0, c.y_dim), x_grid.dtype)
        return bnam.predict(key, params, empty_x, empty_y, x_grid, num).samples
    return bnnp.forward(bnnp.prior_samples(key, params, num), x_grid, params.config.activation)


def grid_for(family: str, size: int = 64) -> jax.Array:
    lo, hi = registry.family_info(family)["x_range"]
    return jnp.linspace(lo, hi, size)[:, None]


def prior_mmd_tracker(key, untrained, family: str, num: int,
                      family_params: dict | None = None) -> tuple[Callable, Callable, dict]:
    """``(learned, score, reference)`` for the prior MMD^2 (RBF on function values over
    :func:`grid_for`'s grid) against fixed generator draws.

    ``score(samples [num, G]) -> float`` is the MMD^2 of any function samples on the
    grid; ``learned(params)`` scores ``params``'s prior draws; ``reference`` holds the
    untrained prior's score, the lengthscale (median heuristic on generator and
    untrained draws) and the number of draws. The generator draws and the lengthscale
    are fixed once, so values along a run, and reference samples, are comparable."""
    grid = grid_for(family)
    k1, k2, k3 = jax.random.split(key, 3)
    family_draw = draw_params(family, family_params)
    init = prior_function_samples(k3, untrained, grid, num)[..., 0]
    truth = registry.true_function_samples(k1, family, grid, num, **family_draw)[..., 0].astype(init.dtype)
    ls = metrics.median_lengthscale(None, jnp.concatenate([truth, init]))

    def score(samples) -> float:
        return float(metrics.mmd(None, jnp.asarray(samples, truth.dtype), truth, ls))

    def learned(params) -> float:
        return score(prior_function_samples(k2, params, grid, num)[..., 0])

    reference = {"mmd2_untrained_prior": score(init), "mmd_lengthscale": float(ls), "mmd_num_samples": int(num)}
    return learned, score, reference


def prior_mmd(key, params, untrained, family: str, num: int, family_params: dict | None = None) -> dict:
    """MMD^2 between generator draws and the learned prior's draws, beside the same
    statistic for the untrained prior (:func:`prior_mmd_tracker`)."""
    learned, _, reference = prior_mmd_tracker(key, untrained, family, num, family_params)
    return {"mmd2_learned_prior": learned(params), **reference}


def draw_params(family: str, family_params: dict | None) -> dict:
    """The entries of ``family_params`` (a run's ``data.params``) that set the family's
    generator function, without its sampling-only ones (noise, ranges)."""
    import inspect

    from bnnp_jax.data import synthetic

    names = [k for k in inspect.signature(synthetic.DRAWS[family]).parameters if k not in ("key", "x")]
    return {k: v for k, v in (family_params or {}).items() if k in names}


def summarise(history: dict) -> dict:
    loss = np.asarray(history.get("loss", []))
    tail = loss[-max(1, len(loss) // 10):] if loss.size else loss
    return {"final_loss_mean_last_10pct": float(tail.mean()) if tail.size else None,
            "first_loss": float(loss[0]) if loss.size else None}

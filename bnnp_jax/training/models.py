"""Model registry: one adapter per ``model:`` name, so training, evaluation and
reports dispatch on the run config (or on the parameter pytree) without
knowing the model.

Every adapter works on padded task batches (:class:`~bnnp_jax.data.tasks.TaskBatch`)
and exposes:

- ``init(key, arch) -> params`` where ``arch`` is the run config's section
  named by ``section`` (``bnnp``, ``np`` or ``bnam``);
- ``loss(key, params, batch, training, beta) -> scalar``, the quantity the
  training loop *minimises* (mean over the batch's tasks);
- ``predictive(key, params, x, y, context, target, num_samples) -> (f, scale)``
  for one padded task: the predictive at every point is the mixture
  ``(1/S) sum_s N(f_s, scale_s^2)`` with ``f [S, N, y_dim]`` and ``scale``
  either ``[y_dim]`` (one observation noise: bnnp, bnam) or ``[S, N, y_dim]``
  (heteroscedastic neural processes);
- ``predict(key, params, x_c, y_c, x_t, num_samples) -> (f [S, N_t, y_dim], variance [N_t, y_dim])``
  at new inputs (for BNAM the predictive depends on the whole target set ``x_t``);
- ``gradient_mask(params, training)``: 1.0 for trainable entries, 0.0 for
  frozen ones (the prior fraction of SPEC section 3 for models with a weight prior).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

from bnnp_jax.core.gaussian import normal_log_prob
from bnnp_jax import metrics, neural_processes
from bnnp_jax.bnnp import bnam
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.bnnp import objectives
from bnnp_jax.priors import weight_prior as priors

__all__ = ["Adapter", "check_generated_prior", "weight_prior_mask", "weight_prior_step_scale", "ADAPTERS", "NAMES", "get", "for_params",
           "mixture_summary"]

Array = jax.Array


class Adapter(NamedTuple):
    name: str
    section: str
    has_weight_prior: bool
    init: Callable
    loss: Callable
    predictive: Callable
    predict: Callable
    gradient_mask: Callable


# ----- models with a weight prior: BNNP and BNAM ------------------------------


def check_generated_prior(kind: str, training) -> None:
    """The training settings that select prior *weights* (a fraction of them, their means, a
    per-weight step size) need a per-weight prior; ``metaprior`` generates its weights' prior
    from codes and a hypernetwork, so it trains whole (``prior_fraction`` 1) or not at all (0)."""
    if kind != "metaprior":
        return
    t = training
    if t.prior_fraction not in (0.0, 1.0):
        raise ValueError(f"training.prior_fraction: prior_kind 'metaprior' trains its codes and hypernetwork "
                         f"whole (1.0) or not at all (0.0), got {t.prior_fraction}")
    if not t.train_prior_mean:
        raise ValueError("training.train_prior_mean: prior_kind 'metaprior' generates means and covariances from "
                         "the same codes and hypernetwork; leave it true")
    if t.prior_step_scale != "none":
        raise ValueError(f"training.prior_step_scale: {t.prior_step_scale!r} scales per-weight prior entries, "
                         "which prior_kind 'metaprior' does not have; leave it 'none'")


def weight_prior_mask(params, training) -> Any:
    """Prior entries by ``(prior_fraction, prior_side, seed)`` (means only if
    ``train_prior_mean``), ``sigma_y`` by
    ``learn_sigma_y``, inference networks always (for BNNPParams / BNAMParams). A
    ``metaprior`` prior is trainable whole or frozen whole (:func:`check_generated_prior`)."""
    t = training
    kind = params.config.prior_kind
    if kind == "metaprior":
        check_generated_prior(kind, t)
        prior_mask = jax.tree.map(lambda a: jnp.full(a.shape, t.prior_fraction == 1.0), params.prior)
    else:
        prior_mask = priors.trainable_mask(params.prior, kind, t.prior_fraction, t.prior_side, t.seed)
        if not t.train_prior_mean:  # scales only: the mean stays where init or the warm start put it
            prior_mask = [m._replace(mean=jnp.zeros_like(m.mean)) for m in prior_mask]
    as_float = lambda m, ref: jnp.asarray(m, ref.dtype)
    return params.replace(
        prior=jax.tree.map(as_float, prior_mask, params.prior),
        inference=jax.tree.map(jnp.ones_like, params.inference),
        likelihood=jax.tree.map(lambda a: jnp.full_like(a, float(t.learn_sigma_y)), params.likelihood),
    )


def weight_prior_step_scale(params, training) -> Any | None:
    """Multipliers of the optimiser's step shaped like ``params`` (BNNPParams / BNAMParams),
    or None for ``prior_step_scale: none``: :func:`~bnnp_jax.priors.weight_prior.fan_in_step_scale`
    on the prior, 1 on the inference networks and ``sigma_y``."""
    if training.prior_step_scale == "none":
        return None
    kind = params.config.prior_kind
    check_generated_prior(kind, training)
    return params.replace(
        prior=[priors.fan_in_step_scale(p, kind) for p in params.prior],
        inference=jax.tree.map(jnp.ones_like, params.inference),
        likelihood=jax.tree.map(jnp.ones_like, params.likelihood),
    )


def _bnnp_loss(key, params, batch, training, beta):
    terms = objectives.batch_terms(key, params, batch, training.num_samples, training.batch_size,
                                   training.context_buckets)
    return -jnp.mean(objectives.combine(terms, training.objective, beta))


def _bnnp_predictive(key, params, x, y, context, target, num_samples):
    del target
    return bnnp.masked_functions(key, params, x, y, context, x, num_samples), bnnp.sigma_y(params)


def _bnnp_predict(key, params, x_c, y_c, x_t, num_samples):
    pred = bnnp.predict(key, params, x_c, y_c, x_t, num_samples)
    return pred.samples, pred.variance


def _bnam_loss(key, params, batch, training, beta):
    terms = bnam.batch_terms(key, params, batch, training.num_samples)
    return -jnp.mean(objectives.combine(terms, training.objective, beta))


def _bnam_predictive(key, params, x, y, context, target, num_samples):
    f, _ = bnam.task_paths(key, params, x, y, context, target, num_samples)
    return f, bnam.sigma_y(params)


def _bnam_predict(key, params, x_c, y_c, x_t, num_samples):
    pred = bnam.predict(key, params, x_c, y_c, x_t, num_samples)
    return pred.samples, pred.variance


# ----- neural processes --------------------------------------------------------


def _np_adapter(kind: str) -> Adapter:
    def predict(key, params, x_c, y_c, x_t, num_samples):
        pred = neural_processes.predict(key, params, x_c, y_c, x_t, num_samples)
        return pred.mean, pred.variance

    return Adapter(
        name=kind, section="np", has_weight_prior=False,
        init=lambda key, arch: neural_processes.init(key, kind, arch),
        loss=lambda key, params, batch, training, beta: neural_processes.batch_loss(key, params, batch,
                                                                                     training.num_samples),
        predictive=neural_processes.predictive,
        predict=jax.jit(predict, static_argnames="num_samples"),
        gradient_mask=lambda params, training: jax.tree.map(jnp.ones_like, params),
    )


ADAPTERS: dict[str, Adapter] = {
    "bnnp": Adapter("bnnp", "bnnp", True, bnnp.init, _bnnp_loss, _bnnp_predictive, _bnnp_predict, weight_prior_mask),
    "bnam": Adapter("bnam", "bnam", True, bnam.init, _bnam_loss, _bnam_predictive, _bnam_predict, weight_prior_mask),
    **{kind: _np_adapter(kind) for kind in neural_processes.KINDS},
}
NAMES = tuple(ADAPTERS)


def get(name: str) -> Adapter:
    """The adapter registered as ``name``."""
    if name not in ADAPTERS:
        raise ValueError(f"model must be one of {NAMES}, got {name!r}")
    return ADAPTERS[name]


def for_params(params) -> Adapter:
    """The adapter of a parameter pytree (its type, and ``kind`` for neural processes)."""
    if isinstance(params, bnnp.BNNPParams):
        return ADAPTERS["bnnp"]
    if isinstance(params, bnam.BNAMParams):
        return ADAPTERS["bnam"]
    if isinstance(params, neural_processes.NPParams):
        return ADAPTERS[params.kind]
    raise ValueError(f"params of type {type(params).__name__} belong to no registered model ({NAMES})")


# ----- metrics of a Gaussian-mixture predictive --------------------------------


def mixture_summary(f: Array, scale: Array, y: Array, mask: Array, level: float = 0.9) -> dict[str, Array]:
    """The metrics of :func:`bnnp_jax.metrics.summary` for the predictive
    ``(1/S) sum_s N(f_s, scale_s^2)``, ``f [S, N, y_dim]``, with either one noise
    ``scale [y_dim]`` (then it *is* ``metrics.summary``) or per-point scales
    ``[S|1, N, y_dim]``. Same conventions: log of the mixture density per point,
    mean log density, joint target log likelihood, MAE of the mixture mean,
    exact-PIT coverage of the central ``level`` interval."""
    if jnp.ndim(scale) <= 1:
        return metrics.summary(f, scale, y, mask, level)
    scale = jnp.broadcast_to(scale, f.shape)
    z = (y[None] - f) / scale
    lp = jnp.sum(normal_log_prob(y[None], f, scale), -1)  # [S, N]
    m = lambda v: jnp.sum(jnp.where(mask > 0, v * mask, 0.0)) / jnp.sum(mask)
    pit = jnp.mean(norm.cdf(z), 0)  # [N, y_dim]
    inside = (jnp.abs(pit - 0.5) <= 0.5 * level).astype(f.dtype)
    joint = jnp.sum(jnp.where(mask > 0, lp * mask, 0.0), 1)
    return {
        "log_predictive_density": m(logsumexp(lp, 0) - math.log(f.shape[0])),
        "expected_log_density": m(jnp.mean(lp, 0)),
        "joint_log_likelihood": logsumexp(joint) - math.log(f.shape[0]),
        "mae": m(jnp.mean(jnp.abs(y - jnp.mean(f, 0)), -1)),
        "coverage": m(jnp.mean(inside, -1)),
    }

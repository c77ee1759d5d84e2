"""Neural-process baselines (SPEC section 7): CNP, latent NP, attentive NP and TNP-D.

They are trained on the same padded :class:`~bnnp_jax.data.tasks.TaskBatch`
streams, by the same loop (:mod:`bnnp_jax.training.loop`, ``model: cnp|np|anp|tnp``)
and scored with the same metrics as the BNNP. All functions here take one
task (vmap over tasks) except :func:`batch_loss`.

Objectives (maximised, per task, then averaged over tasks):

- deterministic models (cnp, tnp): ``sum_{n in T} log N(y_n | mu(x_n), sigma(x_n)^2)``;
- latent models (np, anp), ``objective: ml``: ``logsumexp_s sum_{n in T} log
  p(y_n | x_n, z_s) - log S`` with ``z_s ~ q(z | C)``, the BNNP's ``npml``;
- latent models, ``objective: elbo``: ``mean_s sum_{n in T} log p(y_n | x_n, z_s)
  - KL(q(z | C u T) || q(z | C))`` with ``z_s ~ q(z | C u T)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnnp_jax.data.tasks import TaskBatch
from bnnp_jax.neural_processes import anp, cnp, tnp
from bnnp_jax.neural_processes import np as latent_np
from bnnp_jax.neural_processes.common import NPConfig, NPOutputs, NPParams, log_normal

Array = jax.Array
KINDS = {"cnp": cnp.CNP, "np": latent_np.LatentNP, "anp": anp.ANP, "tnp": tnp.TNP}
LATENT_KINDS = ("np", "anp")

__all__ = ["KINDS", "NPConfig", "NPOutputs", "NPParams", "init", "outputs", "task_objective", "batch_loss",
           "predictive", "MixturePrediction", "predict"]


class MixturePrediction(NamedTuple):
    """A neural process's predictive, a mixture of Gaussians (not the BNNP's function-sample
    :class:`~bnnp_jax.bnnp.model.Prediction`): ``mean``/``std`` ``[S, N_t, y_dim]`` of the
    mixture components; ``variance [N_t, y_dim]``
    of the whole predictive (law of total variance)."""

    mean: Array
    std: Array
    variance: Array


def _module(kind: str, config: NPConfig):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return KINDS[kind](config)


def init(key: Array, kind: str, config: NPConfig) -> NPParams:
    """Fresh parameters of a ``kind`` neural process."""
    dtype = jnp.dtype(config.dtype)
    if dtype == jnp.float64 and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ValueError("NPConfig.dtype='float64' needs jax.config.update('jax_enable_x64', True) first")
    x, y, w = jnp.zeros((2, config.x_dim), dtype), jnp.zeros((2, config.y_dim), dtype), jnp.ones((2,), dtype)
    variables = _module(kind, config).init(key, x, y, w, w, jnp.zeros((1, config.latent_dim), dtype))
    return NPParams(variables, kind, config)


def outputs(key: Array, params: NPParams, x: Array, y: Array, context: Array, latent_set: Array,
            num_samples: int) -> NPOutputs:
    """One task's Gaussian components at all ``N`` points: ``mean``/``std`` ``[S, N, y_dim]``
    (``S = 1`` for cnp/tnp), ``z`` drawn from ``q(z | latent_set)``."""
    c = params.config
    dtype = jnp.dtype(c.dtype)
    s = num_samples if params.kind in LATENT_KINDS else 1
    eps = jax.random.normal(key, (s, c.latent_dim), dtype)
    x, y, context, latent_set = (jnp.asarray(a, dtype) for a in (x, y, context, latent_set))
    return _module(params.kind, c).apply(params.variables, x, y * context[:, None], context, latent_set, eps)


def task_objective(key: Array, params: NPParams, x, y, context, target, num_samples: int) -> Array:
    """The training objective of one padded task (module docstring), maximised."""
    elbo = params.kind in LATENT_KINDS and params.config.objective == "elbo"
    latent_set = jnp.maximum(context, target) if elbo else context
    out = outputs(key, params, x, y, context, latent_set, num_samples)
    ll = jnp.sum(log_normal(jnp.asarray(y, out.mean.dtype), out.mean, out.std) * target, -1)  # [S]
    if elbo:
        return jnp.mean(ll) - out.kl
    return jax.nn.logsumexp(ll) - math.log(ll.shape[0])


def batch_loss(key: Array, params: NPParams, batch: TaskBatch, num_samples: int) -> Array:
    """``-mean_tasks task_objective``: the loss the training loop minimises."""
    keys = jax.random.split(key, batch.x.shape[0])
    fn = lambda k, x, y, c, t: task_objective(k, params, x, y, c, t, num_samples)
    return -jnp.mean(jax.vmap(fn)(keys, batch.x, batch.y, batch.context, batch.target))


def predictive(key: Array, params: NPParams, x, y, context, target, num_samples: int) -> tuple[Array, Array]:
    """Mixture components ``(mean, std)`` ``[S, N, y_dim]`` given the context of one padded
    task (``y`` outside the context is never read; ``target`` is unused: the NPs here
    predict each point independently)."""
    del target
    out = outputs(key, params, x, y, context, context, num_samples)
    return out.mean, out.std


def predict(key: Array, params: NPParams, x_c: Array, y_c: Array, x_t: Array, num_samples: int) -> MixturePrediction:
    """Posterior predictive at ``x_t [N_t, x_dim]`` given ``x_c [N_c, x_dim]``, ``y_c [N_c, y_dim]``."""
    n_c = x_c.shape[0]
    x = jnp.concatenate([x_c, x_t])
    y = jnp.concatenate([y_c, jnp.zeros((x_t.shape[0], y_c.shape[1]), y_c.dtype)])
    context = (jnp.arange(x.shape[0]) < n_c).astype(y.dtype)
    mean, std = predictive(key, params, x, y, context, 1.0 - context, num_samples)
    mean, std = mean[:, n_c:], std[:, n_c:]
    variance = jnp.mean(std**2 + mean**2, 0) - jnp.mean(mean, 0) ** 2
    return MixturePrediction(mean, std, variance)

"""Empirical-Bayes warm start of the BNNP prior mean (docs/sawtooth.md).

PP-AVI from the zero-mean ``N(0, I/(D+1))`` prior learns a ReLU prior with
sharp, fixed structure (the sawtooth's teeth) very slowly: the network has
to place its hinges first, and the prior's spread moves them on every path.
The warm start gives the prior a data-driven mean before meta-training:

1. fit *one* deterministic network with the BNN's architecture by least
   squares to the pooled points of ``tasks`` meta-training tasks
   (:func:`fit_network`); with a zero-mean task distribution this is the
   generator's mean function. The first layer starts with its hinges spread
   over the input range (:func:`priors.spread_hinges`), which is what lets
   the fit find the kinks (docs/results/sawtooth_diagnostics/mlp_fit.json);
2. use its weights as the prior means and shrink the prior standard
   deviations (:func:`prior_from_fit`).

The training loop (``train.fit``) then trains the inference networks with the
prior frozen for ``warmup_steps`` before ordinary meta-training starts. Only
meta-training tasks are used, so this is part of learning the prior, not a
peek at held-out data.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.priors import weight_prior as priors
from bnnp_jax.data.tasks import TaskBatch

__all__ = ["initial_weights", "fit_network", "prior_from_fit", "warm_prior"]

Array = jax.Array


def initial_weights(key: Array, params: bnnp.BNNPParams, hinge_range: tuple[float, float]) -> list:
    """Starting point of the pooled fit: one draw from the (untrained) prior, with
    the first layer at its mean with hinges spread over ``hinge_range``.

    Returns a list of ``[D_{l-1}+1, D_l]`` (bias row last), the layout of :func:`bnnp.forward`.
    """
    k_draw, k_hinge = jax.random.split(key)
    weights = [w[0] for w in bnnp.prior_samples(k_draw, params, 1)]
    first = priors.spread_hinges(k_hinge, params.prior[0], *hinge_range)
    return [first.mean.T, *weights[1:]]


def _masked_mse(weights, x: Array, y: Array, mask: Array, activation: str) -> Array:
    f = bnnp.forward([w[None] for w in weights], x, activation)[0]
    return jnp.sum(mask[:, None] * (f - y) ** 2) / (jnp.sum(mask) * y.shape[-1])


def fit_network(weights: Sequence[Array], batch: TaskBatch, activation: str, steps: int,
                learning_rate: float) -> tuple[list, Array]:
    """Full-batch Adam on the mean squared error over every real point of ``batch``.

    Args:
      weights: initial ``[D_{l-1}+1, D_l]`` per layer.
      batch: ``x [T, N, x_dim]``, ``y [T, N, y_dim]``, ``mask [T, N]``; the tasks are
        pooled (padding is masked out).
      steps, learning_rate: Adam settings (one ``lax.scan``).
    Returns the fitted weights and the final mean squared error.
    """
    dtype = weights[0].dtype
    x = batch.x.reshape(-1, batch.x.shape[-1]).astype(dtype)
    y = batch.y.reshape(-1, batch.y.shape[-1]).astype(dtype)
    mask = batch.mask.reshape(-1).astype(dtype)
    return _fit(list(weights), x, y, mask, activation, int(steps), float(learning_rate))


@partial(jax.jit, static_argnames=("activation", "steps", "learning_rate"))
def _fit(weights, x, y, mask, activation, steps, learning_rate):
    opt = optax.adam(learning_rate)
    loss = lambda w: _masked_mse(w, x, y, mask, activation)

    def step(carry, _):
        w, state = carry
        grads = jax.grad(loss)(w)
        updates, state = opt.update(grads, state)
        return (optax.apply_updates(w, updates), state), None

    (weights, _), _ = jax.lax.scan(step, (weights, opt.init(weights)), None, length=steps)
    return weights, loss(weights)


def prior_from_fit(prior: Sequence[priors.PriorParams], weights: Sequence[Array], kind: str,
                   hidden_std_scale: float, output_std_scale: float) -> list[priors.PriorParams]:
    """Prior layers with means ``weights[l].T [D_l, D_{l-1}+1]`` and standard deviations
    times ``hidden_std_scale`` (layers into hidden units) or ``output_std_scale`` (last layer)."""
    if len(prior) != len(weights):
        raise ValueError(f"weights has {len(weights)} layers, the prior {len(prior)}")
    out = []
    for l, (layer, w) in enumerate(zip(prior, weights)):
        if w.T.shape != layer.mean.shape:
            raise ValueError(f"layer {l}: weights {w.shape} do not match the prior mean {layer.mean.shape} transposed")
        factor = output_std_scale if l == len(prior) - 1 else hidden_std_scale
        out.append(priors.scale_std(layer._replace(mean=w.T.astype(layer.mean.dtype)), kind, factor))
    return out


def warm_prior(key: Array, params: bnnp.BNNPParams, batch: TaskBatch, *, hinge_range: tuple[float, float],
               steps: int, learning_rate: float, hidden_std_scale: float,
               output_std_scale: float) -> tuple[bnnp.BNNPParams, dict]:
    """Steps 1 and 2 of the module docstring. Returns the new parameters (inference
    networks and ``sigma_y`` unchanged) and ``{"pooled_fit_mse", "pooled_points"}``."""
    start = initial_weights(key, params, hinge_range)
    fitted, mse = fit_network(start, batch, params.config.activation, steps, learning_rate)
    prior = prior_from_fit(params.prior, fitted, params.config.prior_kind, hidden_std_scale, output_std_scale)
    info = {"pooled_fit_mse": float(mse), "pooled_points": int(jnp.sum(batch.mask))}
    return params.replace(prior=prior), info

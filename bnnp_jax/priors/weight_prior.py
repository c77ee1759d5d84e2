"""Layer-wise Gaussian weight priors and their trainability masks (SPEC section 3).

Each layer's prior parameters are a :class:`PriorParams` with a ``mean [O, D]``
(``D = D_in + 1``, bias last) and a raw scale whose layout depends on the kind:

- ``unitwise`` (default): ``scale [O, D, D]``, lower-triangular Cholesky factor
  of each unit's covariance with the diagonal stored as a log.
- ``diagonal``: ``scale [O, D]``, log standard deviations.
- ``shared``: ``scale [D, D]``, one Cholesky factor for every unit of the layer
  (this enables the width-scalable fast path of SPEC section 9).

:class:`PriorParams` is the canonical form: it is what is trained, checkpointed
and masked. Every other form is a view derived from it for one consumer, never
stored:

- :func:`scale_tril` ``[O|1, D, D]``: the covariance factor ``L`` (``Sigma = L L^T``);
  the dual-form sampler takes it as :class:`~bnnp_jax.core.blr_dual.DualPrior`.
- :func:`layer_factors`: the primal path sampler's view: ``L`` itself as
  :class:`~bnnp_jax.core.blr.ScaleFactors` (the whitened form, which never inverts
  ``L``), or for ``diagonal`` the exact precision root ``diag(1 / std)`` as
  :class:`~bnnp_jax.core.blr.PriorFactors`.
- :func:`to_gaussian`: a :class:`~bnnp_jax.core.gaussian.Gaussian` in precision
  form, for densities, KLs and the baselines' :class:`~bnnp_jax.inference.model.BNNModel`.

Partial trainability is a boolean mask pytree consumed by the optimiser
(``optax.masked``-style), never by mutating parameters.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.core.gaussian import Gaussian

__all__ = ["PRIOR_KINDS", "SIDES", "STEP_SCALES", "PriorParams", "init_layer", "init", "spread_hinges", "scale_tril",
           "scale_std", "to_gaussian", "trainable_mask", "fan_in_step_scale", "layer_factors"]

Array = jax.Array
PRIOR_KINDS = ("unitwise", "diagonal", "shared")
SIDES = ("front", "back")
STEP_SCALES = ("none", "fan_in")  # training.prior_step_scale: see fan_in_step_scale


class PriorParams(NamedTuple):
    """One layer's prior: ``mean [O, D]`` and the kind-dependent raw ``scale``."""

    mean: Array
    scale: Array


def _check_kind(kind: str) -> None:
    if kind not in PRIOR_KINDS:
        raise ValueError(f"prior kind must be one of {PRIOR_KINDS}, got {kind!r}")


def init_layer(d_in: int, d_out: int, kind: str = "unitwise", dtype=jnp.float32) -> PriorParams:
    """The scaled initialisation ``N(0, I / (d_in + 1))`` for one layer."""
    _check_kind(kind)
    d = d_in + 1
    log_std = -0.5 * math.log(d)
    mean = jnp.zeros((d_out, d), dtype)
    if kind == "unitwise":
        scale = jnp.broadcast_to(log_std * jnp.eye(d, dtype=dtype), (d_out, d, d))
    elif kind == "diagonal":
        scale = jnp.full((d_out, d), log_std, dtype)
    else:
        scale = log_std * jnp.eye(d, dtype=dtype)
    return PriorParams(mean, jnp.asarray(scale, dtype))


def init(widths: Sequence[int], kind: str = "unitwise", dtype=jnp.float32) -> list[PriorParams]:
    """Priors for a network with layer widths ``[D_0, D_1, ..., D_L]``."""
    return [init_layer(a, b, kind, dtype) for a, b in zip(widths[:-1], widths[1:])]


def spread_hinges(key: Array, layer: PriorParams, low: float, high: float, gain: float = 1.0) -> PriorParams:
    """First-layer prior means whose ReLU hinges tile the input box ``[low, high]^x_dim``.

    Unit ``d`` gets mean weights ``gain * u_d`` and bias ``-gain * u_d . c_d``, so its
    hinge ``{x : u_d . x = u_d . c_d}`` passes through ``c_d``. In 1-D the centres are
    evenly spaced and the directions alternate in sign (deterministic); otherwise
    ``u_d`` is a random unit vector and ``c_d`` uniform in the box (``key``).

    Why: with zero-mean ``N(0, I/(D+1))`` weights the hinges ``-b/w`` pile up near the
    origin, and a ReLU network then needs tens of thousands of steps to place the
    kinks a piecewise function such as the sawtooth needs (docs/sawtooth.md).
    Only the mean changes; the prior scale stays at its initialisation.
    """
    d_out, d = layer.mean.shape
    dtype = layer.mean.dtype
    if d == 2:
        u = jnp.where(jnp.arange(d_out) % 2 == 0, 1.0, -1.0)[:, None].astype(dtype)
        c = (low + (high - low) * (jnp.arange(d_out) + 0.5) / d_out)[:, None].astype(dtype)
    else:
        k_u, k_c = jax.random.split(key)
        u = jax.random.normal(k_u, (d_out, d - 1), dtype)
        u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
        c = jax.random.uniform(k_c, (d_out, d - 1), dtype, low, high)
    w = gain * u
    b = -jnp.sum(w * c, axis=-1, keepdims=True)
    return layer._replace(mean=jnp.concatenate([w, b], axis=-1))


def scale_tril(params: PriorParams, kind: str, min_std: float = 0.0) -> Array:
    """Covariance Cholesky factor, ``[O, D, D]`` (``[1, D, D]`` for ``shared``).

    With ``min_std > 0`` it factorises ``L L^T + min_std^2 I`` instead of the raw
    ``L L^T``: every direction keeps at least that standard deviation, which bounds
    the covariance's condition number. Why: meta-training can shrink some prior
    directions towards zero while others stay wide, and the precision-form Cholesky
    then fails (docs/sawtooth.md, the warm-started runs that diverged).
    """
    _check_kind(kind)
    if kind == "diagonal":
        return jax.vmap(jnp.diag)(_floored(jnp.exp(params.scale), min_std))
    raw = params.scale if kind == "unitwise" else params.scale[None]
    diag = jnp.exp(jnp.diagonal(raw, axis1=-2, axis2=-1))
    strict = jnp.tril(raw, -1)
    tril = strict + jax.vmap(jnp.diag)(diag)
    if not min_std:
        return tril
    eye = jnp.eye(tril.shape[-1], dtype=tril.dtype)
    return jnp.linalg.cholesky(tril @ jnp.swapaxes(tril, -1, -2) + min_std**2 * eye)


def _floored(std: Array, min_std: float) -> Array:
    return jnp.sqrt(std**2 + min_std**2) if min_std else std


def _diagonal_root(params: PriorParams, min_std: float) -> Array:
    """``diag(1 / std)`` ``[O, D, D]`` of a ``diagonal`` prior: its exact precision factor, no solve."""
    return jax.vmap(jnp.diag)(1.0 / _floored(jnp.exp(params.scale), min_std))


def scale_std(params: PriorParams, kind: str, factor: float) -> PriorParams:
    """The same layer prior with every standard deviation times ``factor > 0``
    (covariance times ``factor**2``; the mean is unchanged).

    The raw scale stores a Cholesky factor with a log diagonal, so the diagonal
    gains ``log factor`` and the strict lower triangle is multiplied by ``factor``.
    """
    _check_kind(kind)
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    log_f = math.log(factor)
    if kind == "diagonal":
        return params._replace(scale=params.scale + log_f)
    eye = jnp.eye(params.scale.shape[-1], dtype=bool)
    scaled = jnp.where(eye, params.scale + log_f, jnp.tril(params.scale, -1) * factor)
    return params._replace(scale=scaled.astype(params.scale.dtype))


def to_gaussian(params: PriorParams, kind: str, min_std: float = 0.0) -> Gaussian:
    """The layer prior as a precision-form :class:`Gaussian` (``prec_tril`` may have a
    leading unit dim of 1 for ``shared``); ``min_std`` as in :func:`scale_tril`."""
    if kind == "diagonal":
        # Diagonal precision factor is exact and needs no solve.
        return Gaussian(params.mean, _diagonal_root(params, min_std))
    return Gaussian.from_scale_tril(params.mean, scale_tril(params, kind, min_std))


# ----- trainability masks --------------------------------------------------


def _layer_mask(params: PriorParams, kind: str, selected: np.ndarray) -> PriorParams:
    """Mask for one layer given which (unit, input) weights are trainable ``[O, D]``."""
    mean_mask = selected
    if kind == "diagonal":
        scale_mask = selected
    elif kind == "unitwise":
        scale_mask = selected[:, :, None] & selected[:, None, :]
    else:
        rows = selected.any(axis=0)
        scale_mask = rows[:, None] & rows[None, :]
    return PriorParams(jnp.asarray(mean_mask), jnp.asarray(scale_mask))


def fan_in_step_scale(params: PriorParams, kind: str) -> PriorParams:
    """Per-entry multipliers of the optimiser's step, shaped like ``params``: ``1 / sqrt(D)``
    (``D = D_in + 1``) on the mean and on the strictly-lower Cholesky entries, 1 on the
    log-diagonal (and on a ``diagonal`` prior's log standard deviations).

    Why: Adam moves every entry by about the learning rate per step whatever its gradient's
    size, so a unit's ``D (D - 1) / 2`` off-diagonal entries, whose gradients are mostly
    Monte-Carlo noise, random-walk and widen the prior's row norms far beyond the initial
    ``1 / sqrt(D)`` (docs/sawtooth.md). Under Adam this multiplier equals storing those
    entries times ``sqrt(D)`` (the scaled parameterisation ``w = (mu' + L' eps) / sqrt(D)``),
    so each entry moves on the scale of its initial standard deviation. Log-scale entries
    are scale-free and keep a multiplier of 1.
    """
    _check_kind(kind)
    d = params.mean.shape[-1]
    c = 1.0 / math.sqrt(d)
    mean = jnp.full_like(params.mean, c)
    if kind == "diagonal":
        return PriorParams(mean, jnp.ones_like(params.scale))
    eye = jnp.eye(d, dtype=bool)
    return PriorParams(mean, jnp.broadcast_to(jnp.where(eye, 1.0, c), params.scale.shape).astype(params.scale.dtype))


def trainable_mask(
    priors: Sequence[PriorParams], kind: str, fraction: float, side: str = "front", seed: int = 0
) -> list[PriorParams]:
    """Boolean mask pytree marking the trainable prior entries (SPEC section 3).

    Weights are ordered layer by layer, unit-major; the first (``side="front"``)
    or last (``"back"``) ``floor(fraction * num_weights)`` are trainable. Whole
    layers inside the range train fully; the boundary layer trains a seeded
    random subset of its weights: their mean entries, the matching diagonal of
    the scale, and off-diagonal entries whose row and column are both selected.
    For ``shared`` a scale row is selected when any unit selects that input.
    """
    _check_kind(kind)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    sizes = [int(np.prod(p.mean.shape)) for p in priors]
    budget = int(math.floor(fraction * sum(sizes)))
    order = range(len(priors)) if side == "front" else reversed(range(len(priors)))
    rng = np.random.default_rng(seed)
    masks: list = [None] * len(priors)
    for i in order:
        shape = priors[i].mean.shape
        take = min(budget, sizes[i])
        selected = np.zeros(sizes[i], bool)
        if take == sizes[i]:
            selected[:] = True
        elif take > 0:
            selected[rng.choice(sizes[i], size=take, replace=False)] = True
        budget -= take
        masks[i] = _layer_mask(priors[i], kind, selected.reshape(shape))
    return masks


def layer_factors(layers: Sequence[PriorParams], kind: str, min_std: float = 0.0) -> list:
    """Every layer's prior for :func:`bnnp_jax.core.blr.sample_posterior` (``[O|1, D, D]``
    factors): :class:`~bnnp_jax.core.blr.ScaleFactors` with ``L`` (:func:`scale_tril`) for
    ``unitwise`` and ``shared``, :class:`~bnnp_jax.core.blr.PriorFactors` with ``diag(1 / std)``
    for ``diagonal``; ``min_std`` as in :func:`scale_tril`.

    Why the whitened form for full factors: meta-learning can leave ``cond(L)`` beyond
    1e10, where ``L^{-1}`` (and the information form built on it) is lost even in
    float64, while ``I + L^T S L`` stays well conditioned (docs/robustness.md)."""
    from bnnp_jax.core import blr  # blr does not import priors; kept local so priors stays a leaf module

    if kind == "diagonal":
        return [blr.PriorFactors(p.mean, _diagonal_root(p, min_std)) for p in layers]
    return [blr.ScaleFactors(p.mean, scale_tril(p, kind, min_std)) for p in layers]

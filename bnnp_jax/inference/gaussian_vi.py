"""Block-diagonal Gaussian VI in whitened coordinates: the engine of MFVI, UCVI, LCVI and FCVI
(SPEC section 8).

``q(w) = N(m, S S^T)`` over the flat weights ``[P]`` (:func:`model.flatten`'s order), block
diagonal over a *layout*: a tuple of :class:`Segment` s, each a run of consecutive layers cut
into ``count`` equal blocks of ``size`` weights. Every block is one unit (UCVI, MFVI), one
layer (LCVI) or everything (FCVI); MFVI's blocks are diagonal.

The family (``q``'s parameterisation, whitening, moments, KL) is
:mod:`bnnp_jax.inference.gaussian_family`; this module fits it.

``mean_init="gauss_newton"`` moves ``m0`` from a prior draw to the MAP weights by
Gauss-Newton steps on ``log p(y | w) + log p(w)`` (exact in one step for a model with no
hidden layer; Levenberg-Marquardt damped, accepted only when the log joint rises, with hidden
layers), so the optimiser starts at the (block-restricted) Gauss-Newton Laplace approximation.
``C0^{-T}`` (and, for the direct factor, ``C_p^{-T}`` and the row scales) are formed once, by
triangular solves, at the start; every step is then matrix products (no LAPACK in the loop).

The ELBO is ``E_q log p(y | w) - KL(q || p(w))``, the KL in closed form
(:func:`kl_to_units`); ``estimator="stl"`` uses the sticking-the-landing estimator instead
(``log p(w) - log q(w)`` per sample, ``q``'s parameters stopped in ``log q``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnnp_jax.core.driver import finite_check, run_chunks
from bnnp_jax.core.linalg import after
from bnnp_jax.inference import model as bnn
from bnnp_jax.inference.gauss_newton import gauss_newton_blocks, gauss_newton_step, map_weights
from bnnp_jax.inference.layout import Segment, full_layout, layer_layout, unit_layout
from bnnp_jax.inference.gaussian_family import (FACTORS, SCALES, Params, Whitening, init_params,
                                                kl_to_prior, kl_to_units, log_det_sqrt, log_prob, mean,
                                                sample, square_roots, whitening)

__all__ = [
    "Segment", "Whitening", "Params", "Result", "SCALES", "MEAN_INITS", "ESTIMATORS", "FACTORS", "unit_layout",
    "layer_layout", "full_layout", "gauss_newton_blocks", "gauss_newton_step", "map_weights", "whitening", "init_params",
    "mean", "square_roots", "log_det_sqrt", "sample", "log_prob", "kl_to_units", "kl_to_prior", "loss", "fit",
    "still_rising", "VMAP_MAX_BLOCK", "STEP_RULES", "step_multipliers",
]

Array = jax.Array
MEAN_INITS = ("prior_draw", "gauss_newton")
ESTIMATORS = ("closed_form", "stl")
STEP_RULES = ("entry", "row")
MAX_DENSE_WEIGHTS = 2048  # above this the MAP start solves the family's own blocks, not a dense [P, P] system


class Result(NamedTuple):
    """A fitted ``q``: ``params`` in ``whitening``'s coordinates, its ``layout`` and ``model``;
    ``losses [num_steps]``: the negative-ELBO estimate at every step (the ELBO trajectory)."""

    params: Params
    whitening: Whitening
    layout: tuple[Segment, ...]
    model: bnn.BNNModel
    losses: Array


# ----- the objective and the optimiser ----------------------------------------------------


def _log_lik(model, flat, x, y, mask):
    return jax.vmap(lambda w: bnn.log_likelihood(model, bnn.unflatten(model, w), x, y, mask))(flat)


def loss(p: Params, key, w: Whitening, layout, model: bnn.BNNModel, x, y, mask, num_particles: int,
         estimator: str = "closed_form") -> Array:
    """Negative ELBO estimate from ``num_particles`` reparameterised draws."""
    draws = sample(key, w, p, num_particles)
    ll = _log_lik(model, draws, x, y, mask)
    if estimator == "closed_form":
        return -(jnp.mean(ll) - kl_to_prior(w, p, layout, model))
    # q's parameters held fixed in log q: gradients flow through the draws only
    log_q = log_prob(w, jax.lax.stop_gradient(p), layout, draws)
    # the prior's solves after log q's (one LAPACK chain, bnnp_jax.core.linalg)
    log_prior = jax.vmap(lambda d: bnn.log_prior(model, bnn.unflatten(model, d)))(after(draws, log_q))
    return -jnp.mean(ll + log_prior - log_q)


def step_multipliers(w: Whitening, p: Params, rule: str = "entry") -> list:
    """Per segment, fixed multipliers of Adam's steps in ``t``, broadcastable to ``t``.

    ``"entry"``: 1 everywhere (Adam's own per-entry steps). ``"row"``: the off-diagonal steps
    of row ``i`` of the factor divided by ``sqrt(n_i)``, ``n_i`` its number of free
    off-diagonal entries (``size - 1 - i`` for the direct, upper factor; ``i`` for the whitened,
    lower one). Adam moves every entry by about the learning rate (in the row-scaled units of
    :mod:`gaussian_family`), so a row of ``n_i`` entries moves the marginal variance of its
    weight ``n_i`` times as far as one entry does: a full ``[481, 481]`` block takes steps
    ``sqrt(480)`` times longer than a unit's. ``"row"`` gives every row a step of about the
    learning rate, as in a diagonal family. Diagonal entries and diagonal segments keep 1.
    """
    if rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {STEP_RULES}, got {rule!r}")
    out = []
    for i, t in enumerate(p.t):
        if rule == "entry" or t.ndim == 2:
            out.append(1.0)
            continue
        n = t.shape[-1]
        idx = np.arange(n)
        count = (n - 1 - idx) if w.row_scale is not None and w.row_scale[i] is not None else idx
        mult = np.broadcast_to(1.0 / np.sqrt(np.maximum(count, 1))[:, None], (n, n)).copy()
        mult[idx, idx] = 1.0
        out.append(jnp.asarray(mult, t.dtype))
    return out


def _scan(p, opt_state, keys, lrs, w, layout, model, x, y, mask, num_particles, estimator, b1, b2,
          step_rule="entry"):
    """Adam steps over ``keys [C, 2]`` and learning rates ``lrs [C]`` -> ``((p, opt_state), losses [C])``;
    the steps in ``t`` scaled by :func:`step_multipliers` (``step_rule``)."""
    opt = optax.scale_by_adam(b1=b1, b2=b2)
    mults = step_multipliers(w, p, step_rule)

    def step(carry, inp):
        p, s = carry
        k, lr = inp
        value, grads = jax.value_and_grad(loss)(p, k, w, layout, model, x, y, mask, num_particles, estimator)
        updates, s = opt.update(grads, s, p)
        updates = updates._replace(t=[m * d for m, d in zip(mults, updates.t)])
        p = jax.tree.map(lambda a, b: a - lr * b, p, updates)
        return (p, s), value

    return jax.lax.scan(step, (p, opt_state), (keys, lrs))


_STATIC = ("layout", "num_particles", "estimator", "b1", "b2", "step_rule")
_chunk = jax.jit(_scan, static_argnames=_STATIC)


# Fits whose largest covariance block is bigger than this run one after another inside the
# batched program instead of vmapped: on XLA CPU the vmapped (batched) [481, 481] products of
# FCVI on the KL table's BNN ran ~3x slower per fit than the single fit's plain ones
# (benchmarks/kl_grid_batching.py), while small blocks (MFVI, UCVI) gain from the vmap.
VMAP_MAX_BLOCK = 64


def _fits_per_vmap(layout, num_fits: int) -> int | None:
    return num_fits if max(g.size for g in layout) <= VMAP_MAX_BLOCK else None


@partial(jax.jit, static_argnames=_STATIC + ("fits_per_vmap",))
def _chunk_batch(p, opt_state, keys, lrs, w, layout, model, x, y, mask, num_particles, estimator, b1, b2,
                 step_rule, fits_per_vmap):
    # each fit is the single fit's scan; the learning rates are common to the batch
    def one(a):
        p, s, k, w, model, x, y, mask = a
        return _scan(p, s, k, lrs, w, layout, model, x, y, mask, num_particles, estimator, b1, b2, step_rule)

    return jax.lax.map(one, (p, opt_state, keys, w, model, x, y, mask), batch_size=fits_per_vmap)


def _start(key, model, x, y, mask, layout, scale, mean_init, gauss_newton_iters, init_log_scale, factor):
    """Pure set-up of one fit: ``m0`` (prior draw, then the MAP by :func:`map_weights` for
    ``mean_init="gauss_newton"``), its whitening and the initial params -> ``(w, p, run_key)``."""
    init_key, run_key = jax.random.split(key)
    m0 = bnn.flatten(bnn.prior_sample(init_key, model))
    if mean_init == "gauss_newton":
        system = None if model.num_weights <= MAX_DENSE_WEIGHTS else layout  # dense [P, P] only while small
        m0 = map_weights(model, m0, x, y, mask, gauss_newton_iters, system)
    w = whitening(model, x, m0, layout, scale, mask=mask, factor=factor)
    return w, init_params(layout, m0.dtype, init_log_scale, w), run_key


_START_STATIC = ("layout", "scale", "mean_init", "gauss_newton_iters", "init_log_scale", "factor")
_init = jax.jit(_start, static_argnames=_START_STATIC)


@partial(jax.jit, static_argnames=_START_STATIC)
def _init_batch(keys, model, x, y, mask, layout, scale, mean_init, gauss_newton_iters, init_log_scale, factor):
    one = lambda k, m, x, y, mask: _start(k, m, x, y, mask, layout, scale, mean_init, gauss_newton_iters,
                                          init_log_scale, factor)
    return jax.vmap(one)(keys, model, x, y, mask)


def _check_options(**options):
    """Each named option against its valid values, before anything compiles."""
    valid = {"mean_init": MEAN_INITS, "estimator": ESTIMATORS, "step_rule": STEP_RULES, "scale": SCALES,
             "factor": FACTORS}
    for name, value in options.items():
        if value not in valid[name]:
            raise ValueError(f"{name} must be one of {valid[name]}, got {value!r}")


def fit(key: Array, model: bnn.BNNModel, x: Array, y: Array, layout, *, num_steps: int = 20_000,
        lr: tuple[float, float] = (5e-3, 5e-5), num_particles: int = 8, scale: str = "ggn",
        mean_init: str = "gauss_newton", estimator: str = "closed_form", gauss_newton_iters: int = 30,
        init_log_scale: float = 0.0, factor: str = "direct", mask=None, chunk_size: int = 500, b1: float = 0.9,
        b2: float = 0.999, step_rule: str = "entry", progress_bar: bool = False, desc: str = "",
        batched: bool = False) -> Result:
    """Fit ``q`` by Adam on the whitened coordinates (``lr`` decayed linearly ``lr[0] -> lr[1]``).

    ``m0`` is a prior draw, moved to the MAP weights by :func:`map_weights` (
    ``gauss_newton_iters`` steps; the dense system up to :data:`MAX_DENSE_WEIGHTS` weights,
    the layout's blocks above) when ``mean_init="gauss_newton"``; ``C0`` from ``scale``
    at ``m0`` (module docstring); ``S`` starts at ``e^{init_log_scale} C0^{-T}``, held as
    ``factor`` (:data:`FACTORS`: ``"direct"``, ``O(P^2)`` per step, or ``"whitened"``,
    ``O(P^3)`` for FCVI; module docstring). ``step_rule`` (:data:`STEP_RULES`) scales the
    factor's off-diagonal steps (:func:`step_multipliers`). Raises on a non-finite loss.

    ``batched=True`` fits ``B`` datasets as one vmapped program: ``key [B, 2]``, ``model`` a
    batched :class:`BNNModel` (every leaf ``[B, ...]``, e.g. one ``sigma_y`` per fit),
    ``x [B, N, D_0]``, ``y [B, N, D_L]``, ``mask [B, N]`` (padding for datasets of different
    sizes); the result's leaves gain the leading axis (``losses [B, num_steps]``) and fit ``b``
    is the single fit with ``key[b]`` on batch element ``b``. Layouts with blocks above
    :data:`VMAP_MAX_BLOCK` (FCVI, LCVI on the table's BNN) run the fits one after another
    inside the program rather than vmapped.
    """
    _check_options(mean_init=mean_init, estimator=estimator, step_rule=step_rule, scale=scale, factor=factor)
    start = _init_batch if batched else _init
    w, p, run_key = start(key, model, x, y, mask, layout, scale, mean_init, gauss_newton_iters, float(init_log_scale),
                          factor)
    dtype = model.prior_means[0].dtype
    opt_init = optax.scale_by_adam(b1=b1, b2=b2).init
    opt_state = jax.vmap(opt_init)(p) if batched else opt_init(p)
    lrs = np.asarray(optax.linear_schedule(lr[0], lr[1], max(num_steps, 1))(np.arange(num_steps)), dtype=dtype)
    keys = (jax.vmap(jax.random.split, (0, None)) if batched else jax.random.split)(run_key, num_steps)
    chunk = partial(_chunk_batch, fits_per_vmap=_fits_per_vmap(layout, key.shape[0])) if batched else _chunk

    def run_chunk(carry, done, n):
        return chunk(*carry, keys[..., done:done + n, :], lrs[done:done + n], w, layout, model, x, y, mask,
                     num_particles, estimator, b1, b2, step_rule)

    check = finite_check(desc or "gaussian_vi")  # a diverged chunk never replaces the last good state

    (p, opt_state), losses = run_chunks(run_chunk, (p, opt_state), num_steps, chunk_size, desc=desc,
                                        progress=progress_bar, check=check)
    empty = jnp.zeros(tuple(x.shape[:1]) * batched + (0,), dtype)
    return Result(p, w, layout, model, jnp.concatenate(losses, axis=-1) if losses else empty)


# ----- convergence ----------------------------------------------------------------------


def still_rising(losses, fraction: float = 0.25, z: float = 3.0) -> dict:
    """Is the ELBO still rising at the end of a fit? Fits a least-squares line to the last
    ``fraction`` of ``losses`` (per-step negative ELBOs, or their window means) and tests
    its slope against the scatter about the line.

    Why a line, not two window means: at small ``sigma_y`` one step's ELBO estimate scatters
    by hundreds of nats; for a steady rise, a slope over the last quarter of the fit has about
    1.6 times the signal-to-noise ratio of the difference between the last two tenths.

    Returns ``{"rising": bool, "gain": float, "gain_stderr": float}``: ``gain`` is the ELBO
    increase along the line over that stretch, ``rising`` when it exceeds ``z`` standard
    errors (residuals treated as independent) and 1e-3 nats.
    """
    a = -np.asarray(losses, float)
    n = int(len(a) * fraction)
    if n < 4:
        return {"rising": False, "gain": float("nan"), "gain_stderr": float("nan")}
    y = a[-n:]
    t = np.arange(n, dtype=float) - (n - 1) / 2
    slope = float(t @ (y - y.mean()) / (t @ t))
    resid = y - y.mean() - slope * t
    se = float(math.sqrt(resid @ resid / (n - 2) / (t @ t)))
    gain, gain_se = slope * (n - 1), se * (n - 1)
    return {"rising": bool(gain > max(z * gain_se, 1e-3)), "gain": gain, "gain_stderr": gain_se}

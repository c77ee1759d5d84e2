"""Square-root (QR) form of the layer posterior: float32 that stays finite and
close to float64 for precision ratios up to 1e8 (SPEC section 4; docs/robustness.md).
:func:`bnnp_jax.core.blr.posterior` is :func:`sqrt_posterior`; this module imports
nothing from :mod:`bnnp_jax.core.blr` (blr imports it).

Why. The information form, ``P = P0 + Phi^T diag(lambda) Phi`` factored by
Cholesky (:func:`bnnp_jax.core.blr.posterior_from_stats`, and the BNNP's path
sampler :func:`bnnp_jax.core.blr.sample_posterior`), rounds at order
``eps * ||P||`` (float32 ``eps = 1.2e-7``) in forming and factoring ``P``, and
that error lands in every direction, including the directions the data do not
reach (``N < D``) where ``P`` is only the prior precision ``p0``. Once
``lambda / p0`` passes ``~1 / (D eps)`` those directions are lost: with N <= D
we measured KL(float64 || float32) up to 26 nats per unit at ratio 1e6 and NaN
factors at 1e8 (D = 33; docs/robustness.md).

Jitter does not repair this: a diagonal jitter large enough to make the
factorisation succeed (``~ D eps max_i P_ii``) adds about ``D eps lambda`` to the
prior's precision in those same directions, and we measured KL up to 1e6
nats. So the policy is *no jitter* anywhere in blr or here; the accurate fix is
never to form ``P``.

How. Keep an upper-triangular root ``R`` with ``R^T R = P`` and ``r`` with
``R^T r = h`` (so the mean is ``R^{-1} r``), start from the prior
(``R = U0``, ``r = U0 mu`` with ``U0^T U0 = P0``) and add a batch of points by
the QR factorisation of the stacked rows (Householder, backward stable row-block
by row-block):

    [ R           ]  = Q [ R' ],     r' = Q^T [ r                 ]
    [ sqrt(l) Phi ]                            [ sqrt(l) * y       ]

This is the least-squares (square-root information) form of the same
posterior; rounding now scales with ``eps * sqrt(lambda / p0)`` instead of
``eps * lambda / p0``. Measured: finite everywhere and KL(float64 || float32) <=
4e-3 nats per unit at ratio 1e8 (D = 33). Batches of points are sequential
updates (SPEC section 6, exact in real arithmetic); padded points
(``lambda = 0``) add zero rows, which change nothing. ``sqrt(lambda)`` is taken
as ``0`` with zero derivative at ``lambda = 0``, so gradients stay finite with
padding; the reported derivative with respect to a zero precision is therefore
0 (the derivative of the posterior with respect to a padding weight is not
available from this form).

Cost per unit and batch: a QR of ``[D + B, D]`` (``O((D + B) D^2)``), the same
order as forming the statistics. With a shared prior root and per-point
precisions ``[B, 1]`` (the SPEC section 9 fast path) all units share one QR.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from bnnp_jax.core.gaussian import Gaussian
from bnnp_jax.core.minibatch import chunk

__all__ = ["RootStats", "root_init", "root_update", "root_accumulate", "root_mean", "sqrt_posterior",
           "sample_root_posterior"]

Array = jax.Array


class RootStats(NamedTuple):
    """Square-root information state of one layer.

    Attributes:
      root: ``[O|1, D, D]`` upper-triangular ``R`` with positive diagonal, ``R^T R = P``.
      rhs: ``[O, D]`` with ``R^T rhs = h = P0 mu + Phi^T (lambda * y)``; the mean is ``R^{-1} rhs``.
    """

    root: Array
    rhs: Array


def root_init(mean: Array, root: Array) -> RootStats:
    """The prior as a state: ``mean [O, D]``, upper ``root [O|1, D, D]`` with ``root^T root = P0``
    (``blr.PriorFactors.root``; ``prec_tril^T`` of a :class:`Gaussian`)."""
    return RootStats(root, jnp.einsum("...ij,...j->...i", root, mean))


def _qr_step(r: Array, rhs: Array, rows: Array, rows_rhs: Array) -> tuple[Array, Array]:
    """``R [D, D]``, ``rhs [D, K]`` updated with ``rows [B, D]``, ``rows_rhs [B, K]``."""
    q, r_new = jnp.linalg.qr(jnp.concatenate([r, rows]), mode="reduced")  # [D + B, D] is tall
    rhs_new = q.T @ jnp.concatenate([rhs, rows_rhs])
    sign = jnp.where(jnp.diagonal(r_new) < 0, -1.0, 1.0).astype(r_new.dtype)  # positive diagonal, unique R
    return sign[:, None] * r_new, sign[:, None] * rhs_new


def _sqrt_weights(precision: Array) -> Array:
    """``sqrt(lambda)``, with value and derivative 0 at ``lambda = 0`` (padding):
    ``jnp.sqrt``'s infinite slope there would turn the zero rows' gradients into NaN."""
    positive = precision > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, precision, 1)), 0)


def root_update(state: RootStats, features: Array, targets: Array, precision: Array) -> RootStats:
    """Condition on a batch: ``features [B, D]``, ``targets [B, O]``, ``precision [B, O]``
    (or ``[B, 1]`` shared by the units; with a shared ``root [1, D, D]`` that is one QR)."""
    s = _sqrt_weights(precision)
    if state.root.shape[0] == 1 and precision.shape[1] == 1:
        r, rhs = _qr_step(state.root[0], state.rhs.T, s * features, s * targets)
        return RootStats(r[None], rhs.T)
    o = state.rhs.shape[0]
    roots = jnp.broadcast_to(state.root, (o,) + state.root.shape[1:])
    s = jnp.broadcast_to(s, targets.shape)
    unit = lambda r, h, s_d, y_d: _qr_step(r, h[:, None], s_d[:, None] * features, (s_d * y_d)[:, None])
    r, rhs = jax.vmap(unit, in_axes=(0, 0, 1, 1))(roots, state.rhs, s, targets)
    return RootStats(r, rhs[..., 0])


def root_accumulate(state: RootStats, features: Array, targets: Array, precision: Array,
                    batch_size: int | None = None) -> RootStats:
    """:func:`root_update` over sequential batches of ``batch_size`` points (``lax.scan``)."""
    n = features.shape[0]
    if batch_size is None or batch_size >= n:
        return root_update(state, features, targets, precision)
    batches = [chunk(a, batch_size) for a in (features, targets, precision)]
    if state.root.shape[0] == 1 and precision.shape[1] != 1:  # the carry must keep one shape
        state = RootStats(jnp.broadcast_to(state.root, (state.rhs.shape[0],) + state.root.shape[1:]), state.rhs)

    def body(st, batch):
        return root_update(st, *batch), None

    state, _ = jax.lax.scan(body, state, batches)
    return state


def root_mean(state: RootStats) -> Array:
    """Posterior mean ``R^{-1} rhs`` ``[O, D]``."""
    root = jnp.broadcast_to(state.root, state.rhs.shape[:1] + state.root.shape[1:])
    return solve_triangular(root, state.rhs[..., None], lower=False)[..., 0]


def sqrt_posterior(features: Array, targets: Array, precision: Array, prior: Gaussian,
                   batch_size: int | None = None) -> Gaussian:
    """Drop-in for :func:`bnnp_jax.core.blr.posterior` in square-root form (same
    arguments, same result in real arithmetic): ``features [N, D]``, ``targets
    [N, O]``, ``precision [N, O|1]``, prior ``mean [O, D]``, ``prec_tril [O|1, D, D]``;
    returns ``mean [O, D]``, ``prec_tril [O, D, D]``."""
    state = root_init(prior.mean, jnp.swapaxes(prior.prec_tril, -1, -2))
    state = root_accumulate(state, features, targets, precision, batch_size)
    root = jnp.broadcast_to(state.root, prior.mean.shape[:1] + state.root.shape[1:])
    return Gaussian(root_mean(state), jnp.swapaxes(root, -1, -2))


def sample_root_posterior(key: Array, prior_mean: Array, prior_root: Array, state: RootStats) -> tuple[Array, Array]:
    """Counterpart of :func:`bnnp_jax.core.blr.sample_posterior` for a :class:`RootStats`
    built from ``root_init(prior_mean, prior_root)``: one draw ``w = m + R^{-1} eps``
    ``[O, D]`` and ``KL(q || p)`` per unit ``[O]``; the same ``key`` gives the same
    ``eps`` and hence (in real arithmetic) the same draw as blr's sampler."""
    o, d = state.rhs.shape
    root = jnp.broadcast_to(state.root, (o, d, d))
    eps = jax.random.normal(key, (o, d), state.rhs.dtype)
    prior_t = jnp.swapaxes(jnp.broadcast_to(prior_root, (o, d, d)), -1, -2)
    # [R^{-1} rhs, R^{-1} (rhs + eps)] in one solve; R^{-T} U0^T in another.
    y = solve_triangular(root, jnp.stack([state.rhs, state.rhs + eps], -1), lower=False)
    mean, w = y[..., 0], y[..., 1]
    trace = jnp.sum(solve_triangular(root, prior_t, lower=False, trans=1) ** 2, (-2, -1))
    maha = jnp.sum(jnp.einsum("...ij,...j->...i", prior_root, mean - prior_mean) ** 2, -1)
    log_diag = lambda t: jnp.sum(jnp.log(jnp.diagonal(t, axis1=-2, axis2=-1)), -1)
    kl = 0.5 * (trace + maha - d) + log_diag(root) - log_diag(prior_root)
    return w, kl

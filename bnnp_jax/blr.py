"""Closed-form Bayesian linear regression for one layer (SPEC section 4).

For each output unit ``d`` with prior ``N(mu_d, P0_d^{-1})``, features
``Phi [N, D]`` shared across units, pseudo-targets ``yhat [N, O]`` and
per-point, per-unit precisions ``lambda [N, O]``:

    P_d = P0_d + Phi^T diag(lambda_d) Phi
    m_d = P_d^{-1} (P0_d mu_d + Phi^T (lambda_d * yhat_d))

We never form an ``N x N`` matrix or an inverse: the data enter through the
natural statistics ``Phi^T diag(lambda_d) Phi`` and ``Phi^T (lambda_d yhat_d)``,
which add over points. That additivity gives exact sequential (minibatched)
updates (SPEC section 6) and makes a point with ``lambda = 0`` vanish exactly,
which is how padding works.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from bnnp_jax.gaussian import Gaussian
from bnnp_jax.minibatch import batched_sum

Array = jax.Array


class NaturalStats(NamedTuple):
    """Data terms of the posterior natural parameters.

    Attributes:
      precision: ``[O, D, D]``, ``sum_n lambda_{n,d} phi_n phi_n^T``.
      shift: ``[O, D]``, ``sum_n lambda_{n,d} yhat_{n,d} phi_n``.
    """

    precision: Array
    shift: Array


def natural_stats(features: Array, targets: Array, precision: Array) -> NaturalStats:
    """Natural statistics of one batch of points.

    Args:
      features: ``[N, D]`` design ``Phi``.
      targets: ``[N, O]`` (pseudo-)targets.
      precision: ``[N, O]`` per-point, per-unit precisions ``lambda >= 0``.
    """
    prec = jnp.einsum("no,nd,ne->ode", precision, features, features)
    shift = jnp.einsum("no,nd->od", precision * targets, features)
    return NaturalStats(prec, shift)


def _prior_natural(prior: Gaussian) -> tuple[Array, Array]:
    """Prior precision ``C0 C0^T`` ``[O|1, D, D]`` and ``P0 mu`` ``[O, D]``."""
    p0 = prior.precision()
    return p0, jnp.einsum("...ij,...j->...i", p0, prior.mean)


def posterior_from_stats(prior: Gaussian, stats: NaturalStats) -> Gaussian:
    """Combine a prior with accumulated data statistics (Cholesky, triangular solves)."""
    p0, h0 = _prior_natural(prior)
    prec = p0 + stats.precision
    chol = jnp.linalg.cholesky(prec)
    h = h0 + stats.shift
    mean = cho_solve((chol, True), h[..., None])[..., 0]
    return Gaussian(mean, chol)


def posterior(
    features: Array, targets: Array, precision: Array, prior: Gaussian, batch_size: int | None = None
) -> Gaussian:
    """Conditional posterior of one layer's weights (SPEC section 4).

    Args:
      features: ``[N, D]``.
      targets: ``[N, O]``.
      precision: ``[N, O]`` (zero removes a point exactly).
      prior: Gaussian with ``mean [O, D]``, ``prec_tril [O|1, D, D]``.
      batch_size: if given, accumulate the statistics in sequential batches of
        this many points (identical result, memory independent of ``N``).

    Returns:
      Gaussian with ``mean [O, D]`` and ``prec_tril [O, D, D]``.
    """
    stats = batched_sum(natural_stats, (features, targets, precision), batch_size, remat=False)
    return posterior_from_stats(prior, stats)


def log_marginal_likelihood(features: Array, targets: Array, precision: Array, prior: Gaussian) -> Array:
    """Exact ``log p(targets)`` for a fixed design, summed over units.

    ``targets_d ~ N(Phi mu_d, Phi S_d Phi^T + diag(1/lambda_d))`` is evaluated
    through the posterior without any ``N x N`` matrix:

        log p = 1/2 sum_n log(lambda_n / 2 pi) + 1/2 log|P0| - 1/2 log|P|
                - 1/2 (sum_n lambda_n y_n^2 + mu^T P0 mu - m^T P m)

    Points with ``lambda = 0`` (padding) are excluded.
    """
    stats = natural_stats(features, targets, precision)
    post = posterior_from_stats(prior, stats)
    _, h0 = _prior_natural(prior)
    h = h0 + stats.shift  # = P m
    real = precision > 0
    log_lam = jnp.where(real, jnp.log(jnp.where(real, precision, 1.0)), 0.0)
    noise_term = 0.5 * jnp.sum(log_lam - real * math.log(2 * math.pi), axis=0)  # [O]
    logdet_p0 = 2 * jnp.sum(jnp.log(jnp.diagonal(prior.prec_tril, axis1=-2, axis2=-1)), -1)
    logdet_p = 2 * jnp.sum(jnp.log(jnp.diagonal(post.prec_tril, axis1=-2, axis2=-1)), -1)
    quad = (
        jnp.sum(precision * targets**2, axis=0)
        + jnp.einsum("od,od->o", jnp.broadcast_to(h0, post.mean.shape), prior.mean)
        - jnp.einsum("od,od->o", h, post.mean)
    )
    return jnp.sum(noise_term + 0.5 * logdet_p0 - 0.5 * logdet_p - 0.5 * quad)

"""Closed-form Bayesian linear regression for one layer (SPEC section 4).

For each output unit ``d`` with prior ``N(mu_d, P0_d^{-1})``, features
``Phi [N, D]`` shared across units, pseudo-targets ``yhat [N, O]`` and
per-point, per-unit precisions ``lambda [N, O]``:

    P_d = P0_d + Phi^T diag(lambda_d) Phi
    m_d = P_d^{-1} (P0_d mu_d + Phi^T (lambda_d * yhat_d))

We never form an ``N x N`` matrix or an inverse. Two forms of the same
posterior live here, with different float32 ranges (docs/robustness.md):

- :func:`posterior` (the public closed form) is the square-root (QR) form of
  :mod:`bnnp_jax.core.blr_qr`: it never forms ``P``; points are rows ``sqrt(lambda)
  phi_n`` folded into a triangular root by Householder QR. In float32 it stays
  finite and within 1e-2 nats (KL per unit) of float64 for precision ratios
  ``lambda / p0`` up to 1e8, with fewer points than weights (N < D) or more.
- The information form: :func:`natural_stats` ``Phi^T diag(lambda_d) Phi``,
  ``Phi^T (lambda_d yhat_d)``, then a Cholesky factor of ``P`` in
  :func:`posterior_from_stats`, :func:`log_marginal_likelihood` and
  :func:`sample_posterior` given a precision root (:class:`PriorFactors`). In
  float32 it is within 1e-2 nats of float64 up to ratio 1e4; beyond that, with
  N <= D, it loses the directions the data do not reach (measured: up to 26 nats
  at 1e6 and NaN factors at 1e8 for D = 33; with N >> D it degrades more slowly,
  0.08 nats at 1e8). The BNNP keeps natural statistics for training: they add
  over points, so minibatching is a sum, and one Cholesky serves draw, mean and
  KL; float64 is the switch. Given the prior's covariance factor
  (:class:`ScaleFactors`, what the BNNP passes), :func:`sample_posterior` works
  in whitened coordinates instead, factoring ``I + L^T S L``, so that an
  ill-conditioned learned ``L`` is never inverted.

Both forms give exact sequential (minibatched) updates (SPEC section 6), and a
point with ``lambda = 0`` vanishes exactly (zero statistics, or a zero row),
which is how padding works.

Jitter policy: none. No diagonal is ever added to ``P`` or its root: a jitter
large enough to rescue the float32 Cholesky biases the prior directions by
about ``D eps lambda`` (see :mod:`bnnp_jax.core.blr_qr`); the square-root form is
the remedy, and float64 is the switch for the information form.

:func:`sample_posterior` is the sampler the BNNP uses on every path. It draws
``w``, the mean and ``KL(q || p)`` from one Cholesky factorisation and two
triangular solves that take all right-hand sides at once, and it has the
width-scalable fast path of SPEC section 9: when the prior precision and the
pseudo-precisions are shared by all units (``[1, D, D]`` factors), every unit
is a column of one ``[D, D]`` solve, ``O(N D^2 + D^3 + O D^2)`` per layer
instead of ``O(O (N D^2 + D^3))``.

The LAPACK calls go through :mod:`bnnp_jax.core.linalg` (why: its docstring).
The dual form of the same posterior is :mod:`bnnp_jax.core.blr_dual`; the
network-wide path sampler is :func:`bnnp_jax.bnnp.path.sample_layers`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from bnnp_jax.core import blr_qr as numerics
from bnnp_jax.core.gaussian import Gaussian
from bnnp_jax.core.linalg import cholesky, log_diag, tri_solve

__all__ = ["NaturalStats", "natural_stats", "posterior_from_stats", "posterior", "log_marginal_likelihood",
           "PriorFactors", "ScaleFactors", "inverse_trils", "sample_posterior"]

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
    # Full float32 products: JAX's default on recent GPUs is TF32 (10-bit mantissa),
    # which the information form's Cholesky cannot afford (module docstring).
    hi = jax.lax.Precision.HIGHEST
    prec = jnp.einsum("no,nd,ne->ode", precision, features, features, precision=hi)
    shift = jnp.einsum("no,nd->od", precision * targets, features, precision=hi)
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
    """Conditional posterior of one layer's weights (SPEC section 4), square-root form.

    Accumulates :func:`bnnp_jax.core.blr_qr.sqrt_posterior`'s QR root rather than
    ``P`` itself, so float32 stays close to float64 up to precision ratios of
    1e8 (module docstring); in real arithmetic it equals
    ``posterior_from_stats(prior, natural_stats(features, targets, precision))``.

    Args:
      features: ``[N, D]``.
      targets: ``[N, O]``.
      precision: ``[N, O]`` (zero removes a point exactly; its gradient is reported as 0).
      prior: Gaussian with ``mean [O, D]``, ``prec_tril [O|1, D, D]``.
      batch_size: if given, add the points in sequential batches of this many
        (the same posterior, memory independent of ``N``).

    Returns:
      Gaussian with ``mean [O, D]`` and ``prec_tril [O, D, D]``.
    """
    return numerics.sqrt_posterior(features, targets, precision, prior, batch_size)


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


# ----- the layer sampler: chained LAPACK calls, shared-factor fast path ------


class PriorFactors(NamedTuple):
    """A layer prior for :func:`sample_posterior`.

    Attributes:
      mean: ``[O, D]``.
      root: ``[O|1, D, D]`` triangular ``U`` with prior precision ``U^T U``
        (``L^{-1}`` for a covariance factor ``L``; ``C^T`` for a precision factor ``C``).
    """

    mean: Array
    root: Array

    @classmethod
    def from_gaussian(cls, g: Gaussian) -> "PriorFactors":
        return cls(g.mean, jnp.swapaxes(g.prec_tril, -1, -2))


class ScaleFactors(NamedTuple):
    """A layer prior by its covariance factor, for :func:`sample_posterior`'s whitened form.

    Attributes:
      mean: ``[O, D]``.
      scale: ``[O|1, D, D]`` lower-triangular ``L`` with prior covariance ``L L^T``.
    """

    mean: Array
    scale: Array


def inverse_trils(trils: Sequence[Array]) -> list[Array]:
    """``L^{-1}`` for lower-triangular ``[O_l, D_l, D_l]`` blocks of several layers
    in one LAPACK call: each is padded to ``[[L, 0], [0, I]]`` of the largest size."""
    d_max = max(t.shape[-1] for t in trils)

    def pad(t):
        d = t.shape[-1]
        tail = jnp.diag((jnp.arange(d_max) >= d).astype(t.dtype))
        return jnp.pad(t, ((0, 0), (0, d_max - d), (0, d_max - d))) + tail

    stacked = jnp.concatenate([pad(t) for t in trils])
    eye = jnp.broadcast_to(jnp.eye(d_max, dtype=stacked.dtype), stacked.shape)
    inv = tri_solve(stacked, eye)
    out, start = [], 0
    for t in trils:
        o, d = t.shape[0], t.shape[-1]
        out.append(inv[start : start + o, :d, :d])
        start += o
    return out


def _solves(chol: Array, h: Array, root_t: Array | None, eps: Array):
    """Mean ``m``, draw ``w`` ``[O, D]`` and ``tr(P0 Sigma_q)`` ``[O|1]`` from the
    posterior factor ``chol [O|1, D, D]``: ``z = C^{-1} h``, ``[m, w] = C^{-T} [z, z + eps]``
    and ``||C^{-1} U^T||_F^2``, with all right-hand sides in two chained solves.
    ``root_t=None`` (a draw without its KL) solves for ``w`` alone; ``m`` and the
    trace come back as ``None``."""
    o, kl = h.shape[0], root_t is not None
    if chol.shape[0] == 1:  # shared factor: units are columns (SPEC section 9 fast path)
        x = tri_solve(chol[0], jnp.concatenate([h.T, root_t[0]], -1) if kl else h.T)  # [D, O (+ D)]
        z = x[:, :o]
        if not kl:
            return None, tri_solve(chol[0], z + eps.T, 1).T, None
        y = tri_solve(chol[0], jnp.concatenate([z, z + eps.T], -1), 1)  # [D, 2 O]
        return y[:, :o].T, y[:, o:].T, jnp.sum(x[:, o:] ** 2)[None]
    rhs = jnp.concatenate([h[..., None], jnp.broadcast_to(root_t, chol.shape)], -1) if kl else h[..., None]
    x = tri_solve(chol, rhs)  # [O, D, 1 (+ D)]
    z = x[..., 0]
    if not kl:
        return None, tri_solve(chol, (z + eps)[..., None], 1)[..., 0], None
    y = tri_solve(chol, jnp.stack([z, z + eps], -1), 1)  # [O, D, 2]
    return y[..., 0], y[..., 1], jnp.sum(x[..., 1:] ** 2, (-2, -1))


def sample_posterior(key: Array, prior: PriorFactors, stats: NaturalStats,
                     with_kl: bool = True) -> tuple[Array, Array | None]:
    """One draw of a layer's weights from the posterior of SPEC section 4 and its KL.

    Args:
      prior: :class:`PriorFactors` (``root [O|1, D, D]``: the information form) or
        :class:`ScaleFactors` (``scale [O|1, D, D]``: the whitened form, which never
        inverts the prior's covariance factor).
      stats: :class:`NaturalStats` (``precision [O|1, D, D]``, ``shift [O, D]``).
      with_kl: ``False`` skips the KL (returned as ``None``) and the ``D`` extra
        right-hand sides its trace term needs: prediction only wants draws.

    Returns:
      ``w [O, D]`` (``w = m + C^{-T} eps``, ``P = C C^T``) and ``KL(q || p)`` per unit ``[O]``
      (``None`` without ``with_kl``).
    """
    if isinstance(prior, ScaleFactors):
        return _sample_whitened(key, prior, stats, with_kl)
    root = prior.root
    p0 = jnp.matmul(jnp.swapaxes(root, -1, -2), root, precision=jax.lax.Precision.HIGHEST)  # see natural_stats
    h = jnp.einsum("...ij,...j->...i", p0, prior.mean) + stats.shift
    chol = cholesky(p0 + stats.precision)
    eps = jax.random.normal(key, h.shape, h.dtype)
    mean, w, trace = _solves(chol, h, jnp.swapaxes(root, -1, -2) if with_kl else None, eps)
    if not with_kl:
        return w, None
    maha = jnp.sum(jnp.einsum("...ij,...j->...i", root, mean - prior.mean) ** 2, -1)
    kl = 0.5 * (trace + maha - h.shape[-1]) + log_diag(chol) - log_diag(root)
    return w, kl


def _sample_whitened(key: Array, prior: ScaleFactors, stats: NaturalStats,
                     with_kl: bool) -> tuple[Array, Array | None]:
    """:func:`sample_posterior` in whitened coordinates ``u = L^{-1} (w - mu)``.

    The prior is ``N(0, I)`` in ``u`` and the posterior ``N(M^{-1} r, M^{-1})`` with
    ``M = I + L^T S L = R R^T`` and ``r = L^T (b - S mu)`` (SPEC section 4 with
    ``w = mu + L u``), so ``w = mu + L R^{-T} (R^{-1} r + eps)`` and
    ``KL = (tr M^{-1} + |M^{-1} r|^2 - D) / 2 + log|R|``. Why: ``M``'s eigenvalues
    are at least 1 whatever ``cond(L)``, whereas the information form's
    ``P = L^{-T} L^{-1} + S`` needs ``L^{-1}``, which a learned, ill-conditioned
    covariance factor does not survive (docs/robustness.md). It costs two ``D x D``
    products per unit on every path, which the information form shares across paths.
    """
    hi = jax.lax.Precision.HIGHEST
    scale, prec = prior.scale, stats.precision  # [O|1, D, D]
    resid = stats.shift - jnp.einsum("...ij,...j->...i", prec, prior.mean, precision=hi)  # b - S mu [O, D]
    r = jnp.einsum("...ji,...j->...i", scale, resid, precision=hi)  # L^T (b - S mu)
    lts = jnp.matmul(jnp.swapaxes(scale, -1, -2), prec, precision=hi)
    eye = jnp.eye(r.shape[-1], dtype=r.dtype)
    chol = cholesky(eye + jnp.matmul(lts, scale, precision=hi))  # R [O|1, D, D]
    eps = jax.random.normal(key, r.shape, r.dtype)
    mean_u, u, trace = _solves(chol, r, jnp.broadcast_to(eye, chol.shape) if with_kl else None, eps)
    w = prior.mean + jnp.einsum("...ij,...j->...i", scale, u, precision=hi)
    if not with_kl:
        return w, None
    kl = 0.5 * (trace + jnp.sum(mean_u**2, -1) - r.shape[-1]) + log_diag(chol)
    return w, kl

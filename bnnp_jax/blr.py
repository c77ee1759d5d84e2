"""Closed-form Bayesian linear regression for one layer (SPEC section 4).

For each output unit ``d`` with prior ``N(mu_d, P0_d^{-1})``, features
``Phi [N, D]`` shared across units, pseudo-targets ``yhat [N, O]`` and
per-point, per-unit precisions ``lambda [N, O]``:

    P_d = P0_d + Phi^T diag(lambda_d) Phi
    m_d = P_d^{-1} (P0_d mu_d + Phi^T (lambda_d * yhat_d))

We never form an ``N x N`` matrix or an inverse. Two forms of the same
posterior live here, with different float32 ranges (issue 8, docs/robustness.md):

- :func:`posterior` (the public closed form) is the square-root (QR) form of
  :mod:`bnnp_jax.numerics`: it never forms ``P``; points are rows ``sqrt(lambda)
  phi_n`` folded into a triangular root by Householder QR. In float32 it stays
  finite and within 1e-2 nats (KL per unit) of float64 for precision ratios
  ``lambda / p0`` up to 1e8, with fewer points than weights (N < D) or more.
- The information form: :func:`natural_stats` ``Phi^T diag(lambda_d) Phi``,
  ``Phi^T (lambda_d yhat_d)``, then a Cholesky factor of ``P`` in
  :func:`posterior_from_stats`, :func:`log_marginal_likelihood` and the BNNP's
  path sampler :func:`sample_posterior`. In float32 it is within 1e-2 nats of
  float64 up to ratio 1e4; beyond that, with N <= D, it loses the directions
  the data do not reach (measured: up to 26 nats at 1e6 and NaN factors at 1e8
  for D = 33; with N >> D it degrades more slowly, 0.08 nats at 1e8). The BNNP
  keeps it for training: statistics that add over points make minibatching a
  sum and one Cholesky serves draw, mean and KL; float64 is the switch.

Both forms give exact sequential (minibatched) updates (SPEC section 6), and a
point with ``lambda = 0`` vanishes exactly (zero statistics, or a zero row),
which is how padding works.

Jitter policy: none. No diagonal is ever added to ``P`` or its root: a jitter
large enough to rescue the float32 Cholesky biases the prior directions by
about ``D eps lambda`` (see :mod:`bnnp_jax.numerics`); the square-root form is
the remedy, and float64 is the switch for the information form.

:func:`sample_posterior` is the sampler the BNNP uses on every path. It draws
``w``, the mean and ``KL(q || p)`` from one Cholesky factorisation and two
triangular solves that take all right-hand sides at once, and it has the
width-scalable fast path of SPEC section 9: when the prior precision and the
pseudo-precisions are shared by all units (``[1, D, D]`` factors), every unit
is a column of one ``[D, D]`` solve, ``O(N D^2 + D^3 + O D^2)`` per layer
instead of ``O(O (N D^2 + D^3))``.

jaxlib 0.10's batched CPU LAPACK kernels split a large batch over XLA's
intra-op thread pool and block until the pieces finish; two such calls running
at once can hold every pool thread and deadlock (seen on 2 cores). So the
sampler's LAPACK calls form one chain (factor, solve, solve), and
:func:`cholesky` / :func:`tri_solve` carry custom VJPs whose backward passes
are chains too (JAX's own rules emit independent solves that may overlap).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve, solve_triangular

from bnnp_jax import numerics
from bnnp_jax.gaussian import Gaussian

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

    Accumulates :func:`bnnp_jax.numerics.sqrt_posterior`'s QR root rather than
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


# ----- the path sampler: chained LAPACK calls, shared-factor fast path -------


@jax.custom_vjp
def cholesky(a: Array) -> Array:
    """Lower Cholesky factor ``[..., D, D]``; its VJP is two chained triangular solves."""
    return jnp.linalg.cholesky(a)


def _cholesky_fwd(a):
    chol = jnp.linalg.cholesky(a)
    return chol, chol


def _cholesky_bwd(chol, g):
    # Murray (2016), eq. 10: abar = L^{-T} Phi(L^T lbar) L^{-1}, Phi = tril with halved diagonal.
    lt = jnp.swapaxes(chol, -1, -2)
    p = jnp.tril(lt @ jnp.tril(g))
    p = p - 0.5 * jnp.tril(jnp.triu(p))
    y = solve_triangular(chol, p, lower=True, trans=1)  # L^{-T} P
    s = jnp.swapaxes(solve_triangular(chol, jnp.swapaxes(y, -1, -2), lower=True, trans=1), -1, -2)
    return (0.5 * (s + jnp.swapaxes(s, -1, -2)),)


cholesky.defvjp(_cholesky_fwd, _cholesky_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def tri_solve(chol: Array, b: Array, trans: int = 0) -> Array:
    """``op(chol)^{-1} b`` for lower-triangular ``chol [..., D, D]``, ``b [..., D, K]``
    (equal batch dims), ``op`` = transpose when ``trans=1``; one LAPACK call each way."""
    return solve_triangular(chol, b, lower=True, trans=trans)


def _tri_solve_fwd(chol, b, trans):
    x = solve_triangular(chol, b, lower=True, trans=trans)
    return x, (chol, x)


def _tri_solve_bwd(trans, res, g):
    chol, x = res
    gb = solve_triangular(chol, g, lower=True, trans=1 - trans)
    gc = -(gb @ jnp.swapaxes(x, -1, -2)) if trans == 0 else -(x @ jnp.swapaxes(gb, -1, -2))
    return jnp.tril(gc), gb


tri_solve.defvjp(_tri_solve_fwd, _tri_solve_bwd)


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


def _log_diag(tril: Array) -> Array:
    return jnp.sum(jnp.log(jnp.diagonal(tril, axis1=-2, axis2=-1)), -1)


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
      prior: :class:`PriorFactors` (``root [O|1, D, D]``).
      stats: :class:`NaturalStats` (``precision [O|1, D, D]``, ``shift [O, D]``).
      with_kl: ``False`` skips the KL (returned as ``None``) and the ``D`` extra
        right-hand sides its trace term needs: prediction only wants draws.

    Returns:
      ``w [O, D]`` (``w = m + C^{-T} eps``, ``P = C C^T``) and ``KL(q || p)`` per unit ``[O]``
      (``None`` without ``with_kl``).
    """
    root = prior.root
    p0 = jnp.matmul(jnp.swapaxes(root, -1, -2), root, precision=jax.lax.Precision.HIGHEST)  # see natural_stats
    h = jnp.einsum("...ij,...j->...i", p0, prior.mean) + stats.shift
    chol = cholesky(p0 + stats.precision)
    eps = jax.random.normal(key, h.shape, h.dtype)
    mean, w, trace = _solves(chol, h, jnp.swapaxes(root, -1, -2) if with_kl else None, eps)
    if not with_kl:
        return w, None
    maha = jnp.sum(jnp.einsum("...ij,...j->...i", root, mean - prior.mean) ** 2, -1)
    kl = 0.5 * (trace + maha - h.shape[-1]) + _log_diag(chol) - _log_diag(root)
    return w, kl


class DualPrior(NamedTuple):
    """A layer prior for :func:`sample_posterior_dual`.

    Attributes:
      mean: ``[O, D]``.
      tril: ``[O|1, D, D]`` lower-triangular covariance factor ``L`` (``Sigma = L L^T``).
    """

    mean: Array
    tril: Array


def sample_posterior_dual(key: Array, prior: DualPrior, features: Array, targets: Array, precision: Array,
                          with_kl: bool = True) -> tuple[Array, Array | None]:
    """One draw of a layer's weights and its KL in the dual (``N x N``) form.

    The same posterior as :func:`sample_posterior`, written in the space of the
    ``N`` points instead of the ``D`` weights; cheaper when ``N < D`` (a context
    smaller than the layer input). Per unit ``d``, with ``B = Lambda^{1/2} Phi L``:

        K   = I + B B^T                                    [N, N]   (C C^T = K)
        w   = w0 + L B^T K^{-1} (Lambda^{1/2} (yhat - Phi w0) - eps1),   w0 = mu + L eps0
        KL  = 1/2 [tr K^{-1} - N + ||B^T v||^2 + log|K|],  v = K^{-1} Lambda^{1/2} (yhat - Phi mu)

    The draw is Matheron's rule (a prior draw corrected by the pseudo-data), so it
    has the posterior's distribution but is not the primal form's draw for the same
    key; ``log|P| - log|P0| = log|K|`` is the matrix determinant lemma and
    ``tr(P0 Sigma_q) = D - N + tr K^{-1}``. A point with ``lambda = 0`` (padding) is
    an identity row of ``K`` and drops out exactly. Like the primal sampler, the
    LAPACK calls form one chain (factor, solve, solve).

    Args:
      prior: :class:`DualPrior` (``tril [O|1, D, D]``).
      features: ``[N, D]`` design ``Phi``.
      targets: ``[N, O]`` pseudo-targets.
      precision: ``[N, O]`` or ``[N, 1]`` pseudo-precisions ``lambda >= 0``.
      with_kl: ``False`` skips the trace and the KL (returned as ``None``).

    Returns:
      ``w [O, D]`` and ``KL(q || p)`` per unit ``[O]`` (``None`` without ``with_kl``).
    """
    k_prior, k_data = jax.random.split(key)
    eps0 = jax.random.normal(k_prior, prior.mean.shape, prior.mean.dtype)  # w0 = mu + L eps0
    eps1 = jax.random.normal(k_data, targets.shape[::-1], prior.mean.dtype)  # [O, N]
    return dual_draw(prior, features, targets, precision, eps0, eps1, with_kl)


def dual_draw(prior: DualPrior, features: Array, targets: Array, precision: Array, eps0: Array, eps1: Array,
              with_kl: bool = True) -> tuple[Array, Array | None]:
    """:func:`sample_posterior_dual` for given standard normals ``eps0 [O, D]`` (the
    prior draw) and ``eps1 [O, N]`` (the pseudo-data noise). The draw is affine in them,
    so its distribution is checked exactly by its value at zero (the posterior mean)
    and its Jacobian (a square root of the posterior covariance)."""
    hi = jax.lax.Precision.HIGHEST  # see natural_stats
    n, o = targets.shape
    tril = prior.tril
    lam = jnp.broadcast_to(precision, targets.shape).T  # [O, N]
    # sqrt'(0) is infinite: a padded point (lambda = 0) reports a zero gradient instead,
    # which is what it gets from any mask that zeroes it (lambda = lambda_net * 0).
    root_lam = jnp.where(lam > 0, jnp.sqrt(jnp.where(lam > 0, lam, 1.0)), 0.0)
    phi_l = jnp.einsum("nd,ode->one", features, tril, precision=hi)  # Phi L  [O|1, N, D]
    b = root_lam[:, :, None] * phi_l  # [O, N, D]
    k = jnp.eye(n, dtype=b.dtype) + _gram(b)
    resid0 = root_lam * (targets.T - jnp.einsum("nd,od->on", features, prior.mean, precision=hi))
    resid = resid0 - jnp.einsum("ond,od->on", b, eps0, precision=hi) - eps1  # B eps0 = Lambda^{1/2} Phi (w0 - mu)
    if with_kl:
        half_logdet, trace, vu = _dual_solve(k, jnp.stack([resid0, resid], -1))
        v, u = vu[..., 0], vu[..., 1]
    else:
        chol = cholesky(k)
        u = tri_solve(chol, tri_solve(chol, resid[..., None]), 1)[..., 0]
    w = prior.mean + jnp.matmul(tril, (eps0 + jnp.einsum("ond,on->od", b, u, precision=hi))[..., None],
                                precision=hi)[..., 0]
    if not with_kl:
        return w, None
    maha = jnp.sum(jnp.einsum("ond,on->od", b, v, precision=hi) ** 2, -1)
    return w, 0.5 * (trace - n + maha) + half_logdet


@jax.custom_vjp
def _gram(b: Array) -> Array:
    """``B B^T`` ``[..., N, N]`` for ``b [..., N, D]``. Its VJP is one product,
    ``sym(K_bar) 2 B``, where differentiating the einsum gives two (``K_bar B + K_bar^T B``)."""
    return jnp.matmul(b, jnp.swapaxes(b, -1, -2), precision=jax.lax.Precision.HIGHEST)


def _gram_fwd(b):
    return _gram(b), b


def _gram_bwd(b, g):
    return (jnp.matmul(g + jnp.swapaxes(g, -1, -2), b, precision=jax.lax.Precision.HIGHEST),)


_gram.defvjp(_gram_fwd, _gram_bwd)


@jax.custom_vjp
def _dual_solve(k: Array, rhs: Array) -> tuple[Array, Array, Array]:
    """``(1/2 log|K|, tr K^{-1}, K^{-1} rhs)`` for symmetric positive-definite
    ``k [..., N, N]`` and ``rhs [..., N, R]``: one Cholesky ``K = C C^T`` and one solve
    with ``C`` for ``[rhs, I]`` (``tr K^{-1} = ||C^{-1}||_F^2``), one with ``C^T``.

    Its VJP is matrix products only: with ``X = K^{-1} = C^{-T} C^{-1}`` (from the
    forward's ``C^{-1}``) and ``V = X rhs``, the cotangents are
    ``K_bar = sym(a/2 X - b X^2 - X V_bar V^T)`` and ``rhs_bar = X V_bar`` for output
    cotangents ``(a, b, V_bar)``. That is two ``N^3`` products instead of the four
    triangular solves and three products of differentiating the factorisation and
    the solves, and no LAPACK call in the backward pass.
    """
    return _dual_solve_fwd(k, rhs)[0]


def _dual_solve_fwd(k, rhs):
    n, r = rhs.shape[-2:]
    chol = cholesky(k)
    eye = jnp.broadcast_to(jnp.eye(n, dtype=k.dtype), k.shape)
    x = tri_solve(chol, jnp.concatenate([rhs, eye], -1))  # [C^{-1} rhs, C^{-1}]
    v = tri_solve(chol, x[..., :r], 1)
    inv_chol = x[..., r:]
    return (_log_diag(chol), jnp.sum(inv_chol**2, (-2, -1)), v), (inv_chol, v)


def _dual_solve_bwd(res, g):
    inv_chol, v = res
    g_half_logdet, g_trace, g_v = g
    hi = jax.lax.Precision.HIGHEST
    x = jnp.matmul(jnp.swapaxes(inv_chol, -1, -2), inv_chol, precision=hi)  # K^{-1}
    q = jnp.matmul(x, g_v, precision=hi)  # rhs_bar
    k_bar = (0.5 * g_half_logdet[..., None, None] * x
             - g_trace[..., None, None] * jnp.matmul(x, x, precision=hi)
             - jnp.matmul(q, jnp.swapaxes(v, -1, -2), precision=hi))
    return 0.5 * (k_bar + jnp.swapaxes(k_bar, -1, -2)), q


_dual_solve.defvjp(_dual_solve_fwd, _dual_solve_bwd)


def sample_layers(key: Array, factors: Sequence[PriorFactors],
                  layer_stats: Callable[[int, list[Array]], NaturalStats],
                  with_kl: bool = True) -> tuple[list[Array], Array | None]:
    """One path of a layer-wise conditional Gaussian posterior (SPEC section 4), the
    sampler shared by the BNNP, GIVI and the per-task BNNP.

    For ``l = 0..L-1``: ``stats = layer_stats(l, [w_0, ..., w_{l-1}])`` (the earlier
    draws of this path), then ``w_l ~ q(W_l | earlier)`` by :func:`sample_posterior`.

    Returns:
      ``w_l [D_l, D_{l-1}+1]`` per layer and the path's ``sum_l sum_d KL(q || p)``
      (``None`` when not ``with_kl``).
    """
    factors, weights, kl = list(factors), [], 0.0
    for l, k in enumerate(jax.random.split(key, len(factors))):
        stats = layer_stats(l, weights)
        if l == 0:
            # Order the prior's LAPACK calls before every path's, and their VJPs after
            # (module docstring: concurrent batched LAPACK calls can deadlock on CPU).
            factors, stats = jax.lax.optimization_barrier((factors, stats))
        w, kl_units = sample_posterior(k, factors[l], stats, with_kl)
        weights.append(w)
        kl = kl + jnp.sum(kl_units) if with_kl else None
    return weights, kl

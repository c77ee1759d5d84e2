"""The dual (``N x N``) form of the layer posterior of :mod:`bnnp_jax.core.blr` (SPEC section 4).

The same per-unit Gaussian posterior, written in the space of the ``N`` context
points instead of the ``D`` weights: per unit, ``K = I + B B^T`` with
``B = Lambda^{1/2} Phi L`` (``L`` the prior covariance factor), draws by
Matheron's rule and ``KL = 1/2 [tr K^{-1} - N + ||B^T v||^2 + log|K|]``. It is
cheaper than the primal form when the context is smaller than the layer input
(``N < D``), the usual case in meta-learning. It does not minibatch: ``K``
couples all points.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnnp_jax.core.linalg import cholesky, log_diag, tri_solve

__all__ = ["DualPrior", "sample_posterior_dual", "dual_draw"]

Array = jax.Array


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
    hi = jax.lax.Precision.HIGHEST  # see blr.natural_stats
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
    return (log_diag(chol), jnp.sum(inv_chol**2, (-2, -1)), v), (inv_chol, v)


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

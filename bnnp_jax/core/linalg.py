"""Linear algebra with LAPACK-safe derivatives, shared by every closed-form posterior.

jaxlib 0.10's batched CPU LAPACK kernels split a large batch over XLA's
intra-op thread pool and block until the pieces finish; two such calls running
at once can hold every pool thread and deadlock (seen on 2 cores). So every
program's LAPACK calls form one chain of data dependencies (factor, solve,
solve, next layer ...), threaded with :func:`after` where the maths leaves
them independent, and :func:`cholesky` / :func:`tri_solve` carry custom VJPs
whose backward passes are chains too (JAX's own rules emit independent solves
that may overlap). :mod:`bnnp_jax.core.lapack_order` checks a compiled program.
:func:`solve_lower` is the plain broadcasting solve, for code off that path
(:class:`~bnnp_jax.core.gaussian.Gaussian`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

__all__ = ["after", "cholesky", "tri_solve", "solve_lower", "log_diag"]

Array = jax.Array


def _token(tree) -> Array:
    """A float32 scalar that is exactly 0 but data-depends on every leaf of ``tree``: one
    element per leaf, non-finite values mapped to 0 first (so NaN never leaks)."""
    zero = jnp.zeros((), jnp.float32)
    for d in jax.tree.leaves(tree):
        if not jnp.issubdtype(d.dtype, jnp.inexact) or d.size == 0:
            continue
        e = jnp.ravel(d)[0]
        zero = zero + jnp.where(jnp.isfinite(e), e, 0).astype(jnp.float32) * 0.0
    return zero


@jax.custom_vjp
def after(x, deps):
    """``x`` (any pytree; its float leaves), unchanged in value, computed only once every
    float array in ``deps`` (a pytree) is: a data dependency XLA keeps. Differentiated, the
    order reverses: the cotangent reaching ``deps`` waits for the one of ``x``, so the
    backward passes of two chained LAPACK calls are chained too.

    An ``optimization_barrier`` is no substitute: XLA CPU runs an operation as soon as
    its operands' buffers are ready and ignores control dependencies."""
    t = _token(deps)
    return jax.tree.map(lambda a: a + t.astype(a.dtype) if jnp.issubdtype(a.dtype, jnp.inexact) else a, x)


def _after_fwd(x, deps):
    return after(x, deps), deps


def _after_bwd(deps, g):
    t = _token(g)

    def zero(d):  # integer leaves of deps take float0 cotangents
        if jnp.issubdtype(d.dtype, jnp.inexact):
            return jnp.zeros_like(d) + t.astype(d.dtype)
        return np.zeros(d.shape, jax.dtypes.float0)

    return g, jax.tree.map(zero, deps)


after.defvjp(_after_fwd, _after_bwd)


def log_diag(tril: Array) -> Array:
    """``sum log diag(tril)`` over the last two axes: ``[..., D, D] -> [...]``."""
    return jnp.sum(jnp.log(jnp.diagonal(tril, axis1=-2, axis2=-1)), axis=-1)


def solve_lower(a: Array, b: Array, *, trans: int = 0) -> Array:
    """Solve ``op(a) x = b`` for lower-triangular ``a [..., D, D]``, ``b [..., D, K]``,
    broadcasting the batch dims (``op`` = transpose when ``trans=1``)."""
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = jnp.broadcast_to(a, batch + a.shape[-2:])
    b = jnp.broadcast_to(b, batch + b.shape[-2:])
    return solve_triangular(a, b, lower=True, trans=trans)


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

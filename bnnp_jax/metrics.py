"""Evaluation metrics for predictive function samples (SPEC sections 5, 11, 12).

Per-task functions take Monte-Carlo function samples ``f [S, N, y_dim]`` (the
network outputs ``f_s(x_n)`` under posterior weight samples), the observation
noise ``sigma_y [y_dim]``, targets ``y [N, y_dim]`` and a point ``mask [N]``
(1 = evaluate this point; padding and context points get 0). The predictive
distribution at a point is the mixture ``(1/S) sum_s N(f_s(x_n), diag sigma_y^2)``.
They return scalars and vmap over padded task batches. An all-zero mask gives
NaN (there is nothing to average), on purpose.

Density conventions (SPEC section 12 asks to say which is which):
- :func:`log_predictive_density`: per point the log of the mixture density,
  i.e. the log of the MEAN (over samples) density, then averaged over points.
- :func:`expected_log_density`: per point the MEAN (over samples) of the LOG
  density, averaged over points (a lower bound on the former, by Jensen).
- :func:`joint_log_likelihood`: the log mixture of the joint density of all
  target points, the ``trgt_ppl`` of SPEC section 5 (a sum, not a mean).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

from bnnp_jax.core.gaussian import normal_log_prob

__all__ = ["point_log_densities", "log_predictive_density", "expected_log_density", "joint_log_likelihood",
           "mae", "coverage", "summary", "median_lengthscale", "mmd", "mmd_permutation_test"]

Array = jax.Array


def _check(f: Array, sigma_y: Array, y: Array, mask: Array) -> None:
    if f.ndim != 3 or y.ndim != 2 or f.shape[1:] != y.shape:
        raise ValueError(f"f must be [S, N, y_dim] and y [N, y_dim] with matching N and y_dim; "
                         f"got f {f.shape}, y {y.shape}")
    if mask.shape != y.shape[:1]:
        raise ValueError(f"mask must have shape [N] = {y.shape[:1]}, got {mask.shape}")
    if jnp.shape(sigma_y) not in ((), (y.shape[1],)):
        raise ValueError(f"sigma_y must be a scalar or [y_dim] = [{y.shape[1]}], got shape {jnp.shape(sigma_y)}")


def _masked_mean(v: Array, mask: Array) -> Array:
    """Mean of ``v [N]`` over masked points; padded values never enter (even if not finite)."""
    return jnp.sum(jnp.where(mask > 0, v * mask, 0.0)) / jnp.sum(mask)


def point_log_densities(f: Array, sigma_y: Array, y: Array) -> Array:
    """``log N(y_n | f_s(x_n), diag sigma_y^2)`` summed over y dims: ``[S, N]``."""
    sigma_y = jnp.asarray(sigma_y, f.dtype)
    return jnp.sum(normal_log_prob(y, f, sigma_y), axis=-1)


def log_predictive_density(f: Array, sigma_y: Array, y: Array, mask: Array) -> Array:
    """Mean over masked points of ``log (1/S) sum_s N(y_n | f_s(x_n), sigma_y^2)`` (log of the mean density)."""
    _check(f, sigma_y, y, mask)
    lp = logsumexp(point_log_densities(f, sigma_y, y), axis=0) - math.log(f.shape[0])
    return _masked_mean(lp, mask)


def expected_log_density(f: Array, sigma_y: Array, y: Array, mask: Array) -> Array:
    """Mean over masked points of ``(1/S) sum_s log N(y_n | f_s(x_n), sigma_y^2)`` (mean log density)."""
    _check(f, sigma_y, y, mask)
    return _masked_mean(jnp.mean(point_log_densities(f, sigma_y, y), axis=0), mask)


def joint_log_likelihood(f: Array, sigma_y: Array, y: Array, mask: Array) -> Array:
    """``logsumexp_s sum_n mask_n log N(y_n | f_s(x_n), sigma_y^2) - log S`` (SPEC section 5, per task)."""
    _check(f, sigma_y, y, mask)
    lp = point_log_densities(f, sigma_y, y)
    joint = jnp.sum(jnp.where(mask > 0, lp * mask, 0.0), axis=1)
    return logsumexp(joint) - math.log(f.shape[0])


def mae(f: Array, y: Array, mask: Array) -> Array:
    """Mean absolute error of the predictive mean ``mean_s f_s`` over masked points (and y dims)."""
    _check(f, jnp.ones(y.shape[1:], f.dtype), y, mask)
    err = jnp.mean(jnp.abs(y - jnp.mean(f, axis=0)), axis=-1)
    return _masked_mean(err, mask)


def coverage(f: Array, sigma_y: Array, y: Array, mask: Array, level: float = 0.9) -> Array:
    """Fraction of masked (point, y-dim) pairs inside the central ``level`` interval.

    The interval is the exact central interval of the predictive mixture (no
    moment matching, no noise sampling): since its CDF
    ``F(t) = (1/S) sum_s Phi((t - f_s) / sigma_y)`` is continuous and increasing,
    ``y`` lies in ``[F^-1((1 - level)/2), F^-1((1 + level)/2)]`` exactly when the
    PIT value ``F(y)`` lies in ``[(1 - level)/2, (1 + level)/2]``.
    """
    _check(f, sigma_y, y, mask)
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    pit = jnp.mean(norm.cdf((y[None] - f) / jnp.asarray(sigma_y, f.dtype)), axis=0)  # [N, y_dim]
    inside = (jnp.abs(pit - 0.5) <= 0.5 * level).astype(f.dtype)
    return _masked_mean(jnp.mean(inside, axis=-1), mask)


def summary(f: Array, sigma_y: Array, y: Array, mask: Array, level: float = 0.9) -> dict[str, Array]:
    """All per-task metrics in one dict of scalars (vmaps over tasks)."""
    return {
        "log_predictive_density": log_predictive_density(f, sigma_y, y, mask),
        "expected_log_density": expected_log_density(f, sigma_y, y, mask),
        "joint_log_likelihood": joint_log_likelihood(f, sigma_y, y, mask),
        "mae": mae(f, y, mask),
        "coverage": coverage(f, sigma_y, y, mask, level),
    }


# ----------------------------------------------------------------------------- MMD
def _flatten(name: str, s: Array) -> Array:
    s = jnp.asarray(s)
    if s.ndim < 2 or s.shape[0] < 2:
        raise ValueError(f"{name} must be [num_samples >= 2, G, ...], got shape {s.shape}")
    return s.reshape(s.shape[0], -1)


def _sq_dists(a: Array, b: Array) -> Array:
    """Squared Euclidean distances ``[A, B]`` without an ``[A, B, G]`` intermediate."""
    d2 = jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(d2, 0.0)


def median_lengthscale(key: Array | None, pooled: Array, max_points: int = 1000) -> Array:
    """Median heuristic: the median pairwise distance of ``pooled [P, G]``.

    With more than ``max_points`` points, a random subset (needs ``key``; with
    ``key=None`` the first ``max_points``) keeps the cost at ``O(max_points^2)``.
    """
    if pooled.shape[0] > max_points:
        idx = jnp.arange(max_points) if key is None else jax.random.permutation(key, pooled.shape[0])[:max_points]
        pooled = pooled[idx]
    iu = jnp.triu_indices(pooled.shape[0], 1)
    return jnp.median(jnp.sqrt(_sq_dists(pooled, pooled)[iu]))


def _mmd2_from_kernel(k: Array, num_a: int) -> Array:
    """Unbiased MMD^2 from the pooled kernel matrix whose first ``num_a`` rows are sample A."""
    num_b = k.shape[0] - num_a
    kaa, kbb, kab = k[:num_a, :num_a], k[num_a:, num_a:], k[:num_a, num_a:]
    term_a = (jnp.sum(kaa) - jnp.trace(kaa)) / (num_a * (num_a - 1))
    term_b = (jnp.sum(kbb) - jnp.trace(kbb)) / (num_b * (num_b - 1))
    return term_a + term_b - 2.0 * jnp.mean(kab)


def _pooled_kernel(key, a, b, lengthscale):
    pooled = jnp.concatenate([_flatten("samples_a", a), _flatten("samples_b", b)], axis=0)
    ell = median_lengthscale(key, pooled) if lengthscale is None else jnp.asarray(lengthscale, pooled.dtype)
    return jnp.exp(-0.5 * _sq_dists(pooled, pooled) / ell**2)


def mmd(key: Array | None, samples_a: Array, samples_b: Array, lengthscale: float | None = None) -> Array:
    """Unbiased MMD^2 (Gretton et al., 2012, eq. 3) between function samples on a grid.

    Args:
      key: only used to subsample points for the median heuristic when there
        are more than 1000 samples in total; None is deterministic.
      samples_a: ``[A, G]`` (or ``[A, G, y_dim]``, flattened) function values.
      samples_b: ``[B, G]`` likewise, same trailing shape.
      lengthscale: RBF lengthscale ``l`` of ``k(u, v) = exp(-|u - v|^2 / (2 l^2))``;
        None uses the median pairwise distance of the pooled samples.
    Returns a scalar; it can be slightly negative when the distributions agree.
    """
    return _mmd(key, samples_a, samples_b, None if lengthscale is None else jnp.asarray(lengthscale))


@jax.jit
def _mmd(key, samples_a, samples_b, lengthscale):
    return _mmd2_from_kernel(_pooled_kernel(key, samples_a, samples_b, lengthscale), samples_a.shape[0])


def mmd_permutation_test(key: Array, samples_a: Array, samples_b: Array, num_permutations: int = 200,
                         lengthscale: float | None = None) -> tuple[Array, Array]:
    """``(MMD^2, p-value)`` of a permutation test of "A and B have the same law".

    ``p = (1 + #{permuted MMD^2 >= observed}) / (1 + num_permutations)``.
    """
    if int(num_permutations) < 1:
        raise ValueError(f"num_permutations must be >= 1, got {num_permutations}")
    lengthscale = None if lengthscale is None else jnp.asarray(lengthscale)
    return _permutation_test(key, samples_a, samples_b, lengthscale, int(num_permutations))


@functools.partial(jax.jit, static_argnames="num_permutations")
def _permutation_test(key, samples_a, samples_b, lengthscale, num_permutations):
    k_len, k_perm = jax.random.split(key)
    k = _pooled_kernel(k_len, samples_a, samples_b, lengthscale)
    num_a, total = samples_a.shape[0], k.shape[0]
    num_b = total - num_a
    # Label vectors z (1 = in A) for all permutations at once: the block sums
    # become quadratic forms z^T K z, so one [N, N] @ [N, P] product does all.
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k_perm, (int(num_permutations), total)), axis=1), axis=1)
    z = jnp.concatenate([(jnp.arange(total) < num_a)[None], ranks < num_a]).astype(k.dtype).T  # [N, P + 1]
    kz, diag = k @ z, jnp.diag(k)
    ones = jnp.ones((total, 1), k.dtype)
    sum_aa = jnp.sum(z * kz, 0) - diag @ z
    sum_bb = jnp.sum((1 - z) * (k @ ones - kz), 0) - diag @ (1 - z)
    sum_ab = jnp.sum((1 - z) * kz, 0)
    stats = sum_aa / (num_a * (num_a - 1)) + sum_bb / (num_b * (num_b - 1)) - 2.0 * sum_ab / (num_a * num_b)
    observed, null = stats[0], stats[1:]
    return observed, (1.0 + jnp.sum(null >= observed)) / (1.0 + num_permutations)

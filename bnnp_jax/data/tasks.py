"""Padded batches of regression tasks with masks.

Every task family produces a :class:`TaskBatch` with a fixed ``N`` (the
largest task size it can produce) and a ``mask`` for the real points, so a
batch of tasks of different sizes is one set of arrays for ``jit``/``vmap``.
The context/target split (SPEC section 5) adds two disjoint sub-masks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["TaskBatch", "context_bound", "size_mask", "split_one", "split"]

Array = jax.Array


class TaskBatch(NamedTuple):
    """A batch of ``T`` padded tasks.

    Attributes:
      x: ``[T, N, x_dim]`` inputs (padded entries are finite, e.g. 0).
      y: ``[T, N, y_dim]`` targets.
      mask: ``[T, N]`` 1.0 for real points, 0.0 for padding.
      context: ``[T, N]`` 1.0 for context points (a subset of ``mask``).
      target: ``[T, N]`` 1.0 for target points (disjoint from ``context``).
      context_index: ``[T, N_c]`` int, optional: the rows of every context point
        first, then other rows (``context`` is 0 there). ``N_c`` is a static bound
        on the context size (:func:`context_bound`), so the posterior can be built
        from ``N_c`` gathered rows instead of all ``N``.
    """

    x: Array
    y: Array
    mask: Array
    context: Array
    target: Array
    context_index: Array | None = None


def context_bound(n_max: int, proportion: tuple[float, float]) -> int:
    """The most context points :func:`split_one` can choose from a task of at most
    ``n_max`` points with context share at most ``proportion[1]``."""
    if n_max < 2:
        return 1
    return max(1, min(math.ceil(proportion[1] * n_max), n_max - 1))


def size_mask(key: Array, num_tasks: int, n_max: int, n_range: tuple[int, int], dtype=jnp.float32) -> Array:
    """Masks ``[T, n_max]`` for task sizes ``n ~ U{n_range[0], ..., n_range[1] - 1}``."""
    lo, hi = n_range
    if not 1 <= lo < hi <= n_max + 1:
        raise ValueError(f"n_range must satisfy 1 <= lo < hi <= n_max + 1, got {n_range} with n_max={n_max}")
    n = jax.random.randint(key, (num_tasks,), lo, hi)
    return (jnp.arange(n_max)[None, :] < n[:, None]).astype(dtype)


def split_one(key: Array, mask: Array, proportion: tuple[float, float]) -> tuple[Array, Array, Array]:
    """Random disjoint context/target masks for one padded task (SPEC section 5).

    ``mask [N]`` -> ``(context [N], target [N], context_index [N_c])``. The context
    share is ``p ~ U(a, b)`` of the real points, rounded, and clipped so that both
    sets hold at least one point whenever the task has two or more points.
    ``context_index`` lists the context rows first (``N_c`` = :func:`context_bound`).
    """
    k_p, k_perm = jax.random.split(key)
    n = jnp.sum(mask)
    p = jax.random.uniform(k_p, (), minval=proportion[0], maxval=proportion[1])
    n_ctx = jnp.clip(jnp.round(p * n), 1, jnp.maximum(n - 1, 1))
    # Random rank among real points; padded points rank last.
    scores = jax.random.uniform(k_perm, mask.shape) + (1.0 - mask) * 2.0
    rank = jnp.argsort(jnp.argsort(scores))
    context = (rank < n_ctx).astype(mask.dtype) * mask
    target = mask - context
    by_rank = jnp.argsort(rank)[: context_bound(mask.shape[0], proportion)]
    return context, target, by_rank.astype(jnp.int32)


def split(key: Array, x: Array, y: Array, mask: Array, proportion: tuple[float, float]) -> TaskBatch:
    """Attach a random context/target split to padded tasks ``[T, N, ...]``."""
    keys = jax.random.split(key, x.shape[0])
    context, target, index = jax.vmap(split_one, in_axes=(0, 0, None))(keys, mask, proportion)
    return TaskBatch(x, y, mask, context, target, index)

"""Sums over minibatches of points with ``lax.scan`` (SPEC section 6).

Sequential Bayesian updates, within-task log-likelihoods and the memory-bounded
forward pass all reduce to "apply ``fn`` to each batch of rows and add the
results". Rows are padded by :func:`pad_rows`, with one of two fills: sums pad with
zeros (callers make padded rows contribute nothing by passing a weight column,
precision or mask, that pads to zero); maps whose padded outputs are dropped repeat
the last row, so every padded call sees valid input (zeros could make a Cholesky
factor singular).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["pad_rows", "chunk", "batched_sum", "batched_map", "map_padded"]

Array = jax.Array


def pad_rows(a: Array, rows: int, fill: str = "zeros") -> Array:
    """``a [N, ...]`` padded to ``[rows, ...]`` (``rows >= N``) with zero rows (``fill="zeros"``)
    or copies of the last row (``fill="last"``)."""
    if fill not in ("zeros", "last"):
        raise ValueError(f"fill must be 'zeros' or 'last', got {fill!r}")
    widths = [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
    return jnp.pad(a, widths, mode="constant" if fill == "zeros" else "edge")


def chunk(a: Array, batch_size: int) -> Array:
    """``[N, ...] -> [ceil(N / B), B, ...]``, zero-padding the tail."""
    num = -(-a.shape[0] // batch_size)
    return pad_rows(a, num * batch_size).reshape((num, batch_size) + a.shape[1:])


def batched_sum(fn: Callable, arrays: Sequence[Array], batch_size: int | None, remat: bool = True):
    """``sum_b fn(*[a[b] for a in arrays])`` over row batches of size ``batch_size``.

    With ``batch_size=None`` (or ``>= N``) this is a single call. ``remat``
    wraps ``fn`` in ``jax.checkpoint`` so reverse-mode keeps only each batch's
    inputs, not its intermediates: since the batch results are *added*, the
    backward pass needs no per-batch carry either.
    """
    n = arrays[0].shape[0]
    if batch_size is None or batch_size >= n:
        return fn(*arrays)
    body_fn = jax.checkpoint(fn) if remat else fn
    chunks = [chunk(a, batch_size) for a in arrays]
    first = jax.eval_shape(fn, *[c[0] for c in chunks])
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)

    def body(acc, batch):
        return jax.tree.map(jnp.add, acc, body_fn(*batch)), None

    total, _ = jax.lax.scan(body, init, chunks)
    return total


def batched_map(fn: Callable, x: Array, batch_size: int | None) -> Array:
    """``fn`` applied to row batches of ``x [N, ...]``, outputs concatenated along
    axis ``out_axis=1`` convention: ``fn(x_b) -> [S, B, ...]`` gives ``[S, N, ...]``."""
    n = x.shape[0]
    if batch_size is None or batch_size >= n:
        return fn(x)
    out = jax.lax.map(fn, chunk(x, batch_size))  # [nb, S, B, ...]
    out = jnp.moveaxis(out, 0, 1)
    out = out.reshape((out.shape[0], -1) + out.shape[3:])
    return out[:, :n]


def map_padded(fn: Callable, xs, batch_size: int):
    """``jax.lax.map(fn, xs, batch_size=batch_size)`` over the leading axis of the pytree
    ``xs`` (size ``N``), with the tail padded (the last element repeated, outputs sliced
    back to ``N``) instead of lax.map's separate remainder call. That second copy of ``fn``
    has no data path to the loop, so XLA CPU may run their batched LAPACK calls at once,
    which can deadlock on few cores (:mod:`bnnp_jax.core.linalg`)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    batch_size = max(1, min(batch_size, n))
    padded = -(-n // batch_size) * batch_size
    if padded != n:
        xs = jax.tree.map(lambda a: pad_rows(a, padded, "last"), xs)
    out = jax.lax.map(fn, xs, batch_size=batch_size)
    return out if padded == n else jax.tree.map(lambda a: a[:n], out)


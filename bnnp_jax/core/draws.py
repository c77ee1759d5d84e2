"""Many standard-normal arrays from one PRNG call."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

__all__ = ["split_normal"]

Array = jax.Array


def split_normal(key: Array, shapes: list[tuple], sample_shape: tuple = (), dtype=jnp.float32) -> list[Array]:
    """Standard normals of ``sample_shape + shape`` for each shape, from one PRNG call
    (vmapped threefry calls dominate XLA compile time on CPU, so we make one)."""
    sizes = [math.prod(sh) for sh in shapes]
    flat = jax.random.normal(key, tuple(sample_shape) + (sum(sizes),), dtype)
    parts = jnp.split(flat, list(itertools.accumulate(sizes))[:-1], axis=-1)
    return [a.reshape(tuple(sample_shape) + tuple(sh)) for a, sh in zip(parts, shapes)]

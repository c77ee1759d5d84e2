"""Block layouts of a Gaussian over the flat weights: the structure of the MFVI, UCVI, LCVI
and FCVI families (SPEC section 8).

A *layout* is a tuple of :class:`Segment` s over the flat weights ``[P]``
(:func:`bnnp_jax.inference.model.flatten`'s order, layer by layer, unit-major): each a run of
consecutive layers cut into ``count`` equal blocks of ``size`` weights (one unit, one layer,
or everything). :func:`split` and :func:`join` move between the flat vector and the blocks.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

__all__ = ["Segment", "unit_shapes", "unit_layout", "layer_layout", "full_layout", "split", "join"]

Array = jax.Array


class Segment(NamedTuple):
    """A run of consecutive ``layers`` held as ``count`` blocks of ``size`` weights (static).

    ``count * size`` is the number of weights of those layers; blocks cover whole units
    (``size = D``, one per unit, or ``count = 1``). ``diagonal``: each block is diagonal.
    """

    layers: tuple[int, ...]
    count: int
    size: int
    diagonal: bool = False


def unit_shapes(widths: Sequence[int]) -> list[tuple[int, int]]:
    """``(O, D)`` per layer: its output units and each unit's weights (inputs and bias)."""
    return [(o, d + 1) for d, o in zip(widths[:-1], widths[1:])]  # (O, D) per layer


def unit_layout(widths: Sequence[int], diagonal: bool = False) -> tuple[Segment, ...]:
    """One block per output unit (UCVI), or a diagonal per unit (MFVI)."""
    return tuple(Segment((l,), o, d, diagonal) for l, (o, d) in enumerate(unit_shapes(widths)))


def layer_layout(widths: Sequence[int]) -> tuple[Segment, ...]:
    """One full block per layer (LCVI)."""
    return tuple(Segment((l,), 1, o * d) for l, (o, d) in enumerate(unit_shapes(widths)))


def full_layout(widths: Sequence[int]) -> tuple[Segment, ...]:
    """One block over every weight (FCVI)."""
    units = unit_shapes(widths)
    return (Segment(tuple(range(len(units))), 1, sum(o * d for o, d in units)),)


# ----- flat <-> segments ---------------------------------------------------------------


def split(layout, flat: Array) -> list[Array]:
    """Flat ``[..., P]`` -> per segment ``[..., count, size]``."""
    out, start = [], 0
    for g in layout:
        n = g.count * g.size
        out.append(flat[..., start:start + n].reshape(flat.shape[:-1] + (g.count, g.size)))
        start += n
    return out


def join(parts: Sequence[Array]) -> Array:
    """Per segment ``[..., count, size]`` -> flat ``[..., P]``."""
    return jnp.concatenate([p.reshape(p.shape[:-2] + (-1,)) for p in parts], axis=-1)

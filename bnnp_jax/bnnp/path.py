"""The network-wide path sampler (SPEC section 4): one path through a layer-wise
conditional Gaussian posterior, each layer's statistics computed from the
path's earlier draws. Shared by the BNNP's minibatched form, GIVI and the
per-task BNNP.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from bnnp_jax.core.blr import NaturalStats, PriorFactors, ScaleFactors, sample_posterior
from bnnp_jax.core.linalg import after

__all__ = ["sample_layers"]

Array = jax.Array


def sample_layers(key: Array, factors: Sequence[PriorFactors | ScaleFactors],
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
            # (bnnp_jax.core.linalg: concurrent batched LAPACK calls can deadlock on CPU).
            stats = after(stats, factors)
        w, kl_units = sample_posterior(k, factors[l], stats, with_kl)
        weights.append(w)
        kl = kl + jnp.sum(kl_units) if with_kl else None
    return weights, kl

"""LCVI: layer-wise full-covariance Gaussian VI (SPEC section 8).

``q(W) = prod_l N(vec W_l | m_l, S_l S_l^T)``: one full covariance over each layer's
``D_l (D_{l-1} + 1)`` weights (every unit of the layer, unit-major), block diagonal across
layers. It sits between UCVI (a block per unit) and FCVI (one block over all weights):
MFVI ⊂ UCVI ⊂ LCVI ⊂ FCVI. With no hidden layer it *is* FCVI (one layer, one block).

The family is a block layout for :mod:`bnnp_jax.inference.gaussian_vi`, registered in
:mod:`bnnp_jax.inference.vi` as the method ``"lcvi"`` (``vi.fit(..., "lcvi")``); this
module holds the layout and reads the fitted ``q`` back per layer.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from bnnp_jax.inference import gaussian_vi as gvi
from bnnp_jax.inference.layout import split

__all__ = ["METHOD", "layout", "layer_gaussians"]

Array = jax.Array
METHOD = "lcvi"


def layout(widths: Sequence[int]) -> tuple[gvi.Segment, ...]:
    """One full block per layer: ``Segment((l,), 1, D_l (D_{l-1} + 1))`` for every layer."""
    return gvi.layer_layout(widths)


def layer_gaussians(result) -> list[tuple[Array, Array]]:
    """The fitted ``q`` (a :class:`vi.VIResult` of method ``"lcvi"``) per layer:
    ``(mean [D_l (D_{l-1}+1)], covariance Cholesky [D_l (D_{l-1}+1), D_l (D_{l-1}+1)])``,
    weights unit-major (the flat order restricted to the layer)."""
    if result.method != METHOD:
        raise ValueError(f"layer_gaussians is for {METHOD}, got {result.method!r}")
    lay = layout(result.model.widths)
    means = split(lay, gvi.mean(result.whitening, result.params))
    return [(m[0], jnp.linalg.cholesky(s[0] @ s[0].T))
            for m, s in zip(means, gvi.square_roots(result.whitening, result.params))]

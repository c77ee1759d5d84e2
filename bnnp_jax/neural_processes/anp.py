"""Attentive neural process (Kim et al., 2019; SPEC section 7).

Deterministic path: context pairs ``[x_n, y_n]`` are embedded and refined by
``num_blocks`` masked self-attention blocks; every point then cross-attends to
them (queries and keys are one shared embedding of ``x``), which gives a
point-specific ``r(x)``. Latent path: as the latent NP, but the set embedding
is refined by self-attention within the set before the mean. Decoder
``[x, r(x), z]``. Attention needs at least one context point.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnnp_jax.neural_processes.common import (NPConfig, NPOutputs, SelfAttentionBlock, key_mask, latent_head,
                                              masked_mean, mlp)
from bnnp_jax.neural_processes.np import decode, latent_and_sample

__all__ = ["SetEncoder", "ANP"]

Array = jax.Array


class SetEncoder(nn.Module):
    """Embeddings ``[N, width]`` of ``[x_n, y_n]``, refined by self-attention among the points with ``w > 0``."""

    config: NPConfig
    dtype: Any

    @nn.compact
    def __call__(self, xy: Array, w: Array) -> Array:
        c = self.config
        h = mlp(c.width, c.encoder_depth, c.width, self.dtype)(xy)
        for _ in range(c.num_blocks):
            h = SelfAttentionBlock(c.width, c.num_heads, self.dtype)(h, key_mask(w, h.shape[0]))
        return h


class ANP(nn.Module):
    config: NPConfig

    @nn.compact
    def __call__(self, x: Array, y: Array, context: Array, latent_set: Array, eps: Array) -> NPOutputs:
        """One task; see :class:`bnnp_jax.neural_processes.np.LatentNP`."""
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        xy = jnp.concatenate([x, y], -1)
        values = SetEncoder(c, dtype, name="deterministic_encoder")(xy, context)
        queries = mlp(c.width, 2, c.width, dtype)(x)
        r = nn.MultiHeadDotProductAttention(c.num_heads, dtype=dtype, param_dtype=dtype)(
            queries, queries, values, mask=key_mask(context, x.shape[0]))
        latent_encoder = SetEncoder(c, dtype, name="latent_encoder")  # one module, applied to both sets
        to_q = mlp(c.width, 2, 2 * c.latent_dim, dtype)
        q = lambda w: latent_head(to_q(masked_mean(latent_encoder(xy, w), w)), c.latent_dim)
        z, kl = latent_and_sample(q(context), q(latent_set), eps)
        mean, std = decode(c, r, x, z, dtype)
        return NPOutputs(mean, std, kl)

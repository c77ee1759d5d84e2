"""Transformer neural process, the diagonal variant TNP-D (Nguyen & Grover, 2022; SPEC section 7).

Every point becomes a token ``embed([x_n, c_n y_n, c_n])`` (``c_n = 1`` for
context points, so target tokens carry no ``y``); ``num_blocks`` pre-LayerNorm
transformer blocks let every token attend to the context tokens only, so each
target's prediction depends on the context and its own ``x`` and the model is
consistent in the targets. A head maps each token to a Gaussian. Deterministic
(``S = 1``); needs at least one context point.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnnp_jax.neural_processes.common import (NPConfig, NPOutputs, SelfAttentionBlock, gaussian_head, key_mask,
                                              mlp)

__all__ = ["TNP"]

Array = jax.Array


class TNP(nn.Module):
    config: NPConfig

    @nn.compact
    def __call__(self, x: Array, y: Array, context: Array, latent_set: Array, eps: Array) -> NPOutputs:
        """One task: ``mean``/``std`` ``[1, N, y_dim]``; ``latent_set``/``eps`` unused."""
        del latent_set, eps
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        flag = context[:, None].astype(y.dtype)
        h = mlp(c.width, c.encoder_depth, c.width, dtype)(jnp.concatenate([x, y * flag, flag], -1))
        mask = key_mask(context, x.shape[0])
        for _ in range(c.num_blocks):
            h = SelfAttentionBlock(c.width, c.num_heads, dtype)(h, mask)
        out = mlp(c.width, c.decoder_depth, 2 * c.y_dim, dtype)(nn.LayerNorm(dtype=dtype, param_dtype=dtype)(h))
        mean, std = gaussian_head(out, c.y_dim, c.min_std)
        return NPOutputs(mean[None], std[None], jnp.zeros((), dtype))

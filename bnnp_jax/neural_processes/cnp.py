"""Conditional neural process (Garnelo et al., 2018a; SPEC section 7).

``r = mean_{n in C} e([x_n, y_n])``, ``p(y | x, C) = N(mu, sigma^2)`` with
``(mu, sigma) = d([x, r])``. Deterministic: one "sample" (``S = 1``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnnp_jax.neural_processes.common import NPConfig, NPOutputs, gaussian_head, masked_mean, mlp

__all__ = ["CNP"]

Array = jax.Array


class CNP(nn.Module):
    config: NPConfig

    @nn.compact
    def __call__(self, x: Array, y: Array, context: Array, latent_set: Array, eps: Array) -> NPOutputs:
        """One task: ``x [N, x_dim]``, ``y [N, y_dim]``, ``context [N]``; ``latent_set`` and
        ``eps`` are unused (uniform signature). Returns ``mean``/``std`` ``[1, N, y_dim]``."""
        del latent_set, eps
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        r = masked_mean(mlp(c.width, c.encoder_depth, c.width, dtype)(jnp.concatenate([x, y], -1)), context)
        inputs = jnp.concatenate([x, jnp.broadcast_to(r, (x.shape[0], c.width))], -1)
        mean, std = gaussian_head(mlp(c.width, c.decoder_depth, 2 * c.y_dim, dtype)(inputs), c.y_dim, c.min_std)
        return NPOutputs(mean[None], std[None], jnp.zeros((), dtype))

"""Latent neural process (Garnelo et al., 2018b; SPEC section 7).

A deterministic path ``r = mean_{n in C} e_r([x_n, y_n])`` (as in the CNP) and a
global latent ``z ~ q(z | set) = N(mu, diag sigma^2)`` with
``(mu, sigma) = h(mean_{n in set} e_z([x_n, y_n]))``; the decoder maps
``[x, r, z]`` to a Gaussian. The predictive is the mixture over ``S`` draws of
``z ~ q(z | C)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnnp_jax.neural_processes.common import (NPConfig, NPOutputs, gaussian_head, gaussian_kl, latent_head,
                                              masked_mean, mlp)

__all__ = ["decode", "latent_and_sample", "LatentNP"]

Array = jax.Array


def decode(config: NPConfig, r: Array, x: Array, z: Array, dtype) -> tuple[Array, Array]:
    """``mean``/``std`` ``[S, N, y_dim]`` from ``[x, r, z_s]``: ``r [N, R]``, ``z [S, Z]``."""
    s, n = z.shape[0], x.shape[0]
    inputs = jnp.concatenate([jnp.broadcast_to(x, (s,) + x.shape), jnp.broadcast_to(r, (s,) + r.shape),
                              jnp.broadcast_to(z[:, None], (s, n, z.shape[-1]))], -1)
    out = mlp(config.width, config.decoder_depth, 2 * config.y_dim, dtype)(inputs)
    return gaussian_head(out, config.y_dim, config.min_std)


def latent_and_sample(q_context, q_set, eps: Array) -> tuple[Array, Array]:
    """Draws ``z = mu + sigma eps`` from ``q_set`` ``[S, Z]`` and ``KL(q_set || q_context)``."""
    (mu_c, sd_c), (mu_s, sd_s) = q_context, q_set
    return mu_s + sd_s * eps, gaussian_kl(mu_s, sd_s, mu_c, sd_c)


class LatentNP(nn.Module):
    config: NPConfig

    @nn.compact
    def __call__(self, x: Array, y: Array, context: Array, latent_set: Array, eps: Array) -> NPOutputs:
        """One task; ``z`` is drawn from ``q(z | latent_set)`` with ``eps [S, latent_dim]``
        (``latent_set = context`` for prediction and the ``ml`` objective)."""
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        xy = jnp.concatenate([x, y], -1)
        r = masked_mean(mlp(c.width, c.encoder_depth, c.width, dtype)(xy), context)
        r = jnp.broadcast_to(r, (x.shape[0], c.width))
        e_z = mlp(c.width, c.encoder_depth, c.width, dtype)(xy)
        to_q = mlp(c.width, 2, 2 * c.latent_dim, dtype)
        q = lambda w: latent_head(to_q(masked_mean(e_z, w)), c.latent_dim)
        z, kl = latent_and_sample(q(context), q(latent_set), eps)
        mean, std = decode(c, r, x, z, dtype)
        return NPOutputs(mean, std, kl)

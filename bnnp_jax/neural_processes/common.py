"""Shared pieces of the neural-process baselines (SPEC section 7).

Every neural process here works on one padded task at a time, exactly like
the BNNP: inputs ``x [N, x_dim]``, outputs ``y [N, y_dim]`` and float masks
``context [N]`` (the conditioning set) and ``target [N]`` (the scored set);
padded points carry zero in both. A model returns, for every one of the ``N``
points, a Gaussian predictive per latent sample: ``mean [S, N, y_dim]`` and
``std [S, N, y_dim]`` (``S = 1`` for the deterministic models), so the
predictive at a point is the mixture ``(1/S) sum_s N(mean_s, std_s^2)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bnnp_jax.core.gaussian import diag_normal_kl, normal_log_prob
from bnnp_jax.core.networks import MLP

__all__ = ["OBJECTIVES", "NPConfig", "NPParams", "NPOutputs", "mlp", "masked_mean", "gaussian_head",
           "latent_head", "gaussian_kl", "log_normal", "key_mask", "SelfAttentionBlock"]

Array = jax.Array
OBJECTIVES = ("ml", "elbo")


@dataclasses.dataclass(frozen=True)
class NPConfig:
    """Architecture of a neural-process baseline (the ``np:`` section of a run config).

    Attributes:
      x_dim, y_dim: input and output sizes.
      width: hidden width of every encoder/decoder MLP, the representation size
        and the transformer model width.
      encoder_depth, decoder_depth: number of dense layers of the encoder and
        decoder MLPs (``>= 1``; the last is linear).
      latent_dim: size of the global latent ``z`` (np, anp).
      num_heads: attention heads (anp, tnp); must divide ``width``.
      num_blocks: self-attention layers of the anp encoders / transformer blocks of the tnp.
      objective: latent models only: ``ml`` maximises
        ``log (1/S) sum_s p(y_t | x_t, z_s)``, ``z_s ~ q(z | C)`` (the BNNP's
        ``npml``); ``elbo`` maximises ``E_{q(z|C u T)} log p(y_t | x_t, z) -
        KL(q(z | C u T) || q(z | C))`` (Garnelo et al. 2018).
      min_std: floor of the predictive standard deviation.
      dtype: ``float32`` or ``float64``.
    """

    x_dim: int = 1
    y_dim: int = 1
    width: int = 64
    encoder_depth: int = 3
    decoder_depth: int = 3
    latent_dim: int = 64
    num_heads: int = 4
    num_blocks: int = 2
    objective: str = "ml"
    min_std: float = 1e-3
    dtype: str = "float32"

    def __post_init__(self):
        def bad(name, problem):
            raise ValueError(f"NPConfig.{name}: {problem}")

        for name in ("x_dim", "y_dim", "width", "encoder_depth", "decoder_depth", "latent_dim", "num_heads"):
            if int(getattr(self, name)) < 1:
                bad(name, f"must be a positive integer, got {getattr(self, name)!r}")
        if self.num_blocks < 0:
            bad("num_blocks", f"must be >= 0, got {self.num_blocks}")
        if self.width % self.num_heads:
            bad("num_heads", f"must divide width={self.width}, got {self.num_heads}")
        if self.objective not in OBJECTIVES:
            bad("objective", f"must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0.0 < self.min_std < 1.0:
            bad("min_std", f"must be in (0, 1), got {self.min_std}")
        if self.dtype not in ("float32", "float64"):
            bad("dtype", f"must be 'float32' or 'float64', got {self.dtype!r}")


@flax.struct.dataclass
class NPParams:
    """Flax ``variables`` of one neural process; ``kind`` and ``config`` are static."""

    variables: Any
    kind: str = flax.struct.field(pytree_node=False)
    config: NPConfig = flax.struct.field(pytree_node=False)


class NPOutputs(NamedTuple):
    """``mean``/``std`` ``[S, N, y_dim]`` at every point; ``kl`` scalar
    ``KL(q(z | latent set) || q(z | C))`` (0 for deterministic models or when
    the latent set is the context)."""

    mean: Array
    std: Array
    kl: Array


def mlp(width: int, depth: int, out: int, dtype) -> MLP:
    """``depth`` dense layers: ``depth - 1`` ReLU layers of ``width`` and a linear one of ``out``."""
    return MLP((width,) * (depth - 1), out, dtype=dtype)


def masked_mean(h: Array, w: Array) -> Array:
    """Mean of ``h [N, D]`` over the points with ``w [N] > 0``; zeros for an empty set."""
    return jnp.sum(h * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1.0)


def gaussian_head(out: Array, y_dim: int, min_std: float) -> tuple[Array, Array]:
    """Split ``[..., 2 y_dim]`` into a mean and ``std = min_std + (1 - min_std) softplus``."""
    mean, raw = out[..., :y_dim], out[..., y_dim:]
    return mean, min_std + (1.0 - min_std) * jax.nn.softplus(raw)


def latent_head(out: Array, latent_dim: int) -> tuple[Array, Array]:
    """``(mu, sigma)`` of ``q(z)`` from ``[2 latent_dim]`` with ``sigma = 0.1 + 0.9 sigmoid``
    (Le et al. 2018's bounded latent scale)."""
    return out[:latent_dim], 0.1 + 0.9 * jax.nn.sigmoid(out[latent_dim:])


def gaussian_kl(mu_q: Array, sd_q: Array, mu_p: Array, sd_p: Array) -> Array:
    """``KL(N(mu_q, sd_q^2) || N(mu_p, sd_p^2))`` summed over the last axis."""
    return jnp.sum(diag_normal_kl(mu_q, sd_q, mu_p, sd_p), -1)


def log_normal(y: Array, mean: Array, std: Array) -> Array:
    """``log N(y | mean, std^2)`` summed over the output dims: ``[..., N, y_dim] -> [..., N]``."""
    return jnp.sum(normal_log_prob(y, mean, std), -1)


def key_mask(w: Array, num_queries: int) -> Array:
    """Attention mask ``[1, Q, N]``: every query may attend to the points with ``w > 0``."""
    return jnp.broadcast_to(w[None, None, :] > 0, (1, num_queries, w.shape[0]))


class SelfAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: masked multi-head attention and an MLP, both residual."""

    width: int
    num_heads: int
    dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, mask: Array, kv: Array | None = None) -> Array:
        """``h [Q, width]`` attends to ``kv [K, width]`` (default ``h``) under ``mask [1, Q, K]``."""
        ln = lambda a: nn.LayerNorm(dtype=self.dtype, param_dtype=self.dtype or jnp.float32)(a)
        q = ln(h)
        k = q if kv is None else ln(kv)
        h = h + nn.MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype,
                                                param_dtype=self.dtype or jnp.float32)(q, k, mask=mask)
        return h + mlp(2 * self.width, 2, self.width, self.dtype)(ln(h))

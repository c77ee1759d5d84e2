"""Flax MLPs used as inference networks (and by other modules as hypernetworks)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "identity": lambda a: a,
}


def activation_fn(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def with_bias(h: jax.Array) -> jax.Array:
    """Append the bias feature: ``[..., D] -> [..., D+1]`` (``Phi = [h, 1]``)."""
    return jnp.concatenate([h, jnp.ones(h.shape[:-1] + (1,), h.dtype)], axis=-1)


class MLP(nn.Module):
    """``[..., in] -> [..., out]`` with ``hidden`` widths and a linear output layer.

    ``out_init_scale`` shrinks the output layer's initial weights, so freshly
    initialised inference networks emit small pseudo-observation offsets.
    """

    hidden: Sequence[int]
    out: int
    activation: str = "relu"
    out_init_scale: float = 1.0
    dtype: Any = None  # computation dtype; None follows the inputs

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        for width in self.hidden:
            h = act(nn.Dense(width, dtype=self.dtype, param_dtype=self.dtype or jnp.float32)(h))
        init = nn.initializers.variance_scaling(self.out_init_scale, "fan_in", "truncated_normal")
        return nn.Dense(self.out, kernel_init=init, dtype=self.dtype, param_dtype=self.dtype or jnp.float32)(h)

"""The network of SPEC section 2 and the MLPs that serve as inference networks.

One activation table (:data:`ACTIVATIONS`) serves every model: the BNNP, BNAM,
the baselines, MetaPrior and the synthetic data. One forward pass
(:func:`forward`) serves every weight sample: ``weights[l] [D_{l-1}+1, D_l]``
(bias last), ``a_l = [act(a_{l-1}), 1] W_l`` with no activation on the input
and a linear output. :func:`lrt_forward` is its local-reparameterisation form
for factorised Gaussian weights.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "activation_fn", "with_bias", "forward", "lrt_forward", "MLP"]

Array = jax.Array

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "identity": lambda a: a,
}


def activation_fn(name: str) -> Callable:
    """Look up an activation by name, raising a ValueError naming the valid ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def with_bias(h: jax.Array) -> jax.Array:
    """Append the bias feature: ``[..., D] -> [..., D+1]`` (``Phi = [h, 1]``)."""
    return jnp.concatenate([h, jnp.ones(h.shape[:-1] + (1,), h.dtype)], axis=-1)


def forward(weights: Sequence[Array], x: Array, activation: str, upto: int | None = None) -> Array:
    """One weight sample's network: ``x [N, D_0] -> a_L [N, D_L]``, or the
    pre-activations ``a_upto`` of layer ``upto``. ``weights[l]`` is ``[D_{l-1}+1, D_l]``."""
    act, a = activation_fn(activation), x
    for l, w in enumerate(weights[:upto]):
        inp = a if l == 0 else act(a)
        a = inp @ w[:-1] + w[-1]  # [h, 1] @ W without materialising the ones column
    return a


def lrt_forward(moments: Sequence[tuple[Array, Array]], x: Array, activation: str, noise: Sequence[Array]) -> Array:
    """The network under factorised Gaussian weights by local reparameterisation:
    each pre-activation is drawn from ``N(Phi m, Phi^2 s^2)`` independently per point.
    ``moments[l] = (m, s)``, each ``[D_{l-1}+1, D_l]``; ``noise[l] [N, D_l]`` standard normals.
    ``x [N, D_0] -> [N, D_L]``."""
    act, h = activation_fn(activation), x
    for l, (e, (m, s)) in enumerate(zip(noise, moments)):
        inp = h if l == 0 else act(h)
        var = (inp**2) @ (s[:-1] ** 2) + s[-1] ** 2
        h = inp @ m[:-1] + m[-1] + jnp.sqrt(var) * e
    return h


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

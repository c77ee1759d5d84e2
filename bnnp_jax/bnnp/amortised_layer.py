"""The amortised linear layer: inference networks emit pseudo-observations (SPEC section 4).

For layer ``l`` the inference network ``g_l`` maps each data point
``(x_n, y_n)`` (optionally with the layer's input activations) to
pseudo-targets ``yhat_{n,d}`` and log noise scales ``log s_{n,d}``; then
``s = exp(log s - 2)`` and ``lambda = 1 / (s^2 + 1e-6)``. The final layer's
pseudo-targets are the true ``y`` and its network emits only ``log s`` (or,
with ``exact_final_layer``, ``lambda = 1 / sigma_y^2``: exact regression).

Two parameterisations of the inference networks:

- independent: one MLP per layer (default);
- LoRA-style (``lora_rank > 0``): a shared trunk MLP, a shared output head of
  the widest layer's size, and per layer a rank-``r`` adapter ``A_l B_l`` on
  that head, sliced to the layer's output size. It has far fewer parameters
  than independent networks for deep or wide BNNs.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from bnnp_jax.core.networks import MLP

__all__ = ["LOG_S_SHIFT", "PRECISION_FLOOR", "LayerSpec", "layer_specs", "init", "pseudo_observations", "pseudo_precision"]

Array = jax.Array

LOG_S_SHIFT = 2.0
PRECISION_FLOOR = 1e-6


class LayerSpec(NamedTuple):
    """Static description of the inference network of one layer."""

    in_dim: int  # features fed to g_l
    out_dim: int  # 2 * D_l for hidden layers, D_L for the last (log s only)
    units: int  # D_l
    final: bool  # the last layer: pseudo-targets are the true y


def layer_specs(widths: Sequence[int], sees_activations: bool, exact_final: bool,
                per_point: bool = False) -> list[LayerSpec]:
    """One spec per layer for a BNN with widths ``[D_0, ..., D_L]``. With
    ``per_point`` a network emits one ``log s`` per point (shared by the layer's
    units) instead of one per unit: ``D_l + 1`` outputs for hidden layers, 1 for the last."""
    x_dim, y_dim = widths[0], widths[-1]
    specs = []
    for l in range(1, len(widths)):
        extra = widths[l - 1] if (sees_activations and l > 1) else 0
        last = l == len(widths) - 1
        noise = 1 if per_point else widths[l]
        out = (0 if exact_final else noise) if last else widths[l] + noise
        specs.append(LayerSpec(x_dim + y_dim + extra, out, widths[l], last))
    return specs


def init(key: Array, specs: Sequence[LayerSpec], hidden: Sequence[int], lora_rank: int, dtype) -> Any:
    """Inference-network parameters: a list (independent) or a dict (LoRA)."""
    keys = jax.random.split(key, len(specs) + 2)
    if lora_rank == 0:
        return [
            MLP(tuple(hidden), max(s.out_dim, 1), out_init_scale=0.1, dtype=dtype).init(k, jnp.zeros((1, s.in_dim), dtype))
            for k, s in zip(keys, specs)
        ]
    width = max(s.out_dim for s in specs)
    trunk = MLP(tuple(hidden[:-1]), hidden[-1], dtype=dtype)
    adapters = []
    for k, s in zip(keys[2:], specs):
        a = jax.random.normal(k, (hidden[-1], lora_rank), dtype) / jnp.sqrt(hidden[-1]).astype(dtype)
        adapters.append({"a": a, "b": jnp.zeros((lora_rank, max(s.out_dim, 1)), dtype)})
    return {
        "trunk": trunk.init(keys[0], jnp.zeros((1, specs[0].in_dim), dtype)),
        "head": {
            "w": 0.1 * jax.random.normal(keys[1], (hidden[-1], width), dtype) / jnp.sqrt(hidden[-1]).astype(dtype),
            "b": jnp.zeros((width,), dtype),
        },
        "adapters": adapters,
    }


def _network_output(params: Any, l: int, spec: LayerSpec, hidden: Sequence[int], inputs: Array) -> Array:
    """``g_l(inputs)``: ``[N, in_dim] -> [N, out_dim]``."""
    if isinstance(params, list):
        return MLP(tuple(hidden), max(spec.out_dim, 1)).apply(params[l], inputs)
    trunk = MLP(tuple(hidden[:-1]), hidden[-1]).apply(params["trunk"], inputs)
    h = jax.nn.relu(trunk)
    head, adapter = params["head"], params["adapters"][l]
    return h @ head["w"][:, : spec.out_dim] + head["b"][: spec.out_dim] + (h @ adapter["a"]) @ adapter["b"]


def pseudo_observations(
    params: Any,
    l: int,
    spec: LayerSpec,
    hidden: Sequence[int],
    x: Array,
    y: Array,
    activations: Array | None,
    final_precision: Array | None,
) -> tuple[Array, Array]:
    """Pseudo-targets and precisions for layer ``l`` (0-based) of one task.

    Args:
      x: ``[N, x_dim]``; y: ``[N, y_dim]``.
      activations: ``[N, D_{l-1}]`` post-nonlinearity inputs of the layer, fed
        to ``g_l`` when the config asks for it (else ``None``).
      final_precision: ``[y_dim]`` = ``1 / sigma_y^2`` when the last layer is
        exact regression, else ``None``.

    Returns:
      ``(yhat [N, D_l], lambda [N, D_l])``; ``lambda [N, 1]`` with a per-point
      pseudo-precision (``spec.out_dim = D_l + 1``, or 1 for the last layer).
    """
    inputs = jnp.concatenate([x, y] + ([activations] if activations is not None else []), axis=-1)
    last = spec.final
    if last and final_precision is not None:
        return y, jnp.broadcast_to(final_precision, y.shape)
    out = _network_output(params, l, spec, hidden, inputs)
    if last:
        yhat, log_s = y, out
    else:
        yhat, log_s = out[:, : spec.units], out[:, spec.units :]
    return yhat, pseudo_precision(log_s)


def pseudo_precision(log_s: Array) -> Array:
    """``lambda = 1 / (s^2 + PRECISION_FLOOR)`` with ``s = exp(log_s - LOG_S_SHIFT)``,
    elementwise. The shift sets the precision that a raw output of zero stands for
    (``e^{2 LOG_S_SHIFT}``); the floor keeps ``lambda`` finite as ``s`` collapses."""
    s = jnp.exp(log_s - LOG_S_SHIFT)
    return 1.0 / (s**2 + PRECISION_FLOOR)

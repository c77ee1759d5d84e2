"""The MetaPrior hypernetwork ``g`` shared by the whole network (SPEC section 13).

``g`` maps a weight code ``[z_i, z_j, z_s]`` (code of the receiving unit ``i``
in layer ``l``, of the sending unit ``j`` in layer ``l-1``, optional global
code ``z_s``), plus optional noise ``eps`` for the implicit head, to a few
numbers per weight. Its first layer is split as ``A z_i + B z_j + C z_s + E eps``
so a layer with ``O`` receivers and ``I`` senders costs ``O + I`` code
projections rather than ``O * I`` concatenated pair inputs of width ``2K``
(paper sec. 3, "weight codes ... by concatenation"). Biases use the code
``[z_i, 0]`` (paper sec. 3), which here is simply the ``B z_j`` term set to 0.

With ``num_units > 0`` the codes are one-hot vectors of width ``num_units``
given by their indices: ``A z_i`` with ``z_i = e_u`` is row ``u`` of ``A``, so
the split first layer is an embedding lookup (rows of ``A`` and ``B`` gathered
by unit index; no one-hot matrix is built). The parameter tree is the same as
for ``[num_units]``-wide codes, so :func:`concatenated_reference` applied to
explicit one-hot vectors is an exact reference.

The output has the per-unit layout of :class:`~bnnp_jax.core.gaussian.Gaussian`:
``[O, I + 1, out_features]`` with the bias column last.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from bnnp_jax.core.networks import activation_fn

__all__ = ["HyperNet", "EmbeddingRows", "concatenated_reference"]

Array = jax.Array


class EmbeddingRows(nn.Module):
    """``kernel[index] (+ bias)``: a dense layer applied to one-hot inputs ``e_index``, as a gather.

    The parameters are those of ``nn.Dense(features)`` on ``num_units``-wide inputs
    (``kernel [num_units, features]``, ``bias [features]``). Rows start as ``N(0, 1)``
    draws, so ``kernel[u]`` has the spread of ``A z`` for a code ``z ~ N(0, I_K)``
    under Dense's ``1/sqrt(K)``-scaled initialiser.
    """

    num_units: int
    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, index: Array) -> Array:
        """``index [N]`` integers in ``[0, num_units)`` -> ``[N, features]``."""
        kernel = self.param("kernel", nn.initializers.normal(1.0), (self.num_units, self.features))
        out = jnp.take(kernel, index, axis=0)
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return out


class HyperNet(nn.Module):
    """Pair-factorised MLP over weight codes.

    Attributes:
      hidden: hidden widths of ``g`` (at least one layer; the first is split).
      out_features: numbers emitted per weight (2 for the Gaussian head
        ``(mu, log s)``, 1 for the implicit head, more for the BNNP prior).
      activation: nonlinearity of ``g``.
      use_global: whether a global code ``z_s`` is appended to every input.
      noise_dim: width of the per-weight noise input (implicit head), 0 for none.
      head_init_scale: std of the head's kernel initialiser (small values start
        every weight near the head bias).
      num_units: 0 for vector codes; ``U > 0`` for one-hot codes, passed as unit
        indices ``z_out [O]``, ``z_in [I]`` in ``[0, U)`` (:class:`EmbeddingRows`).
    """

    hidden: tuple[int, ...] = (32,)
    out_features: int = 2
    activation: str = "tanh"
    use_global: bool = False
    noise_dim: int = 0
    head_init_scale: float = 1.0
    num_units: int = 0

    @nn.compact
    def __call__(self, z_out: Array, z_in: Array, z_glob: Array | None = None, noise: Array | None = None) -> Array:
        """``z_out [O, K]``, ``z_in [I, K]`` (or indices ``[O]``, ``[I]`` when ``num_units > 0``),
        ``z_glob [G]``, ``noise [O, I+1, E]`` -> ``[O, I+1, F]``."""
        if not self.hidden:
            raise ValueError("hidden must name at least one layer for the split first layer")
        if self.use_global != (z_glob is not None):
            raise ValueError(f"z_glob must be given iff use_global (use_global={self.use_global})")
        if (self.noise_dim > 0) != (noise is not None):
            raise ValueError(f"noise must be given iff noise_dim > 0 (noise_dim={self.noise_dim})")
        act = activation_fn(self.activation)
        width = self.hidden[0]
        if self.num_units:
            h_out = EmbeddingRows(self.num_units, width, name="first_out")(z_out)  # A e_i + bias, [O, H]
            h_in = EmbeddingRows(self.num_units, width, use_bias=False, name="first_in")(z_in)  # B e_j, [I, H]
        else:
            h_out = nn.Dense(width, name="first_out")(z_out)  # A z_i + bias, [O, H]
            h_in = nn.Dense(width, use_bias=False, name="first_in")(z_in)  # B z_j, [I, H]
        h_in = jnp.concatenate([h_in, jnp.zeros((1, width), h_in.dtype)], axis=0)  # bias code [z_i, 0]
        h = h_out[:, None, :] + h_in[None, :, :]  # [O, I+1, H]
        if z_glob is not None:
            h = h + nn.Dense(width, use_bias=False, name="first_glob")(z_glob)
        if noise is not None:
            h = h + nn.Dense(width, use_bias=False, name="first_noise")(noise)
        h = act(h)
        for k, w in enumerate(self.hidden[1:]):
            h = act(nn.Dense(w, name=f"hidden_{k}")(h))
        head_init = nn.initializers.variance_scaling(self.head_init_scale**2, "fan_in", "truncated_normal")
        return nn.Dense(self.out_features, kernel_init=head_init, name="head")(h)


def concatenated_reference(hyper: HyperNet, params: dict, z_out: Array, z_in: Array,
                           z_glob: Array | None = None, noise: Array | None = None) -> Array:
    """Slow reference: materialise every pair input ``[z_i, z_j, z_s, eps]`` and apply one
    unsplit first layer. Same output as ``hyper.apply`` (used by the tests).
    """
    p = params["params"]
    n_out, n_in = z_out.shape[0], z_in.shape[0]
    z_in_b = jnp.concatenate([z_in, jnp.zeros((1, z_in.shape[1]), z_in.dtype)], axis=0)
    parts = [jnp.broadcast_to(z_out[:, None, :], (n_out, n_in + 1, z_out.shape[1])),
             jnp.broadcast_to(z_in_b[None], (n_out, n_in + 1, z_in.shape[1]))]
    kernels = [p["first_out"]["kernel"], p["first_in"]["kernel"]]
    if z_glob is not None:
        parts.append(jnp.broadcast_to(z_glob, (n_out, n_in + 1, z_glob.shape[0])))
        kernels.append(p["first_glob"]["kernel"])
    if noise is not None:
        parts.append(noise)
        kernels.append(p["first_noise"]["kernel"])
    pairs = jnp.concatenate(parts, axis=-1)  # [O, I+1, 2K (+G) (+E)]
    act = activation_fn(hyper.activation)
    h = act(pairs @ jnp.concatenate(kernels, axis=0) + p["first_out"]["bias"])
    for k in range(len(hyper.hidden) - 1):
        h = act(h @ p[f"hidden_{k}"]["kernel"] + p[f"hidden_{k}"]["bias"])
    return h @ p["head"]["kernel"] + p["head"]["bias"]

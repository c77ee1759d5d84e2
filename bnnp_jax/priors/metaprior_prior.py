"""A MetaPrior-generated BNNP prior (SPEC section 13, "beyond the seeds").

Unit codes ``z_{l,u} in R^K`` (point parameters here: they are prior parameters,
meta-learned with the rest of the BNNP) and one pair-factorised
:class:`~bnnp_jax.metaprior.hypernet.HyperNet` produce, for every output unit
``i`` of layer ``l`` and each of its ``D = D_{l-1} + 1`` incoming weights ``j``
(bias last, code ``[z_i, 0]``), the numbers ``(m_ij, log d_ij, u_ij in R^r)``.
Unit ``i``'s prior over its incoming weights is

    ``N(m_i, Sigma_i)``,  ``Sigma_i = diag(d_i^2) + U_i U_i^T``,  ``U_i [D, r]``,

a low-rank-plus-diagonal covariance whose factors are shared through the codes,
so the prior has ``O(sum_l D_l K + |g|)`` parameters instead of the unitwise
prior's ``O(sum_l D_l D_{l-1}^2)``. All outputs are scaled by ``1/sqrt(D)``;
with the head bias at 0 and a small head kernel the prior starts near SPEC
section 3's ``N(0, I/D)``.

Two views, as for the per-weight kinds of :mod:`bnnp_jax.priors.weight_prior`:

- :func:`scale_trils`: the covariance factor ``L_i = chol(Sigma_i)``, which the BNNP's
  path sampler (whitened primal form and dual form) and prior draws take
  (``BNNPConfig.prior_kind = "metaprior"``);
- :func:`layer_priors`: the precision form (:class:`~bnnp_jax.core.gaussian.Gaussian`),
  ``P_i = Sigma_i^{-1}`` by the Woodbury identity with one ``r x r`` Cholesky
  (no explicit inverse), then ``prec_tril = chol(P_i)``.

``min_std`` floors every direction's standard deviation as ``prior_min_std`` does for
the other kinds: ``Sigma_i + min_std^2 I``, i.e. ``d_ij^2 -> d_ij^2 + min_std^2``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from bnnp_jax.core.gaussian import Gaussian
from bnnp_jax.metaprior.hypernet import HyperNet

__all__ = ["MetaPriorPriorParams", "init", "layer_factors", "woodbury_prec_tril", "scale_trils", "layer_priors",
           "num_parameters"]

Array = jax.Array


class MetaPriorPriorParams(NamedTuple):
    """``codes[l] [D_l, K]`` for ``l = 0..L``; ``hyper``: flax params of ``g`` (``2 + r`` outputs)."""

    codes: tuple[Array, ...]
    hyper: dict


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must list >= 2 positive layer sizes, got {widths}")
    return widths


def _net(params: MetaPriorPriorParams) -> HyperNet:
    """Rebuild ``g`` from its parameter shapes (hidden widths and rank are not stored twice)."""
    p = params.hyper["params"]
    hidden = [p["first_out"]["kernel"].shape[1]] + [p[f"hidden_{k}"]["kernel"].shape[1]
                                                    for k in range(len(p) - 3)]
    return HyperNet(hidden=tuple(hidden), out_features=p["head"]["kernel"].shape[1])


def init(key: Array, widths: Sequence[int], code_dim: int = 4, hidden: Sequence[int] = (32,), rank: int = 2,
         head_init_scale: float = 0.1, dtype=jnp.float32) -> MetaPriorPriorParams:
    """Codes ``~ N(0, I)``; ``g`` with a small head so the prior starts near ``N(0, I/D)``."""
    if code_dim < 1 or rank < 1 or not hidden:
        raise ValueError(f"code_dim and rank must be >= 1 and hidden non-empty, got {code_dim}, {rank}, {hidden}")
    return _init(key, _check_widths(widths), int(code_dim), tuple(int(h) for h in hidden), int(rank),
                 float(head_init_scale), jnp.dtype(dtype))


@partial(jax.jit, static_argnames=("widths", "code_dim", "hidden", "rank", "head_init_scale", "dtype"))
def _init(key, widths, code_dim, hidden, rank, head_init_scale, dtype) -> MetaPriorPriorParams:
    k_codes, k_net = jax.random.split(key)
    codes = tuple(jax.random.normal(k, (w, code_dim), dtype)
                  for k, w in zip(jax.random.split(k_codes, len(widths)), widths))
    net = HyperNet(hidden=tuple(hidden), out_features=2 + rank, head_init_scale=head_init_scale)
    hyper = net.init(k_net, codes[1], codes[0])
    return MetaPriorPriorParams(codes, jax.tree.map(lambda a: a.astype(dtype), hyper))


def layer_factors(params: MetaPriorPriorParams, widths: Sequence[int],
                  min_std: float = 0.0) -> list[tuple[Array, Array, Array]]:
    """Per layer ``(mean [O, D], diag_std [O, D], low_rank [O, D, r])`` of the covariance
    ``diag(d^2) + U U^T`` (``d`` floored by ``min_std``, module docstring)."""
    widths = _check_widths(widths)
    if len(params.codes) != len(widths) or any(c.shape[0] != w for c, w in zip(params.codes, widths)):
        raise ValueError(f"params.codes have sizes {[c.shape[0] for c in params.codes]}, widths are {widths}")
    net, out = _net(params), []
    for l in range(1, len(widths)):
        g = net.apply(params.hyper, params.codes[l], params.codes[l - 1])  # [O, D, 2 + r]
        scale = 1.0 / math.sqrt(widths[l - 1] + 1)
        diag_std = scale * jnp.exp(g[..., 1])
        if min_std:
            diag_std = jnp.sqrt(diag_std**2 + min_std**2)
        out.append((scale * g[..., 0], diag_std, scale * g[..., 2:]))
    return out


def woodbury_prec_tril(diag_std: Array, low_rank: Array) -> Array:
    """Cholesky factor of ``(diag(d^2) + U U^T)^{-1}``: ``d [..., D]``, ``U [..., D, r]`` -> ``[..., D, D]``.

    ``P = D^{-1} - V^T V`` with ``V = L_A^{-1} U^T D^{-1}`` and ``L_A L_A^T = I_r + U^T D^{-1} U``.
    """
    inv_var = diag_std ** -2  # D^{-1} [..., D]
    scaled = low_rank * inv_var[..., None]  # D^{-1} U [..., D, r]
    r = low_rank.shape[-1]
    cap = jnp.eye(r, dtype=low_rank.dtype) + jnp.swapaxes(low_rank, -1, -2) @ scaled  # [..., r, r]
    v = solve_triangular(jnp.linalg.cholesky(cap), jnp.swapaxes(scaled, -1, -2), lower=True)  # [..., r, D]
    precision = inv_var[..., :, None] * jnp.eye(inv_var.shape[-1], dtype=inv_var.dtype)
    return jnp.linalg.cholesky(precision - jnp.swapaxes(v, -1, -2) @ v)


def scale_trils(params: MetaPriorPriorParams, widths: Sequence[int],
                min_std: float = 0.0) -> list[tuple[Array, Array]]:
    """Per layer ``(mean [O, D], L [O, D, D])`` with ``L L^T = diag(d^2) + U U^T``, the
    covariance-factor view of :func:`bnnp_jax.priors.weight_prior.scale_tril`."""
    out = []
    for m, d, u in layer_factors(params, widths, min_std):
        cov = d[..., :, None] ** 2 * jnp.eye(d.shape[-1], dtype=d.dtype) + u @ jnp.swapaxes(u, -1, -2)
        out.append((m, jnp.linalg.cholesky(cov)))
    return out


def layer_priors(params: MetaPriorPriorParams, widths: Sequence[int], min_std: float = 0.0) -> list[Gaussian]:
    """Every layer's prior as a precision-form :class:`Gaussian` (``mean [D_l, D_{l-1}+1]``,
    ``prec_tril [D_l, D_{l-1}+1, D_{l-1}+1]``), the layout of :mod:`bnnp_jax.priors.weight_prior`."""
    return [Gaussian(m, woodbury_prec_tril(d, u)) for m, d, u in layer_factors(params, widths, min_std)]


def num_parameters(params: MetaPriorPriorParams) -> int:
    """Number of scalar prior parameters (codes and ``g``)."""
    return int(sum(a.size for a in jax.tree.leaves(params)))

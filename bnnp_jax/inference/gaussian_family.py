"""The block-diagonal Gaussian family of MFVI, UCVI, LCVI and FCVI (SPEC section 8):
``q``'s parameterisation, its whitening, moments, draws and KL to the prior.

``q(w) = N(m, S S^T)`` over the flat weights ``[P]`` (:func:`model.flatten`'s order), block
diagonal over a *layout*: a tuple of :class:`Segment` s, each a run of consecutive layers cut
into ``count`` equal blocks of ``size`` weights. Every block is one unit (UCVI, MFVI), one
layer (LCVI) or everything (FCVI); MFVI's blocks are diagonal.

Parameterisation, relative to a fixed *whitening* ``(m0, C0)`` per block:

    m = m0 + C0^{-T} u,      S = C0^{-T} T,

``T`` lower-triangular with a positive (``exp``) diagonal, diagonal for MFVI; ``u`` and ``T``
are optimised. That is ``factor="whitened"``. Its cost per step is a ``[size, size]`` matrix
product ``C0^{-T} T`` per block (the KL needs ``S``), ``O(P^3)`` for FCVI, which dominates a step
on the KL table's BNN (P = 481). ``factor="direct"`` (the default) holds an upper-triangular
factor ``V`` of ``S`` relative to the prior's (block-diagonal, per-unit) precision factor
``C_p`` instead, its entries scaled by fixed per-row factors:

    m = m0 + C0^{-T} u,      S = C_p^{-T} V,   V_ij = r_i t_ij (i < j),   V_ii = exp(t_ii),

``V = C_p^T S`` is upper-triangular (both factors are), so ``KL(q || prior)`` needs only
``||V||_F^2`` and ``sum log diag V``, and a draw ``m + C_p^{-T} (V eps)`` is a triangular
matrix-vector product plus a per-unit one: ``O(P^2)`` per draw and step, no ``P x P`` product.
``r_i = ((C_p^{-1} Lambda0 C_p^{-T})_ii)^{-1/2}``: the curvature of the expected log joint in
``V_ij`` is that diagonal entry for every ``j``, so Adam's per-entry step (about the learning
rate in ``t``) is on the scale of the ELBO's basin in every entry, a diagonal (Jacobi)
preconditioner fixed at the start. ``V`` starts at ``C_p^T C0^{-T}``, the whitened form's
start (the same ``q``); the mean keeps the full whitening (a matrix-vector product).
Diagonal segments (MFVI) are the same in both forms.

``C0`` is the Cholesky factor of the block of a precision ``Lambda0``:

- ``"ggn"`` (default): the Gauss-Newton precision at ``m0``,
  ``Lambda0 = Lambda_prior + J^T diag(1 / sigma_y^2) J`` (``J = d f(x) / d w``), the
  Laplace / Gauss-Newton scale. For a Gaussian target (no hidden layer) it is the exact
  posterior precision, so in ``(u, T)`` the ELBO has identity curvature in ``u`` and its
  optimum at ``T = I``, whatever ``sigma_y``: the narrow, ill-conditioned posteriors of
  small ``sigma_y`` that stall Adam on a plain Cholesky factor look like the
  standard normal.
- ``"prior"``: the prior precision (whitened relative to the prior).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from bnnp_jax.core.gaussian import LOG_2PI, Gaussian
from bnnp_jax.core.linalg import after
from bnnp_jax.inference import model as bnn
from bnnp_jax.inference.gauss_newton import gauss_newton_blocks
from bnnp_jax.inference.layout import Segment, join, split, unit_shapes

__all__ = ["Segment", "Whitening", "Params", "SCALES", "FACTORS", "whitening", "init_params", "mean", "square_roots",
           "log_det_sqrt", "sample", "log_prob", "kl_to_units", "kl_to_prior"]

Array = jax.Array
SCALES = ("ggn", "prior")


class Whitening(NamedTuple):
    """Fixed coordinates of ``q``, per segment: ``m0 [count, size]``; ``k0 = C0^{-T}``
    ``[count, size, size]`` (upper-triangular), or ``[count, size]`` for a diagonal segment;
    ``log_det_k0``: ``sum log diag k0`` over the segments whose ``S`` is ``k0 T`` (scalar);
    ``row_scale``, ``prior_k``: ``None`` for ``factor="whitened"``; for ``"direct"``, per
    segment the row scales ``r [count, size]`` of ``V`` and ``C_p^{-T}`` as its per-unit
    blocks, a tuple over the segment's layers of ``[O_l, D_l, D_l]`` (upper-triangular), ``None``
    for a diagonal segment; then ``log_det_k0`` holds ``log det C_p^{-T}`` of those segments."""

    m0: list
    k0: list
    log_det_k0: Array
    row_scale: list | None = None
    prior_k: list | None = None


FACTORS = ("direct", "whitened")


def _direct(w: Whitening, i: int) -> bool:
    return w.row_scale is not None and w.row_scale[i] is not None


def _apply_units(blocks, v: Array) -> Array:
    """``C_p^{-T} v`` for a segment's per-unit blocks (``[O_l, D_l, D_l]`` per layer) and
    ``v [..., count, size]`` -> the same shape; ``O(size D)``, where a dense block-diagonal
    ``[size, size]`` product would be ``O(size^2)`` and, on XLA CPU, cost as much as the rest
    of FCVI's step."""
    flat = v.reshape(v.shape[:-2] + (-1,))
    out, start = [], 0
    for k in blocks:
        o, d = k.shape[:2]
        part = flat[..., start:start + o * d].reshape(flat.shape[:-1] + (o, d))
        out.append(jnp.einsum("oij,...oj->...oi", k, part).reshape(flat.shape[:-1] + (o * d,)))
        start += o * d
    return jnp.concatenate(out, -1).reshape(v.shape)


def _dense_units(blocks, count: int) -> Array:
    """The per-unit blocks as the segment's ``[count, size, size]`` block-diagonal matrices."""
    if count > 1:
        return blocks[0]
    return jax.scipy.linalg.block_diag(*[b for k in blocks for b in k])[None]


def _upper(t: Array, r: Array) -> Array:
    """The direct factor ``V [count, size, size]`` from ``t`` (strict upper triangle scaled by
    the row scales ``r [count, size]``, diagonal as a log): elementwise, ``O(size^2)``."""
    n = t.shape[-1]
    idx = jnp.arange(n)
    return jnp.triu(t * r[..., :, None], 1).at[..., idx, idx].set(jnp.exp(t[..., idx, idx]))


class Params(NamedTuple):
    """Optimised coordinates, per segment: ``u [count, size]``; ``t [count, size, size]``
    (``factor="whitened"``: ``T``'s strict lower triangle as is; ``"direct"``: ``U``'s strict
    upper triangle over the row scales; the diagonal as a log), or ``[count, size]`` log-scales."""

    u: list
    t: list


def _tril(t: Array) -> Array:
    return jnp.tril(t, -1) + jnp.vectorize(jnp.diag, signature="(n)->(n,n)")(jnp.exp(jnp.diagonal(t, 0, -2, -1)))


# ----- q's moments ----------------------------------------------------------------------


def mean(w: Whitening, p: Params) -> Array:
    """``m = m0 + C0^{-T} u`` -> flat ``[P]``."""
    parts = []
    for m0, k0, u in zip(w.m0, w.k0, p.u):
        parts.append(m0 + (k0 * u if k0.ndim == 2 else jnp.einsum("cij,cj->ci", k0, u)))
    return join(parts)


def square_roots(w: Whitening, p: Params) -> list[Array]:
    """``S`` per segment: ``C0^{-T} T`` (whitened) or ``C_p^{-T} V`` (direct), ``[count, size,
    size]``; ``[count, size]`` standard deviations for a diagonal segment. ``O(size^3)``: for
    reading a fitted ``q`` out, not for the training step."""
    out = []
    for i, (k0, t) in enumerate(zip(w.k0, p.t)):
        if k0.ndim == 2:
            out.append(k0 * jnp.exp(t))
        elif _direct(w, i):
            out.append(_dense_units(w.prior_k[i], t.shape[0]) @ _upper(t, w.row_scale[i]))
        else:
            out.append(k0 @ _tril(t))
    return out


def log_det_sqrt(w: Whitening, p: Params) -> Array:
    """``log |det S|``: ``log det C0^{-T} + sum log diag T`` over whitened and diagonal segments,
    ``log det C_p^{-T} + sum log diag V`` over direct ones -> scalar."""
    return w.log_det_k0 + sum(jnp.sum(t if t.ndim == 2 else jnp.diagonal(t, 0, -2, -1)) for t in p.t)


def sample(key: Array, w: Whitening, p: Params, num_samples: int) -> Array:
    """Flat draws ``m0 + C0^{-T} (u + T eps)`` (whitened) or ``m0 + C0^{-T} u + C_p^{-T} V eps``
    (direct) -> ``[num_samples, P]``; ``O(S size^2)`` per block in both forms."""
    keys = jax.random.split(key, len(p.u))
    parts = []
    for i, (k, m0, k0, u, t) in enumerate(zip(keys, w.m0, w.k0, p.u, p.t)):
        eps = jax.random.normal(k, (num_samples,) + u.shape, u.dtype)
        if k0.ndim == 2:
            parts.append(m0 + k0 * (u + jnp.exp(t) * eps))
        elif _direct(w, i):
            v = jnp.einsum("cij,scj->sci", _upper(t, w.row_scale[i]), eps)
            parts.append(m0 + jnp.einsum("cij,cj->ci", k0, u) + _apply_units(w.prior_k[i], v))
        else:
            z = u + jnp.einsum("cij,scj->sci", _tril(t), eps)
            parts.append(m0 + jnp.einsum("cij,scj->sci", k0, z))
    return join(parts)


def _unit_rows(layout, widths, sqrts: Sequence[Array]):
    """Yield ``(layer, rows)``: the rows of ``S`` of each layer's units, ``[O, D, R]``, or
    ``[O, D]`` for a diagonal segment (the unit's standard deviations)."""
    units = unit_shapes(widths)
    for g, s in zip(layout, sqrts):
        if g.diagonal or g.count > 1:  # one block per unit
            yield g.layers[0], s
            continue
        start = 0
        for l in g.layers:
            o, d = units[l]
            yield l, s[0, start:start + o * d].reshape(o, d, g.size)
            start += o * d


def kl_to_units(mean_flat: Array, sqrts: Sequence[Array], log_det: Array, layout, widths,
                targets: Sequence[Gaussian]) -> Array:
    """``KL(N(m, S S^T) || prod_units targets)`` -> scalar, for per-layer unit Gaussians
    ``targets[l]`` (``mean [O, D]``, ``prec_tril [O, D, D]``; the prior, or the exact posterior).

    With target precision factors ``C``: ``KL = 1/2 (sum_units ||C^T S_unit||_F^2
    + sum_units ||C^T (m_unit - mu)||^2 - P) - sum log diag C - log |det S|``.
    """
    trace = 0.0
    for l, rows in _unit_rows(layout, widths, sqrts):
        c_t = jnp.swapaxes(targets[l].prec_tril, -1, -2)  # [O, D, D]
        trace += jnp.sum((c_t * rows[..., None, :]) ** 2) if rows.ndim == 2 else jnp.sum((c_t @ rows) ** 2)
    maha, log_det_c = _mean_terms(mean_flat, widths, targets)
    return 0.5 * (trace + maha - mean_flat.shape[-1]) - log_det_c - log_det


def _mean_terms(mean_flat: Array, widths, targets: Sequence[Gaussian]) -> tuple[Array, Array]:
    """The KL's mean terms against per-layer unit Gaussians: ``sum_units ||C^T (m_unit - mu)||^2``
    and ``sum log diag C`` -> two scalars."""
    maha, log_det_c = 0.0, 0.0
    for w_l, g in zip(bnn.unflatten(_shape_model(widths), mean_flat), targets):
        maha += jnp.sum(jnp.einsum("oji,oj->oi", g.prec_tril, w_l.T - g.mean) ** 2)
        log_det_c += jnp.sum(jnp.log(jnp.diagonal(g.prec_tril, 0, -2, -1)))
    return maha, log_det_c


class _Shape(NamedTuple):
    widths: tuple
    num_weights: int


def _shape_model(widths):
    widths = tuple(widths)
    return _Shape(widths, sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:])))


def kl_to_prior(w: Whitening, p: Params, layout, model: bnn.BNNModel) -> Array:
    """Exact ``KL(q || p(W))`` -> scalar. In the direct form ``C_p^T S = V``, so the trace term
    is ``||V||_F^2`` (``O(P^2)``, no matrix product)."""
    if w.prior_k is None or any(k is None for k in w.prior_k):
        return kl_to_units(mean(w, p), square_roots(w, p), log_det_sqrt(w, p), layout, model.widths,
                           model.prior_gaussians())
    trace = sum(jnp.sum(_upper(t, r) ** 2) for t, r in zip(p.t, w.row_scale))
    m = mean(w, p)
    maha, log_det_c = _mean_terms(m, model.widths, model.prior_gaussians())
    return 0.5 * (trace + maha - m.shape[-1]) - log_det_c - log_det_sqrt(w, p)


# ----- the whitening ---------------------------------------------------------------------


def whitening(model: bnn.BNNModel, x: Array, m0: Array, layout, scale: str = "ggn", *, mask=None,
              factor: str = "direct") -> Whitening:
    """``(m0, C0^{-T})`` per segment for ``scale`` in :data:`SCALES` and, for ``factor="direct"``,
    the row scales ``Lambda0_ii^{-1/2}`` of the full segments (module docstring)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
    m0s = split(layout, m0)
    # one LAPACK chain (bnnp_jax.core.linalg): the prior's factors after m0's search, then
    # each segment's factorisation after the previous segment's
    model = model.waiting_for(m0)
    blocks = gauss_newton_blocks(model, m0, x, layout, mask, include_likelihood=scale == "ggn")
    prior_c = _prior_factors(layout, model.waiting_for(blocks)) if factor == "direct" else [None] * len(layout)
    k0, rows, pk, log_det = [], [], [], 0.0
    for g, b, units in zip(layout, blocks, prior_c):
        b = after(b, (k0[-1:], pk[-1:], prior_c))
        if g.diagonal:
            k0.append(1.0 / jnp.sqrt(b))
            rows.append(None)
            pk.append(None)
            log_det -= 0.5 * jnp.sum(jnp.log(b))
            continue
        c0 = jnp.linalg.cholesky(b)
        eye = jnp.broadcast_to(jnp.eye(g.size, dtype=b.dtype), b.shape)
        k0.append(solve_triangular(c0, eye, lower=True, trans=1))  # C0^{-T}, one solve at set-up
        if factor == "direct":
            unit_k = []
            for c in units:  # C_p^{-T} per unit, upper; chained after k0's solve
                eye_c = jnp.broadcast_to(jnp.eye(c.shape[-1], dtype=c.dtype), c.shape)
                unit_k.append(solve_triangular(after(c, (k0[-1], unit_k[-1:])), eye_c, lower=True, trans=1))
            unit_k = tuple(unit_k)
            pk.append(unit_k)
            kp = _dense_units(unit_k, g.count)
            # the curvature of the expected log joint in V_ij: (C_p^{-1} Lambda0 C_p^{-T})_ii (set-up only)
            rows.append(jax.lax.rsqrt(jnp.sum(kp * (b @ kp), -2)))
            log_det -= sum(jnp.sum(jnp.log(jnp.diagonal(c, 0, -2, -1))) for c in units)
        else:
            log_det -= jnp.sum(jnp.log(jnp.diagonal(c0, 0, -2, -1)))
    direct = factor == "direct" and not all(g.diagonal for g in layout)  # MFVI: one form only
    return Whitening(m0s, k0, jnp.asarray(log_det, m0.dtype), rows if direct else None, pk if direct else None)


def _prior_factors(layout, model: bnn.BNNModel) -> list:
    """The prior precision's Cholesky factor ``C_p`` (lower) of each segment's units: a tuple
    over the segment's layers of ``[O_l, D_l, D_l]``; ``None`` for a diagonal segment."""
    trils = [g.prec_tril for g in model.prior_gaussians()]  # [O, D, D] per layer
    return [None if g.diagonal else tuple(trils[layer] for layer in g.layers) for g in layout]


def init_params(layout, dtype, init_log_scale: float = 0.0, whitening: Whitening | None = None) -> Params:
    """``u = 0`` and ``S = e^{init_log_scale} C0^{-T}``: ``q`` starts at
    ``N(m0, e^{2 init_log_scale} C0^{-T} C0^{-1})`` (whitened: ``T = e^{init_log_scale} I``;
    direct: ``V = e^{init_log_scale} C_p^T C0^{-T}``, which needs ``whitening``)."""
    u = [jnp.zeros((g.count, g.size), dtype) for g in layout]
    t = []
    for i, g in enumerate(layout):
        if g.diagonal:
            t.append(jnp.full((g.count, g.size), init_log_scale, dtype))
        elif whitening is not None and _direct(whitening, i):
            # V = C_p^T C0^{-T}: solve C_p^{-T} V = C0^{-T} (upper-triangular; set-up only)
            k0 = after(whitening.k0[i], (t[-1:], whitening))  # one LAPACK chain, after the whitening's
            v = solve_triangular(_dense_units(whitening.prior_k[i], g.count), k0, lower=False)
            r = whitening.row_scale[i]
            diag = jnp.log(jnp.diagonal(v, 0, -2, -1)) + init_log_scale
            off = math.exp(init_log_scale) * jnp.triu(v, 1) / r[..., :, None]
            t.append((off + jnp.vectorize(jnp.diag, signature="(n)->(n,n)")(diag)).astype(dtype))
        else:
            t.append(init_log_scale * jnp.broadcast_to(jnp.eye(g.size, dtype=dtype), (g.count, g.size, g.size)))
    return Params(u, t)


def log_prob(w: Whitening, p: Params, layout, draws: Array) -> Array:
    """``log q(draws [S, P])`` -> ``[S]``: ``z = T^{-1} (C0^T (w - m0) - u)``, two triangular
    solves per segment, the segments one LAPACK chain (:mod:`bnnp_jax.core.linalg`)."""
    z_parts = []
    for i, (k0, u, t, m0, d) in enumerate(zip(w.k0, p.u, p.t, w.m0, split(layout, draws))):
        d = after(d, z_parts[-1:])
        if k0.ndim == 2:
            z_parts.append(((d - m0) / k0 - u) * jnp.exp(-t))
        elif _direct(w, i):  # z = V^{-1} C_p^T (w - m0 - C0^{-T} u), two upper-triangular solves
            v = jnp.moveaxis(d - m0 - jnp.einsum("cij,cj->ci", k0, u), 0, -1)  # [c, size, S]
            v = solve_triangular(_dense_units(w.prior_k[i], u.shape[0]), v, lower=False)
            z_parts.append(jnp.moveaxis(solve_triangular(_upper(t, w.row_scale[i]), v, lower=False), -1, 0))
        else:  # k0 = C0^{-T} is upper-triangular
            v = solve_triangular(k0, jnp.moveaxis(d - m0, 0, -1), lower=False) - u[..., None]  # [c, s, S]
            z_parts.append(jnp.moveaxis(solve_triangular(_tril(t), v, lower=True), -1, 0))
    z = join(z_parts)
    return -0.5 * jnp.sum(z**2, -1) - log_det_sqrt(w, p) - 0.5 * draws.shape[-1] * LOG_2PI

"""Block-diagonal Gaussian VI in whitened coordinates: the engine of MFVI, UCVI, LCVI and FCVI
(SPEC section 8).

``q(w) = N(m, S S^T)`` over the flat weights ``[P]`` (:func:`model.flatten`'s order), block
diagonal over a *layout*: a tuple of :class:`Segment` s, each a run of consecutive layers cut
into ``count`` equal blocks of ``size`` weights. Every block is one unit (UCVI, MFVI), one
layer (LCVI) or everything (FCVI); MFVI's blocks are diagonal.

Parameterisation, relative to a fixed *whitening* ``(m0, C0)`` per block:

    m = m0 + C0^{-T} u,      S = C0^{-T} T,

``T`` lower-triangular with a positive (``exp``) diagonal, diagonal for MFVI; ``u`` and ``T``
are optimised. ``C0`` is the Cholesky factor of the block of a precision ``Lambda0``:

- ``"ggn"`` (default): the Gauss-Newton precision at ``m0``,
  ``Lambda0 = Lambda_prior + J^T diag(1 / sigma_y^2) J`` (``J = d f(x) / d w``), the
  Laplace / Gauss-Newton scale. For a Gaussian target (no hidden layer) it is the exact
  posterior precision, so in ``(u, T)`` the ELBO has identity curvature in ``u`` and its
  optimum at ``T = I``, whatever ``sigma_y``: the narrow, ill-conditioned posteriors of
  small ``sigma_y`` that stall Adam on a plain Cholesky factor look like the
  standard normal.
- ``"prior"``: the prior precision (whitened relative to the prior).

``mean_init="gauss_newton"`` moves ``m0`` from a prior draw to the MAP weights by
Gauss-Newton steps on ``log p(y | w) + log p(w)`` (exact in one step for a model with no
hidden layer; Levenberg-Marquardt damped, accepted only when the log joint rises, with hidden
layers), so the optimiser starts at the (block-restricted) Gauss-Newton Laplace approximation. ``C0^{-T}`` is formed once, by a triangular solve, at
the start; every step is then matrix products (no LAPACK in the loop).

The ELBO is ``E_q log p(y | w) - KL(q || p(w))``, the KL in closed form
(:func:`kl_to_units`); ``estimator="stl"`` uses the sticking-the-landing estimator instead
(``log p(w) - log q(w)`` per sample, ``q``'s parameters stopped in ``log q``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.linalg import solve_triangular

from bnnp_jax.core.driver import finite_check, run_chunks
from bnnp_jax.core.gaussian import LOG_2PI, Gaussian
from bnnp_jax.inference import model as bnn

__all__ = [
    "Segment", "Whitening", "Params", "Result", "SCALES", "MEAN_INITS", "ESTIMATORS", "unit_layout",
    "layer_layout", "full_layout", "gauss_newton_blocks", "gauss_newton_step", "map_weights", "whitening", "init_params",
    "mean", "square_roots", "log_det_sqrt", "sample", "kl_to_units", "kl_to_prior", "loss", "fit",
    "still_rising",
]

Array = jax.Array
SCALES = ("ggn", "prior")
MEAN_INITS = ("prior_draw", "gauss_newton")
ESTIMATORS = ("closed_form", "stl")
MAX_DENSE_WEIGHTS = 2048  # above this the MAP start solves the family's own blocks, not a dense [P, P] system


class Segment(NamedTuple):
    """A run of consecutive ``layers`` held as ``count`` blocks of ``size`` weights (static).

    ``count * size`` is the number of weights of those layers; blocks cover whole units
    (``size = D``, one per unit, or ``count = 1``). ``diagonal``: each block is diagonal.
    """

    layers: tuple[int, ...]
    count: int
    size: int
    diagonal: bool = False


def _units(widths) -> list[tuple[int, int]]:
    return [(o, d + 1) for d, o in zip(widths[:-1], widths[1:])]  # (O, D) per layer


def unit_layout(widths: Sequence[int], diagonal: bool = False) -> tuple[Segment, ...]:
    """One block per output unit (UCVI), or a diagonal per unit (MFVI)."""
    return tuple(Segment((l,), o, d, diagonal) for l, (o, d) in enumerate(_units(widths)))


def layer_layout(widths: Sequence[int]) -> tuple[Segment, ...]:
    """One full block per layer (LCVI)."""
    return tuple(Segment((l,), 1, o * d) for l, (o, d) in enumerate(_units(widths)))


def full_layout(widths: Sequence[int]) -> tuple[Segment, ...]:
    """One block over every weight (FCVI)."""
    units = _units(widths)
    return (Segment(tuple(range(len(units))), 1, sum(o * d for o, d in units)),)


class Whitening(NamedTuple):
    """Fixed coordinates of ``q``, per segment: ``m0 [count, size]``; ``k0 = C0^{-T}``
    ``[count, size, size]`` (upper-triangular), or ``[count, size]`` for a diagonal segment;
    ``log_det_k0``: ``sum log diag k0`` -> scalar."""

    m0: list
    k0: list
    log_det_k0: Array


class Params(NamedTuple):
    """Optimised coordinates, per segment: ``u [count, size]``; ``t [count, size, size]``
    (strict lower triangle as is, diagonal as a log), or ``[count, size]`` log-scales."""

    u: list
    t: list


class Result(NamedTuple):
    """A fitted ``q``: ``params`` in ``whitening``'s coordinates, its ``layout`` and ``model``;
    ``losses [num_steps]``: the negative-ELBO estimate at every step (the ELBO trajectory)."""

    params: Params
    whitening: Whitening
    layout: tuple[Segment, ...]
    model: bnn.BNNModel
    losses: Array


# ----- flat <-> segments ---------------------------------------------------------------


def _split(layout, flat: Array) -> list[Array]:
    """Flat ``[..., P]`` -> per segment ``[..., count, size]``."""
    out, start = [], 0
    for g in layout:
        n = g.count * g.size
        out.append(flat[..., start:start + n].reshape(flat.shape[:-1] + (g.count, g.size)))
        start += n
    return out


def _join(parts: Sequence[Array]) -> Array:
    """Per segment ``[..., count, size]`` -> flat ``[..., P]``."""
    return jnp.concatenate([p.reshape(p.shape[:-2] + (-1,)) for p in parts], axis=-1)


def _tril(t: Array) -> Array:
    return jnp.tril(t, -1) + jnp.vectorize(jnp.diag, signature="(n)->(n,n)")(jnp.exp(jnp.diagonal(t, 0, -2, -1)))


# ----- q's moments ----------------------------------------------------------------------


def mean(w: Whitening, p: Params) -> Array:
    """``m = m0 + C0^{-T} u`` -> flat ``[P]``."""
    parts = []
    for m0, k0, u in zip(w.m0, w.k0, p.u):
        parts.append(m0 + (k0 * u if k0.ndim == 2 else jnp.einsum("cij,cj->ci", k0, u)))
    return _join(parts)


def square_roots(w: Whitening, p: Params) -> list[Array]:
    """``S = C0^{-T} T`` per segment: ``[count, size, size]``, or ``[count, size]`` (diagonal)."""
    return [k0 * jnp.exp(t) if k0.ndim == 2 else k0 @ _tril(t) for k0, t in zip(w.k0, p.t)]


def log_det_sqrt(w: Whitening, p: Params) -> Array:
    """``log |det S| = log det C0^{-T} + sum log diag T`` -> scalar."""
    return w.log_det_k0 + sum(jnp.sum(t if t.ndim == 2 else jnp.diagonal(t, 0, -2, -1)) for t in p.t)


def sample(key: Array, w: Whitening, p: Params, num_samples: int) -> Array:
    """Flat draws ``m0 + C0^{-T} (u + T eps)`` -> ``[num_samples, P]``."""
    keys = jax.random.split(key, len(p.u))
    parts = []
    for k, m0, k0, u, t in zip(keys, w.m0, w.k0, p.u, p.t):
        eps = jax.random.normal(k, (num_samples,) + u.shape, u.dtype)
        if k0.ndim == 2:
            parts.append(m0 + k0 * (u + jnp.exp(t) * eps))
        else:
            z = u + jnp.einsum("cij,scj->sci", _tril(t), eps)
            parts.append(m0 + jnp.einsum("cij,scj->sci", k0, z))
    return _join(parts)


def _unit_rows(layout, widths, sqrts: Sequence[Array]):
    """Yield ``(layer, rows)``: the rows of ``S`` of each layer's units, ``[O, D, R]``, or
    ``[O, D]`` for a diagonal segment (the unit's standard deviations)."""
    units = _units(widths)
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
    maha, log_det_c = 0.0, 0.0
    means = bnn.unflatten(_shape_model(widths), mean_flat)
    for w_l, g in zip(means, targets):
        diff = w_l.T - g.mean
        maha += jnp.sum(jnp.einsum("oji,oj->oi", g.prec_tril, diff) ** 2)
        log_det_c += jnp.sum(jnp.log(jnp.diagonal(g.prec_tril, 0, -2, -1)))
    return 0.5 * (trace + maha - mean_flat.shape[-1]) - log_det_c - log_det


class _Shape(NamedTuple):
    widths: tuple
    num_weights: int


def _shape_model(widths):
    widths = tuple(widths)
    return _Shape(widths, sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:])))


def kl_to_prior(w: Whitening, p: Params, layout, model: bnn.BNNModel) -> Array:
    """Exact ``KL(q || p(W))`` -> scalar."""
    return kl_to_units(mean(w, p), square_roots(w, p), log_det_sqrt(w, p), layout, model.widths,
                       model.prior_gaussians())


# ----- the whitening ---------------------------------------------------------------------


def _jacobian(model: bnn.BNNModel, flat: Array, x: Array, mask) -> Array:
    """``J [N * D_L, P]`` of the outputs scaled by ``1 / sigma_y`` (rows of masked points zero)."""
    def f(w):
        out = bnn.forward(bnn.unflatten(model, w), x, model.activation) / model.sigma_y
        return (out if mask is None else out * mask[:, None]).reshape(-1)

    n_out = x.shape[0] * model.widths[-1]
    return (jax.jacrev(f) if n_out < flat.shape[0] else jax.jacfwd(f))(flat)


def _prior_blocks(layout, model: bnn.BNNModel) -> list[Array]:
    """The prior precision restricted to each segment's blocks."""
    precs = [g.precision() for g in model.prior_gaussians()]  # [O, D, D] per layer
    out = []
    for g in layout:
        if g.diagonal:
            out.append(jnp.diagonal(precs[g.layers[0]], 0, -2, -1))
        elif g.count > 1:
            out.append(precs[g.layers[0]])
        else:
            out.append(jax.scipy.linalg.block_diag(*[p for l in g.layers for p in precs[l]])[None])
    return out


def gauss_newton_blocks(model: bnn.BNNModel, flat: Array, x: Array, layout, mask=None,
                        include_likelihood: bool = True) -> list[Array]:
    """Blocks of ``Lambda_prior + J^T diag(1 / sigma_y^2) J`` at ``flat [P]``, per segment
    ``[count, size, size]`` (``[count, size]`` diagonals for a diagonal segment)."""
    blocks = _prior_blocks(layout, model)
    if not include_likelihood:
        return blocks
    jac = _split(layout, _jacobian(model, flat, x, mask))  # [M, count, size] per segment
    out = []
    for g, b, j in zip(layout, blocks, jac):
        out.append(b + (jnp.sum(j**2, 0) if g.diagonal else jnp.einsum("mci,mcj->cij", j, j)))
    return out


def gauss_newton_step(model: bnn.BNNModel, flat: Array, x: Array, y: Array, mask=None, damping: float = 0.0,
                      layout=None) -> Array:
    """One Gauss-Newton step on ``log p(y | w) + log p(w)`` -> the new flat ``[P]``.

    The system is the Gauss-Newton precision restricted to ``layout``'s blocks (default: one
    ``[P, P]`` block, :func:`full_layout`); ``damping`` adds ``damping * diag``
    (Levenberg-Marquardt). With the full system it is exact for a model with no hidden layer:
    it lands on the posterior mean."""
    layout = full_layout(model.widths) if layout is None else layout
    grad = jax.grad(lambda w: bnn.log_joint(model, bnn.unflatten(model, w), x, y, mask))(flat)
    steps = []
    for g, prec, gr in zip(layout, gauss_newton_blocks(model, flat, x, layout, mask), _split(layout, grad)):
        if g.diagonal:
            steps.append(gr / (prec * (1.0 + damping)))
            continue
        prec = prec + damping * jnp.vectorize(jnp.diag, signature="(n)->(n,n)")(jnp.diagonal(prec, 0, -2, -1))
        chol = jnp.linalg.cholesky(prec)
        half = solve_triangular(chol, gr[..., None], lower=True)
        steps.append(solve_triangular(chol, half, lower=True, trans=1)[..., 0])
    return flat + _join(steps)


def whitening(model: bnn.BNNModel, x: Array, m0: Array, layout, scale: str = "ggn", *, mask=None) -> Whitening:
    """``(m0, C0^{-T})`` per segment for ``scale`` in :data:`SCALES` (module docstring)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    m0s = _split(layout, m0)
    blocks = gauss_newton_blocks(model, m0, x, layout, mask, include_likelihood=scale == "ggn")
    k0, log_det = [], 0.0
    for g, b in zip(layout, blocks):
        if g.diagonal:
            k0.append(1.0 / jnp.sqrt(b))
            log_det -= 0.5 * jnp.sum(jnp.log(b))
        else:
            c0 = jnp.linalg.cholesky(b)
            eye = jnp.broadcast_to(jnp.eye(g.size, dtype=b.dtype), b.shape)
            k0.append(solve_triangular(c0, eye, lower=True, trans=1))  # C0^{-T}, one solve at set-up
            log_det -= jnp.sum(jnp.log(jnp.diagonal(c0, 0, -2, -1)))
    return Whitening(m0s, k0, jnp.asarray(log_det, m0.dtype))


def init_params(layout, dtype, init_log_scale: float = 0.0) -> Params:
    """``u = 0``, ``T = e^{init_log_scale} I``: ``q`` starts at ``N(m0, e^{2 init_log_scale} C0^{-T} C0^{-1})``."""
    u = [jnp.zeros((g.count, g.size), dtype) for g in layout]
    t = [jnp.full((g.count, g.size), init_log_scale, dtype) if g.diagonal
         else init_log_scale * jnp.broadcast_to(jnp.eye(g.size, dtype=dtype), (g.count, g.size, g.size))
         for g in layout]
    return Params(u, t)


# ----- the objective and the optimiser ----------------------------------------------------


def _log_lik(model, flat, x, y, mask):
    return jax.vmap(lambda w: bnn.log_likelihood(model, bnn.unflatten(model, w), x, y, mask))(flat)


def _log_q_stopped(w: Whitening, p: Params, layout, draws: Array) -> Array:
    """``log q(draws [S, P])`` -> ``[S]`` with ``q``'s parameters held fixed (gradients flow
    through the draws only): ``z = T^{-1} (C0^T (w - m0) - u)``, two triangular solves."""
    p = jax.lax.stop_gradient(p)
    z_parts = []
    for k0, u, t, m0, d in zip(w.k0, p.u, p.t, w.m0, _split(layout, draws)):
        if k0.ndim == 2:
            z_parts.append(((d - m0) / k0 - u) * jnp.exp(-t))
        else:  # k0 = C0^{-T} is upper-triangular
            v = solve_triangular(k0, jnp.moveaxis(d - m0, 0, -1), lower=False) - u[..., None]  # [c, s, S]
            z_parts.append(jnp.moveaxis(solve_triangular(_tril(t), v, lower=True), -1, 0))
    z = _join(z_parts)
    return -0.5 * jnp.sum(z**2, -1) - log_det_sqrt(w, p) - 0.5 * draws.shape[-1] * LOG_2PI


def loss(p: Params, key, w: Whitening, layout, model: bnn.BNNModel, x, y, mask, num_particles: int,
         estimator: str = "closed_form") -> Array:
    """Negative ELBO estimate from ``num_particles`` reparameterised draws."""
    draws = sample(key, w, p, num_particles)
    ll = _log_lik(model, draws, x, y, mask)
    if estimator == "closed_form":
        return -(jnp.mean(ll) - kl_to_prior(w, p, layout, model))
    log_prior = jax.vmap(lambda d: bnn.log_prior(model, bnn.unflatten(model, d)))(draws)
    return -jnp.mean(ll + log_prior - _log_q_stopped(w, p, layout, draws))


@partial(jax.jit, static_argnames=("layout", "num_particles", "estimator", "b1", "b2"))
def _chunk(p, opt_state, keys, lrs, w, layout, model, x, y, mask, num_particles, estimator, b1, b2):
    opt = optax.scale_by_adam(b1=b1, b2=b2)

    def step(carry, inp):
        p, s = carry
        k, lr = inp
        value, grads = jax.value_and_grad(loss)(p, k, w, layout, model, x, y, mask, num_particles, estimator)
        updates, s = opt.update(grads, s, p)
        p = jax.tree.map(lambda a, b: a - lr * b, p, updates)
        return (p, s), value

    return jax.lax.scan(step, (p, opt_state), (keys, lrs))


def fit(key: Array, model: bnn.BNNModel, x: Array, y: Array, layout, *, num_steps: int = 20_000,
        lr: tuple[float, float] = (5e-3, 5e-5), num_particles: int = 8, scale: str = "ggn",
        mean_init: str = "gauss_newton", estimator: str = "closed_form", gauss_newton_iters: int = 30,
        init_log_scale: float = 0.0, mask=None, chunk_size: int = 500, b1: float = 0.9, b2: float = 0.999,
        progress_bar: bool = False, desc: str = "") -> Result:
    """Fit ``q`` by Adam on the whitened coordinates (``lr`` decayed linearly ``lr[0] -> lr[1]``).

    ``m0`` is a prior draw, moved to the MAP weights by :func:`map_weights` (at most
    ``gauss_newton_iters`` steps; the dense system up to :data:`MAX_DENSE_WEIGHTS` weights,
    the layout's blocks above) when ``mean_init="gauss_newton"``; ``C0`` from ``scale``
    at ``m0`` (module docstring); ``T`` starts at ``e^{init_log_scale} I``. Raises on a
    non-finite loss.
    """
    if mean_init not in MEAN_INITS:
        raise ValueError(f"mean_init must be one of {MEAN_INITS}, got {mean_init!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    init_key, run_key = jax.random.split(key)
    m0 = bnn.flatten(bnn.prior_sample(init_key, model))
    if mean_init == "gauss_newton":
        system = None if model.num_weights <= MAX_DENSE_WEIGHTS else layout  # dense [P, P] only while small
        m0 = map_weights(model, m0, x, y, mask, gauss_newton_iters, system)
    w = _whitening(model, x, m0, layout, scale, mask)
    p = init_params(layout, m0.dtype, init_log_scale)
    opt_state = optax.scale_by_adam(b1=b1, b2=b2).init(p)
    lrs = np.asarray(optax.linear_schedule(lr[0], lr[1], max(num_steps, 1))(np.arange(num_steps)), dtype=m0.dtype)
    keys = jax.random.split(run_key, num_steps)
    def run_chunk(carry, done, n):
        return _chunk(*carry, keys[done:done + n], lrs[done:done + n], w, layout, model, x, y, mask,
                      num_particles, estimator, b1, b2)

    check = finite_check(desc or "gaussian_vi")

    (p, opt_state), losses = run_chunks(run_chunk, (p, opt_state), num_steps, chunk_size, desc=desc,
                                        progress=progress_bar, check=check)
    return Result(p, w, layout, model, jnp.concatenate(losses) if losses else jnp.zeros((0,), m0.dtype))


_gn_step = jax.jit(gauss_newton_step, static_argnames="layout")
_whitening = jax.jit(lambda model, x, m0, layout, scale, mask: whitening(model, x, m0, layout, scale, mask=mask),
                     static_argnums=(3, 4))
_log_joint = jax.jit(lambda model, w, x, y, mask: bnn.log_joint(model, bnn.unflatten(model, w), x, y, mask))


def map_weights(model: bnn.BNNModel, flat: Array, x: Array, y: Array, mask=None, max_iters: int = 30,
                layout=None) -> Array:
    """MAP weights from ``flat [P]`` by Gauss-Newton (:func:`gauss_newton_step` with ``layout``'s
    blocks, default the full system): one undamped step for a model with no hidden layer
    (exact with the full system); otherwise Levenberg-Marquardt, a step kept only when the log
    joint rises (damping / 3), else damping x 3; ``max_iters`` tries -> ``[P]``."""
    if model.num_layers == 1 and (layout is None or len(layout) == 1 and layout[0].count == 1):
        return _gn_step(model, flat, x, y, mask, 0.0, layout)
    damping, best = 1e-2, float(_log_joint(model, flat, x, y, mask))
    for _ in range(max_iters):
        cand = _gn_step(model, flat, x, y, mask, damping, layout)
        value = float(_log_joint(model, cand, x, y, mask))
        if np.isfinite(value) and value > best:
            flat, best, damping = cand, value, damping / 3
        else:
            damping *= 3
    return flat


# ----- convergence ----------------------------------------------------------------------


def still_rising(losses, window: float = 0.1, z: float = 3.0) -> dict:
    """Is the ELBO still rising at the end of a fit? Compares the mean negative ELBO of the
    last ``window`` of the steps with that of the window before it.

    Returns ``{"rising": bool, "gain": float, "gain_stderr": float}``: ``gain`` is the ELBO
    increase between the two windows, ``rising`` when it exceeds ``z`` standard errors
    (per-step estimates treated as independent) and 1e-3 nats.
    """
    a = np.asarray(losses, float)
    n = max(int(len(a) * window), 2)
    if len(a) < 2 * n:
        return {"rising": False, "gain": float("nan"), "gain_stderr": float("nan")}
    prev, last = a[-2 * n:-n], a[-n:]
    gain = float(prev.mean() - last.mean())
    se = float(math.sqrt(prev.var(ddof=1) / n + last.var(ddof=1) / n))
    return {"rising": bool(gain > max(z * se, 1e-3)), "gain": gain, "gain_stderr": se}

"""The Gauss-Newton MAP start of the Gaussian VI baselines (:mod:`bnnp_jax.inference.gaussian_vi`)
over a block layout (:mod:`bnnp_jax.inference.layout`).

:func:`gauss_newton_blocks` restricts the Gauss-Newton precision
``Lambda_prior + J^T diag(1 / sigma_y^2) J`` to a layout's blocks; :func:`map_weights` runs
damped Gauss-Newton steps on them to the MAP weights, as a fixed number of tries, so a batch
of fits jits and vmaps it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from bnnp_jax.core.linalg import after
from bnnp_jax.inference import model as bnn
from bnnp_jax.inference.layout import full_layout, join, split

__all__ = ["gauss_newton_blocks", "gauss_newton_step", "map_weights"]

Array = jax.Array


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
    jac = split(layout, _jacobian(model, flat, x, mask))  # [M, count, size] per segment
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
    # one LAPACK chain (bnnp_jax.core.linalg): the prior's factors after the gradient's
    # solves, each segment's factor after the previous segment's solves
    steps = []
    for g, prec, gr in zip(layout, gauss_newton_blocks(model.waiting_for(grad), flat, x, layout, mask),
                           split(layout, grad)):
        if g.diagonal:
            steps.append(gr / (prec * (1.0 + damping)))
            continue
        prec = after(prec, steps[-1:])
        prec = prec + damping * jnp.vectorize(jnp.diag, signature="(n)->(n,n)")(jnp.diagonal(prec, 0, -2, -1))
        chol = jnp.linalg.cholesky(prec)
        half = solve_triangular(chol, gr[..., None], lower=True)
        steps.append(solve_triangular(chol, half, lower=True, trans=1)[..., 0])
    return flat + join(steps)


def _map_weights(model, flat, x, y, mask, max_iters, layout):
    if model.num_layers == 1 and (layout is None or len(layout) == 1 and layout[0].count == 1):
        return gauss_newton_step(model, flat, x, y, mask, 0.0, layout)
    log_joint = lambda w: bnn.log_joint(model, bnn.unflatten(model, w), x, y, mask)

    def body(_, carry):  # a fixed number of tries (traceable, so a batch of fits vmaps it)
        flat, best, damping = carry
        cand = gauss_newton_step(model, flat, x, y, mask, damping, layout)
        value = log_joint(cand)
        better = jnp.isfinite(value) & (value > best)
        return (jnp.where(better, cand, flat), jnp.where(better, value, best),
                jnp.where(better, damping / 3, damping * 3))

    damping = jnp.asarray(1e-2, flat.dtype)
    return jax.lax.fori_loop(0, max_iters, body, (flat, log_joint(flat), damping))[0]


_map_weights_jit = jax.jit(_map_weights, static_argnums=(5, 6))


def map_weights(model: bnn.BNNModel, flat: Array, x: Array, y: Array, mask=None, max_iters: int = 30,
                layout=None) -> Array:
    """MAP weights from ``flat [P]`` by Gauss-Newton (:func:`gauss_newton_step` with ``layout``'s
    blocks, default the full system): one undamped step for a model with no hidden layer
    (exact with the full system); otherwise Levenberg-Marquardt, a step kept only when the log
    joint rises (damping / 3), else damping x 3; ``max_iters`` tries -> ``[P]``. Pure and
    traceable (a fixed number of tries), so it jits and vmaps."""
    return _map_weights_jit(model, flat, x, y, mask, max_iters, layout)

"""Gaussian variational inference baselines: MFVI, UCVI, LCVI and FCVI (SPEC section 8).

The four families are nested, MFVI ⊂ UCVI ⊂ LCVI ⊂ FCVI, and differ only in the block
structure of ``q(W) = N(m, S S^T)`` over the flat weights (layer by layer, unit-major, the
order of ``model.flatten``):

- ``mfvi``: a diagonal Gaussian over every weight.
- ``ucvi``: a full covariance per output unit (block diagonal over units).
- ``lcvi``: a full covariance per layer, block diagonal across layers (:mod:`.lcvi`).
- ``fcvi``: one full ``P x P`` covariance over all weights.

All four are fitted by :func:`bnnp_jax.inference.gaussian_vi.fit`: reparameterised ELBO
gradients with ``S`` draws, Adam with a linear learning-rate decay (SPEC section 11), on
coordinates whitened by the Gauss-Newton precision at the MAP weights (see that module;
Adam on a plain Cholesky factor from ``0.01 I`` stops 1.5 nats short of the exact posterior
at ``sigma_y = 0.01`` on a model with no hidden layer, docs/kl_study.md). ``q`` is held in closed form, so the KL to the prior is exact and an ELBO
estimate needs Monte Carlo only for the expected log-likelihood. Every fit keeps its ELBO
trajectory (``losses``, the negative ELBO per step).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnnp_jax.core.driver import finite_check, run_chunks
from bnnp_jax.core.gaussian import Gaussian
from bnnp_jax.inference import evidence, lcvi
from bnnp_jax.inference import gaussian_vi as gvi
from bnnp_jax.inference import model as bnn

__all__ = ["METHODS", "LAYOUTS", "VIResult", "run_steps", "run_adam", "adam_linear_decay", "layout", "fit",
           "unit_gaussians", "flat_gaussian", "kl_flat_to_units", "kl_to_prior", "kl_to_gaussians", "sample", "elbo", "predict"]

Array = jax.Array
LAYOUTS = {
    "mfvi": lambda widths: gvi.unit_layout(widths, diagonal=True),
    "ucvi": gvi.unit_layout,
    "lcvi": lcvi.layout,
    "fcvi": gvi.full_layout,
}
METHODS = tuple(LAYOUTS)


class VIResult(NamedTuple):
    """A fitted Gaussian ``q``.

    Attributes:
      method: one of :data:`METHODS`.
      params: :class:`gaussian_vi.Params`, the optimised whitened coordinates.
      whitening: :class:`gaussian_vi.Whitening`, the fixed coordinates.
      model: the :class:`~bnnp_jax.inference.model.BNNModel` it was fitted to.
      losses: ``[num_steps]`` negative ELBO estimates during training (the ELBO trajectory).
    """

    method: str
    params: gvi.Params
    whitening: gvi.Whitening
    model: bnn.BNNModel
    losses: Array

    @property
    def layout(self):
        return layout(self.method, self.model.widths)


# ----- training loop shared by the optimisation-based baselines ------------------


def run_steps(key, step: Callable, state, num_steps: int, *, chunk_size: int = 500, desc: str = "", progress_bar=True):
    """Run ``state, loss = step(state, key)`` for ``num_steps`` steps in jitted
    ``lax.scan`` chunks with a tqdm bar; raise on a non-finite loss.

    Returns the final state and the losses ``[num_steps]``.
    """

    @partial(jax.jit, static_argnums=2)
    def chunk(state, key, length):
        return jax.lax.scan(step, state, jax.random.split(key, length))

    def run_chunk(carry, start, length):
        state, key = carry
        key, sub = jax.random.split(key)
        state, loss = chunk(state, sub, length)
        return (state, key), loss

    check = finite_check(desc or "optimisation")

    (state, _), losses = run_chunks(run_chunk, (state, key), num_steps, chunk_size, desc=desc, progress=progress_bar,
                                    check=check, postfix=lambda loss, n, sec: {"loss": float(loss[-1])})
    return state, jnp.concatenate(losses)


def _adam_scan(loss_fn, params, opt_state, key, args, static, length, lr_start, lr_end, num_steps):
    """``length`` Adam steps on ``loss_fn(params, key, *args, *static)`` -> ``((params, opt_state), losses [length])``."""
    # optax.linear_schedule with traced ends (it branches on the Python value of the step count)
    opt = optax.adam(lambda count: lr_end + (lr_start - lr_end) * (1.0 - jnp.clip(count, 0, num_steps) / num_steps))

    def step(state, k):
        params, opt_state = state
        value, grads = jax.value_and_grad(loss_fn)(params, k, *args, *static)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return jax.lax.scan(step, (params, opt_state), jax.random.split(key, length))


_adam_chunk = jax.jit(_adam_scan, static_argnames=("loss_fn", "length", "static"))


@partial(jax.jit, static_argnames=("loss_fn", "length", "static"))
def _adam_chunk_batch(loss_fn, params, opt_state, keys, args, static, length, lr_start, lr_end, num_steps):
    # every fit of the batch is the single fit's scan, vmapped: its own params, Adam moments and keys
    one = lambda p, s, k, a: _adam_scan(loss_fn, p, s, k, a, static, length, lr_start, lr_end, num_steps)
    return jax.vmap(one)(params, opt_state, keys, args)


def run_adam(key, loss_fn: Callable, params, args: tuple, num_steps: int, lr: tuple[float, float], *,
             static: tuple = (), chunk_size: int = 500, desc: str = "", progress_bar=True, batched: bool = False):
    """Minimise ``loss_fn(params, key, *args, *static)`` with :func:`adam_linear_decay`, in the same
    chunks and with the same keys as :func:`run_steps`, but compiled once per ``loss_fn``, shapes
    and ``static`` (hashable) values, so repeated fits (a sigma_y grid) reuse the program.
    ``lr`` values and ``num_steps`` are traced. Returns the final params and the losses ``[num_steps]``.

    ``batched=True`` runs ``B`` independent fits as one vmapped program: ``key [B, 2]`` and every
    leaf of ``params`` and ``args`` carry a leading batch axis ``[B, ...]``; fit ``b`` is the single
    fit with ``key[b]`` on slice ``b`` of ``params`` and ``args``. Losses are then ``[B, num_steps]``
    and a non-finite loss in any fit raises, naming the fit."""
    opt = adam_linear_decay(*lr, num_steps)
    state = (params, jax.vmap(opt.init)(params) if batched else opt.init(params))
    lr0, lr1, n = (jnp.asarray(v, jnp.result_type(float)) for v in (*lr, max(num_steps, 1)))
    split = jax.vmap(jax.random.split) if batched else jax.random.split
    chunk_fn = _adam_chunk_batch if batched else _adam_chunk

    def run_chunk(carry, start, length):
        state, key = carry
        parts = split(key)
        key, sub = (parts[:, 0], parts[:, 1]) if batched else parts
        state, loss = chunk_fn(loss_fn, *state, sub, args, static, length, lr0, lr1, n)
        return (state, key), loss

    check = finite_check(desc or "optimisation")

    (state, _), losses = run_chunks(run_chunk, (state, key), num_steps, chunk_size, desc=desc,
                                    progress=progress_bar, check=check)
    if not losses:  # num_steps = 0: the start itself
        return state[0], jnp.zeros(tuple(key.shape[:1]) * batched + (0,), jnp.result_type(float))
    return state[0], jnp.concatenate(losses, axis=-1)


def adam_linear_decay(lr_start: float, lr_end: float, num_steps: int) -> optax.GradientTransformation:
    """Adam with the learning rate decayed linearly ``lr_start -> lr_end`` (SPEC section 11)."""
    return optax.adam(optax.linear_schedule(lr_start, lr_end, max(num_steps, 1)))


# ----- the families ----------------------------------------------------------------


def layout(method: str, widths) -> tuple:
    """The block layout (:class:`gaussian_vi.Segment` s) of ``method`` for a network of ``widths``."""
    if method not in LAYOUTS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return LAYOUTS[method](tuple(widths))


def fit(
    key: Array,
    model: bnn.BNNModel,
    x: Array,
    y: Array,
    method: str = "mfvi",
    *,
    num_steps: int = 20_000,
    lr: tuple[float, float] = (5e-3, 5e-5),
    num_particles: int = 8,
    mask: Array | None = None,
    progress_bar: bool = True,
    batched: bool = False,
    **settings,
) -> VIResult:
    """Fit ``q`` by maximising the ELBO with ``num_particles`` reparameterised draws per step.

    ``settings`` go to :func:`gaussian_vi.fit` (``scale``, ``mean_init``, ``estimator``,
    ``init_log_scale``, ...); its defaults are the ones chosen in docs/kl_study.md.
    ``batched=True``: ``B`` fits in one vmapped program (:func:`gaussian_vi.fit`)."""
    lay = layout(method, model.widths)
    res = gvi.fit(key, model, x, y, lay, num_steps=num_steps, lr=lr, num_particles=num_particles, mask=mask,
                  progress_bar=progress_bar, desc=method, batched=batched, **settings)
    return VIResult(method, res.params, res.whitening, model, res.losses)


# ----- the fitted q in closed form ---------------------------------------------


def unit_gaussians(result: VIResult) -> list[Gaussian]:
    """``q`` per layer as per-unit Gaussians, ``mean [O, D]``, ``prec_tril [O, D, D]``
    (``mfvi`` and ``ucvi``; LCVI and FCVI couple units: :func:`flat_gaussian`)."""
    if result.method not in ("mfvi", "ucvi"):
        raise ValueError(f"{result.method} couples units; use flat_gaussian")
    means = bnn.unflatten(result.model, gvi.mean(result.whitening, result.params))
    out = []
    for w, s in zip(means, gvi.square_roots(result.whitening, result.params)):
        if s.ndim == 2:  # diagonal: standard deviations [O, D]
            out.append(Gaussian(w.T, jax.vmap(jnp.diag)(1.0 / s)))
        else:
            out.append(Gaussian.from_covariance(w.T, s @ jnp.swapaxes(s, -1, -2)))
    return out


def flat_gaussian(result: VIResult) -> tuple[Array, Array]:
    """``q`` over the flat weights, any method: ``mean [P]``, covariance Cholesky ``[P, P]``
    (block diagonal in the method's layout)."""
    blocks = []
    for s in gvi.square_roots(result.whitening, result.params):
        if s.ndim == 2:
            blocks += list(jnp.diag(v) for v in s.reshape(-1)[:, None])
        else:
            blocks += list(jnp.linalg.cholesky(s @ jnp.swapaxes(s, -1, -2)))
    return gvi.mean(result.whitening, result.params), jax.scipy.linalg.block_diag(*blocks)


def kl_flat_to_units(mean: Array, scale_tril: Array, targets: list[Gaussian]) -> Array:
    """``KL(N(mean, L L^T) || prod_units targets)`` for a joint Gaussian over the flat
    weights against per-unit Gaussians (block diagonal in the flat order) -> scalar.

    With target precision factors ``C`` per unit and ``L_b`` the rows of ``L`` of a
    unit's block: ``KL = 1/2 (sum ||C^T L_b||_F^2 + sum ||C^T (m_b - mu)||^2 - P)
    - sum log diag C - sum log diag L``.
    """
    trace, maha, log_det_c, start = 0.0, 0.0, 0.0, 0
    for g in targets:
        o, d = g.mean.shape
        rows = scale_tril[start : start + o * d].reshape(o, d, -1)  # [O, D, P]
        diff = mean[start : start + o * d].reshape(o, d) - g.mean
        c_t = jnp.swapaxes(g.prec_tril, -1, -2)
        trace += jnp.sum((c_t @ rows) ** 2)
        maha += jnp.sum(jnp.einsum("oij,oj->oi", c_t, diff) ** 2)
        log_det_c += jnp.sum(jnp.log(jnp.diagonal(g.prec_tril, axis1=-2, axis2=-1)))
        start += o * d
    log_det_l = jnp.sum(jnp.log(jnp.diagonal(scale_tril)))
    return 0.5 * (trace + maha - mean.shape[0]) - log_det_c - log_det_l


def kl_to_gaussians(result: VIResult, targets: list[Gaussian]) -> Array:
    """Exact ``KL(q || prod_units targets)`` -> scalar; ``targets`` per layer, e.g. the prior
    or (no hidden layer) ``[model.exact_posterior(...)]``."""
    w, p = result.whitening, result.params
    return gvi.kl_to_units(gvi.mean(w, p), gvi.square_roots(w, p), gvi.log_det_sqrt(w, p), result.layout,
                           result.model.widths, targets)


def kl_to_prior(result: VIResult) -> Array:
    """Exact ``KL(q || p(W))`` -> scalar."""
    return kl_to_gaussians(result, result.model.prior_gaussians())


def sample(key: Array, result: VIResult, num_samples: int) -> Array:
    """Flat weight samples from ``q``: ``[S, P]``."""
    return _sample(key, result.whitening, result.params, num_samples)


_sample = jax.jit(gvi.sample, static_argnames="num_samples")


def _terms(key, w, p, lay, model, x, y, mask, num_samples, batch_size):
    flat = gvi.sample(key, w, p, num_samples)
    loglik = evidence.batched_log_likelihood(model, flat, x, y, mask, batch_size)
    return loglik, gvi.kl_to_prior(w, p, lay, model)


_ELBO_STATIC = ("lay", "num_samples", "batch_size")
_elbo_terms = jax.jit(_terms, static_argnames=_ELBO_STATIC)


@partial(jax.jit, static_argnames=_ELBO_STATIC)
def _elbo_terms_batch(key, w, p, lay, model, x, y, mask, num_samples, batch_size):
    one = lambda k, w, p, *data: _terms(k, w, p, lay, *data, num_samples, batch_size)
    return evidence.map_fits(one, key, w, p, model, x, y, mask)


def elbo(key: Array, result: VIResult, x: Array, y: Array, num_samples: int = 10_000, *, mask=None, batch_size=1000,
         batched: bool = False):
    """ELBO on ``(x, y)``: Monte-Carlo expected log-likelihood over ``num_samples``
    draws minus the exact KL to the prior -> :class:`evidence.ELBOEstimate`. ``batched``:
    a batched ``result`` (:func:`fit` with ``batched=True``), ``key [B, 2]``, ``x``, ``y``,
    ``mask`` with a leading batch axis; the estimate's fields are then ``[B]``."""
    terms = _elbo_terms_batch if batched else _elbo_terms
    loglik, kl = terms(key, result.whitening, result.params, result.layout, result.model, x, y, mask,
                       num_samples, batch_size)
    return evidence.elbo_estimate(loglik, kl)


def predict(key: Array, result: VIResult, x_test: Array, num_samples: int) -> Array:
    """Posterior function samples ``[num_samples, N_t, D_L]``."""
    return bnn.forward_flat(result.model, sample(key, result, num_samples), x_test)

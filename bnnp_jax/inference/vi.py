"""Gaussian variational inference baselines: MFVI, FCVI and UCVI (SPEC section 8).

All three fit ``q(W)`` to :func:`bnnp_jax.inference.model.numpyro_model` with
numpyro's SVI (reparameterised ``Trace_ELBO`` with ``S`` particles, Adam with a
linear learning-rate decay, SPEC section 11), differing only in the family:

- ``mfvi``: ``AutoNormal``, a diagonal Gaussian over every weight.
- ``fcvi``: ``AutoMultivariateNormal``, one full ``P x P`` covariance over all
  weights (in the flat layer-by-layer, unit-major order of ``model.flatten``).
- ``ucvi``: a full covariance per output unit (block diagonal), written as a
  small numpyro guide (:func:`ucvi_guide`).

Every method starts from the same prior draw. The fitted ``q`` is read back
into closed form so that the KL to the prior is exact and the ELBO estimate
only needs Monte Carlo for the expected log-likelihood.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnnp_jax.core.driver import run_chunks
from bnnp_jax.core.gaussian import Gaussian, kl_divergence
from bnnp_jax.inference import evidence
from bnnp_jax.inference import model as bnn

__all__ = ["METHODS", "VIResult", "run_steps", "adam_linear_decay", "ucvi_guide", "make_guide", "fit",
           "unit_gaussians", "flat_gaussian", "kl_flat_to_units", "kl_to_prior", "sample", "elbo",
           "predict"]

Array = jax.Array
METHODS = ("mfvi", "fcvi", "ucvi")


class VIResult(NamedTuple):
    """A fitted Gaussian ``q``.

    Attributes:
      method: one of :data:`METHODS`.
      params: numpyro guide parameters (constrained values).
      model: the :class:`~bnnp_jax.inference.model.BNNModel` it was fitted to.
      losses: ``[num_steps]`` negative ELBO estimates during training.
    """

    method: str
    params: dict
    model: bnn.BNNModel
    losses: Array


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

    def check(loss, start):
        if not np.all(np.isfinite(loss)):
            bad = start + int(np.argmin(np.isfinite(loss)))
            raise FloatingPointError(f"{desc or 'optimisation'}: non-finite loss at step {bad}")

    (state, _), losses = run_chunks(run_chunk, (state, key), num_steps, chunk_size, desc=desc, progress=progress_bar,
                                    check=check, postfix=lambda loss, n, sec: {"loss": float(loss[-1])})
    return state, jnp.concatenate(losses)


def adam_linear_decay(lr_start: float, lr_end: float, num_steps: int) -> optax.GradientTransformation:
    """Adam with the learning rate decayed linearly ``lr_start -> lr_end`` (SPEC section 11)."""
    return optax.adam(optax.linear_schedule(lr_start, lr_end, max(num_steps, 1)))


# ----- guides -----------------------------------------------------------------


def _site(l: int) -> str:
    return f"W{l:02d}"


def ucvi_guide(model: bnn.BNNModel, x, y=None, mask=None, *, init_units, init_scale: float = 1e-2):
    """Block-diagonal Gaussian guide: a full covariance for each output unit's incoming weights."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    for l, loc0 in enumerate(init_units):
        o, d = loc0.shape
        loc = numpyro.param(f"{_site(l)}_ucvi_loc", loc0)
        tril0 = init_scale * jnp.broadcast_to(jnp.eye(d, dtype=loc0.dtype), (o, d, d))
        tril = numpyro.param(f"{_site(l)}_ucvi_scale_tril", tril0, constraint=constraints.lower_cholesky)
        numpyro.sample(_site(l), dist.MultivariateNormal(loc, scale_tril=tril).to_event(1))


def make_guide(method: str, model: bnn.BNNModel, init_units, init_scale: float):
    """The numpyro guide for ``method``, initialised at ``init_units`` (unit layout per layer)."""
    from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
    from numpyro.infer.initialization import init_to_value

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    values = {_site(l): u for l, u in enumerate(init_units)}
    if method == "mfvi":
        return AutoNormal(bnn.numpyro_model, init_loc_fn=init_to_value(values=values), init_scale=init_scale)
    if method == "fcvi":
        return AutoMultivariateNormal(bnn.numpyro_model, init_loc_fn=init_to_value(values=values), init_scale=init_scale)
    return partial(ucvi_guide, init_units=init_units, init_scale=init_scale)


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
    init_scale: float = 1e-2,
    mask: Array | None = None,
    progress_bar: bool = True,
) -> VIResult:
    """Fit ``q`` by maximising the ELBO with ``num_particles`` reparameterised samples per step."""
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro

    init_key, svi_key, run_key = jax.random.split(key, 3)
    init_units = [w.T for w in bnn.prior_sample(init_key, model)]
    guide = make_guide(method, model, init_units, init_scale)
    svi = SVI(
        bnn.numpyro_model,
        guide,
        optax_to_numpyro(adam_linear_decay(*lr, num_steps)),
        Trace_ELBO(num_particles=num_particles, vectorize_particles=True),
    )
    state = jax.jit(svi.init)(svi_key, model, x, y, mask)  # numpyro's eager guide set-up is slow; traced once here

    def step(state, _):
        return svi.update(state, model, x, y, mask)

    state, losses = run_steps(run_key, step, state, num_steps, desc=method, progress_bar=progress_bar)
    return VIResult(method, svi.get_params(state), model, losses)


# ----- the fitted q in closed form ---------------------------------------------


def _unit_gaussians(method: str, params: dict, num_layers: int) -> list[Gaussian]:
    out = []
    for l in range(num_layers):
        if method == "mfvi":
            scale = params[f"{_site(l)}_auto_scale"]
            out.append(Gaussian(params[f"{_site(l)}_auto_loc"], jax.vmap(jnp.diag)(1.0 / scale)))
        elif method == "ucvi":
            out.append(Gaussian.from_scale_tril(params[f"{_site(l)}_ucvi_loc"], params[f"{_site(l)}_ucvi_scale_tril"]))
        else:
            raise ValueError("FCVI has one joint Gaussian over all weights; use flat_gaussian")
    return out


def unit_gaussians(result: VIResult) -> list[Gaussian]:
    """``q`` per layer as per-unit Gaussians (``mfvi`` and ``ucvi``; FCVI couples units)."""
    return _unit_gaussians(result.method, result.params, result.model.num_layers)


def flat_gaussian(result: VIResult) -> tuple[Array, Array]:
    """FCVI's ``q`` over the flat weights: ``mean [P]``, covariance Cholesky ``[P, P]``."""
    if result.method != "fcvi":
        raise ValueError(f"flat_gaussian is for fcvi, got {result.method!r}")
    return result.params["auto_loc"], result.params["auto_scale_tril"]


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


def _kl_to_prior(method: str, params: dict, model: bnn.BNNModel) -> Array:
    prior = model.prior_gaussians()
    if method == "fcvi":
        return kl_flat_to_units(params["auto_loc"], params["auto_scale_tril"], prior)
    qs = _unit_gaussians(method, params, model.num_layers)
    return sum(jnp.sum(kl_divergence(q, p)) for q, p in zip(qs, prior))


def kl_to_prior(result: VIResult) -> Array:
    """Exact ``KL(q || p(W))`` -> scalar."""
    return _kl_to_prior(result.method, result.params, result.model)


@partial(jax.jit, static_argnames=("method", "num_samples"))
def _sample(key: Array, method: str, params: dict, model: bnn.BNNModel, num_samples: int) -> Array:
    if method == "fcvi":
        mean, tril = params["auto_loc"], params["auto_scale_tril"]
        eps = jax.random.normal(key, (num_samples,) + mean.shape, mean.dtype)
        return mean + eps @ tril.T
    qs = _unit_gaussians(method, params, model.num_layers)
    keys = jax.random.split(key, len(qs))
    return jnp.concatenate([q.sample(k, (num_samples,)).reshape(num_samples, -1) for k, q in zip(keys, qs)], axis=1)


def sample(key: Array, result: VIResult, num_samples: int) -> Array:
    """Flat weight samples from ``q``: ``[S, P]``."""
    return _sample(key, result.method, result.params, result.model, num_samples)


@partial(jax.jit, static_argnames=("method", "num_samples", "batch_size"))
def _elbo_terms(key, method, params, model, x, y, mask, num_samples, batch_size):
    flat = _sample(key, method, params, model, num_samples)
    loglik = evidence.batched_log_likelihood(model, flat, x, y, mask, batch_size)
    return loglik, _kl_to_prior(method, params, model)


def elbo(key: Array, result: VIResult, x: Array, y: Array, num_samples: int = 10_000, *, mask=None, batch_size=1000):
    """ELBO on ``(x, y)``: Monte-Carlo expected log-likelihood over ``num_samples``
    draws minus the exact KL to the prior -> :class:`evidence.ELBOEstimate`."""
    loglik, kl = _elbo_terms(key, result.method, result.params, result.model, x, y, mask, num_samples, batch_size)
    return evidence.elbo_estimate(loglik, kl)


def predict(key: Array, result: VIResult, x_test: Array, num_samples: int) -> Array:
    """Posterior function samples ``[num_samples, N_t, D_L]``."""
    return bnn.forward_flat(result.model, sample(key, result, num_samples), x_test)

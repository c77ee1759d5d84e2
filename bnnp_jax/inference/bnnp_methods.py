"""BNNP posteriors as inference baselines on one dataset (SPEC sections 7 and 8).

- Per-task BNNP: no inference network. Each data point and layer gets free
  pseudo-observations ``(yhat, log s)`` (the last layer's pseudo-targets are
  the true ``y`` and only ``log s`` is free, or ``lambda = 1 / sigma_y^2`` with
  ``final_layer="exact"``), turned into precisions exactly as the amortised
  layer does (``s = exp(log s - 2)``, ``lambda = 1 / (s^2 + 1e-6)``) and
  optimised by the ELBO on this one dataset. The layer-by-layer conditional
  posterior is the same sampler as GIVI's (:func:`givi.layerwise_path`) with
  the data points as pseudo-inputs.
- Amortised BNNP: a meta-trained :class:`bnnp_jax.bnnp.model.BNNPParams` applied
  zero-shot (``bnnp.masked_posterior``); nothing is fitted.

Both return function samples through ``predict`` and an ELBO estimate with a
settable sample count, like the other baselines.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnnp_jax.bnnp import amortised_layer
from bnnp_jax.core import blr
from bnnp_jax.core.gaussian import kl_divergence
from bnnp_jax.core.minibatch import map_padded
from bnnp_jax.core.networks import with_bias
from bnnp_jax.inference import evidence, givi
from bnnp_jax.inference import model as bnn
from bnnp_jax.inference.vi import run_adam

__all__ = ["FINAL_LAYER_MODES", "PerTaskParams", "PerTaskResult", "per_task_init", "per_task_path",
           "per_task_elbo_terms", "per_task_loss", "per_task_fit", "per_task_elbo", "per_task_predict",
           "per_task_linear_kl",
           "AmortisedResult", "amortised_fit", "amortised_elbo", "amortised_predict"]

Array = jax.Array
FINAL_LAYER_MODES = ("learned", "exact")


# ----- per-task BNNP ------------------------------------------------------------


class PerTaskParams(NamedTuple):
    """Free pseudo-observations: ``yhat`` per hidden layer ``[N, D_l]``; ``log_s`` per layer
    ``[N, D_l]`` (the last entry is ``[N, D_L]``, or absent with an exact final layer)."""

    yhat: list
    log_s: list


class PerTaskResult(NamedTuple):
    """A fitted per-task posterior and its dataset (``mask [N]``: padded points, or None)."""

    params: PerTaskParams
    model: bnn.BNNModel
    x: Array
    y: Array
    losses: Array
    mask: Array | None = None


def per_task_init(key, model: bnn.BNNModel, x: Array, final_layer: str = "learned", *,
                  hidden_log_s: float = 4.0) -> PerTaskParams:
    """A near-prior start, like GIVI's: hidden pseudo-targets at the pre-activations of
    one prior draw with a weak precision (``log s = 4``: ``lambda ~ e^-4``), and the last
    layer's precision at the observation precision ``1 / sigma_y^2`` (exact regression
    given the features). Starting the hidden layers at the amortised layer's initial
    ``log s = 0`` (``lambda ~ 55``) pins them to one random prior function; on the KL
    table's data at ``sigma_y = 0.1`` that costs about 18 nats after 2000 steps."""
    if final_layer not in FINAL_LAYER_MODES:
        raise ValueError(f"final_layer must be one of {FINAL_LAYER_MODES}, got {final_layer!r}")
    weights = bnn.prior_sample(key, model)
    yhat = [bnn.forward(weights[: l + 1], x, model.activation) for l in range(model.num_layers - 1)]
    log_s = [jnp.full((x.shape[0], d), hidden_log_s, x.dtype) for d in model.widths[1:-1]]
    if final_layer == "learned":
        final = amortised_layer.LOG_S_SHIFT + jnp.log(model.sigma_y).astype(x.dtype)
        log_s.append(jnp.broadcast_to(final, (x.shape[0], model.widths[-1])))
    return PerTaskParams(yhat, log_s)


def _layer_precision(model: bnn.BNNModel, params: PerTaskParams, l: int, y: Array, mask=None) -> Array:
    """Layer ``l``'s pseudo-precisions ``[N, D_l]``: ``1 / sigma_y^2`` on an exact final layer;
    zero at padded points (``mask [N]``), which then condition nothing."""
    if l == model.num_layers - 1 and len(params.log_s) < model.num_layers:
        prec = jnp.broadcast_to(model.sigma_y**-2, y.shape)
    else:
        prec = amortised_layer.pseudo_precision(params.log_s[l])
    return prec if mask is None else prec * mask[:, None]


def per_task_path(key, model: bnn.BNNModel, params: PerTaskParams, x_c: Array, y_c: Array, x: Array | None,
                  mask: Array | None = None):
    """One posterior path given the dataset ``(x_c, y_c)`` (``mask [N]``: its valid points): ``f``
    at ``x`` (default ``x_c``) and the KL."""

    def layer(l, phi_c):
        last = l == model.num_layers - 1
        targets = y_c if last else params.yhat[l]
        return blr.natural_stats(phi_c, targets, _layer_precision(model, params, l, y_c, mask))

    return givi.layerwise_path(key, model, x_c, x, layer)


def per_task_linear_kl(result: PerTaskResult, targets: list) -> Array:
    """``KL(q || targets[0])`` in closed form for a model with no hidden layer, where the
    per-task ``q`` is one Bayesian linear regression on the data (SPEC section 4) -> scalar."""
    model, params = result.model, result.params
    bnn.require_no_hidden_layer(model, "result: a closed-form KL")
    prec = _layer_precision(model, params, 0, result.y, result.mask)
    q = blr.posterior(with_bias(result.x), result.y, prec, model.prior_gaussians()[0])
    return jnp.sum(kl_divergence(q, targets[0]))


def per_task_elbo_terms(key, model, params: PerTaskParams, x, y, num_samples: int, mask=None):
    """Per-path log-likelihood ``[S]`` and KL ``[S]`` on the dataset itself (``mask [N]``: its valid points)."""

    def one(k):
        f, kl = per_task_path(k, model, params, x, y, None, mask)
        return bnn.log_likelihood_from_output(model, f, y, mask), kl

    return jax.vmap(one)(jax.random.split(key, num_samples))


def per_task_loss(params: PerTaskParams, key, model, x, y, num_samples: int = 8, mask=None) -> Array:
    ll, kl = per_task_elbo_terms(key, model, params, x, y, num_samples, mask)
    return -jnp.mean(ll - kl)


def _loss_masked(params, key, model, x, y, mask, num_samples):
    return per_task_loss(params, key, model, x, y, num_samples, mask)


def per_task_fit(key, model: bnn.BNNModel, x, y, *, num_steps=20_000, lr=(5e-3, 5e-5), num_samples=8,
                 final_layer="learned", init_params: PerTaskParams | None = None, mask=None, progress_bar=True,
                 batched: bool = False) -> PerTaskResult:
    """Optimise the pseudo-observations by the ELBO with Adam (linear decay), from
    ``init_params`` if given (else :func:`per_task_init`). ``mask [N]``: valid points of a
    padded dataset.

    ``batched=True``: ``B`` fits as one vmapped program (``key [B, 2]``, a batched ``model``,
    ``x [B, N, D_0]``, ``y [B, N, D_L]``, ``mask [B, N]`` or None); fit ``b`` is the single fit
    with ``key[b]`` on batch element ``b``."""
    if final_layer not in FINAL_LAYER_MODES:
        raise ValueError(f"final_layer must be one of {FINAL_LAYER_MODES}, got {final_layer!r}")
    if batched:
        keys = jax.vmap(jax.random.split)(key)
        init_key, run_key = keys[:, 0], keys[:, 1]
        params0 = init_params or _init_batch(init_key, model, x, final_layer)
    else:
        init_key, run_key = jax.random.split(key)
        params0 = init_params or per_task_init(init_key, model, x, final_layer)
    params, losses = run_adam(run_key, _loss_masked, params0, (model, x, y, mask), num_steps, lr,
                              static=(num_samples,), desc="bnnp per-task", progress_bar=progress_bar, batched=batched)
    return PerTaskResult(params, model, x, y, losses, mask)


@partial(jax.jit, static_argnames="final_layer")
def _init_batch(keys, model, x, final_layer):
    return jax.vmap(lambda k, m, x: per_task_init(k, m, x, final_layer))(keys, model, x)


def _per_task_elbo_terms(key, model, params, x, y, mask, num_samples, batch_size):
    one = lambda k: per_task_elbo_terms(k, model, params, x, y, 1, mask)
    ll, kl = map_padded(one, jax.random.split(key, num_samples), batch_size)
    return ll[:, 0], kl[:, 0]


_per_task_elbo = jax.jit(_per_task_elbo_terms, static_argnames=("num_samples", "batch_size"))


@partial(jax.jit, static_argnames=("num_samples", "batch_size"))
def _per_task_elbo_batch(key, model, params, x, y, mask, num_samples, batch_size):
    one = lambda *a: _per_task_elbo_terms(*a, num_samples, batch_size)
    return evidence.map_fits(one, key, model, params, x, y, mask)


def per_task_elbo(key, result: PerTaskResult, num_samples: int = 10_000, *, batch_size: int = 1000,
                  batched: bool = False):
    """ELBO on the fitted dataset -> :class:`evidence.ELBOEstimate`. ``batched``: a batched
    ``result`` and ``key [B, 2]``; the estimate's fields are then ``[B]``."""
    terms = _per_task_elbo_batch if batched else _per_task_elbo
    return evidence.elbo_estimate(*terms(key, result.model, result.params, result.x, result.y, result.mask,
                                         num_samples, batch_size))


@partial(jax.jit, static_argnames="num_samples")
def _per_task_predict(key, model, params, x, y, mask, x_test, num_samples):
    one = lambda k: per_task_path(k, model, params, x, y, x_test, mask)[0]
    return jax.vmap(one)(jax.random.split(key, num_samples))


def per_task_predict(key, result: PerTaskResult, x_test, num_samples: int) -> Array:
    """Posterior function samples ``[num_samples, N_t, D_L]``."""
    return _per_task_predict(key, result.model, result.params, result.x, result.y, result.mask, x_test, num_samples)


# ----- amortised BNNP -------------------------------------------------------------


class AmortisedResult(NamedTuple):
    """A meta-trained BNNP conditioned on one dataset (nothing is fitted)."""

    params: object
    x: Array
    y: Array


def amortised_fit(key, params, x, y) -> AmortisedResult:
    """Zero-shot: the posterior is one forward pass of the inference networks, done lazily."""
    del key
    return AmortisedResult(params, x, y)


@partial(jax.jit, static_argnames=("num_samples", "batch_size"))
def _amortised_elbo(key, params, x, y, num_samples, batch_size):
    from bnnp_jax.bnnp import model as bnnp

    ones = jnp.ones(x.shape[0], x.dtype)

    def one(k):  # one path per call, so the KL is per path and the standard error is honest
        post = bnnp.masked_posterior(k, params, x, y, ones, 1)
        return bnnp.log_likelihood_sums(params, post.weights, x, y, ones[:, None])[0, 0], post.kl

    return map_padded(one, jax.random.split(key, num_samples), batch_size)


def amortised_elbo(key, result: AmortisedResult, num_samples: int = 10_000, *, batch_size: int = 1000):
    """ELBO of the amortised posterior on its dataset, under the BNNP's own prior and
    ``sigma_y`` -> :class:`evidence.ELBOEstimate`."""
    return evidence.elbo_estimate(*_amortised_elbo(key, result.params, result.x, result.y, num_samples, batch_size))


def amortised_predict(key, result: AmortisedResult, x_test, num_samples: int) -> Array:
    """Posterior function samples ``[num_samples, N_t, D_L]``."""
    from bnnp_jax.bnnp import model as bnnp

    return bnnp.predict(key, result.params, result.x, result.y, x_test, num_samples).samples

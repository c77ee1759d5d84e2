"""The Bayesian Neural Network Process (SPEC sections 2, 4 and 6).

One task at a time; batch over tasks with ``jax.vmap`` (params unbatched).
Per layer, the amortised linear layer turns the context set into a closed-form
conditional posterior ``q(W_l | W_{<l}, D_c)``; ``S`` sample paths flow layer
by layer, each path's features computed with that path's earlier samples.

The parameters are a :class:`BNNPParams` pytree (``bnnp/params.py``) whose ``config`` is static
aux-data, so the public functions need no separate config argument and jit
specialises on it.

Within-task minibatching (SPEC section 6) is the ``batch_size`` argument: the
layer statistics are accumulated over batches of points with ``lax.scan``,
and each batch's activations are *recomputed* from the inputs through the
path's earlier samples, so memory does not grow with ``N``; the scan body is
rematerialised (``jax.checkpoint``) so the backward pass does not store
per-batch activations either.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.bnnp import amortised_layer
from bnnp_jax.bnnp.params import (FINAL_LAYER_MODES, LAYER_FORMS, PRIOR_KINDS, PSEUDO_PRECISIONS, BNNPConfig,
                                     BNNPParams, init, raw_sigma, sigma_from_raw, sigma_y)
from bnnp_jax import validation
from bnnp_jax.core import blr
from bnnp_jax.core import blr_dual
from bnnp_jax.bnnp.path import sample_layers
from bnnp_jax.priors import metaprior_prior
from bnnp_jax.priors import weight_prior as priors
from bnnp_jax.core.gaussian import Gaussian, normal_log_prob
from bnnp_jax.core.linalg import after
from bnnp_jax.core.minibatch import batched_map, batched_sum
from bnnp_jax.core import networks
from bnnp_jax.core.networks import activation_fn, with_bias

__all__ = ["PRIOR_KINDS", "FINAL_LAYER_MODES", "PSEUDO_PRECISIONS", "LAYER_FORMS", "BNNPConfig", "BNNPParams",
           "PosteriorSamples", "Prediction", "init", "raw_sigma", "sigma_from_raw", "sigma_y", "forward", "minibatched", "layer_forms",
           "sample_path", "layer_priors", "prior_scale_trils", "prior_factors", "masked_posterior", "masked_functions", "log_likelihood_sums",
           "posterior_samples", "predict", "prior_samples"]

Array = jax.Array


class PosteriorSamples(NamedTuple):
    """``weights``: list over layers of ``[S, D_{l-1}+1, D_l]``; ``kl``: scalar,
    ``sum_l mean_s sum_d KL(q(w_d | W_{<l}^{(s)}) || p(w_d))``, or ``None`` when drawn
    with ``with_kl=False``."""

    weights: list
    kl: Array | None


class Prediction(NamedTuple):
    """``samples [S, N_t, y_dim]`` function draws; ``mean``/``variance`` ``[N_t, y_dim]``
    of the predictive (variance includes ``sigma_y^2``)."""

    samples: Array
    mean: Array
    variance: Array


def _layer_input(a: Array, l: int, activation: str) -> Array:
    """``act(a_{l-1})``, the identity for the first layer: ``[N, D] -> [N, D]``."""
    return a if l == 0 else activation_fn(activation)(a)


def _features(a: Array, l: int, activation: str) -> Array:
    """``Phi_l = [act(a_{l-1}), 1]``: ``[N, D] -> [N, D+1]``."""
    return with_bias(_layer_input(a, l, activation))


def forward(weights: Sequence[Array], x: Array, activation: str = "relu") -> Array:
    """Network outputs for every sample path: ``weights[l] [S, D_{l-1}+1, D_l]``,
    ``x [N, x_dim]`` -> ``[S, N, y_dim]``."""
    return jax.vmap(lambda ws: networks.forward(ws, x, activation))(list(weights))


def _final_precision(params: BNNPParams) -> Array | None:
    return 1.0 / sigma_y(params) ** 2 if params.config.final_layer == "exact" else None


def _layer_stats(params: BNNPParams, l: int, earlier: list, x: Array, y: Array, ctx_w: Array, batch_size):
    """Natural statistics of layer ``l`` on one sample path, accumulated over
    batches of points; activations are recomputed through ``earlier`` samples."""
    cfg = params.config
    spec = cfg.specs[l]
    final_prec = _final_precision(params)

    def batch_stats(xb, yb, wb):
        a = networks.forward(earlier, xb, cfg.activation)  # a_{l-1} [B, D_{l-1}]
        seen = activation_fn(cfg.activation)(a) if (cfg.inference_sees_activations and l > 0) else None
        yhat, lam = amortised_layer.pseudo_observations(
            params.inference, l, spec, cfg.net_hidden, xb, yb, seen, final_prec
        )
        return blr.natural_stats(_features(a, l, cfg.activation), yhat, lam * wb[:, None])

    return blr.NaturalStats(*batched_sum(batch_stats, (x, y, ctx_w), batch_size))


def minibatched(num_points: int, batch_size) -> bool:
    """Whether ``batch_size`` splits ``num_points`` rows into several batches (SPEC section 6)."""
    return batch_size is not None and batch_size < num_points


def layer_forms(config: BNNPConfig, num_points: int, batch_size=None) -> tuple[str, ...]:
    """The static form (``primal`` or ``dual``) of each layer's posterior for a
    context of ``num_points`` rows (``BNNPConfig.layer_form``). Minibatching and the
    shared fast path (SPEC sections 6 and 9) need the primal form's statistics."""
    if minibatched(num_points, batch_size):
        return ("primal",) * len(config.specs)
    fast = config.prior_kind == "shared" and config.pseudo_precision == "per_point"
    d_in = config.widths[:-1]
    if config.layer_form != "auto":
        return (config.layer_form,) * len(d_in)
    return tuple("dual" if (num_points < d + 1 and not fast) else "primal" for d in d_in)


def _walk(key, params: BNNPParams, layer_priors: list, x, y, ctx_w, with_kl: bool):
    """One path through all the points at once: each layer's input is the previous
    layer's output on this path, computed once. A :class:`blr_dual.DualPrior` layer is
    drawn in the dual form, a :class:`blr.ScaleFactors` or :class:`blr.PriorFactors` layer in
    the primal form."""
    cfg = params.config
    final_prec = _final_precision(params)
    # Order the prior's LAPACK calls before every path's, and their VJPs after
    # (blr's module docstring: concurrent batched LAPACK calls can deadlock on CPU).
    x = after(x, layer_priors)
    a, weights, kl = x, [], 0.0
    for l, (k, prior) in enumerate(zip(jax.random.split(key, len(layer_priors)), layer_priors)):
        h = _layer_input(a, l, cfg.activation)  # act(a_{l-1}) [N, D_{l-1}]
        seen = h if (cfg.inference_sees_activations and l > 0) else None
        yhat, lam = amortised_layer.pseudo_observations(params.inference, l, cfg.specs[l], cfg.net_hidden, x, y,
                                                        seen, final_prec)
        phi, lam = with_bias(h), lam * ctx_w[:, None]
        if isinstance(prior, blr_dual.DualPrior):
            w, kl_units = blr_dual.sample_posterior_dual(k, prior, phi, yhat, lam, with_kl)
        else:
            w, kl_units = blr.sample_posterior(k, prior, blr.natural_stats(phi, yhat, lam), with_kl)
        weights.append(w.T)  # [D_{l-1}+1, D_l]
        a = h @ w.T[:-1] + w.T[-1]
        kl = kl + jnp.sum(kl_units) if with_kl else None
    return weights, kl


def sample_path(key, params: BNNPParams, layer_priors: list, x, y, ctx_w, batch_size, with_kl: bool = True):
    """One path of the hierarchical posterior: per layer, condition on this
    path's earlier samples, sample ``W_l``, add ``sum_d KL``. ``layer_priors`` are
    :class:`blr_dual.DualPrior` (dual form), :class:`blr.ScaleFactors`, :class:`blr.PriorFactors`
    or Gaussians (primal).
    Minibatched, the statistics are accumulated over batches of points whose activations
    are recomputed through the earlier samples (primal form only). Returns weights
    ``[D_{l-1}+1, D_l]`` per layer and the path's KL (``None`` without ``with_kl``)."""
    factors = [p if isinstance(p, (blr.ScaleFactors, blr.PriorFactors, blr_dual.DualPrior)) else blr.PriorFactors.from_gaussian(p)
               for p in layer_priors]
    if not minibatched(x.shape[0], batch_size):
        return _walk(key, params, factors, x, y, ctx_w, with_kl)
    if any(isinstance(f, blr_dual.DualPrior) for f in factors):
        raise ValueError("the dual form does not minibatch: pass primal layer priors with batch_size")
    stats = lambda l, ws: _layer_stats(params, l, [w.T for w in ws], x, y, ctx_w, batch_size)  # noqa: E731
    weights, kl = sample_layers(key, factors, stats, with_kl)
    return [w.T for w in weights], kl


def layer_priors(params: BNNPParams) -> list[Gaussian]:
    """The prior of every layer as precision-form Gaussians."""
    cfg = params.config
    if cfg.prior_kind == "metaprior":
        return metaprior_prior.layer_priors(params.prior, cfg.widths, cfg.prior_min_std)
    return [priors.to_gaussian(p, cfg.prior_kind, cfg.prior_min_std) for p in params.prior]


def prior_scale_trils(params: BNNPParams, min_std: float | None = None) -> list[tuple[Array, Array]]:
    """Every layer's prior as ``(mean [O, D], L [O|1, D, D])`` with covariance ``L L^T``
    (:func:`priors.scale_tril`, :func:`metaprior_prior.scale_trils`), floored by ``min_std``
    (default: the config's ``prior_min_std``)."""
    cfg = params.config
    min_std = cfg.prior_min_std if min_std is None else min_std
    if cfg.prior_kind == "metaprior":
        return metaprior_prior.scale_trils(params.prior, cfg.widths, min_std)
    return [(p.mean, priors.scale_tril(p, cfg.prior_kind, min_std)) for p in params.prior]


def prior_factors(params: BNNPParams, forms: Sequence[str] | None = None) -> list:
    """The prior of every layer as the primal sampler's factors (:func:`priors.layer_factors`),
    or, for the layers whose entry of ``forms`` is ``dual``, as :class:`blr_dual.DualPrior`.
    A ``metaprior`` prior gives :class:`blr.ScaleFactors` (the whitened form, as ``unitwise``)."""
    cfg = params.config
    forms = ("primal",) * (len(cfg.widths) - 1) if forms is None else tuple(forms)
    if cfg.prior_kind == "metaprior":
        return [blr.ScaleFactors(m, t) if f == "primal" else blr_dual.DualPrior(m, t)
                for (m, t), f in zip(prior_scale_trils(params), forms)]
    primal = [p for p, f in zip(params.prior, forms) if f == "primal"]
    factors = iter(priors.layer_factors(primal, cfg.prior_kind, cfg.prior_min_std) if primal else [])
    return [next(factors) if f == "primal" else
            blr_dual.DualPrior(p.mean, priors.scale_tril(p, cfg.prior_kind, cfg.prior_min_std))
            for p, f in zip(params.prior, forms)]


def _cast(params: BNNPParams, *arrays):
    dtype = jnp.dtype(params.config.dtype)
    return [jnp.asarray(a, dtype) for a in arrays]


def masked_posterior(key, params: BNNPParams, x, y, ctx_w, num_samples: int, batch_size=None,
                     with_kl: bool = True) -> PosteriorSamples:
    """Posterior from the points of ``x [N, x_dim], y [N, y_dim]`` with context
    weights ``ctx_w [N]`` (0 removes a point exactly: padding, targets). Without
    ``with_kl`` the draws are the same and ``kl`` is ``None`` (cheaper: prediction)."""
    x, y, ctx_w = _cast(params, x, y, ctx_w)
    lp = prior_factors(params, layer_forms(params.config, x.shape[0], batch_size))
    keys = jax.random.split(key, num_samples)
    path = lambda k: sample_path(k, params, lp, x, y, ctx_w, batch_size, with_kl)
    weights, kl = jax.vmap(path)(keys)
    return PosteriorSamples(weights, jnp.mean(kl) if with_kl else None)


def _posterior_samples(key, params, x_c, y_c, num_samples, batch_size=None, with_kl=True):
    """Per-layer weight samples ``[S, D_{l-1}+1, D_l]`` and the KL term (``None`` without
    ``with_kl``) given a context set ``x_c [N_c, x_dim]``, ``y_c [N_c, y_dim]`` (SPEC section 4).
    Compiled per context size: pad to a fixed size with :func:`masked_posterior` to reuse it."""
    return masked_posterior(key, params, x_c, y_c, jnp.ones(x_c.shape[0]), num_samples, batch_size, with_kl)


def masked_functions(key, params: BNNPParams, x, y, ctx_w, x_eval, num_samples: int, batch_size=None) -> Array:
    """Posterior function draws ``[S, N_eval, y_dim]`` at ``x_eval [N_eval, x_dim]`` from the
    context weights ``ctx_w [N]`` of :func:`masked_posterior`. Draws without the KL; with
    ``batch_size``, minibatched over both the context and ``x_eval``."""
    post = masked_posterior(key, params, x, y, ctx_w, num_samples, batch_size, with_kl=False)
    (x_eval,) = _cast(params, x_eval)
    return batched_map(lambda xb: forward(post.weights, xb, params.config.activation), x_eval, batch_size)


def log_likelihood_sums(params: BNNPParams, weights: list, x, y, point_w, batch_size=None) -> Array:
    """``sum_n point_w[n, k] log N(y_n | f_s(x_n), sigma_y^2)`` for each path:
    ``point_w [N, K]`` -> ``[S, K]``. Batched over points when ``batch_size``."""
    x, y, point_w = _cast(params, x, y, point_w)
    sig = sigma_y(params)

    def batch_ll(xb, yb, wb):
        f = forward(weights, xb, params.config.activation)  # [S, B, y_dim]
        ll = jnp.sum(normal_log_prob(yb, f, sig), -1)
        return jnp.einsum("sb,bk->sk", ll, wb)

    return batched_sum(batch_ll, (x, y, point_w), batch_size)


def _predict(key, params, x_c, y_c, x_t, num_samples, batch_size=None) -> Prediction:
    """Posterior predictive at ``x_t [N_t, x_dim]``: function samples
    ``[S, N_t, y_dim]``, predictive mean and variance (incl. ``sigma_y^2``)."""
    f = masked_functions(key, params, x_c, y_c, jnp.ones(x_c.shape[0]), x_t, num_samples, batch_size)
    return Prediction(f, jnp.mean(f, 0), jnp.var(f, 0) + sigma_y(params) ** 2)


def _prior_samples(key, params, num_samples) -> list:
    """Weight samples from the prior: list of ``[S, D_{l-1}+1, D_l]``.

    ``w = mu + L eps`` with the covariance factor ``L`` itself. Why not the precision
    form: a learned covariance can be very ill-conditioned (``cond(L)`` of 1e11 after
    2000 steps of the paper's sawtooth run), and re-factoring its precision
    ``L^{-T} L^{-1}`` then fails even in float64, while ``L eps`` stays exact."""
    layers = prior_scale_trils(params)
    draws = []
    for k, (mean, tril) in zip(jax.random.split(key, len(layers)), layers):  # tril [O|1, D, D]
        eps = jax.random.normal(k, (num_samples,) + mean.shape, mean.dtype)  # [S, O, D]
        noise = jnp.matmul(tril, eps[..., None], precision=jax.lax.Precision.HIGHEST)[..., 0]
        draws.append(jnp.swapaxes(mean + noise, -1, -2))
    return draws


_posterior_samples_jit = jax.jit(_posterior_samples, static_argnames=("num_samples", "batch_size", "with_kl"))
_predict_jit = jax.jit(_predict, static_argnames=("num_samples", "batch_size"))
_prior_samples_jit = jax.jit(_prior_samples, static_argnames=("num_samples",))


# ----- public functions: host-side checks, then the jitted kernels above --------------
# With concrete arguments the inputs are validated (:mod:`bnnp_jax.validation`: key,
# parameters, shapes, dtypes, finiteness, sizes) and the data cast to the model's dtype;
# a bad argument raises ``ValueError`` naming it. Called under ``jit``/``vmap``/``grad``
# (any argument traced), the checks need values that do not exist yet, so they are
# skipped and the call goes straight to the kernel: the caller's transformation owns
# its inputs. An empty context (``x_c`` of shape ``[0, x_dim]``) is valid and gives
# the prior; a ``batch_size`` at least as large as every set it batches means one
# batch and reuses the unbatched compilation.


def _traced(*args) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args))


def _checked(key, params, num_samples, x_c, y_c):
    validation.check_key(key)
    validation.check_params(params, BNNPParams)
    validation.check_positive_int("num_samples", num_samples)
    c = params.config
    return validation.check_pair("x_c", x_c, "y_c", y_c, c.x_dim, c.y_dim, dtype=np.dtype(c.dtype))


def posterior_samples(key, params: BNNPParams, x_c, y_c, num_samples: int, batch_size: int | None = None,
                      with_kl: bool = True) -> PosteriorSamples:
    """Per-layer weight samples ``[S, D_{l-1}+1, D_l]`` and the KL term (``None`` without
    ``with_kl``) given a context set ``x_c [N_c, x_dim]``, ``y_c [N_c, y_dim]`` (SPEC section 4;
    ``N_c = 0`` gives the prior: ``kl = 0``). Compiled per context size: pad to a fixed size
    with :func:`masked_posterior` to reuse it. Validated unless traced (see above)."""
    if not _traced(key, params, x_c, y_c):
        x_c, y_c = _checked(key, params, num_samples, x_c, y_c)
        batch_size = validation.check_batch_size(batch_size, x_c.shape[0])
    return _posterior_samples_jit(key, params, x_c, y_c, num_samples, batch_size, with_kl)


def predict(key, params: BNNPParams, x_c, y_c, x_t, num_samples: int, batch_size: int | None = None) -> Prediction:
    """Posterior predictive at ``x_t [N_t, x_dim]`` given ``x_c [N_c, x_dim]``, ``y_c [N_c, y_dim]``:
    function samples ``[S, N_t, y_dim]``, predictive mean and variance (incl. ``sigma_y^2``).
    An empty context gives the prior predictive; ``batch_size`` batches both the context
    statistics and the target forward pass. Validated unless traced (see above)."""
    if not _traced(key, params, x_c, y_c, x_t):
        x_c, y_c = _checked(key, params, num_samples, x_c, y_c)
        c = params.config
        x_t = validation.check_array("x_t", x_t, 2, c.x_dim, dim_name="x_dim (last dimension)",
                                     dtype=np.dtype(c.dtype))
        batch_size = validation.check_batch_size(batch_size, max(x_c.shape[0], x_t.shape[0]))
    return _predict_jit(key, params, x_c, y_c, x_t, num_samples, batch_size)


def prior_samples(key, params: BNNPParams, num_samples: int) -> list:
    """Weight samples from the prior: ``[S, D_{l-1}+1, D_l]`` per layer. Validated unless traced."""
    if not _traced(key, params):
        validation.check_key(key)
        validation.check_params(params, BNNPParams)
        validation.check_positive_int("num_samples", num_samples)
    return _prior_samples_jit(key, params, num_samples)

"""Global inducing-point variational inference, GIVI (Ober & Aitchison 2021; SPEC section 8).

Learned inducing inputs ``Z [M, x_dim]`` are pushed through the *sampled*
network alongside the data. At layer ``l`` the inducing activations give the
features ``Phi_u = [act(U_{l-1}), 1] [M, D]`` (``U_0 = Z``), and learned
pseudo-outputs ``V_l [M, D_l]`` with a pseudo-precision ``Lambda_l = R R^T``
(``[M, M]``, shared by the layer's units; ``R`` lower-triangular) define

    q(W_l | U_{l-1}) ∝ p(W_l) N(V_l | Phi_u W_l, Lambda_l^{-1}),

the Bayesian linear regression of SPEC section 4 (Ober & Aitchison eq. 12).
Because ``Phi_u^T Lambda Phi_u = (R^T Phi_u)^T (R^T Phi_u)``, it is exactly
:func:`bnnp_jax.core.blr.posterior` on the whitened design ``R^T Phi_u`` and targets
``R^T V_l`` with unit precisions, so no ``M x M`` inverse is formed.
``U_l = Phi_u W_l`` then feeds the next layer.

ELBO (SPEC section 5): ``mean_s log p(y | W^(s)) - mean_s sum_l KL(q(W_l | U^(s)_{l-1}) || p(W_l))``,
the KL in closed form. ``Z`` is a trained parameter like the others
(SPEC section 12: the reference implementation never updated it).

:func:`layerwise_path` is the shared sampler: the per-task BNNP of
:mod:`bnnp_methods` runs the same layer-by-layer conditional posterior with
the context points as pseudo-inputs.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from bnnp_jax.core import blr
from bnnp_jax.bnnp.path import sample_layers
from bnnp_jax.core.gaussian import Gaussian, kl_divergence
from bnnp_jax.core.linalg import after
from bnnp_jax.core.minibatch import map_padded
from bnnp_jax.inference import evidence
from bnnp_jax.inference import model as bnn
from bnnp_jax.inference.vi import run_adam
from bnnp_jax.core.networks import activation_fn, with_bias

__all__ = ["layerwise_path", "GIVIParams", "GIVIResult", "prec_tril", "layer_stats", "layer_posterior", "linear_kl",
           "init", "sample_path", "elbo_terms", "loss", "fit", "elbo", "predict"]

Array = jax.Array
LayerFn = Callable[[int, Array], blr.NaturalStats]


def layerwise_path(key, model: bnn.BNNModel, pseudo_x: Array, x: Array, layer_stats: LayerFn):
    """One sample path of a layer-wise conditional Gaussian posterior.

    Each layer is drawn by :func:`~bnnp_jax.bnnp.path.sample_layers` (one Cholesky and two
    chained triangular solves give the draw and the KL), the BNNP's own sampler:
    with separate sample and KL solves, XLA may run batched LAPACK calls
    concurrently, which deadlocks jaxlib 0.10's CPU kernels on 2 cores (seen
    with a [32, 32] network; :mod:`bnnp_jax.core.blr` module docstring).

    Args:
      pseudo_x: ``[M, D_0]`` inputs that condition the layers (inducing inputs, or context points).
      x: ``[N, D_0]`` inputs at which to return the network output, or ``None`` for ``pseudo_x``.
      layer_stats: ``(l, Phi_u [M, D]) ->`` :class:`blr.NaturalStats` of ``q(W_l | earlier)``'s likelihood.

    Returns:
      ``f [N, D_L]`` and this path's ``sum_l sum_d KL(q || p)``.
    """
    act = activation_fn(model.activation)
    m = 0 if x is None else pseudo_x.shape[0]
    h0 = pseudo_x if x is None else jnp.concatenate([pseudo_x, x])  # one matmul per layer for both point sets
    phis = [with_bias(h0)]  # [act(h_{l-1}), 1] per layer, extended as each layer is drawn

    def stats(l, ws):
        if l > 0:
            phis.append(with_bias(act(phis[-1] @ ws[-1].T)))
        return layer_stats(l, phis[l][: m or None])

    factors = [blr.PriorFactors.from_gaussian(p) for p in model.prior_gaussians()]
    # a layer whose prior covariance is shared by its units keeps one [1, D, D] root, so a
    # likelihood shared by the units too gives one posterior factor (SPEC section 9)
    factors = [blr.PriorFactors(f.mean, f.root[:1]) if shared else f
               for f, shared in zip(factors, model.shared_layers)]
    phis[0] = after(phis[0], factors)  # the draws' LAPACK chain starts after the prior's
    weights, kl = sample_layers(key, factors, stats)
    return (phis[-1] @ weights[-1].T)[m:], kl


class GIVIParams(NamedTuple):
    """Variational parameters.

    Attributes:
      z: ``[M, D_0]`` inducing inputs.
      pseudo_y: per layer ``[M, D_l]`` pseudo-outputs ``V_l``.
      prec_raw: per layer ``[M, M]`` (full) or ``[M]`` (diagonal) raw factor of
        ``Lambda_l``: strict lower triangle as is, diagonal as a log.
    """

    z: Array
    pseudo_y: list
    prec_raw: list


class GIVIResult(NamedTuple):
    params: GIVIParams
    init_params: GIVIParams
    model: bnn.BNNModel
    losses: Array


def prec_tril(raw: Array) -> Array:
    """``R`` with ``Lambda = R R^T``: ``[M, M]`` from a full ``[M, M]`` or diagonal ``[M]`` raw factor."""
    if raw.ndim == 1:
        return jnp.diag(jnp.exp(raw))
    return jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diagonal(raw)))


def _whitened(phi_u: Array, pseudo_y: Array, raw: Array) -> tuple[Array, Array]:
    r = prec_tril(raw)
    return r.T @ phi_u, r.T @ pseudo_y


def layer_stats(phi_u: Array, pseudo_y: Array, raw: Array, shared: bool = False) -> blr.NaturalStats:
    """Natural statistics of the whitened pseudo-data (what :func:`layerwise_path` samples from):
    precision ``[O, D, D]``, or ``[1, D, D]`` with ``shared`` (the same for every unit)."""
    feats, targets = _whitened(phi_u, pseudo_y, raw)
    ones = jnp.ones((targets.shape[0], 1 if shared else targets.shape[1]), targets.dtype)
    return blr.natural_stats(feats, targets, ones)


def layer_posterior(phi_u: Array, pseudo_y: Array, raw: Array, prior: Gaussian) -> Gaussian:
    """``q(W_l | U_{l-1})`` by BLR on the whitened design (module docstring)."""
    feats, targets = _whitened(phi_u, pseudo_y, raw)
    return blr.posterior(feats, targets, jnp.ones_like(targets), prior)


def linear_kl(result: GIVIResult, targets: list) -> Array:
    """``KL(q || targets[0])`` in closed form for a model with no hidden layer, where GIVI's
    ``q`` is the one layer's :func:`layer_posterior` -> scalar."""
    model, p = result.model, result.params
    bnn.require_no_hidden_layer(model, "result: a closed-form KL")
    q = layer_posterior(with_bias(p.z), p.pseudo_y[0], p.prec_raw[0], model.prior_gaussians()[0])
    return jnp.sum(kl_divergence(q, targets[0]))


def spread_subset(key, x: Array, num: int, mask: Array | None = None) -> Array:
    """Indices ``[num]`` of ``num <= N`` data points spread over ``x [N, D]``: farthest-point
    (k-centre) selection from a random first point, each next point the one farthest from
    those chosen. ``mask [N]`` (valid points first, padding last) restricts the choice to the
    valid points; with fewer than ``num`` of them some are chosen twice."""
    x = jnp.asarray(x)  # a NumPy x cannot be indexed by the scan's traced index
    n = x.shape[0] if mask is None else jnp.sum(mask > 0).astype(jnp.int32)
    first = jax.random.randint(key, (), 0, n)
    dist = jnp.sum((x - x[first]) ** 2, -1)
    if mask is not None:
        dist = jnp.where(mask > 0, dist, -jnp.inf)

    def pick(carry, _):
        dist = carry
        i = jnp.argmax(dist)
        return jnp.minimum(dist, jnp.sum((x - x[i]) ** 2, -1)), i

    _, rest = jax.lax.scan(pick, dist, None, length=num - 1)
    return jnp.concatenate([first[None], rest])


def init(key, model: bnn.BNNModel, x: Array, y: Array, num_inducing: int = 10, *, log_prec: float = -4.0,
         full_precision: bool = True, z_init: str = "spread", mask: Array | None = None) -> GIVIParams:
    """Inducing inputs at a subset of the data: spread over it (``z_init="spread"``,
    :func:`spread_subset`) or at random (``"random"``); drawn with replacement and jittered
    when ``M > N``.

    Hidden layers start near the prior, as in Ober & Aitchison's code: pseudo-outputs
    ``N(0, 1)``, ``Lambda = e^{log_prec} I``. The last layer starts as a data subset:
    pseudo-outputs at the matching ``y`` with the observation precision scaled by the
    points each stands for, ``(N / M) / sigma_y^2`` (a small fixed start would need
    thousands of steps to reach it at low noise). Issue 15: a random subset can bunch on
    one side of the data; at small ``sigma_y`` GIVI then ended up to 1 nat from the exact
    posterior of a model with no hidden layer after 5000 steps (docs/kl_study.md).

    ``mask [N]``: padded datasets (valid points first); ``N`` is then the number of valid
    points and, with ``z_init="spread"`` and ``M <= N``, only they are chosen. Pure (no host
    values), so a batch of inits vmaps.
    """
    if num_inducing < 1:
        raise ValueError(f"num_inducing must be >= 1, got {num_inducing}")
    if z_init not in ("spread", "random"):
        raise ValueError(f"z_init must be 'spread' or 'random', got {z_init!r}")
    kz, kj, kv = jax.random.split(key, 3)
    n = x.shape[0]
    if z_init == "spread" and num_inducing <= n:
        idx = spread_subset(kz, x, num_inducing, mask)
    else:
        idx = jax.random.choice(kz, n, (num_inducing,), replace=num_inducing > n)
    z = x[idx] + (num_inducing > n) * 0.1 * jax.random.normal(kj, (num_inducing, x.shape[1]), x.dtype)
    keys = jax.random.split(kv, model.num_layers)
    pseudo_y = [jax.random.normal(k, (num_inducing, d), x.dtype) for k, d in zip(keys[:-1], model.widths[1:-1])]
    pseudo_y.append(y[idx].astype(x.dtype))
    n_valid = n if mask is None else jnp.sum(mask)
    share = 0.5 * jnp.log(jnp.maximum(n_valid / num_inducing, 1.0)) if z_init == "spread" else 0.0
    last = (share - jnp.mean(jnp.log(model.sigma_y))).astype(x.dtype)
    halves = [jnp.asarray(0.5 * log_prec, x.dtype)] * (model.num_layers - 1) + [last]
    eye = jnp.eye(num_inducing, dtype=x.dtype)
    raw = [jnp.full((num_inducing,), h, x.dtype) if not full_precision else h * eye for h in halves]
    return GIVIParams(z, pseudo_y, raw)


def sample_path(key, model: bnn.BNNModel, params: GIVIParams, x: Array):
    """``f [N, D_L]`` at ``x`` and the path's KL, for one joint draw of all layers. ``Lambda_l``
    is shared by a layer's units, so where the prior covariance is too (``model.shared_cov``)
    every unit has the same posterior covariance and the layer takes one ``D x D`` factor."""
    shared = model.shared_layers
    fn = lambda l, phi_u: layer_stats(phi_u, params.pseudo_y[l], params.prec_raw[l], shared[l])
    return layerwise_path(key, model, params.z, x, fn)


def elbo_terms(key, model: bnn.BNNModel, params: GIVIParams, x, y, num_samples: int, mask=None):
    """Per-path log-likelihood ``[S]`` and KL ``[S]``."""
    def one(k):
        f, kl = sample_path(k, model, params, x)
        return bnn.log_likelihood_from_output(model, f, y, mask), kl

    return jax.vmap(one)(jax.random.split(key, num_samples))


def loss(params: GIVIParams, key, model, x, y, num_samples: int = 8, mask=None) -> Array:
    """Negative ELBO estimate with ``num_samples`` paths."""
    ll, kl = elbo_terms(key, model, params, x, y, num_samples, mask)
    return -jnp.mean(ll - kl)


def _loss_masked(params, key, model, x, y, mask, num_samples):
    return loss(params, key, model, x, y, num_samples, mask)


def fit(key, model: bnn.BNNModel, x, y, *, num_inducing=10, num_steps=20_000, lr=(5e-3, 5e-5), num_samples=8,
        full_precision=True, init_params: GIVIParams | None = None, mask=None, progress_bar=True,
        batched: bool = False) -> GIVIResult:
    """Maximise the ELBO over ``Z``, ``V_l`` and ``Lambda_l`` with Adam (linear decay), from
    ``init_params`` if given (else :func:`init`).

    ``batched=True``: ``B`` fits as one vmapped program (``key [B, 2]``, a batched ``model``,
    ``x [B, N, D_0]``, ``y [B, N, D_L]``, ``mask [B, N]`` or None, ``init_params`` batched);
    fit ``b`` is the single fit with ``key[b]`` on batch element ``b``."""
    if batched:
        keys = jax.vmap(jax.random.split)(key)
        init_key, run_key = keys[:, 0], keys[:, 1]
        params0 = init_params or _init_batch(init_key, model, x, y, mask, num_inducing, full_precision)
    else:
        init_key, run_key = jax.random.split(key)
        params0 = init_params or init(init_key, model, x, y, num_inducing, full_precision=full_precision, mask=mask)
    params, losses = run_adam(run_key, _loss_masked, params0, (model, x, y, mask), num_steps, lr, static=(num_samples,),
                              desc="givi", progress_bar=progress_bar, batched=batched)
    return GIVIResult(params, params0, model, losses)


@partial(jax.jit, static_argnames=("num_inducing", "full_precision"))
def _init_batch(keys, model, x, y, mask, num_inducing, full_precision):
    one = lambda k, m, x, y, mask: init(k, m, x, y, num_inducing, full_precision=full_precision, mask=mask)
    return jax.vmap(one)(keys, model, x, y, mask)


def _elbo_terms_mapped(key, model, params, x, y, mask, num_samples, batch_size):
    one = lambda k: elbo_terms(k, model, params, x, y, 1, mask)
    ll, kl = map_padded(one, jax.random.split(key, num_samples), batch_size)
    return ll[:, 0], kl[:, 0]


_elbo_terms_batched = jax.jit(_elbo_terms_mapped, static_argnames=("num_samples", "batch_size"))


@partial(jax.jit, static_argnames=("num_samples", "batch_size"))
def _elbo_terms_vmapped(key, model, params, x, y, mask, num_samples, batch_size):
    one = lambda *a: _elbo_terms_mapped(*a, num_samples, batch_size)
    return evidence.map_fits(one, key, model, params, x, y, mask)


def elbo(key, result: GIVIResult, x, y, num_samples: int = 10_000, *, mask=None, batch_size: int = 1000,
         batched: bool = False):
    """ELBO estimate over ``num_samples`` paths (KL per path in closed form) -> :class:`evidence.ELBOEstimate`.
    ``batched``: a batched ``result``, ``key [B, 2]``, and ``x``, ``y``, ``mask`` with a leading
    batch axis; the estimate's fields are then ``[B]``."""
    terms = _elbo_terms_vmapped if batched else _elbo_terms_batched
    ll, kl = terms(key, result.model, result.params, x, y, mask, num_samples, batch_size)
    return evidence.elbo_estimate(ll, kl)


@partial(jax.jit, static_argnames="num_samples")
def _predict(key, model, params, x_test, num_samples):
    one = lambda k: sample_path(k, model, params, x_test)[0]
    return jax.vmap(one)(jax.random.split(key, num_samples))


def predict(key, result: GIVIResult, x_test, num_samples: int) -> Array:
    """Posterior function samples ``[num_samples, N_t, D_L]``."""
    return _predict(key, result.model, result.params, x_test, num_samples)

"""ELBO estimates, ``log p(D)`` bounds and the KL to the true posterior (SPEC section 10).

``KL(q || p(W | D)) = log p(D) - ELBO(q)``. With a stochastic lower bound
``lower`` (forward AIS) and upper bound ``upper`` (reverse AIS) on ``log p(D)``
the KL lies in ``[lower - ELBO, upper - ELBO]``.

Two modes fix where the reverse chains start (the upper bound is a bound only
from exact posterior samples):

- ``certified``: the data were simulated from this very model (same prior,
  same ``sigma_y``); the generating weights are an exact posterior sample.
- ``paper``: the SPEC's KL-table design (one dataset, the model's ``sigma_y``
  varied). Reverse AIS starts from long NUTS runs, so the upper value is an
  *approximate* upper estimate and is labelled as such.

With no hidden layer the evidence is exact (:func:`model.exact_log_evidence`)
and exact posterior samples are drawn in closed form.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.core.minibatch import map_padded
from bnnp_jax.inference import ais
from bnnp_jax.inference import model as bnn

__all__ = ["MODES", "FITS_PER_CALL", "map_fits", "ELBOEstimate", "elbo_estimate", "batched_log_likelihood", "Evidence", "estimate",
           "KLInterval", "kl_interval"]

Array = jax.Array
MODES = ("paper", "certified")
# Batched ELBOs (a batch of fits) run this many fits at a time (vmapped; lax.map over the
# rest): 10,000 draws of a 481-weight q are 38 MB per fit, and a 160-fit batch at once is not.
FITS_PER_CALL = 8


def map_fits(fn, *args):
    """``fn(*args_b)`` for every fit ``b`` of a batch (every leaf of ``args`` ``[B, ...]``),
    :data:`FITS_PER_CALL` fits at a time -> outputs with a leading ``[B]``."""
    return map_padded(lambda a: fn(*a), args, FITS_PER_CALL)


class ELBOEstimate(NamedTuple):
    """Monte-Carlo ELBO: ``value = mean_s (log p(D | W_s)) - KL`` (KL exact or per sample).

    Attributes:
      value: the ELBO estimate.
      stderr: its Monte-Carlo standard error.
      expected_log_lik: mean log-likelihood over the samples.
      kl: mean KL term.
      num_samples: ``S``.
    """

    value: Array
    stderr: Array
    expected_log_lik: Array
    kl: Array
    num_samples: int


def elbo_estimate(log_lik: Array, kl: Array) -> ELBOEstimate:
    """From per-sample log-likelihoods ``[..., S]`` and a KL that is ``[...]`` (exact) or
    ``[..., S]`` (per sample); leading axes are a batch of fits and stay in every field."""
    kl = kl if kl.ndim == log_lik.ndim else kl[..., None]
    terms = log_lik - kl
    s = log_lik.shape[-1]
    return ELBOEstimate(jnp.mean(terms, -1), jnp.std(terms, -1) / math.sqrt(s), jnp.mean(log_lik, -1),
                        jnp.mean(jnp.broadcast_to(kl, log_lik.shape), -1), s)


def batched_log_likelihood(model: bnn.BNNModel, flat: Array, x: Array, y: Array, mask=None, batch_size: int = 1000):
    """``log p(y | W_s, x)`` for flat weights ``[S, P]`` -> ``[S]``, ``batch_size`` samples at a time."""
    return jax.lax.map(lambda w: bnn.log_likelihood(model, bnn.unflatten(model, w), x, y, mask), flat,
                       batch_size=min(batch_size, flat.shape[0]))


class Evidence(NamedTuple):
    """Bounds on ``log p(D)``.

    Attributes:
      lower: forward-AIS stochastic lower bound (or the exact value).
      upper: reverse-AIS value (or the exact value); ``nan`` if not run.
      lower_stderr, upper_stderr: Monte-Carlo standard errors.
      exact: the exact value where known (no hidden layer), else ``nan``.
      upper_is_bound: ``False`` in ``paper`` mode, where reverse AIS starts from
        NUTS samples and the upper value is only an approximate upper estimate.
      mode: ``"exact"``, ``"certified"`` or ``"paper"``.
    """

    lower: float
    upper: float
    lower_stderr: float
    upper_stderr: float
    exact: float
    upper_is_bound: bool
    mode: str


def estimate(key, model: bnn.BNNModel, x, y, mode: str = "certified", *, posterior_init=None, mask=None,
             batched: bool = False, **ais_settings) -> Evidence:
    """Bounds on ``log p(D)`` by bidirectional Monte Carlo.

    ``posterior_init [K, P]``: starts for reverse AIS: in ``certified`` mode exact
    posterior samples (e.g. ``ais.tile_init(generating_weights, K)``), in ``paper``
    mode NUTS samples. Without hidden layers, if no starts are given, exact
    posterior samples are drawn in closed form and the exact value is reported too.

    ``batched=True``: ``B`` datasets and models in one vmapped program per AIS stage
    (:func:`ais.bdmc`; ``key [B, 2]``, every array with a leading batch axis,
    ``posterior_init [B, K, P]``); the bounds are then NumPy arrays ``[B]``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    vmap = jax.vmap if batched else (lambda f, *a: f)
    out = (lambda a: np.asarray(a, float)) if batched else float
    exact = float("nan")
    if model.num_layers == 1:
        exact = out(vmap(bnn.exact_log_evidence)(model, x, y, mask))
        if posterior_init is None:
            keys = vmap(jax.random.split)(key)
            key, sub = keys[..., 0, :], keys[..., 1, :]
            k = ais_settings.get("num_particles", 64)
            posterior_init = vmap(lambda s, m, x, y, w: bnn.exact_posterior_samples(s, m, x, y, k, w))(
                sub, model, x, y, mask)
    res = ais.bdmc(key, model, x, y, posterior_init=posterior_init, mask=mask, batched=batched, **ais_settings)
    nan = np.full(np.shape(res.forward.log_z), np.nan) if batched else float("nan")
    rev = res.reverse
    return Evidence(
        lower=out(res.forward.log_z),
        upper=out(rev.log_z) if rev is not None else nan,
        lower_stderr=out(res.forward.stderr),
        upper_stderr=out(rev.stderr) if rev is not None else nan,
        exact=exact if not batched or model.num_layers == 1 else nan,
        upper_is_bound=rev is not None and (mode == "certified" or model.num_layers == 1),
        mode=mode if model.num_layers > 1 else "exact",
    )


class KLInterval(NamedTuple):
    """``KL(q || p(W | D))`` in ``[lower, upper]``; ``exact`` where ``log p(D)`` is known."""

    lower: float
    upper: float
    exact: float
    upper_is_bound: bool


def kl_interval(elbo: float, ev: Evidence) -> KLInterval:
    """``[lower - ELBO, upper - ELBO]`` (and ``exact - ELBO`` when known)."""
    elbo = float(elbo)
    return KLInterval(ev.lower - elbo, ev.upper - elbo, ev.exact - elbo, ev.upper_is_bound)

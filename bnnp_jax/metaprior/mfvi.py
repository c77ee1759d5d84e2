"""A small mean-field VI BNN baseline in plain jax + optax (paper sec. 2, eq. 1).

``Q(W) = prod N(w | m, s^2)`` with ``s = softplus(rho)``, prior
``N(0, (prior_std^2) / (D_{l-1} + 1))`` per weight (the scaled prior of SPEC
section 3 when ``prior_std = 1``). Trained with local reparameterisation and
minibatch scaling. Fine-tuning on a new task uses the trained posterior as the
new prior (:func:`as_prior`, a sequential Bayesian update) unless told otherwise.

Used as the MetaPrior experiments' baseline; numpyro stays out of this file.
Layout follows SPEC section 2: ``W_l [D_{l-1}+1, D_l]``, bias row last.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnnp_jax.core.gaussian import diag_normal_kl, normal_log_prob
from bnnp_jax.core.draws import split_normal
from bnnp_jax.metaprior.model import LIKELIHOODS
from bnnp_jax.metaprior.fit import FitConfig, apply_step, chunked_scan, learning_rate
from bnnp_jax.core import networks
from bnnp_jax.core.networks import activation_fn

__all__ = ["MFConfig", "MFParams", "MFPrior", "init", "prior", "stds", "as_prior", "kl", "log_likelihood",
           "elbo", "fit", "sample_weights", "predict", "predictive_probs"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MFConfig:
    """``widths = (D_0, ..., D_L)``; ``sigma_y`` is the fixed regression noise."""

    widths: tuple[int, ...]
    activation: str = "relu"
    likelihood: str = "categorical"
    sigma_y: float = 1.0
    prior_std: float = 1.0
    init_std: float = 1e-3

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must list >= 2 positive layer sizes, got {self.widths}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if min(self.sigma_y, self.prior_std, self.init_std) <= 0:
            raise ValueError("sigma_y, prior_std and init_std must be positive")
        activation_fn(self.activation)


class MFParams(NamedTuple):
    """Variational means and raw stds, per layer ``[D_{l-1}+1, D_l]``."""

    mean: tuple[Array, ...]
    rho: tuple[Array, ...]


class MFPrior(NamedTuple):
    """Factorised Gaussian prior: means and stds per layer ``[D_{l-1}+1, D_l]``."""

    mean: tuple[Array, ...]
    std: tuple[Array, ...]


def _shapes(config: MFConfig) -> list[tuple[int, int]]:
    return [(i + 1, o) for i, o in zip(config.widths[:-1], config.widths[1:])]


def _inv_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


@partial(jax.jit, static_argnames=("config", "dtype"))
def init(key: Array, config: MFConfig, dtype=jnp.float32) -> MFParams:
    """Means ``N(0, 1/(D_{l-1}+1))``, stds ``init_std``."""
    shapes = _shapes(config)
    means = [e / math.sqrt(sh[0]) for e, sh in zip(split_normal(key, shapes, (), dtype), shapes)]
    rho = _inv_softplus(config.init_std)
    return MFParams(tuple(means), tuple(jnp.full(sh, rho, dtype) for sh in shapes))


def prior(config: MFConfig, dtype=jnp.float32) -> MFPrior:
    shapes = _shapes(config)
    return MFPrior(tuple(jnp.zeros(sh, dtype) for sh in shapes),
                   tuple(jnp.full(sh, config.prior_std / math.sqrt(sh[0]), dtype) for sh in shapes))


def stds(params: MFParams) -> tuple[Array, ...]:
    return tuple(jax.nn.softplus(r) for r in params.rho)


def as_prior(params: MFParams) -> MFPrior:
    """The posterior as the prior of the next task (sequential update for fine-tuning)."""
    return MFPrior(params.mean, stds(params))


def kl(params: MFParams, p: MFPrior) -> Array:
    """Closed-form ``KL(Q || p)`` summed over all weights (scalar)."""
    total = 0.0
    for m, s, pm, ps in zip(params.mean, stds(params), p.mean, p.std):
        total = total + jnp.sum(diag_normal_kl(m, s, pm, ps))
    return total


def log_likelihood(out: Array, y: Array, config: MFConfig) -> Array:
    """``out [N, D_L]``, ``y [N, D_L]`` or labels ``[N]`` -> ``[N]``."""
    if config.likelihood == "categorical":
        logp = jax.nn.log_softmax(out, axis=-1)
        return jnp.take_along_axis(logp, y.astype(jnp.int32)[:, None], axis=-1)[:, 0]
    sd = config.sigma_y
    return jnp.sum(normal_log_prob(y, out, sd), axis=-1)


def _lrt(params: MFParams, config: MFConfig, x: Array, noise: list[Array]) -> Array:
    """Local reparameterisation forward ``[N, D_L]`` with noise ``[N, D_l]`` per layer."""
    return networks.lrt_forward(list(zip(params.mean, stds(params))), x, config.activation, noise)


def elbo(key: Array, params: MFParams, p: MFPrior, config: MFConfig, x: Array, y: Array,
         weight: Array | None = None, scale: float | Array = 1.0, num_samples: int = 1) -> tuple[Array, Array]:
    """Eq. 1 on a (mini)batch: ``(elbo, expected log-likelihood)``; ``x [B, D_0]``, ``weight [B]``."""
    weight = jnp.ones(x.shape[0], x.dtype) if weight is None else weight
    shapes = [(x.shape[0], o) for o in config.widths[1:]]
    noise = split_normal(key, shapes, (num_samples,), x.dtype)
    lls = jax.vmap(lambda e: jnp.sum(weight * log_likelihood(_lrt(params, config, x, e), y, config)))(noise)
    ell = scale * jnp.mean(lls)
    return ell - kl(params, p), ell


@partial(jax.jit, static_argnames=("config", "fcfg"))
def _run_chunk(carry, keys, ts, x, y, weight, p, total, *, config, fcfg):
    opt = optax.scale_by_adam()  # step size from learning_rate (constant or cosine)
    n_total = jnp.sum(weight)

    def loss(params, key, t):
        k_b, k_e = jax.random.split(key)
        if fcfg.batch_size and fcfg.batch_size < x.shape[0]:
            idx = jax.random.randint(k_b, (fcfg.batch_size,), 0, x.shape[0])
            value, ell = elbo(k_e, params, p, config, x[idx], y[idx], weight[idx],
                              n_total / jnp.maximum(jnp.sum(weight[idx]), 1.0), fcfg.num_samples)
        else:
            value, ell = elbo(k_e, params, p, config, x, y, weight, 1.0, fcfg.num_samples)
        beta = jnp.minimum(1.0, (t + 1.0) / fcfg.kl_warmup) if fcfg.kl_warmup else 1.0
        return -(ell - beta * (ell - value)) / n_total, value / n_total

    def step(carry, inp):
        params, state = carry
        (_, value), grads = jax.value_and_grad(loss, has_aux=True)(params, *inp)
        updates, state = opt.update(grads, state, params)
        return (apply_step(params, updates, learning_rate(fcfg, inp[1], total)), state), value

    return jax.lax.scan(step, carry, (keys, ts))


def fit(key: Array, params: MFParams, p: MFPrior, config: MFConfig, fcfg: FitConfig, x: Array, y: Array,
        weight: Array | None = None, progress: bool = True, desc: str = "mfvi") -> tuple[MFParams, Array]:
    """Maximise the ELBO with Adam; returns ``(params, elbo_per_point [steps])``."""
    if x.ndim != 2 or x.shape[1] != config.widths[0]:
        raise ValueError(f"x must be [N, {config.widths[0]}], got {x.shape}")
    weight = jnp.ones(x.shape[0], x.dtype) if weight is None else jnp.asarray(weight, x.dtype)
    carry = (params, optax.scale_by_adam().init(params))
    static = dataclasses.replace(fcfg, steps=1, chunk=1)  # one compile for runs of any length
    run = partial(_run_chunk, x=x, y=y, weight=weight, p=p, total=jnp.asarray(fcfg.steps, x.dtype), config=config,
                  fcfg=static)
    (params, _), trace = chunked_scan(run, carry, key, fcfg.steps, fcfg.chunk, progress, desc)
    return params, trace


def sample_weights(key: Array, params: MFParams, num_samples: int) -> list[Array]:
    """``num_samples`` joint weight draws: list of ``[S, D_{l-1}+1, D_l]``."""
    eps = split_normal(key, [m.shape for m in params.mean], (num_samples,), params.mean[0].dtype)
    return [m + s * e for m, s, e in zip(params.mean, stds(params), eps)]


@partial(jax.jit, static_argnames=("config", "num_samples"))
def predict(key: Array, params: MFParams, config: MFConfig, x: Array, num_samples: int) -> Array:
    """Network outputs ``[S, N, D_L]`` for ``num_samples`` weight draws."""
    ws = sample_weights(key, params, num_samples)
    return jax.vmap(lambda *w: networks.forward(list(w), x, config.activation))(*ws)


@partial(jax.jit, static_argnames=("config", "num_samples"))
def predictive_probs(key: Array, params: MFParams, config: MFConfig, x: Array, num_samples: int) -> Array:
    """Monte-Carlo mean of the softmax ``[N, D_L]``."""
    return jnp.mean(jax.nn.softmax(predict(key, params, config, x, num_samples), axis=-1), axis=0)

"""A deterministic MLP baseline for the MetaPrior experiments (paper sec. 5.2: "on par with a
mean field BNN and an MLP").

Same layout and initialisation as :mod:`bnnp_jax.metaprior.mfvi` (SPEC section 2: ``W_l [D_{l-1}+1, D_l]``,
bias row last, means ``N(0, 1/(D_{l-1}+1))``), trained by Adam on the mean negative
log-likelihood plus ``weight_decay / 2 * sum(w^2) / N``. Dividing the penalty by ``N`` makes it
the MAP objective under the prior ``N(0, 1 / weight_decay)`` per weight, so one value means
the same thing at any data size.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import optax

from bnnp_jax.core.networks import activation_fn, forward
from bnnp_jax.metaprior.model import LIKELIHOODS
from bnnp_jax.metaprior.fit import FitConfig, apply_step, chunked_scan, learning_rate
from bnnp_jax.metaprior import mfvi as mf

__all__ = ["MLPConfig", "init", "fit", "predict"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """``widths = (D_0, ..., D_L)``; ``weight_decay`` is the prior precision of each weight (0 = none);
    ``sigma_y`` is the fixed regression noise."""

    widths: tuple[int, ...]
    activation: str = "relu"
    likelihood: str = "categorical"
    sigma_y: float = 1.0
    weight_decay: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must list >= 2 positive layer sizes, got {self.widths}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.sigma_y <= 0 or self.weight_decay < 0:
            raise ValueError(f"need sigma_y > 0 and weight_decay >= 0, got {self.sigma_y}, {self.weight_decay}")
        activation_fn(self.activation)

    def as_mf(self) -> mf.MFConfig:
        return mf.MFConfig(widths=self.widths, activation=self.activation, likelihood=self.likelihood,
                           sigma_y=self.sigma_y)


def init(key: Array, config: MLPConfig) -> tuple[Array, ...]:
    """Weights per layer ``[D_{l-1}+1, D_l]``, the mean-field baseline's initial means."""
    return mf.init(key, config.as_mf()).mean


@partial(jax.jit, static_argnames=("config", "fcfg"))
def _run_chunk(carry, keys, ts, x, y, total, *, config, fcfg):
    opt = optax.scale_by_adam()  # step size from learning_rate (constant or cosine)
    mcfg = config.as_mf()

    def loss(w, key):
        if fcfg.batch_size and fcfg.batch_size < x.shape[0]:
            idx = jax.random.randint(key, (fcfg.batch_size,), 0, x.shape[0])
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        nll = -jnp.mean(mf.log_likelihood(forward(list(w), xb, config.activation), yb, mcfg))
        return nll + 0.5 * config.weight_decay * sum(jnp.sum(a**2) for a in w) / x.shape[0], nll

    def step(carry, inp):
        w, state = carry
        key, t = inp
        (_, nll), grads = jax.value_and_grad(loss, has_aux=True)(w, key)
        updates, state = opt.update(grads, state, w)
        return (apply_step(w, updates, learning_rate(fcfg, t, total)), state), nll

    return jax.lax.scan(step, carry, (keys, ts))


def fit(key: Array, weights: tuple[Array, ...], config: MLPConfig, fcfg: FitConfig, x: Array, y: Array,
        progress: bool = True) -> tuple[tuple[Array, ...], Array]:
    """Adam on the penalised NLL; ``x [N, D_0]``, ``y [N, D_L]`` or labels ``[N]``.
    Returns ``(weights, training nll per point [steps])``."""
    if x.ndim != 2 or x.shape[1] != config.widths[0]:
        raise ValueError(f"x must be [N, {config.widths[0]}], got {x.shape}")
    weights = tuple(weights)
    carry = (weights, optax.scale_by_adam().init(weights))
    static = dataclasses.replace(fcfg, steps=1, chunk=1)  # one compile for runs of any length
    run = partial(_run_chunk, x=x, y=y, total=jnp.asarray(fcfg.steps, x.dtype), config=config, fcfg=static)
    (weights, _), trace = chunked_scan(run, carry, key, fcfg.steps, fcfg.chunk, progress, "mlp")
    return weights, trace


@partial(jax.jit, static_argnames=("config",))
def predict(weights: tuple[Array, ...], config: MLPConfig, x: Array) -> Array:
    """Outputs ``[1, N, D_L]`` (a leading sample axis of one, like the Bayesian models)."""
    return forward(list(weights), x, config.activation)[None]

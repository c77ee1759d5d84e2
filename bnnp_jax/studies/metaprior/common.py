"""Shared pieces of the MetaPrior experiments: training wrappers and metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnnp_jax.metaprior import model as mp
from bnnp_jax.metaprior.fit import FitConfig, fit
from bnnp_jax.metaprior import mfvi as mf
from bnnp_jax.studies.metaprior.experiments import ExperimentConfig

__all__ = ["train_metaprior", "train_mfvi", "classification_metrics", "final_elbo"]

Array = jax.Array


def train_metaprior(key: Array, cfg: ExperimentConfig, widths: tuple[int, ...], likelihood: str,
                    x: Array, y: Array) -> tuple[mp.MetaPriorConfig, mp.MetaPriorParams, mp.MetaPriorParams, Array]:
    """Initialise and fit a MetaPrior; returns ``(config, initial params, trained params, elbo trace)``."""
    mcfg = cfg.model_config(widths, likelihood)
    k_init, k_fit = jax.random.split(key)
    params0 = mp.init(k_init, mcfg)
    params, trace = fit(k_fit, params0, mcfg, FitConfig(**cfg.fit), x, y, desc="metaprior")
    return mcfg, params0, params, trace


def train_mfvi(key: Array, cfg: ExperimentConfig, widths: tuple[int, ...], likelihood: str,
               x: Array, y: Array) -> tuple[mf.MFConfig, mf.MFParams, Array]:
    """Initialise and fit the mean-field baseline under its original prior."""
    bcfg = cfg.baseline_config(widths, likelihood)
    k_init, k_fit = jax.random.split(key)
    params, trace = mf.fit(k_fit, mf.init(k_init, bcfg), mf.prior(bcfg), bcfg, FitConfig(**cfg.baseline_fit), x, y)
    return bcfg, params, trace


def classification_metrics(logits: Array, y: Array) -> dict[str, float]:
    """Accuracy of the Monte-Carlo mean softmax and the mean negative log predictive
    probability ``-log (1/S) sum_s softmax(logits_s)[y]`` (computed with logsumexp);
    ``logits [S, N, C]``, labels ``y [N]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.mean(jnp.exp(logp), axis=0)
    y = jnp.asarray(y).astype(jnp.int32)
    lp_y = jnp.take_along_axis(logp, jnp.broadcast_to(y[None, :, None], logp.shape[:2] + (1,)), -1)[..., 0]
    lpd = jax.scipy.special.logsumexp(lp_y, axis=0) - jnp.log(logits.shape[0])
    return {"accuracy": float(jnp.mean(jnp.argmax(probs, -1) == y)), "nll": float(-jnp.mean(lpd))}


def final_elbo(trace: Array, window: int = 100) -> float:
    """Mean per-point ELBO over the last ``window`` steps (the trace is noisy)."""
    return float(jnp.mean(trace[-window:]))

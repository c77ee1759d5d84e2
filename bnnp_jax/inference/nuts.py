"""NUTS on the flattened BNN weight vector (SPEC section 8, "HMC").

numpyro's NUTS runs on ``potential(theta) = -log p(theta) - log p(y | theta, x)``
over the flat weight vector of :mod:`bnnp_jax.inference.model` (layer by layer,
unit-major), with several chains started from prior draws, step-size and
diagonal mass-matrix adaptation during warm-up, and a real Metropolis
correction (numpyro's multinomial trajectory sampling; the reference
implementation's always-accepting test is SPEC section 12's first bug).

The result keeps the samples grouped by chain so the convergence diagnostics
(split R-hat, effective sample size) can be reported next to the acceptance
rate and the mean tree size.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from bnnp_jax.inference import model as bnn

__all__ = ["NUTSDiagnostics", "NUTSResult", "potential_fn", "summarise", "fit", "flat_samples", "predict",
           "function_diagnostics"]

Array = jax.Array


class NUTSDiagnostics(NamedTuple):
    """Per-run summary.

    Attributes:
      r_hat: ``[P]`` split Gelman-Rubin statistic per weight.
      ess: ``[P]`` effective sample size per weight (all chains pooled).
      accept_rate: mean Metropolis acceptance probability after warm-up.
      mean_tree_size: mean number of leapfrog steps per iteration.
      num_divergent: divergent transitions after warm-up.
      step_size: adapted step size per chain ``[C]``.
    """

    r_hat: np.ndarray
    ess: np.ndarray
    accept_rate: float
    mean_tree_size: float
    num_divergent: int
    step_size: np.ndarray


class NUTSResult(NamedTuple):
    """``samples [C, S, P]`` flat weights grouped by chain, the model, and diagnostics."""

    samples: Array
    model: bnn.BNNModel
    diagnostics: NUTSDiagnostics


def potential_fn(model: bnn.BNNModel, x: Array, y: Array, mask: Array | None = None) -> Callable[[Array], Array]:
    """``theta [P] -> -log p(theta, y | x)``, the negative log joint on flat weights."""

    def potential(theta: Array) -> Array:
        return -bnn.log_joint(model, bnn.unflatten(model, theta), x, y, mask)

    return potential


def summarise(samples: np.ndarray, extra: dict) -> NUTSDiagnostics:
    """Diagnostics from ``samples [C, S, P]`` and numpyro's extra fields grouped by chain."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    samples = np.asarray(samples)
    r_hat = split_gelman_rubin(samples) if samples.shape[1] >= 4 else np.full(samples.shape[-1], np.nan)
    return NUTSDiagnostics(
        r_hat=np.asarray(r_hat),
        ess=np.asarray(effective_sample_size(samples)) if samples.shape[1] >= 2 else np.full(samples.shape[-1], np.nan),
        accept_rate=float(np.mean(extra["accept_prob"])),
        mean_tree_size=float(np.mean(extra["num_steps"])),
        num_divergent=int(np.sum(extra["diverging"])),
        step_size=np.asarray(extra["adapt_state"].step_size[:, -1]),
    )


def fit(
    key: Array,
    model: bnn.BNNModel,
    x: Array,
    y: Array,
    *,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    chain_method: str = "vectorized",
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    mask: Array | None = None,
    progress_bar: bool = True,
) -> NUTSResult:
    """Run NUTS on one dataset ``x [N, D_0]``, ``y [N, D_L]``.

    Chains start from independent prior draws. ``chain_method="vectorized"``
    runs the chains in one vmapped program (the right choice on CPU).
    """
    from numpyro.infer import MCMC, NUTS

    if num_chains < 1 or num_samples < 1 or num_warmup < 0:
        raise ValueError(
            f"need num_chains >= 1, num_samples >= 1, num_warmup >= 0; got {num_chains}, {num_samples}, {num_warmup}"
        )
    init_key, run_key = jax.random.split(key)
    init = jax.vmap(lambda k: bnn.flatten(bnn.prior_sample(k, model)))(jax.random.split(init_key, num_chains))
    kernel = NUTS(
        potential_fn=potential_fn(model, x, y, mask),
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        dense_mass=dense_mass,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress_bar,
    )
    mcmc.run(run_key, init_params=init if num_chains > 1 else init[0],
             extra_fields=("accept_prob", "num_steps", "diverging", "adapt_state"))
    samples = mcmc.get_samples(group_by_chain=True)  # [C, S, P]
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return NUTSResult(samples, model, summarise(samples, extra))


def flat_samples(result: NUTSResult) -> Array:
    """All chains pooled: ``[C * S, P]``."""
    return result.samples.reshape(-1, result.samples.shape[-1])


def predict(key: Array, result: NUTSResult, x_test: Array, num_samples: int) -> Array:
    """Posterior function samples ``[num_samples, N_t, D_L]`` from draws picked uniformly
    (without replacement when there are enough) from the pooled chains."""
    pool = flat_samples(result)
    idx = jax.random.choice(key, pool.shape[0], (num_samples,), replace=num_samples > pool.shape[0])
    return bnn.forward_flat(result.model, pool[idx], x_test)


def function_diagnostics(result: NUTSResult, x: Array) -> dict:
    """Split R-hat and ESS of the network's output ``f(x)`` at ``x [N, D_0]``, every draw of every
    chain -> ``{"r_hat": [N, D_L], "ess": [N, D_L]}`` (NaN where too few draws).

    Why function space: a BNN's posterior has exactly equivalent weight modes (hidden units
    permuted or sign-flipped), between which chains never mix, so weight-space R-hat is large even
    when every chain predicts the same; what a prediction needs is agreement of ``f``."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    c, s, p = result.samples.shape
    f = np.asarray(bnn.forward_flat(result.model, result.samples.reshape(c * s, p), x)).reshape(c, s, -1)
    nan = np.full(f.shape[-1], np.nan)
    r_hat = split_gelman_rubin(f) if s >= 4 else nan
    ess = effective_sample_size(f) if s >= 2 else nan
    shape = (x.shape[0], -1)
    return {"r_hat": np.asarray(r_hat).reshape(shape), "ess": np.asarray(ess).reshape(shape)}

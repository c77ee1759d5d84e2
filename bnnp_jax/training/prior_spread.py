"""How wide a learned BNNP prior is, in weight space and in function space.

The prior MMD (:mod:`bnnp_jax.training.evaluation`) says *whether* prior draws
look like the generator's; this says *how* they differ. A layer-wise Gaussian
prior whose per-weight standard deviation grows from ``1/sqrt(D)`` to ``c/sqrt(D)``
multiplies the variance of a ReLU network's output by about ``c^2`` per layer, so
a moderate widening in weight space is an explosion in function space. That is
the failure of the learned sawtooth prior in ``docs/sawtooth.md``; these numbers
are its evidence.
"""

from __future__ import annotations

import jax
import numpy as np

from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.data import registry
from bnnp_jax.training.evaluation import draw_params, grid_for, prior_function_samples

__all__ = ["function_spread", "weight_spread", "prior_spread"]


def function_spread(f: np.ndarray, x_grid: np.ndarray) -> dict:
    """Summary of function draws ``f [S, G]`` on a sorted 1-D grid ``x_grid [G]``.

    Returns the standard deviation across draws (averaged over the grid), the
    standard deviation within a draw (averaged over draws), the mean value and
    the mean absolute slope ``|df/dx|``.
    """
    f, x = np.asarray(f, np.float64), np.asarray(x_grid, np.float64)
    if f.ndim != 2 or x.shape != (f.shape[1],):
        raise ValueError(f"f: expected [S, G] with G = len(x_grid) = {x.shape[0]}, got {f.shape}")
    return {"std_across_draws": float(f.std(0).mean()), "std_within_draw": float(f.std(1).mean()),
            "mean": float(f.mean()), "mean_abs_slope": float(np.abs(np.diff(f, axis=1) / np.diff(x)).mean())}


def weight_spread(params: bnnp.BNNPParams) -> list[dict]:
    """Per layer: mean ``|mu|``, and the mean and largest prior standard deviation
    of a weight, beside ``1/sqrt(D)``, the standard initialisation's value."""
    out = []
    for mean, tril in bnnp.prior_scale_trils(params, min_std=0.0):  # the learned factor itself, unfloored
        tril = np.asarray(tril, np.float64)
        sd = np.sqrt(np.sum(tril**2, -1))  # [O|1, D]: the rows of L give each weight's variance
        d = tril.shape[-1]
        out.append({"mean_abs_mu": float(np.abs(np.asarray(mean)).mean()), "mean_sd": float(sd.mean()),
                    "max_sd": float(sd.max()), "init_sd": float(1 / np.sqrt(d))})
    return out


def prior_spread(key: jax.Array, params: bnnp.BNNPParams, family: str, num: int = 256, grid_size: int = 64,
                 family_params: dict | None = None) -> dict:
    """Weight- and function-space spread of a BNNP prior beside the generator's.

    Function draws are noise-free, on the family's evaluation grid (the grid of
    the prior MMD). ``family`` must be a 1-D family of :mod:`bnnp_jax.data.registry`;
    ``family_params`` (e.g. a run's ``data.params``) set its generator's function parameters.
    """
    grid = grid_for(family, grid_size)
    k_prior, k_truth = jax.random.split(key)
    f = prior_function_samples(k_prior, params, grid, num)[..., 0]
    truth = registry.true_function_samples(k_truth, family, grid, num, **draw_params(family, family_params))[..., 0]
    x = np.asarray(grid[:, 0])
    return {"prior": function_spread(f, x), "generator": function_spread(truth, x), "layers": weight_spread(params)}

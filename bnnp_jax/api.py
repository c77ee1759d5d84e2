"""Validated entry points for research code and the CLI.

These check their inputs on the host (key, parameters, shapes, dtypes,
finiteness, sizes; :mod:`bnnp_jax.validation`), cast the data to the model's
dtype, then call the jitted core in :mod:`bnnp_jax.bnnp`. Code that has
already validated its data calls the core directly and pays nothing for the
checks; these wrappers cannot themselves run under ``jit``/``vmap``.

Conventions: an empty context (``x_c`` of shape ``[0, x_dim]``) is valid and
gives the prior (predictive); ``batch_size`` at least as large as every set
it batches means one batch and reuses the unbatched compilation.
"""

from __future__ import annotations

import numpy as np

from bnnp_jax import bnnp, validation


def _check_common(key, params, num_samples):
    validation.check_key(key)
    validation.check_params(params, bnnp.BNNPParams)
    validation.check_positive_int("num_samples", num_samples)


def _check_context(params, x_c, y_c):
    c = params.config
    return validation.check_pair("x_c", x_c, "y_c", y_c, c.x_dim, c.y_dim, dtype=np.dtype(c.dtype))


def posterior_samples(key, params: bnnp.BNNPParams, x_c, y_c, num_samples: int,
                      batch_size: int | None = None) -> bnnp.PosteriorSamples:
    """:func:`bnnp_jax.bnnp.posterior_samples` with input validation.

    Args: ``x_c [N_c, x_dim]``, ``y_c [N_c, y_dim]`` real floats (``N_c = 0``
    gives the prior: ``kl = 0``); ``num_samples`` and ``batch_size`` positive ints.
    Raises ``ValueError`` naming the offending argument.
    """
    _check_common(key, params, num_samples)
    x_c, y_c = _check_context(params, x_c, y_c)
    batch_size = validation.check_batch_size(batch_size, x_c.shape[0])
    return bnnp.posterior_samples(key, params, x_c, y_c, num_samples, batch_size)


def predict(key, params: bnnp.BNNPParams, x_c, y_c, x_t, num_samples: int,
            batch_size: int | None = None) -> bnnp.Prediction:
    """:func:`bnnp_jax.bnnp.predict` with input validation.

    Args: as :func:`posterior_samples`, plus targets ``x_t [N_t, x_dim]``. An
    empty context gives the prior predictive. ``batch_size`` batches both the
    context statistics and the target forward pass.
    """
    _check_common(key, params, num_samples)
    x_c, y_c = _check_context(params, x_c, y_c)
    c = params.config
    x_t = validation.check_array("x_t", x_t, 2, c.x_dim, dim_name="x_dim (last dimension)", dtype=np.dtype(c.dtype))
    batch_size = validation.check_batch_size(batch_size, max(x_c.shape[0], x_t.shape[0]))
    return bnnp.predict(key, params, x_c, y_c, x_t, num_samples, batch_size)


def prior_samples(key, params: bnnp.BNNPParams, num_samples: int) -> list:
    """:func:`bnnp_jax.bnnp.prior_samples` with validation: weights ``[S, D_{l-1}+1, D_l]`` per layer."""
    _check_common(key, params, num_samples)
    return bnnp.prior_samples(key, params, num_samples)

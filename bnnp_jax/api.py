"""Validated entry points for research code and the CLI.

These check their inputs on the host (shapes, dtypes, finiteness, sizes),
then call the jitted core in :mod:`bnnp_jax.bnnp`. Code that has already
validated its data can call the core directly and pay nothing for checks.
"""

from __future__ import annotations

import numpy as np

from bnnp_jax import bnnp, validation


def _check_context(params, x_c, y_c, x_t=None, batch_size=None, num_samples=1):
    c = params.config
    x_c, y_c = validation.check_pair("x_c", x_c, "y_c", y_c, c.x_dim, c.y_dim)
    validation.check_positive_int("num_samples", num_samples)
    if x_t is not None:
        x_t = validation.check_array("x_t", x_t, 2, c.x_dim)
    if batch_size is not None:
        validation.check_positive_int("batch_size", batch_size, max(x_c.shape[0], 1), "the number of context points")
    dtype = np.dtype(c.dtype)
    cast = lambda a: None if a is None else a.astype(dtype)
    return cast(x_c), cast(y_c), cast(x_t)


def posterior_samples(key, params, x_c, y_c, num_samples: int, batch_size: int | None = None):
    """:func:`bnnp_jax.bnnp.posterior_samples` with input validation. An empty
    context gives the prior."""
    x_c, y_c, _ = _check_context(params, x_c, y_c, None, batch_size, num_samples)
    return bnnp.posterior_samples(key, params, x_c, y_c, num_samples, batch_size)


def predict(key, params, x_c, y_c, x_t, num_samples: int, batch_size: int | None = None):
    """:func:`bnnp_jax.bnnp.predict` with input validation. An empty context gives
    the prior predictive."""
    x_c, y_c, x_t = _check_context(params, x_c, y_c, x_t, batch_size, num_samples)
    return bnnp.predict(key, params, x_c, y_c, x_t, num_samples, batch_size)

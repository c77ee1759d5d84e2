"""One table of the inference baselines (SPEC section 8): per method, how to fit it,
predict with the fitted result, and estimate its ELBO.

``fit(method, key, model, x, y, **settings)`` trains one method on one dataset
``x [N, D_0]``, ``y [N, D_L]`` under a :class:`~bnnp_jax.inference.model.BNNModel`
(for ``bnnp_amortised``, ``model`` is the meta-trained ``BNNPParams``: nothing is
fitted); ``settings`` are the method's own keyword arguments (its ``fit``'s
docstring). The result's type names its method, so :func:`predict` and :func:`elbo`
need no method argument. Studies look methods up here instead of branching on
their names.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax

from bnnp_jax.inference import bnnp_methods, givi, nuts, vi

__all__ = ["Method", "METHODS", "fit", "predict", "elbo"]

Array = jax.Array


class Method(NamedTuple):
    """``fit(key, model, x, y, **settings) -> result``;
    ``predict(key, result, x_test, num_samples) -> f [S, N_t, D_L]``;
    ``elbo(key, result, x, y, num_samples, **kw) -> evidence.ELBOEstimate`` (``None``: NUTS has none)."""

    fit: Callable
    predict: Callable
    elbo: Callable | None
    result_type: type


def _per_task_elbo(key, result, x, y, num_samples=10_000, **kw):
    del x, y  # the per-task BNNP result carries its dataset
    return bnnp_methods.per_task_elbo(key, result, num_samples, **kw)


def _amortised_elbo(key, result, x, y, num_samples=10_000, **kw):
    del x, y  # conditioned on the dataset it was given
    return bnnp_methods.amortised_elbo(key, result, num_samples, **kw)


METHODS: dict[str, Method] = {
    "nuts": Method(nuts.fit, nuts.predict, None, nuts.NUTSResult),
    **{m: Method(partial(vi.fit, method=m), vi.predict, vi.elbo, vi.VIResult) for m in vi.METHODS},
    "givi": Method(givi.fit, givi.predict, givi.elbo, givi.GIVIResult),
    "bnnp_per_task": Method(bnnp_methods.per_task_fit, bnnp_methods.per_task_predict, _per_task_elbo,
                            bnnp_methods.PerTaskResult),
    "bnnp_amortised": Method(bnnp_methods.amortised_fit, bnnp_methods.amortised_predict, _amortised_elbo,
                             bnnp_methods.AmortisedResult),
}


def _get(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"method: unknown inference method {method!r}; choose from {sorted(METHODS)}")
    return METHODS[method]


def _of(result: Any) -> Method:
    for m in METHODS.values():
        if isinstance(result, m.result_type):
            return m
    raise ValueError(f"result: expected the result of inference.fit, got {type(result).__name__}")


def fit(method: str, key: Array, model, x: Array, y: Array, **settings):
    """Fit ``method`` (a key of :data:`METHODS`) on ``x [N, D_0]``, ``y [N, D_L]``."""
    return _get(method).fit(key, model, x, y, **settings)


def predict(key: Array, result, x_test: Array, num_samples: int) -> Array:
    """Posterior function samples ``[num_samples, N_t, D_L]`` at ``x_test [N_t, D_0]``."""
    return _of(result).predict(key, result, x_test, num_samples)


def elbo(key: Array, result, x: Array, y: Array, num_samples: int = 10_000, **kw):
    """ELBO estimate of a fitted result on ``(x, y)`` -> :class:`evidence.ELBOEstimate`."""
    m = _of(result)
    if m.elbo is None:
        raise ValueError("result: NUTS has no variational posterior, hence no ELBO")
    return m.elbo(key, result, x, y, num_samples, **kw)

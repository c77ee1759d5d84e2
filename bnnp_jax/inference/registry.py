"""One table of the inference baselines (SPEC section 8): per method, how to fit it,
predict with the fitted result, and estimate its ELBO.

``fit(method, key, model, x, y, **settings)`` trains one method on one dataset
``x [N, D_0]``, ``y [N, D_L]`` under a :class:`~bnnp_jax.inference.model.BNNModel`
(for ``bnnp_amortised``, ``model`` is the meta-trained ``BNNPParams``: nothing is
fitted); ``settings`` are the method's own keyword arguments (its ``fit``'s
docstring). :func:`fit_batch` and :func:`elbo_batch` run a batch of such fits (one per
dataset, e.g. a ``sigma_y`` grid times seeds) as one vmapped, jitted program; :func:`take`
reads one fit back out. The result's type names its method, so :func:`predict`, :func:`elbo` and
:func:`linear_kl` need no method argument. :func:`budget` spells one optimisation
budget (steps, learning rates, Monte-Carlo draws per step) in each method's own
keyword names. Studies look methods up here instead of branching on their names.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.inference import bnnp_methods, givi, nuts, vi

__all__ = ["Method", "METHODS", "fit", "fit_batch", "take", "predict", "elbo", "elbo_batch", "linear_kl", "budget"]

Array = jax.Array


class Method(NamedTuple):
    """``fit(key, model, x, y, **settings) -> result``;
    ``predict(key, result, x_test, num_samples) -> f [S, N_t, D_L]``;
    ``elbo(key, result, x, y, num_samples, **kw) -> evidence.ELBOEstimate`` (``None``: NUTS has none);
    ``linear_kl(result, targets) -> scalar``, ``KL(q || targets)`` in closed form with ``targets``
    one Gaussian per layer (``None``: no Gaussian ``q``); ``draws_arg``: the name of ``fit``'s
    Monte-Carlo draws per step (``None``: ``fit`` optimises nothing)."""

    fit: Callable
    predict: Callable
    elbo: Callable | None
    result_type: type
    linear_kl: Callable | None = None
    draws_arg: str | None = None


def _per_task_elbo(key, result, x, y, num_samples=10_000, mask=None, **kw):
    del x, y, mask  # the per-task BNNP result carries its dataset
    return bnnp_methods.per_task_elbo(key, result, num_samples, **kw)


def _amortised_elbo(key, result, x, y, num_samples=10_000, **kw):
    del x, y  # conditioned on the dataset it was given
    return bnnp_methods.amortised_elbo(key, result, num_samples, **kw)


METHODS: dict[str, Method] = {
    "nuts": Method(nuts.fit, nuts.predict, None, nuts.NUTSResult),
    **{m: Method(partial(vi.fit, method=m), vi.predict, vi.elbo, vi.VIResult, vi.kl_to_gaussians, "num_particles")
       for m in vi.METHODS},
    "givi": Method(givi.fit, givi.predict, givi.elbo, givi.GIVIResult, givi.linear_kl, "num_samples"),
    "bnnp_per_task": Method(bnnp_methods.per_task_fit, bnnp_methods.per_task_predict, _per_task_elbo,
                            bnnp_methods.PerTaskResult, bnnp_methods.per_task_linear_kl, "num_samples"),
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
    """Fit ``method`` (a key of :data:`METHODS`) on ``x [N, D_0]``, ``y [N, D_L]`` (JAX or NumPy arrays)."""
    return _get(method).fit(key, model, jnp.asarray(x), jnp.asarray(y), **settings)


def fit_batch(method: str, keys: Array, models, x: Array, y: Array, mask: Array | None = None, **settings):
    """``B`` fits of ``method`` as one vmapped, jitted program: ``keys [B, 2]``, ``models`` a
    batched :class:`~bnnp_jax.inference.model.BNNModel` (every leaf ``[B, ...]``, e.g. stacked
    models that differ in ``sigma_y``), ``x [B, N, D_0]``, ``y [B, N, D_L]`` and ``mask [B, N]``
    (1 for a real point, 0 for padding, valid points first: datasets of different sizes
    padded to one ``N``). Returns the method's result with a leading batch axis on every
    array (``losses [B, num_steps]``); ``take(result, b)`` equals
    ``fit(method, keys[b], model_b, x[b, :n_b], y[b, :n_b], **settings)`` up to float error."""
    m = _get(method)
    if m.draws_arg is None:
        raise ValueError(f"method: {method!r} optimises nothing per dataset, so it has no batched fit")
    keys, x, y = jnp.asarray(keys), jnp.asarray(x), jnp.asarray(y)
    if keys.ndim != 2 or x.ndim != 3 or y.ndim != 3:
        raise ValueError(f"keys, x, y must be [B, 2], [B, N, D_0], [B, N, D_L]; got shapes {keys.shape}, {x.shape}, "
                         f"{y.shape}")
    b, n = x.shape[:2]
    if keys.shape[0] != b or y.shape[:2] != (b, n):
        raise ValueError(f"keys, x and y must share the batch axis (and x, y the points); got {keys.shape}, "
                         f"{x.shape}, {y.shape}")
    if mask is not None:
        mask = jnp.asarray(mask, x.dtype)
        if mask.shape != (b, n):
            raise ValueError(f"mask must have shape {(b, n)}, got {mask.shape}")
    bad = [a.shape for a in jax.tree.leaves(models) if a.ndim == 0 or a.shape[0] != b]
    if bad:
        raise ValueError(f"models: every leaf needs the leading batch axis {b}; got leaves of shapes {bad}")
    return m.fit(keys, models, x, y, mask=mask, batched=True, **settings)


def take(result, index: int):
    """Fit ``index`` of a batched result (:func:`fit_batch`): every array sliced on its leading axis."""
    return jax.tree.map(lambda a: a[index] if isinstance(a, (jax.Array, np.ndarray)) else a, result)


def predict(key: Array, result, x_test: Array, num_samples: int) -> Array:
    """Posterior function samples ``[num_samples, N_t, D_L]`` at ``x_test [N_t, D_0]``."""
    return _of(result).predict(key, result, x_test, num_samples)


def elbo(key: Array, result, x: Array, y: Array, num_samples: int = 10_000, **kw):
    """ELBO estimate of a fitted result on ``(x, y)`` -> :class:`evidence.ELBOEstimate`."""
    m = _of(result)
    if m.elbo is None:
        raise ValueError("result: NUTS has no variational posterior, hence no ELBO")
    return m.elbo(key, result, x, y, num_samples, **kw)


def elbo_batch(keys: Array, result, x: Array, y: Array, mask: Array | None = None, num_samples: int = 10_000,
               **kw):
    """ELBO estimates of a batched result (:func:`fit_batch`) on its datasets, one vmapped
    program -> :class:`evidence.ELBOEstimate` with fields ``[B]``; ``keys [B, 2]``."""
    m = _of(result)
    if m.elbo is None:
        raise ValueError("result: NUTS has no variational posterior, hence no ELBO")
    if not m.draws_arg:
        raise ValueError(f"result: {type(result).__name__} has no batched ELBO")
    return m.elbo(jnp.asarray(keys), result, x, y, num_samples, mask=mask, batched=True, **kw)


def linear_kl(result, targets: list) -> Array:
    """``KL(q || targets)`` in closed form -> scalar: ``targets`` one Gaussian per layer, e.g.
    ``[inference.model.exact_posterior(model, x, y)]`` on a model with no hidden layer, where
    every method's ``q`` is Gaussian and this is its exact KL to the true posterior."""
    m = _of(result)
    if m.linear_kl is None:
        raise ValueError(f"result: {type(result).__name__} has no Gaussian q, hence no closed-form KL")
    return m.linear_kl(result, targets)


def budget(method: str, num_steps: int, lr: tuple[float, float] | None = None, num_draws: int | None = None,
           progress_bar: bool = False) -> dict:
    """One optimisation budget as ``method``'s :func:`fit` keywords: ``num_steps`` Adam steps,
    learning rates ``lr = (start, end)`` and ``num_draws`` Monte-Carlo draws per step
    (``None``: the method's default). Empty for a method that optimises nothing (the
    amortised BNNP; NUTS, whose budget is its warm-up and sample counts)."""
    m = _get(method)
    if m.draws_arg is None:
        return {}
    out = dict(num_steps=num_steps, progress_bar=progress_bar)
    if lr is not None:
        out["lr"] = tuple(lr)
    if num_draws is not None:
        out[m.draws_arg] = num_draws
    return out

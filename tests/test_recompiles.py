"""Repeated calls of the public jitted functions with the same shapes compile once.

A public function checks its inputs on the host, then calls a kernel jitted at
import. Each test swaps that kernel for the same Python function, jitted with the
same static arguments under ``chex.assert_max_traces``, and calls the *public*
function repeatedly: new keys and data values, NumPy float64 or JAX float32 inputs
(cast to the model's dtype on the host), a ``batch_size`` that covers every point
(folded to one batch). A second trace, i.e. a recompile, fails the test. A call
with a new shape must trace again, which shows the guard is live.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnnp_jax
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.inference import gaussian_vi, vi


@pytest.fixture(autouse=True)
def fresh_trace_counters():
    chex.clear_trace_counter()
    yield
    chex.clear_trace_counter()


def _guard(monkeypatch, module, name: str, n: int = 1, **jit_options):
    """Replace ``module.name``, a function jitted at import, by its Python function
    jitted with the same ``jit_options`` under ``chex.assert_max_traces(n)``."""
    kernel = getattr(module, name).__wrapped__
    monkeypatch.setattr(module, name, jax.jit(chex.assert_max_traces(kernel, n=n), **jit_options))


@pytest.fixture(scope="module")
def params():
    return bnnp_jax.init(jax.random.PRNGKey(0), bnnp_jax.BNNPConfig(hidden=(8,), dtype="float32"))


def _context(n: int, scale: float = 1.0):
    x = np.linspace(-1.0, 1.0, n)[:, None]  # NumPy float64: the public functions cast to float32
    return x, scale * np.sin(3 * x)


def test_posterior_samples_compiles_once_per_shape(monkeypatch, params):
    _guard(monkeypatch, bnnp, "_posterior_samples_jit", static_argnames=("num_samples", "batch_size", "with_kl"))
    x, y = _context(6)
    a = bnnp_jax.posterior_samples(jax.random.PRNGKey(1), params, x, y, 4)
    b = bnnp_jax.posterior_samples(jax.random.PRNGKey(2), params, jnp.asarray(x, jnp.float32),
                                   jnp.asarray(2 * y, jnp.float32), 4)
    c = bnnp_jax.posterior_samples(jax.random.PRNGKey(3), params, x, y, 4, batch_size=6)  # one batch
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b, c)
    chex.assert_shape(a.weights, [(4, 2, 8), (4, 9, 1)])
    with pytest.raises(AssertionError, match="traced > 1 times"):
        bnnp_jax.posterior_samples(jax.random.PRNGKey(4), params, *_context(7), 4)


def test_predict_compiles_once_per_shape(monkeypatch, params):
    _guard(monkeypatch, bnnp, "_predict_jit", static_argnames=("num_samples", "batch_size"))
    x, y = _context(6)
    x_t = np.linspace(-2.0, 2.0, 10)[:, None]
    preds = [bnnp_jax.predict(jax.random.PRNGKey(1), params, x, y, x_t, 4),
             bnnp_jax.predict(jax.random.PRNGKey(2), params, x, 2 * y, jnp.asarray(x_t, jnp.float32), 4),
             bnnp_jax.predict(jax.random.PRNGKey(3), params, x, y, x_t, 4, batch_size=10)]
    chex.assert_trees_all_equal_shapes_and_dtypes(*preds)
    chex.assert_shape(preds[0].samples, (4, 10, 1))
    with pytest.raises(AssertionError, match="traced > 1 times"):
        bnnp_jax.predict(jax.random.PRNGKey(4), params, x, y, x_t[:5], 4)


def test_prior_samples_compiles_once_per_num_samples(monkeypatch, params):
    _guard(monkeypatch, bnnp, "_prior_samples_jit", static_argnames=("num_samples",))
    for seed in range(3):
        chex.assert_shape(bnnp_jax.prior_samples(jax.random.PRNGKey(seed), params, 5), [(5, 2, 8), (5, 9, 1)])
    with pytest.raises(AssertionError, match="traced > 1 times"):
        bnnp_jax.prior_samples(jax.random.PRNGKey(0), params, 6)  # num_samples is static


def test_gaussian_baseline_fit_predict_elbo_compile_once(monkeypatch):
    """Two MFVI fits on datasets of one shape share every compiled program of the
    fit (Gauss-Newton MAP start, whitening, the Adam chunk), of ``baseline_predict``
    and of ``baseline_elbo``."""
    _guard(monkeypatch, gaussian_vi, "_chunk", static_argnames=gaussian_vi._STATIC)
    _guard(monkeypatch, gaussian_vi, "_init", static_argnames=gaussian_vi._START_STATIC)
    _guard(monkeypatch, vi, "_sample", static_argnames="num_samples")
    _guard(monkeypatch, vi, "_elbo_terms", static_argnames=("lay", "num_samples", "batch_size"))
    model = bnnp_jax.fixed_prior_model((1, 4, 1), activation="tanh", sigma_y=0.1, dtype=jnp.float32)
    x = jnp.linspace(-1.0, 1.0, 10)[:, None]
    x_test = jnp.linspace(-2.0, 2.0, 7)[:, None]
    for seed, y in enumerate((jnp.sin(3 * x), jnp.cos(2 * x))):
        key = jax.random.PRNGKey(seed)
        fit = bnnp_jax.baseline_fit("mfvi", key, model, x, y, num_steps=20, progress_bar=False)
        chex.assert_shape(bnnp_jax.baseline_predict(key, fit, x_test, 3), (3, 7, 1))
        assert np.isfinite(float(bnnp_jax.baseline_elbo(key, fit, x, y, 16).value))
    with pytest.raises(AssertionError, match="traced > 1 times"):
        bnnp_jax.baseline_elbo(key, fit, x, y, 32)  # num_samples is static

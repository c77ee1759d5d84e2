"""Batched fits (registry.fit_batch / elbo_batch): a batch of datasets of different sizes,
padded to one N with a mask and under models that differ in sigma_y, fitted as one vmapped
program; every slice must be the single fit on its own unpadded dataset with the same key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.inference import model as bnn
from bnnp_jax.inference import registry

WIDTHS = (1, 3, 1)
SIZES = (5, 7)  # ragged: the first dataset is padded with two points
SIGMAS = (0.2, 0.7)
SETTINGS = {"mfvi": {}, "fcvi": {}, "lcvi": {}, "givi": {"num_inducing": 3}, "bnnp_per_task": {}}


def _batch():
    """Keys ``[B, 2]``, the single models and datasets, and their padded, stacked forms."""
    keys = jax.random.split(jax.random.PRNGKey(0), len(SIZES))
    models = [bnn.fixed_prior_model(WIDTHS, "tanh", s) for s in SIGMAS]
    data = []
    for i, n in enumerate(SIZES):
        x = jnp.linspace(-2.0, 2.0 - 0.3 * i, n)[:, None]
        data.append((x, jnp.sin(2 * x) + 0.1 * i))
    n_max = max(SIZES)
    pad = lambda a: jnp.concatenate([a, jnp.full((n_max - a.shape[0],) + a.shape[1:], 9.0)])  # junk in the padding
    x = jnp.stack([pad(d[0]) for d in data])
    y = jnp.stack([pad(d[1]) for d in data])
    mask = jnp.stack([jnp.arange(n_max) < n for n in SIZES]).astype(x.dtype)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *models)
    return keys, models, data, stacked, x, y, mask


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_batched_fit_slices_are_the_single_fits(x64, method):
    keys, models, data, stacked, x, y, mask = _batch()
    budget = registry.budget(method, 12, (0.02, 0.001), 2)
    batch = registry.fit_batch(method, keys, stacked, x, y, mask, **budget, **SETTINGS[method])
    assert batch.losses.shape == (len(SIZES), 12)
    ekeys = jax.random.split(jax.random.PRNGKey(1), len(SIZES))
    est = registry.elbo_batch(ekeys, batch, x, y, mask, num_samples=64)
    assert est.value.shape == (len(SIZES),)
    for b, (model, (xb, yb)) in enumerate(zip(models, data)):
        single = registry.fit(method, keys[b], model, xb, yb, **budget, **SETTINGS[method])
        np.testing.assert_allclose(registry.take(batch, b).losses, single.losses, rtol=1e-7, atol=1e-8)
        ref = registry.elbo(ekeys[b], single, xb, yb, 64)
        np.testing.assert_allclose([est.value[b], est.stderr[b]], [ref.value, ref.stderr], rtol=1e-7)
    # the fits differ: a batch that ignored its mask or its sigma_y would not match both
    assert not np.allclose(batch.losses[0], batch.losses[1])


def test_fit_batch_names_bad_arguments(x64):
    keys, _, _, stacked, x, y, mask = _batch()
    with pytest.raises(ValueError, match="mask must have shape"):
        registry.fit_batch("mfvi", keys, stacked, x, y, mask[:, :3], num_steps=2)
    with pytest.raises(ValueError, match="models: every leaf"):
        registry.fit_batch("mfvi", keys, bnn.fixed_prior_model(WIDTHS, "tanh", 0.2), x, y, mask, num_steps=2)
    with pytest.raises(ValueError, match="keys, x, y must be"):
        registry.fit_batch("mfvi", keys, stacked, x[0], y[0], mask, num_steps=2)
    with pytest.raises(ValueError, match="no batched fit"):
        registry.fit_batch("nuts", keys, stacked, x, y, mask)


def test_batched_fit_names_the_fit_that_diverged(x64):
    keys, _, _, stacked, x, y, mask = _batch()
    y = y.at[1, 0, 0].set(jnp.nan)  # a NaN target in fit 1's real points
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0 in fit 1"):
        registry.fit_batch("bnnp_per_task", keys, stacked, x, y, mask, num_steps=3)


def test_zero_steps_returns_the_start(x64):
    keys, _, _, stacked, x, y, mask = _batch()
    res = registry.fit_batch("givi", keys, stacked, x, y, mask, num_steps=0, num_inducing=3)
    assert res.losses.shape == (len(SIZES), 0)
    np.testing.assert_array_equal(res.params.z, res.init_params.z)

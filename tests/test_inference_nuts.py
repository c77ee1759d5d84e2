"""NUTS on the flat weight vector: exact moments without hidden layers, a real
Metropolis correction on a BNN (SPEC sections 8 and 12)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.diagnostics import effective_sample_size

from bnnp_jax.inference import model as bnn
from bnnp_jax.inference import nuts


def _data(widths, sigma, n, seed, activation="relu"):
    model = bnn.fixed_prior_model(widths, activation, sigma)
    kx, kw, ke = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(kx, (n, widths[0]), minval=-2.0, maxval=2.0)
    y = bnn.forward(bnn.prior_sample(kw, model), x, activation) + sigma * jax.random.normal(ke, (n, widths[-1]))
    return model, x, y


def test_nuts_moments_match_closed_form(x64):
    model, x, y = _data([2, 1], 0.3, 20, seed=0)
    res = nuts.fit(jax.random.PRNGKey(1), model, x, y, num_warmup=300, num_samples=500, num_chains=2,
                   progress_bar=False)
    post = bnn.exact_posterior(model, x, y)
    mean, var = post.mean[0], jnp.diagonal(post.covariance()[0])
    samples = np.asarray(res.samples)  # [C, S, P]
    assert np.all(res.diagnostics.r_hat < 1.05)
    # Monte-Carlo error of the mean is sd / sqrt(ESS); of the variance, from the ESS of the squared deviations.
    ess_mean = res.diagnostics.ess
    sq = (samples - np.asarray(mean)) ** 2
    ess_sq = effective_sample_size(sq)
    est_mean, est_var = samples.mean((0, 1)), sq.mean((0, 1))
    np.testing.assert_array_less(np.abs(est_mean - mean), 4 * np.sqrt(var / ess_mean))
    np.testing.assert_array_less(np.abs(est_var - var), 4 * sq.reshape(-1, sq.shape[-1]).std(0) / np.sqrt(ess_sq))
    assert 0.5 < res.diagnostics.accept_rate < 1.0
    f = nuts.predict(jax.random.PRNGKey(2), res, x[:3], 50)
    assert f.shape == (50, 3, 1)


def test_nuts_rejects_on_a_bnn(x64):
    model, x, y = _data([1, 10, 1], 0.1, 20, seed=3)
    res = nuts.fit(jax.random.PRNGKey(4), model, x, y, num_warmup=60, num_samples=60, num_chains=1,
                   max_tree_depth=5, progress_bar=False)
    d = res.diagnostics
    assert 0.0 < d.accept_rate < 1.0
    assert d.mean_tree_size > 1.0
    assert d.r_hat.shape == d.ess.shape == (model.num_weights,)
    assert np.all(np.isfinite(res.samples))


def test_potential_is_negative_log_joint(x64):
    model, x, y = _data([1, 3, 1], 0.2, 5, seed=5)
    w = bnn.prior_sample(jax.random.PRNGKey(6), model)
    np.testing.assert_allclose(nuts.potential_fn(model, x, y)(bnn.flatten(w)), -bnn.log_joint(model, w, x, y))


def test_bad_settings_raise():
    model = bnn.fixed_prior_model([1, 1], "relu", 0.1)
    with pytest.raises(ValueError, match="num_chains"):
        nuts.fit(jax.random.PRNGKey(0), model, jnp.zeros((3, 1)), jnp.zeros((3, 1)), num_chains=0)


def test_one_draw_reports_nan_diagnostics():
    """A single kept draw has no ESS or R-hat: NaN diagnostics, not a crash in numpyro."""
    from types import SimpleNamespace

    extra = {"accept_prob": np.full((1, 1), 0.9), "num_steps": np.full((1, 1), 3), "diverging": np.zeros((1, 1), bool),
             "adapt_state": SimpleNamespace(step_size=np.full((1, 1), 0.1))}
    d = nuts.summarise(np.zeros((1, 1, 4)), extra)
    assert d.ess.shape == d.r_hat.shape == (4,) and np.all(np.isnan(d.ess)) and np.all(np.isnan(d.r_hat))
    assert d.accept_rate == pytest.approx(0.9) and d.mean_tree_size == 3.0
    ok = nuts.summarise(np.random.default_rng(0).normal(size=(1, 8, 4)), {**extra, "accept_prob": np.full((1, 8), 0.9)})
    assert np.all(np.isfinite(ok.ess))

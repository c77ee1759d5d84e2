"""Per-task and amortised BNNP as baselines on one dataset: exact where the
model has no hidden layer, and learning on a BNN."""

import jax
import jax.numpy as jnp
import pytest

from bnnp_jax.inference import bnnp_methods as bm
from bnnp_jax.inference import model as bnn


def _data(model, n, seed):
    kx, kw, ke = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(kx, (n, model.widths[0]), minval=-2.0, maxval=2.0)
    y = bnn.forward(bnn.prior_sample(kw, model), x, model.activation)
    return x, y + model.sigma_y * jax.random.normal(ke, y.shape)


def test_per_task_bnnp_exact_final_layer_is_the_exact_posterior(x64):
    model = bnn.fixed_prior_model([2, 1], "relu", 0.3)
    x, y = _data(model, 20, seed=0)
    params = bm.per_task_init(jax.random.PRNGKey(1), model, x, final_layer="exact")
    res = bm.PerTaskResult(params, model, x, y, jnp.zeros(0))
    est = bm.per_task_elbo(jax.random.PRNGKey(2), res, num_samples=4000)
    exact = bnn.exact_log_evidence(model, x, y)
    assert abs(float(est.value - exact)) < 4 * float(est.stderr)


def test_per_task_bnnp_learns_the_noise_precision(x64):
    model = bnn.fixed_prior_model([2, 1], "relu", 0.3)
    x, y = _data(model, 20, seed=3)
    start = bm.per_task_init(jax.random.PRNGKey(4), model, x)
    start = start._replace(log_s=[jnp.zeros_like(start.log_s[0])])  # lambda ~ 55, not 1 / 0.3^2 ~ 11
    res = bm.per_task_fit(jax.random.PRNGKey(4), model, x, y, num_steps=1500, lr=(5e-2, 1e-3), init_params=start,
                          progress_bar=False)
    est = bm.per_task_elbo(jax.random.PRNGKey(5), res, num_samples=4000)
    gap = float(bnn.exact_log_evidence(model, x, y) - est.value)
    assert -4 * float(est.stderr) < gap < 0.05 + 4 * float(est.stderr)
    f = bm.per_task_predict(jax.random.PRNGKey(6), res, x[:3], 5)
    assert f.shape == (5, 3, 1)


def test_amortised_bnnp_without_hidden_layers_is_exact(x64):
    from bnnp_jax.bnnp import model as bnnp

    cfg = bnnp.BNNPConfig(x_dim=2, y_dim=1, hidden=(), final_layer="exact", sigma_y_init=0.3, dtype="float64")
    params = bnnp.init(jax.random.PRNGKey(7), cfg)
    model = bnn.from_bnnp(params)
    x, y = _data(model, 15, seed=8)
    res = bm.amortised_fit(jax.random.PRNGKey(9), params, x, y)
    est = bm.amortised_elbo(jax.random.PRNGKey(10), res, num_samples=2000)
    assert abs(float(est.value - bnn.exact_log_evidence(model, x, y))) < 4 * float(est.stderr)
    assert bm.amortised_predict(jax.random.PRNGKey(11), res, x[:4], 6).shape == (6, 4, 1)


def test_registry_closed_form_kl_of_the_exact_per_task_posterior_is_zero(x64):
    from bnnp_jax.inference import registry

    model = bnn.fixed_prior_model([2, 1], "relu", 0.3)
    x, y = _data(model, 20, seed=0)
    exact = bm.PerTaskResult(bm.per_task_init(jax.random.PRNGKey(1), model, x, final_layer="exact"), model, x, y,
                             jnp.zeros(0))
    post = [bnn.exact_posterior(model, x, y)]
    assert abs(float(registry.linear_kl(exact, post))) < 1e-9
    # a learned final layer at lambda ~ 55 instead of 1 / 0.3^2: over-confident, a positive KL
    learned = bm.per_task_init(jax.random.PRNGKey(1), model, x)
    learned = exact._replace(params=learned._replace(log_s=[jnp.zeros_like(learned.log_s[0])]))
    assert float(registry.linear_kl(learned, post)) > 0.1
    deep = bnn.fixed_prior_model([2, 3, 1], "relu", 0.3)
    with pytest.raises(ValueError, match="no hidden layer"):
        registry.linear_kl(exact._replace(model=deep), post)


def test_registry_budget_uses_each_methods_own_keywords():
    from bnnp_jax.inference import registry

    assert registry.budget("mfvi", 10, (1e-2, 1e-3), 4) == dict(num_steps=10, lr=(1e-2, 1e-3), num_particles=4,
                                                                progress_bar=False)
    assert registry.budget("givi", 10, num_draws=4) == dict(num_steps=10, num_samples=4, progress_bar=False)
    assert registry.budget("bnnp_amortised", 10) == {} and registry.budget("nuts", 10) == {}
    with pytest.raises(ValueError, match="unknown inference method 'vi'"):
        registry.budget("vi", 10)

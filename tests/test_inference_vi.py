"""MFVI / FCVI / UCVI on a model with no hidden layer, where the posterior and
the evidence are exact (SPEC section 10)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.core.gaussian import Gaussian, kl_divergence
from bnnp_jax.inference import model as bnn
from bnnp_jax.inference import vi

STEPS = dict(num_steps=2500, lr=(2e-2, 1e-4), progress_bar=False)


def _linear(y_dim=1, n=20, sigma=0.3, seed=0, low=-2.0):
    model = bnn.fixed_prior_model([2, y_dim], "relu", sigma)
    kx, kw, ke = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(kx, (n, 2), minval=low, maxval=low + 4.0)
    y = bnn.forward(bnn.prior_sample(kw, model), x, "relu") + sigma * jax.random.normal(ke, (n, y_dim))
    return model, x, y


def _check_elbo(result, x, y, kl_exact):
    """``log p(D) - ELBO`` must equal the closed-form ``KL(q || posterior)`` within Monte-Carlo error."""
    est = vi.elbo(jax.random.PRNGKey(9), result, x, y, num_samples=4000)
    gap = bnn.exact_log_evidence(result.model, x, y) - est.value
    assert abs(float(gap) - float(kl_exact)) < 4 * float(est.stderr) + 1e-9, (gap, kl_exact, est.stderr)


def test_fcvi_reaches_exact_posterior(x64):
    model, x, y = _linear()
    res = vi.fit(jax.random.PRNGKey(1), model, x, y, "fcvi", **STEPS)
    mean, tril = vi.flat_gaussian(res)
    kl = float(kl_divergence(Gaussian.from_scale_tril(mean[None], tril[None]), bnn.exact_posterior(model, x, y))[0])
    assert kl < 0.05
    _check_elbo(res, x, y, kl)
    # FCVI's latent vector is in the model's flat order, and its KL to the prior is exact
    np.testing.assert_allclose(vi.kl_to_prior(res), kl_divergence(
        Gaussian.from_scale_tril(mean[None], tril[None]), model.prior_gaussians()[0])[0], rtol=1e-10)


def test_mfvi_reaches_mean_field_optimum(x64):
    model, x, y = _linear(low=0.0)  # off-centre inputs correlate the weights with the bias
    res = vi.fit(jax.random.PRNGKey(2), model, x, y, "mfvi", **STEPS)
    post = bnn.exact_posterior(model, x, y)
    # For a Gaussian target the mean-field optimum has the exact means and variances 1 / diag(precision).
    opt_var = 1.0 / jnp.diagonal(post.precision(), axis1=-2, axis2=-1)
    optimum = Gaussian(post.mean, jax.vmap(jnp.diag)(1.0 / jnp.sqrt(opt_var)))
    q = vi.unit_gaussians(res)[0]
    assert float(jnp.sum(kl_divergence(q, optimum))) < 0.01
    assert float(jnp.sum(kl_divergence(optimum, post))) > 0.05  # the test can tell MF from the exact posterior
    _check_elbo(res, x, y, jnp.sum(kl_divergence(q, post)))


def test_ucvi_is_exact_for_independent_units(x64):
    # Without hidden layers the posterior factorises over output units, so UCVI's family contains it.
    model, x, y = _linear(y_dim=2)
    res = vi.fit(jax.random.PRNGKey(3), model, x, y, "ucvi", **STEPS)
    kl = jnp.sum(kl_divergence(vi.unit_gaussians(res)[0], bnn.exact_posterior(model, x, y)))
    assert float(kl) < 0.05
    f = vi.predict(jax.random.PRNGKey(4), res, x[:5], 11)
    assert f.shape == (11, 5, 2)


def test_kl_flat_to_units_matches_dense_formula(x64):
    model = bnn.fixed_prior_model([1, 2, 1], "relu", 0.1)
    p = model.num_weights
    k1, k2 = jax.random.split(jax.random.PRNGKey(5))
    mean = jax.random.normal(k1, (p,))
    tril = jnp.tril(0.1 * jax.random.normal(k2, (p, p)), -1) + jnp.diag(jnp.linspace(0.2, 0.9, p))
    prior = model.prior_gaussians()
    cov_p = jax.scipy.linalg.block_diag(*[c for g in prior for c in g.covariance()])
    mu_p = jnp.concatenate([g.mean.reshape(-1) for g in prior])
    cov_q = tril @ tril.T
    diff = mean - mu_p
    dense = 0.5 * (jnp.trace(jnp.linalg.solve(cov_p, cov_q)) + diff @ jnp.linalg.solve(cov_p, diff) - p
                   + jnp.linalg.slogdet(cov_p)[1] - jnp.linalg.slogdet(cov_q)[1])
    np.testing.assert_allclose(vi.kl_flat_to_units(mean, tril, prior), dense, rtol=1e-9)


def test_unknown_method_raises():
    model = bnn.fixed_prior_model([1, 1], "relu", 0.1)
    with pytest.raises(ValueError, match="method"):
        vi.fit(jax.random.PRNGKey(0), model, jnp.zeros((3, 1)), jnp.zeros((3, 1)), "lcvi", num_steps=1)


def test_fcvi_latent_order_is_the_flat_order(x64):
    # numpyro ravels the guide's sites into one latent vector; the KL and the samples assume it is
    # bnn.flatten's layer-by-layer, unit-major order, which needs zero-padded, ordered site names.
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro

    model = bnn.fixed_prior_model([2, 3, 2], "tanh", 0.1)
    init_units = [w.T for w in bnn.prior_sample(jax.random.PRNGKey(0), model)]
    guide = vi.make_guide("fcvi", model, init_units, 0.01)
    x, y = jnp.zeros((4, 2)), jnp.zeros((4, 2))
    svi = SVI(bnn.numpyro_model, guide, optax_to_numpyro(vi.adam_linear_decay(1e-3, 1e-3, 1)), Trace_ELBO())
    params = svi.get_params(jax.jit(svi.init)(jax.random.PRNGKey(1), model, x, y))
    np.testing.assert_allclose(params["auto_loc"], bnn.flatten(bnn.units_to_weights(init_units)), rtol=1e-12)

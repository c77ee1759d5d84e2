"""The shared BNN model of the inference baselines: layouts, densities, numpyro
model, and the exact no-hidden-layer case against dense references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.inference import model as bnn


def _data(key, model, n=15):
    kx, kw, ke = jax.random.split(key, 3)
    x = jax.random.uniform(kx, (n, model.widths[0]), minval=-2.0, maxval=2.0)
    w = bnn.prior_sample(kw, model)
    y = bnn.forward(w, x, model.activation) + model.sigma_y * jax.random.normal(ke, (n, model.widths[-1]))
    return x, y, w


def test_flatten_roundtrip_and_unit_major_order(x64):
    model = bnn.fixed_prior_model([2, 3, 2], "tanh", 0.1)
    w = bnn.prior_sample(jax.random.PRNGKey(0), model)
    flat = bnn.flatten(w)
    assert flat.shape == (model.num_weights,) == ((2 + 1) * 3 + (3 + 1) * 2,)
    for a, b in zip(w, bnn.unflatten(model, flat)):
        np.testing.assert_array_equal(a, b)
    # unit-major: the first D_0 + 1 entries are unit 0's incoming weights (bias last)
    np.testing.assert_array_equal(flat[:3], w[0][:, 0])


def test_log_joint_matches_numpyro_model_density(x64):
    from numpyro.infer.util import log_density

    model = bnn.fixed_prior_model([1, 4, 2], "relu", jnp.array([0.2, 0.5]))
    # a non-isotropic prior so the per-unit full covariances matter
    trils = [t + 0.05 * jnp.tril(jnp.ones_like(t), -1) for t in model.prior_scale_trils]
    means = [m + 0.1 for m in model.prior_means]
    model = bnn.make_model(model.widths, model.activation, model.sigma_y, means, trils)
    x, y, w = _data(jax.random.PRNGKey(1), model)
    sites = {f"W{l:02d}": wl.T for l, wl in enumerate(w)}
    ref = jax.jit(lambda s: log_density(bnn.numpyro_model, (model, x, y), {}, s)[0])(sites)
    np.testing.assert_allclose(bnn.log_joint(model, w, x, y), ref, rtol=1e-10)
    np.testing.assert_allclose(jax.jit(bnn.log_joint)(model, w, x, y), ref, rtol=1e-10)


def test_mask_drops_points_exactly(x64):
    model = bnn.fixed_prior_model([1, 5, 1], "relu", 0.3)
    x, y, w = _data(jax.random.PRNGKey(2), model, n=10)
    mask = jnp.arange(10) < 6
    full = bnn.log_likelihood(model, w, x[:6], y[:6])
    masked = bnn.log_likelihood(model, w, x, y.at[6:].set(1e3), mask.astype(x.dtype))
    np.testing.assert_allclose(masked, full, rtol=1e-12)


def test_exact_linear_case_matches_dense_reference(x64):
    model = bnn.fixed_prior_model([3, 2], "relu", jnp.array([0.3, 0.7]))
    x, y, _ = _data(jax.random.PRNGKey(3), model, n=12)
    phi = np.concatenate([np.asarray(x), np.ones((12, 1))], 1)
    evid, post = 0.0, bnn.exact_posterior(model, x, y)
    for d in range(2):
        cov0 = np.asarray(model.prior_scale_trils[0][d] @ model.prior_scale_trils[0][d].T)
        s2 = float(model.sigma_y[d]) ** 2
        cov_y = phi @ cov0 @ phi.T + s2 * np.eye(12)  # dense N x N: test reference only
        r = np.asarray(y[:, d]) - phi @ np.asarray(model.prior_means[0][d])
        _, logdet = np.linalg.slogdet(cov_y)
        evid += -0.5 * (r @ np.linalg.solve(cov_y, r) + logdet + 12 * math.log(2 * math.pi))
        prec = np.linalg.inv(cov0) + phi.T @ phi / s2
        np.testing.assert_allclose(post.precision()[d], prec, rtol=1e-9)
        np.testing.assert_allclose(post.mean[d], np.linalg.solve(prec, phi.T @ np.asarray(y[:, d]) / s2), rtol=1e-8)
    np.testing.assert_allclose(bnn.exact_log_evidence(model, x, y), evid, rtol=1e-10)
    samples = bnn.exact_posterior_samples(jax.random.PRNGKey(4), model, x, y, 7)
    assert samples.shape == (7, model.num_weights)


def test_exact_linear_case_drops_masked_points(x64):
    """Padding (mask 0, junk values) changes neither the exact evidence nor the posterior."""
    model = bnn.fixed_prior_model([1, 1], "relu", 0.3)
    x, y, _ = _data(jax.random.PRNGKey(5), model, n=10)
    mask = (jnp.arange(10) < 6).astype(x.dtype)
    xp, yp = x.at[6:].set(9.0), y.at[6:].set(1e3)
    np.testing.assert_allclose(bnn.exact_log_evidence(model, xp, yp, mask),
                               bnn.exact_log_evidence(model, x[:6], y[:6]), rtol=1e-12)
    a, b = bnn.exact_posterior(model, xp, yp, mask), bnn.exact_posterior(model, x[:6], y[:6])
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10)
    np.testing.assert_allclose(a.prec_tril, b.prec_tril, rtol=1e-10)


def test_forward_flat_matches_forward(x64):
    model = bnn.fixed_prior_model([2, 6, 1], "tanh", 0.1)
    ws = [bnn.prior_sample(k, model) for k in jax.random.split(jax.random.PRNGKey(5), 3)]
    x = jnp.linspace(-1, 1, 8).reshape(4, 2)
    f = bnn.forward_flat(model, jnp.stack([bnn.flatten(w) for w in ws]), x)
    for s, w in enumerate(ws):
        np.testing.assert_allclose(f[s], bnn.forward(w, x, "tanh"), rtol=1e-12)


def test_prior_sample_moments(x64):
    model = bnn.fixed_prior_model([3, 2], "relu", 0.1)
    w = bnn.prior_sample(jax.random.PRNGKey(6), model, (20000,))[0]  # [S, 4, 2]
    np.testing.assert_allclose(jnp.var(w, 0), 0.25 * jnp.ones((4, 2)), rtol=0.05)  # 1 / (D_in + 1)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="widths"):
        bnn.fixed_prior_model([3], "relu", 0.1)
    with pytest.raises(ValueError, match="activation"):
        bnn.fixed_prior_model([1, 2], "swishy", 0.1)
    model = bnn.fixed_prior_model([1, 4, 1], "relu", 0.1)
    with pytest.raises(ValueError, match="flat weights"):
        bnn.unflatten(model, jnp.zeros(3))
    with pytest.raises(ValueError, match="no hidden layer"):
        bnn.exact_log_evidence(model, jnp.zeros((2, 1)), jnp.zeros((2, 1)))
    with pytest.raises(ValueError, match="prior_means"):
        bnn.make_model([1, 4, 1], "relu", 0.1, model.prior_means[:1], model.prior_scale_trils[:1])


def test_from_bnnp_uses_learned_prior_and_sigma(x64):
    from bnnp_jax.bnnp import model as bnnp
    from bnnp_jax.priors import weight_prior as priors

    cfg = bnnp.BNNPConfig(x_dim=1, y_dim=1, hidden=(3,), prior_kind="shared", dtype="float64")
    params = bnnp.init(jax.random.PRNGKey(7), cfg)
    model = bnn.from_bnnp(params)
    assert model.widths == (1, 3, 1)
    np.testing.assert_allclose(model.sigma_y, bnnp.sigma_y(params))
    shared = priors.scale_tril(params.prior[1], "shared")[0]
    for d in range(model.widths[2]):
        np.testing.assert_array_equal(model.prior_scale_trils[1][d], shared)

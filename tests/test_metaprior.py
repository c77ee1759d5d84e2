"""MetaPrior core: code KL, pair-factorised hypernetwork, local reparameterisation, surgery, EM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.metaprior import codes as mc
from bnnp_jax.metaprior import model as mp
from bnnp_jax.core.gaussian import Gaussian, kl_divergence
from bnnp_jax.metaprior.fit import FitConfig, code_mask, fit, illate
from bnnp_jax.metaprior.hypernet import HyperNet, concatenated_reference


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _random_codes(key, widths, k, g, dtype):
    keys = jax.random.split(key, 2 * len(widths) + 2)
    units = tuple(mc.CodeQ(jax.random.normal(keys[2 * i], (w, k), dtype),
                           0.5 * jax.random.normal(keys[2 * i + 1], (w, k), dtype)) for i, w in enumerate(widths))
    glob = mc.CodeQ(jax.random.normal(keys[-2], (g,), dtype), 0.3 * jax.random.normal(keys[-1], (g,), dtype))
    return mc.Codes(units, glob)


@jax.jit
def _dense_code_kl(codes):
    """Reference: each unit's code as a dense K-dim Gaussian (precision factor diag(1/sigma))."""
    total = 0.0
    for q in list(codes.units) + [codes.glob]:
        mean, log_std = jnp.atleast_2d(q.mean), jnp.atleast_2d(q.log_std)
        qg = Gaussian(mean, jax.vmap(jnp.diag)(jnp.exp(-log_std)))
        pg = Gaussian(jnp.zeros_like(mean), jnp.broadcast_to(jnp.eye(mean.shape[-1]), qg.prec_tril.shape))
        total = total + jnp.sum(kl_divergence(qg, pg))
    return total


def test_code_kl_matches_dense_gaussian_kl(x64):
    codes = _random_codes(jax.random.PRNGKey(0), (3, 5, 2), 4, 2, jnp.float64)
    kl = jax.jit(mc.code_kl)(codes)
    assert kl.dtype == jnp.float64
    np.testing.assert_allclose(kl, _dense_code_kl(codes), rtol=1e-12)
    assert float(mc.code_kl(codes)) == pytest.approx(float(kl), rel=1e-14)  # eager


def test_code_kl_zero_at_prior_and_monte_carlo(x64):
    k = 3
    prior = mc.Codes((mc.CodeQ(jnp.zeros((4, k)), jnp.zeros((4, k))),), mc.CodeQ(jnp.zeros(0), jnp.zeros(0)))
    assert float(mc.code_kl(prior)) == 0.0
    codes = _random_codes(jax.random.PRNGKey(1), (4,), k, 0, jnp.float64)
    z = mc.sample_codes(jax.random.PRNGKey(2), codes, (200_000,)).units[0]
    q = codes.units[0]
    log_q = -0.5 * ((z - q.mean) / jnp.exp(q.log_std)) ** 2 - q.log_std
    log_p = -0.5 * z**2
    estimate = jnp.mean(jnp.sum(log_q - log_p, axis=(-1, -2)))
    se = jnp.std(jnp.sum(log_q - log_p, axis=(-1, -2))) / np.sqrt(200_000)
    assert abs(float(estimate - mc.code_kl(codes))) < 4 * float(se)


@pytest.mark.parametrize("use_global,noise_dim,hidden", [(False, 0, (8,)), (True, 0, (8, 6)), (True, 3, (5,))])
def test_pair_factorised_equals_concatenated(x64, use_global, noise_dim, hidden):
    net = HyperNet(hidden=hidden, out_features=2, use_global=use_global, noise_dim=noise_dim)
    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    z_out = jax.random.normal(keys[0], (7, 3), jnp.float64)
    z_in = jax.random.normal(keys[1], (4, 3), jnp.float64)
    z_glob = jax.random.normal(keys[2], (2,), jnp.float64) if use_global else None
    noise = jax.random.normal(keys[3], (7, 5, noise_dim), jnp.float64) if noise_dim else None
    params = net.init(keys[4], z_out, z_in, z_glob, noise)
    fast = net.apply(params, z_out, z_in, z_glob, noise)
    slow = concatenated_reference(net, params, z_out, z_in, z_glob, noise)
    assert fast.shape == (7, 5, 2)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


def test_bias_column_uses_zero_sender_code(x64):
    net = HyperNet(hidden=(6,), out_features=1)
    z_out = jax.random.normal(jax.random.PRNGKey(0), (3, 2), jnp.float64)
    z_in = jax.random.normal(jax.random.PRNGKey(1), (4, 2), jnp.float64)
    params = net.init(jax.random.PRNGKey(2), z_out, z_in)
    bias = net.apply(params, z_out, z_in)[:, -1]
    zero_sender = net.apply(params, z_out, jnp.zeros((1, 2)))[:, 0]
    np.testing.assert_allclose(bias, zero_sender, rtol=1e-12)


def test_local_reparameterisation_matches_weight_sampling():
    """Gaussian head, linear network: pre-activations ~ N(Phi mu, Phi^2 s^2) exactly."""
    cfg = mp.MetaPriorConfig(widths=(3, 2), likelihood="gaussian", init_weight_log_std=-0.5)
    params = mp.init(jax.random.PRNGKey(0), cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    z = mc.mean_codes(params.codes)
    m, s = mp.weight_moments(params.hyper, cfg, z)[0]
    mean = x @ m[:-1] + m[-1]
    sd = jnp.sqrt((x**2) @ (s[:-1] ** 2) + s[-1] ** 2)
    n = 20_000
    lrt = jax.jit(jax.vmap(lambda k: mp.lrt_forward(k, params.hyper, cfg, z, x)))(jax.random.split(jax.random.PRNGKey(2), n))
    direct = mp.predict(jax.random.PRNGKey(3), params, cfg, x, n, z=z)
    for draws in (lrt, direct):
        np.testing.assert_allclose(draws.mean(0), mean, atol=5 * float(sd.max()) / np.sqrt(n))
        np.testing.assert_allclose(draws.std(0), sd, rtol=0.05)


def test_elbo_float64_weights_and_scale(x64):
    cfg = mp.MetaPriorConfig(widths=(2, 4, 3), global_dim=2, likelihood="categorical")
    params = mp.init(jax.random.PRNGKey(0), cfg, jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 2), jnp.float64)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    elbo = jax.jit(mp.elbo, static_argnames=("config", "num_samples"))
    full = elbo(jax.random.PRNGKey(2), params, cfg, x, y, jnp.ones(6), 1.0, num_samples=3)
    assert full[0].dtype == jnp.float64
    np.testing.assert_allclose(full[0] - full[1], -mc.code_kl(params.codes), rtol=1e-10)
    # zero weights drop points; with the same noise, two copies at scale 0.5 equal one copy
    w = jnp.array([1.0, 1, 1, 0, 0, 0])
    half = elbo(jax.random.PRNGKey(2), params, cfg, x, y, w, 1.0, num_samples=3)
    other = elbo(jax.random.PRNGKey(2), params, cfg, x, y, 1.0 - w, 1.0, num_samples=3)
    np.testing.assert_allclose(half[1] + other[1], full[1], rtol=1e-10)
    doubled = elbo(jax.random.PRNGKey(2), params, cfg, x, y, 2.0 * w, 0.5, num_samples=3)
    np.testing.assert_allclose(doubled[1], half[1], rtol=1e-10)


def test_implicit_head_samples_vary_with_noise():
    cfg = mp.MetaPriorConfig(widths=(2, 5, 2), head="implicit", noise_dim=3)
    params = mp.init(jax.random.PRNGKey(0), cfg)
    w = mp.predict(jax.random.PRNGKey(1), params, cfg, jnp.eye(2), 2, z=mc.mean_codes(params.codes))
    assert w.shape == (2, 2, 2)
    assert not np.allclose(w[0], w[1])  # same codes, different weight noise
    elbo = jax.jit(mp.elbo, static_argnames=("config", "num_samples"))
    value, ell = elbo(jax.random.PRNGKey(3), params, cfg, jnp.ones((4, 2)), jnp.array([0, 1, 0, 1]), num_samples=2)
    assert np.isfinite(float(value)) and float(value) < float(ell)


def _small_problem():
    cfg = mp.MetaPriorConfig(widths=(3, 6, 2), global_dim=2, likelihood="categorical")
    params = mp.init(jax.random.PRNGKey(0), cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (20, 3))
    y = (x[:, 0] > 0).astype(jnp.int32)
    return cfg, params, x, y


@pytest.mark.parametrize("which,changed", [("input", {0}), ("output", {2}), ("hidden", {1}), ("all", {0, 1, 2})])
def test_surgery_leaves_other_codes_bit_identical(which, changed):
    cfg, params, x, y = _small_problem()
    new, trace = illate(jax.random.PRNGKey(2), params, cfg, FitConfig(steps=20, lr=0.05, chunk=10), x, y, which=which)
    assert trace.shape == (20,)
    for l, (a, b) in enumerate(zip(params.codes.units, new.codes.units)):
        same = np.array_equal(a.mean, b.mean) and np.array_equal(a.log_std, b.log_std)
        assert same == (l not in changed), (which, l)
    assert np.array_equal(params.codes.glob.mean, new.codes.glob.mean) == (which != "all")
    for a, b in zip(jax.tree.leaves(params.hyper), jax.tree.leaves(new.hyper)):
        assert np.array_equal(a, b)


def test_code_mask_rejects_unknown_subset():
    cfg, params, _, _ = _small_problem()
    with pytest.raises(ValueError, match="which"):
        code_mask(params.codes, "inputs")


def test_em_alternation_updates_one_group_at_a_time():
    cfg, params, x, y = _small_problem()
    fc = FitConfig(steps=4, lr=0.05, em_period=4, chunk=4)
    e_only, _ = fit(jax.random.PRNGKey(0), params, cfg, fc, x, y, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params.hyper), jax.tree.leaves(e_only.hyper)))
    assert not np.array_equal(params.codes.units[1].mean, e_only.codes.units[1].mean)
    both, _ = fit(jax.random.PRNGKey(0), params, cfg, FitConfig(steps=8, lr=0.05, em_period=4, chunk=4), x, y,
                  progress=False)
    # the M-phase (steps 4..7) moves g and leaves the codes where the E-phase put them
    np.testing.assert_array_equal(both.codes.units[1].mean, e_only.codes.units[1].mean)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params.hyper), jax.tree.leaves(both.hyper)))
    # same compiled step (steps/chunk are not static): a longer EM run raises the ELBO
    _, trace = fit(jax.random.PRNGKey(0), params, cfg, FitConfig(steps=240, lr=0.05, em_period=4, chunk=80), x, y,
                   progress=False)
    assert float(trace[-20:].mean()) > float(trace[:20].mean()) + 0.1
    with pytest.raises(ValueError, match="x must be"):
        fit(jax.random.PRNGKey(0), params, cfg, fc, x[:, :2], y, progress=False)


@pytest.mark.parametrize("kwargs,match", [({"head": "flow"}, "head"), ({"likelihood": "poisson"}, "likelihood"),
                                          ({"widths": (3,)}, "widths"), ({"activation": "swish"}, "activation"),
                                          ({"sigma_y": -1.0}, "sigma_y")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mp.MetaPriorConfig(**{"widths": (2, 3, 1), **kwargs})
    with pytest.raises(ValueError, match="steps"):
        FitConfig(steps=0)

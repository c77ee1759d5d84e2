"""Rung 1: Gaussian closed forms in float64 against dense NumPy/SciPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from bnnp_jax import Gaussian, kl_divergence


def _random_spd(rng, batch, d):
    a = rng.normal(size=batch + (d, d))
    return a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(d)


def _dense_kl(mq, sq, mp, sp):
    d = mq.shape[-1]
    sp_inv = np.linalg.inv(sp)
    diff = mp - mq
    return 0.5 * (np.trace(sp_inv @ sq) + diff @ sp_inv @ diff - d + np.linalg.slogdet(sp)[1] - np.linalg.slogdet(sq)[1])


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (4, 5)])
def test_constructors_round_trip(x64, shape):
    rng = np.random.default_rng(0)
    o, d = shape
    cov = _random_spd(rng, (o,), d)
    mean = rng.normal(size=(o, d))
    g1 = Gaussian.from_covariance(jnp.array(mean), jnp.array(cov))
    g2 = Gaussian.from_precision(jnp.array(mean), jnp.array(np.linalg.inv(cov)))
    np.testing.assert_allclose(g1.covariance(), cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g2.covariance(), cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g1.precision(), np.linalg.inv(cov), rtol=1e-9, atol=1e-10)


def test_log_prob_and_entropy_match_scipy(x64):
    rng = np.random.default_rng(1)
    cov = _random_spd(rng, (3,), 4)
    mean = rng.normal(size=(3, 4))
    w = rng.normal(size=(3, 4))
    g = Gaussian.from_covariance(jnp.array(mean), jnp.array(cov))
    ref = [multivariate_normal(mean[i], cov[i]).logpdf(w[i]) for i in range(3)]
    ent = [multivariate_normal(mean[i], cov[i]).entropy() for i in range(3)]
    np.testing.assert_allclose(g.log_prob(jnp.array(w)), ref, rtol=1e-12)
    np.testing.assert_allclose(g.entropy(), ent, rtol=1e-12)


def test_kl_matches_dense_formula(x64):
    rng = np.random.default_rng(2)
    o, d = 4, 5
    cq, cp = _random_spd(rng, (o,), d), _random_spd(rng, (o,), d)
    mq, mp = rng.normal(size=(o, d)), rng.normal(size=(o, d))
    kl = kl_divergence(Gaussian.from_covariance(jnp.array(mq), jnp.array(cq)), Gaussian.from_covariance(jnp.array(mp), jnp.array(cp)))
    ref = [_dense_kl(mq[i], cq[i], mp[i], cp[i]) for i in range(o)]
    np.testing.assert_allclose(kl, ref, rtol=1e-10)
    assert np.all(np.asarray(kl_divergence(Gaussian.from_covariance(jnp.array(mq), jnp.array(cq)), Gaussian.from_covariance(jnp.array(mq), jnp.array(cq)))) < 1e-10)


def test_kl_against_monte_carlo(x64):
    """KL(q||p) = E_q[log q - log p]; 200k samples give a standard error well under the tolerance."""
    rng = np.random.default_rng(3)
    d = 3
    q = Gaussian.from_covariance(jnp.array(rng.normal(size=(1, d))), jnp.array(_random_spd(rng, (1,), d)))
    p = Gaussian.from_covariance(jnp.array(rng.normal(size=(1, d))), jnp.array(_random_spd(rng, (1,), d)))
    w = q.sample(jax.random.PRNGKey(0), (200_000,))
    diff = q.log_prob(w) - p.log_prob(w)
    mc, se = float(jnp.mean(diff)), float(jnp.std(diff) / np.sqrt(diff.shape[0]))
    assert abs(mc - float(kl_divergence(q, p)[0])) < 5 * se


def test_sample_moments(x64):
    rng = np.random.default_rng(4)
    cov = _random_spd(rng, (2,), 3)
    mean = rng.normal(size=(2, 3))
    g = Gaussian.from_covariance(jnp.array(mean), jnp.array(cov))
    w = np.asarray(g.sample(jax.random.PRNGKey(1), (100_000,)))
    np.testing.assert_allclose(w.mean(0), mean, atol=0.05)
    emp = np.einsum("soi,soj->oij", w - mean, w - mean) / w.shape[0]
    np.testing.assert_allclose(emp, cov, atol=0.08 * np.abs(cov).max())


def test_float32_preserved_and_broadcast_prec():
    mean = jnp.zeros((5, 3), jnp.float32)
    g = Gaussian(mean, jnp.eye(3, dtype=jnp.float32)[None] * 2.0)  # shared factor broadcasts over units
    s = g.sample(jax.random.PRNGKey(0), (7,))
    assert s.shape == (7, 5, 3) and s.dtype == jnp.float32
    assert g.log_prob(s).shape == (7, 5)
    assert kl_divergence(g, Gaussian(mean, jnp.broadcast_to(jnp.eye(3), (5, 3, 3)))).dtype == jnp.float32

"""Rungs 1-2 and 4 for Bayesian linear regression: dense float64 references,
minibatched vs full batch, padded vs unpadded, jit vs eager."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from bnnp_jax.core import blr
from bnnp_jax.core.gaussian import Gaussian


def _problem(rng, n, d, o):
    phi = rng.normal(size=(n, d))
    y = rng.normal(size=(n, o))
    lam = rng.uniform(0.2, 5.0, size=(n, o))
    a = rng.normal(size=(o, d, d))
    cov = a @ np.swapaxes(a, -1, -2) / d + 0.3 * np.eye(d)
    mu = rng.normal(size=(o, d))
    return phi, y, lam, mu, cov


def _dense_posterior(phi, y, lam, mu, cov):
    """The textbook formula with explicit inverses: the slow reference."""
    means, covs = [], []
    for d in range(y.shape[1]):
        p0 = np.linalg.inv(cov[d])
        prec = p0 + phi.T @ np.diag(lam[:, d]) @ phi
        s = np.linalg.inv(prec)
        means.append(s @ (p0 @ mu[d] + phi.T @ (lam[:, d] * y[:, d])))
        covs.append(s)
    return np.stack(means), np.stack(covs)


@pytest.mark.parametrize("n,d,o", [(1, 1, 1), (5, 3, 2), (40, 6, 4), (3, 8, 3)])
def test_posterior_matches_dense(x64, n, d, o):
    phi, y, lam, mu, cov = _problem(np.random.default_rng(n * 100 + d), n, d, o)
    q = blr.posterior(jnp.array(phi), jnp.array(y), jnp.array(lam), Gaussian.from_covariance(jnp.array(mu), jnp.array(cov)))
    m_ref, s_ref = _dense_posterior(phi, y, lam, mu, cov)
    np.testing.assert_allclose(q.mean, m_ref, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(q.covariance(), s_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("batch_size", [1, 4, 7, 39])
def test_minibatched_equals_full(x64, batch_size):
    phi, y, lam, mu, cov = _problem(np.random.default_rng(7), 40, 5, 3)
    prior = Gaussian.from_covariance(jnp.array(mu), jnp.array(cov))
    full = blr.posterior(phi, y, lam, prior)
    mb = blr.posterior(phi, y, lam, prior, batch_size=batch_size)
    np.testing.assert_allclose(mb.mean, full.mean, rtol=1e-8)
    np.testing.assert_allclose(mb.prec_tril, full.prec_tril, rtol=1e-8)


def test_zero_precision_removes_points_exactly(x64):
    phi, y, lam, mu, cov = _problem(np.random.default_rng(8), 12, 4, 2)
    prior = Gaussian.from_covariance(jnp.array(mu), jnp.array(cov))
    pad = lambda a, v: np.concatenate([a, np.full((5,) + a.shape[1:], v)])
    unpadded = blr.posterior(phi, y, lam, prior)
    padded = blr.posterior(pad(phi, 3.7), pad(y, -9.0), pad(lam, 0.0), prior)
    np.testing.assert_allclose(padded.mean, unpadded.mean, rtol=1e-12)
    np.testing.assert_allclose(padded.prec_tril, unpadded.prec_tril, rtol=1e-12)
    lml_u = blr.log_marginal_likelihood(phi, y, lam, prior)
    lml_p = blr.log_marginal_likelihood(pad(phi, 3.7), pad(y, -9.0), pad(lam, 0.0), prior)
    np.testing.assert_allclose(lml_p, lml_u, rtol=1e-12)


def test_no_data_gives_prior(x64):
    _, _, _, mu, cov = _problem(np.random.default_rng(9), 1, 3, 2)
    prior = Gaussian.from_covariance(jnp.array(mu), jnp.array(cov))
    q = blr.posterior(jnp.zeros((0, 3)), jnp.zeros((0, 2)), jnp.zeros((0, 2)), prior)
    np.testing.assert_allclose(q.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(q.covariance(), cov, rtol=1e-10)


@pytest.mark.parametrize("n,d,o", [(1, 2, 1), (9, 3, 2), (30, 4, 3)])
def test_log_marginal_likelihood_matches_dense_gaussian(x64, n, d, o):
    phi, y, lam, mu, cov = _problem(np.random.default_rng(n + d), n, d, o)
    got = blr.log_marginal_likelihood(phi, y, lam, Gaussian.from_covariance(jnp.array(mu), jnp.array(cov)))
    ref = sum(
        multivariate_normal(phi @ mu[k], phi @ cov[k] @ phi.T + np.diag(1 / lam[:, k])).logpdf(y[:, k]) for k in range(o)
    )
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_shared_prior_factor_broadcasts(x64):
    phi, y, lam, mu, cov = _problem(np.random.default_rng(10), 10, 3, 4)
    shared = Gaussian.from_covariance(jnp.array(mu), jnp.array(cov[:1]))  # prec_tril [1, D, D]
    full = Gaussian.from_covariance(jnp.array(mu), jnp.array(np.broadcast_to(cov[:1], cov.shape)))
    np.testing.assert_allclose(blr.posterior(phi, y, lam, shared).mean, blr.posterior(phi, y, lam, full).mean, rtol=1e-12)


def test_jit_matches_eager_and_float32_preserved():
    phi, y, lam, mu, cov = (np.asarray(a, np.float32) for a in _problem(np.random.default_rng(11), 20, 4, 3))
    prior = Gaussian.from_covariance(jnp.array(mu), jnp.array(cov))
    eager = blr.posterior(phi, y, lam, prior, batch_size=6)
    jitted = jax.jit(blr.posterior, static_argnames="batch_size")(phi, y, lam, prior, batch_size=6)
    assert jitted.mean.dtype == jnp.float32 and jitted.prec_tril.dtype == jnp.float32
    np.testing.assert_allclose(jitted.mean, eager.mean, rtol=1e-5, atol=1e-6)
    m_ref, _ = _dense_posterior(*(a.astype(np.float64) for a in (phi, y, lam, mu, cov)))
    np.testing.assert_allclose(eager.mean, m_ref, rtol=1e-3, atol=1e-4)

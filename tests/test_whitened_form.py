"""The whitened primal form of the layer sampler (blr.sample_posterior with
ScaleFactors) against a dense float64 reference, the information form and the dual
form, and on covariance factors too ill-conditioned for the information form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from bnnp_jax.core import blr, blr_dual

import dense_reference


def _layer(rng, n, d, o, shared_prec, shared_prior):
    """:func:`dense_reference.layer` with the prior covariance as its Cholesky factor."""
    phi, yhat, lam, mu, cov = dense_reference.layer(rng, n, d, o, shared_prec, shared_prior)
    return phi, yhat, lam, mu, np.linalg.cholesky(cov)


def _dense(phi, yhat, lam, mu, tril, eps):
    return dense_reference.posterior(phi, yhat, lam, mu, tril @ np.swapaxes(tril, -1, -2), eps, root="whitened")


@pytest.mark.parametrize("shared_prec,shared_prior", [(False, False), (True, False), (False, True), (True, True)])
def test_whitened_matches_dense(x64, shared_prec, shared_prior):
    phi, yhat, lam, mu, tril = _layer(np.random.default_rng(3), 12, 5, 4, shared_prec, shared_prior)
    key = jax.random.PRNGKey(0)
    stats = blr.natural_stats(jnp.array(phi), jnp.array(yhat), jnp.array(lam))
    w, kl = blr.sample_posterior(key, blr.ScaleFactors(jnp.array(mu), jnp.array(tril)), stats)
    eps = np.asarray(jax.random.normal(key, mu.shape, jnp.float64))
    w_ref, kl_ref = _dense(phi, yhat, lam, mu, tril, eps)
    np.testing.assert_allclose(w, w_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-9, atol=1e-10)
    w_only, none = blr.sample_posterior(key, blr.ScaleFactors(jnp.array(mu), jnp.array(tril)), stats, with_kl=False)
    assert none is None
    np.testing.assert_allclose(w_only, w, rtol=1e-12, atol=1e-12)


def test_whitened_kl_and_its_gradients_equal_the_information_form(x64):
    """Same KL, and the same gradient of the KL with respect to the prior's mean and factor
    and the pseudo-observations, as the information form (the draws differ: another root)."""
    phi, yhat, lam, mu, tril = _layer(np.random.default_rng(4), 9, 4, 3, False, False)
    key = jax.random.PRNGKey(1)

    def kl(mu, tril, yhat, lam, whiten):
        stats = blr.natural_stats(jnp.array(phi), yhat, lam)
        prior = (blr.ScaleFactors(mu, tril) if whiten else
                 blr.PriorFactors(mu, blr.inverse_trils([tril])[0]))
        return jnp.sum(blr.sample_posterior(key, prior, stats)[1])

    args = tuple(jnp.array(a) for a in (mu, tril, yhat, lam))
    kl_jit = jax.jit(kl, static_argnums=4)  # eager dispatch of every op would be most of the test
    np.testing.assert_allclose(kl_jit(*args, True), kl_jit(*args, False), rtol=1e-10)
    grad = jax.jit(jax.grad(kl, argnums=(0, 1, 2, 3)), static_argnums=4)
    g_w, g_i = grad(*args, True), grad(*args, False)
    for a, b in zip(g_w, g_i):
        np.testing.assert_allclose(jnp.tril(a) if a.ndim == 3 else a, jnp.tril(b) if b.ndim == 3 else b,
                                   rtol=1e-8, atol=1e-10)
    check_grads(jax.jit(lambda *a: kl(*a, True)), args, order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def _ill_conditioned(d, o, condition):
    """A covariance factor with ones below the diagonal and a diagonal of 1/condition:
    ``cond(L)`` far beyond ``condition`` (the shape meta-training left in the sawtooth run)."""
    tril = np.tril(np.ones((d, d)), -1) + np.diag(np.full(d, 1.0 / condition))
    return np.broadcast_to(tril, (o, d, d)).copy()


def test_whitened_form_survives_an_ill_conditioned_prior(x64):
    """``cond(L) > 1e10``: the information form's ``L^{-1}`` loses the posterior; the
    whitened form agrees with the dual form, which also never inverts ``L``."""
    rng = np.random.default_rng(5)
    d, o, n = 6, 3, 4
    tril = _ill_conditioned(d, o, 1e4)
    assert np.linalg.cond(tril[0]) > 1e10
    phi, yhat, lam = rng.normal(size=(n, d)), rng.normal(size=(n, o)), rng.uniform(0.5, 2.0, size=(n, o))
    mu = rng.normal(size=(o, d))
    key = jax.random.PRNGKey(2)
    stats = blr.natural_stats(jnp.array(phi), jnp.array(yhat), jnp.array(lam))
    w, kl = blr.sample_posterior(key, blr.ScaleFactors(jnp.array(mu), jnp.array(tril)), stats)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(kl))
    _, kl_dual = blr_dual.sample_posterior_dual(key, blr_dual.DualPrior(jnp.array(mu), jnp.array(tril)),
                                                jnp.array(phi), jnp.array(yhat), jnp.array(lam))
    np.testing.assert_allclose(kl, kl_dual, rtol=1e-6)
    # The information form on the same prior: NaN or far from the dual form's KL.
    _, kl_info = blr.sample_posterior(key, blr.PriorFactors(jnp.array(mu), blr.inverse_trils([jnp.array(tril)])[0]),
                                      stats)
    assert not np.allclose(kl_info, kl_dual, rtol=1e-6)


def test_whitened_draws_have_the_posterior_moments_under_an_ill_conditioned_prior(x64):
    """Many draws' mean and covariance against the dual form's closed form for one unit."""
    rng = np.random.default_rng(6)
    d, n = 4, 3
    tril = _ill_conditioned(d, 1, 1e3)
    phi, yhat, lam = rng.normal(size=(n, d)), rng.normal(size=(n, 1)), np.full((n, 1), 4.0)
    mu = rng.normal(size=(1, d))
    stats = blr.natural_stats(jnp.array(phi), jnp.array(yhat), jnp.array(lam))
    prior = blr.ScaleFactors(jnp.array(mu), jnp.array(tril))
    w = jax.vmap(lambda k: blr.sample_posterior(k, prior, stats, with_kl=False)[0][0])(
        jax.random.split(jax.random.PRNGKey(3), 200_000))
    # Dual-form moments: m = mu + Sigma0 Phi^T (Phi Sigma0 Phi^T + Lambda^-1)^-1 (y - Phi mu)
    s0 = tril[0] @ tril[0].T
    k = phi @ s0 @ phi.T + np.diag(1.0 / lam[:, 0])
    gain = s0 @ phi.T @ np.linalg.inv(k)
    mean, cov = mu[0] + gain @ (yhat[:, 0] - phi @ mu[0]), s0 - gain @ phi @ s0
    scale = math.sqrt(np.max(np.diag(cov)))
    np.testing.assert_allclose(np.mean(w, 0), mean, atol=5 * scale / math.sqrt(200_000) + 1e-9)
    np.testing.assert_allclose(np.cov(np.asarray(w).T), cov, atol=0.02 * np.max(np.abs(cov)))


def test_whitened_jit_matches_eager_and_float32_preserved():
    phi, yhat, lam, mu, tril = _layer(np.random.default_rng(7), 10, 5, 4, False, True)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    stats = blr.natural_stats(f32(phi), f32(yhat), f32(lam))
    prior = blr.ScaleFactors(f32(mu), f32(tril))
    key = jax.random.PRNGKey(4)
    eager = blr.sample_posterior(key, prior, stats)
    jitted = jax.jit(blr.sample_posterior)(key, prior, stats)
    for a, b in zip(jitted, eager):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bnnp_primal_form_under_an_ill_conditioned_learned_prior_equals_the_dual_form(x64):
    """A BNNP with no hidden layer (the KL does not depend on the draw) and a learned
    covariance factor with cond(L) > 1e10: the primal form, which a context larger than
    the layer input takes, gives the dual form's KL and finite predictions."""
    from bnnp_jax.bnnp import model as bnnp
    from bnnp_jax.priors import weight_prior as priors

    def params(form):
        p = bnnp.init(jax.random.PRNGKey(0), bnnp.BNNPConfig(x_dim=3, hidden=(), inference_hidden=(8,),
                                                            dtype="float64", layer_form=form))
        raw = p.prior[0].scale  # [1, 4, 4]: log diagonal, strictly lower entries
        d = raw.shape[-1]
        ill = jnp.tril(jnp.ones((d, d)), -1) + jnp.diag(jnp.full(d, math.log(1e-4)))
        return p.replace(prior=[p.prior[0]._replace(scale=jnp.broadcast_to(ill, raw.shape))])

    primal, dual = params("primal"), params("dual")
    assert np.linalg.cond(np.asarray(priors.scale_tril(primal.prior[0], primal.config.prior_kind))[0]) > 1e10
    x = jax.random.uniform(jax.random.PRNGKey(1), (20, 3), jnp.float64, -2, 2)
    y = jnp.sin(x[:, :1]) + x[:, 1:2]
    ones = jnp.ones(20)
    posterior = jax.jit(bnnp.masked_posterior, static_argnums=5)  # eager dispatch would be most of the test
    kl_primal = posterior(jax.random.PRNGKey(2), primal, x, y, ones, 4).kl
    kl_dual = posterior(jax.random.PRNGKey(2), dual, x, y, ones, 4).kl
    np.testing.assert_allclose(kl_primal, kl_dual, rtol=1e-6)
    f = jax.jit(bnnp.masked_functions, static_argnums=6)(jax.random.PRNGKey(3), primal, x, y, ones, x, 8)
    assert np.all(np.isfinite(f))

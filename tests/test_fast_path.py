"""The path sampler (blr.sample_posterior) and the width-scalable fast path of
SPEC section 9 against dense float64 references; custom VJPs against JAX's
own rules; the per-point BNNP option end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import solve_triangular

from bnnp_jax.core import blr
from bnnp_jax.core import linalg, networks
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.core.gaussian import Gaussian, kl_divergence

import dense_reference


_layer = dense_reference.layer


def _factors(mu, cov):
    return blr.PriorFactors(jnp.array(mu), jnp.linalg.inv(jnp.linalg.cholesky(jnp.array(cov))))


_dense = dense_reference.posterior  # the information-form root chol(P)^{-T}


@pytest.mark.parametrize("shared_prec,shared_prior", [(False, False), (True, False), (False, True), (True, True)])
def test_sample_posterior_matches_dense(x64, shared_prec, shared_prior):
    phi, yhat, lam, mu, cov = _layer(np.random.default_rng(3), 12, 5, 4, shared_prec, shared_prior)
    key = jax.random.PRNGKey(0)
    stats = blr.natural_stats(jnp.array(phi), jnp.array(yhat), jnp.array(lam))
    assert stats.precision.shape[0] == (1 if shared_prec else 4)
    w, kl = blr.sample_posterior(key, _factors(mu, cov), stats)
    eps = np.asarray(jax.random.normal(key, mu.shape, jnp.float64))
    w_ref, kl_ref = _dense(phi, yhat, lam, mu, cov, eps)
    np.testing.assert_allclose(w, w_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("shared", [False, True])
def test_draw_without_kl_is_the_same_draw(x64, shared):
    """``with_kl=False`` (prediction) skips the mean, trace and KL but draws the same ``w``."""
    phi, yhat, lam, mu, cov = _layer(np.random.default_rng(6), 12, 5, 4, shared, shared)
    key = jax.random.PRNGKey(2)
    stats = blr.natural_stats(jnp.array(phi), jnp.array(yhat), jnp.array(lam))
    w_kl, kl = blr.sample_posterior(key, _factors(mu, cov), stats)
    w, none = blr.sample_posterior(key, _factors(mu, cov), stats, with_kl=False)
    assert none is None and kl.shape == (4,)
    eps = np.asarray(jax.random.normal(key, mu.shape, jnp.float64))
    np.testing.assert_allclose(w, _dense(phi, yhat, lam, mu, cov, eps)[0], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(w, w_kl, rtol=1e-12, atol=1e-12)


def test_fast_path_equals_unitwise_computation_with_equal_precisions(x64):
    """Shared [1, D, D] factors give the same draw and KL as the per-unit path fed copies."""
    phi, yhat, lam, mu, cov = _layer(np.random.default_rng(4), 30, 7, 6, True, True)
    key = jax.random.PRNGKey(1)
    fast = blr.sample_posterior(key, _factors(mu, cov), blr.natural_stats(phi, yhat, lam))
    per_unit = blr.sample_posterior(
        key, _factors(mu, np.broadcast_to(cov, (6, 7, 7))), blr.natural_stats(phi, yhat, np.broadcast_to(lam, yhat.shape))
    )
    for a, b in zip(fast, per_unit):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_kl_matches_gaussian_kl(x64):
    phi, yhat, lam, mu, cov = _layer(np.random.default_rng(5), 9, 4, 3, False, False)
    prior = Gaussian.from_covariance(jnp.array(mu), jnp.array(cov))
    q = blr.posterior(phi, yhat, lam, prior)
    _, kl = blr.sample_posterior(jax.random.PRNGKey(0), blr.PriorFactors.from_gaussian(prior),
                                 blr.natural_stats(phi, yhat, lam))
    np.testing.assert_allclose(kl, kl_divergence(q, prior), rtol=1e-10)


def _reference_sample(key, prior, stats):
    """The same sampler written with JAX's own linear-algebra rules (no custom VJPs)."""
    root = prior.root
    p0 = jnp.swapaxes(root, -1, -2) @ root
    h = jnp.einsum("...ij,...j->...i", p0, prior.mean) + stats.shift
    chol = jnp.broadcast_to(jnp.linalg.cholesky(p0 + stats.precision), p0.shape[:0] + (h.shape[0],) + p0.shape[-2:])
    eps = jax.random.normal(key, h.shape, h.dtype)
    m = jax.scipy.linalg.cho_solve((chol, True), h[..., None])[..., 0]
    w = m + solve_triangular(chol, eps[..., None], lower=True, trans=1)[..., 0]
    q = Gaussian(m, chol)
    return w, kl_divergence(q, Gaussian(prior.mean, jnp.swapaxes(jnp.broadcast_to(root, chol.shape), -1, -2)))


@pytest.mark.parametrize("shared", [False, True])
def test_custom_vjps_match_jax_rules(x64, shared):
    phi, yhat, lam, mu, cov = _layer(np.random.default_rng(6), 10, 4, 3, shared, shared)
    key = jax.random.PRNGKey(2)
    # A precision factor from a Gaussian is lower-triangular, so the reference's KL applies.
    prior_g = Gaussian.from_covariance(jnp.array(mu), jnp.array(cov))

    def loss(fn, phi, lam, mean, prec_tril):
        w, kl = fn(key, blr.PriorFactors(mean, jnp.swapaxes(prec_tril, -1, -2)), blr.natural_stats(phi, yhat, lam))
        return jnp.sum(jnp.sin(w)) + jnp.sum(kl)

    args = (jnp.array(phi), jnp.array(lam), prior_g.mean, prior_g.prec_tril)
    got = jax.grad(lambda *a: loss(blr.sample_posterior, *a), argnums=(0, 1, 2, 3))(*args)
    ref = jax.grad(lambda *a: loss(_reference_sample, *a), argnums=(0, 1, 2, 3))(*args)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("trans", [0, 1])
def test_tri_solve_and_cholesky_vjps(x64, trans):
    rng = np.random.default_rng(7)
    a = rng.normal(size=(3, 5, 5))
    spd = jnp.array(a @ np.swapaxes(a, -1, -2) + 5 * np.eye(5))
    b = jnp.array(rng.normal(size=(3, 5, 2)))
    ours = lambda s, b: jnp.sum(jnp.cos(linalg.tri_solve(linalg.cholesky(s), b, trans)))
    theirs = lambda s, b: jnp.sum(jnp.cos(solve_triangular(jnp.linalg.cholesky(s), b, lower=True, trans=trans)))
    for g, r in zip(jax.grad(ours, (0, 1))(spd, b), jax.grad(theirs, (0, 1))(spd, b)):
        # JAX's Cholesky gradient is not symmetrised; compare the symmetric parts that matter.
        if g.shape == spd.shape:
            g, r = g + jnp.swapaxes(g, -1, -2), r + jnp.swapaxes(r, -1, -2)
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-11)


def test_inverse_trils_one_padded_call(x64):
    rng = np.random.default_rng(8)
    trils = [jnp.array(np.tril(rng.normal(size=(o, d, d))) + 3 * np.eye(d)) for o, d in [(4, 2), (1, 5), (3, 3)]]
    for t, inv in zip(trils, blr.inverse_trils(trils)):
        assert inv.shape == t.shape
        np.testing.assert_allclose(inv @ t, np.broadcast_to(np.eye(t.shape[-1]), t.shape), atol=1e-12)


def _params(**kw):
    cfg = bnnp.BNNPConfig(**{"hidden": (6, 5), "dtype": "float64", "prior_kind": "shared",
                             "pseudo_precision": "per_point", **kw})
    return bnnp.init(jax.random.PRNGKey(0), cfg)


def test_per_point_networks_emit_one_log_s_per_point():
    specs = bnnp.BNNPConfig(hidden=(8, 3), pseudo_precision="per_point").specs
    assert [s.out_dim for s in specs] == [9, 4, 1]
    assert [s.out_dim for s in bnnp.BNNPConfig(hidden=(8, 3)).specs] == [16, 6, 1]
    with pytest.raises(ValueError, match="pseudo_precision"):
        bnnp.BNNPConfig(pseudo_precision="per_layer")


def test_bnnp_fast_path_matches_dense_layers(x64):
    """Each layer of a per-point, shared-prior BNNP path equals the dense per-unit posterior,
    drawn with the whitened root the BNNP uses (``priors.layer_factors``). The prior is made
    anisotropic first: under the isotropic initial prior every square root coincides."""
    p = _params()
    rng = np.random.default_rng(11)
    p = p.replace(prior=[q._replace(mean=q.mean + 0.3 * rng.normal(size=q.mean.shape),
                                    scale=q.scale + 0.3 * np.tril(rng.normal(size=q.scale.shape)))
                         for q in p.prior])
    x = jnp.linspace(-2, 2, 17)[:, None]
    y = jnp.sin(2 * x)
    key = jax.random.PRNGKey(3)
    weights, kl = bnnp.sample_path(key, p, bnnp.prior_factors(p), x, y, jnp.ones(17), None)
    priors_g = bnnp.layer_priors(p)
    kl_ref = 0.0
    for l, k in enumerate(jax.random.split(key, len(weights))):
        stats = bnnp._layer_stats(p, l, weights[:l], x, y, jnp.ones(17), None)
        assert stats.precision.shape[0] == 1  # one [D, D] matrix for the whole layer
        g = priors_g[l]
        cov = np.asarray(g.covariance())
        eps = np.asarray(jax.random.normal(k, g.mean.shape, jnp.float64))
        # Recover the per-point precisions and pseudo-targets the statistics were built from.
        a = np.asarray(networks.forward(weights, x, "relu", upto=l))
        phi = np.concatenate([a if l == 0 else np.maximum(a, 0), np.ones((17, 1))], 1)
        spec = p.config.specs[l]
        yhat, lam = bnnp.amortised_layer.pseudo_observations(p.inference, l, spec, p.config.net_hidden, x, y, None, None)
        w_ref, kl_l = _dense(phi, np.asarray(yhat), np.asarray(lam), np.asarray(g.mean), cov, eps, root="whitened")
        np.testing.assert_allclose(weights[l], w_ref.T, rtol=1e-8, atol=1e-10)
        kl_ref += kl_l.sum()
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-8)


def test_fast_path_minibatched_and_gradients_flow(x64):
    p = _params()
    x = jnp.linspace(-2, 2, 23)[:, None]
    y = jnp.cos(3 * x)
    key = jax.random.PRNGKey(4)
    full = bnnp.posterior_samples(key, p, x, y, 3)
    mb = bnnp.posterior_samples(key, p, x, y, 3, batch_size=5)
    for a, b in zip(full.weights, mb.weights):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-10)
    grads = jax.grad(lambda q: bnnp.posterior_samples(key, q, x, y, 3).kl)(p)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads.inference))) > 0


def test_fast_path_float32_jit_matches_eager():
    p = _params(dtype="float32", hidden=(5,))  # depth adds shapes to compile op by op, not code paths
    x = jnp.linspace(-2, 2, 11, dtype=jnp.float32)[:, None]
    y = jnp.sin(x)
    key = jax.random.PRNGKey(5)
    with jax.disable_jit():
        eager = bnnp._predict(key, p, x, y, x, 4)
    jitted = bnnp.predict(key, p, x, y, x, 4)
    assert jitted.samples.dtype == jnp.float32
    np.testing.assert_allclose(jitted.samples, eager.samples, rtol=1e-4, atol=1e-5)

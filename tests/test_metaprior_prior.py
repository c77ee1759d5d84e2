"""MetaPrior-generated BNNP prior: valid precision-form Gaussians equal to a dense reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.priors import metaprior_prior as mpp
from bnnp_jax.priors import weight_prior as priors
from bnnp_jax.core.gaussian import Gaussian
from bnnp_jax.metaprior.hypernet import HyperNet, concatenated_reference

WIDTHS = (2, 5, 3, 1)


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _dense_reference(params, widths):
    """Concatenated pair inputs, dense covariance diag(d^2) + U U^T, Gaussian.from_covariance."""
    p = params.hyper["params"]
    net = HyperNet(hidden=(p["first_out"]["kernel"].shape[1],), out_features=p["head"]["kernel"].shape[1])
    out = []
    for l in range(1, len(widths)):
        g = concatenated_reference(net, params.hyper, params.codes[l], params.codes[l - 1])
        s = 1.0 / np.sqrt(widths[l - 1] + 1)
        mean, d, u = s * g[..., 0], s * jnp.exp(g[..., 1]), s * g[..., 2:]
        cov = jax.vmap(jnp.diag)(d**2) + u @ jnp.swapaxes(u, -1, -2)
        out.append(Gaussian.from_covariance(mean, cov))
    return out


def test_layer_priors_match_dense_reference(x64):
    params = mpp.init(jax.random.PRNGKey(0), WIDTHS, code_dim=3, hidden=(8,), rank=2, head_init_scale=1.0,
                      dtype=jnp.float64)
    fast = jax.jit(mpp.layer_priors, static_argnums=1)(params, WIDTHS)
    slow = _dense_reference(params, WIDTHS)
    for l, (f, s) in enumerate(zip(fast, slow)):
        d = WIDTHS[l] + 1
        assert f.mean.shape == (WIDTHS[l + 1], d) and f.prec_tril.shape == (WIDTHS[l + 1], d, d)
        assert f.mean.dtype == jnp.float64
        np.testing.assert_allclose(f.prec_tril, s.prec_tril, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(f.covariance(), s.covariance(), rtol=1e-9, atol=1e-12)
        x = jax.random.normal(jax.random.PRNGKey(l), f.mean.shape, jnp.float64)
        np.testing.assert_allclose(f.log_prob(x), s.log_prob(x), rtol=1e-9)


def test_layer_priors_are_valid_gaussians_in_float32():
    widths = (3, 16, 2)
    params = mpp.init(jax.random.PRNGKey(2), widths, code_dim=4, hidden=(16,), rank=3, head_init_scale=1.0)
    gaussians = jax.jit(mpp.layer_priors, static_argnums=1)(params, widths)
    for g, (_, d, u) in zip(gaussians, mpp.layer_factors(params, widths)):
        tril = np.asarray(g.prec_tril)
        assert tril.dtype == np.float32
        assert np.all(np.isfinite(tril)) and np.all(np.isfinite(np.asarray(g.mean)))
        np.testing.assert_array_equal(np.triu(tril, 1), 0.0)
        assert np.all(np.diagonal(tril, axis1=-2, axis2=-1) > 0)
        # C C^T must invert the generating covariance diag(d^2) + U U^T
        prec = tril.astype(np.float64) @ np.swapaxes(tril, -1, -2)
        d, u = np.asarray(d, np.float64), np.asarray(u, np.float64)
        cov = np.einsum("oi,ij->oij", d**2, np.eye(d.shape[-1])) + u @ np.swapaxes(u, -1, -2)
        np.testing.assert_allclose(prec @ cov, np.broadcast_to(np.eye(d.shape[-1]), cov.shape), atol=2e-4)


def test_initial_prior_is_near_scaled_standard_prior():
    widths = (4, 10, 1)
    params = mpp.init(jax.random.PRNGKey(4), widths, head_init_scale=1e-3)
    for g, ref in zip(mpp.layer_priors(params, widths), priors.init(widths, "unitwise")):
        # head kernel std 1e-3 times O(1) hidden units: log-stds and U entries are O(1e-3)
        np.testing.assert_allclose(g.covariance(), priors.to_gaussian(ref, "unitwise").covariance(),
                                   rtol=1e-2, atol=1e-5)
        np.testing.assert_allclose(g.mean, 0.0, atol=1e-3)



def test_few_parameters_compared_with_unitwise():
    widths = (1, 64, 64, 1)
    params = mpp.init(jax.random.PRNGKey(4), widths, code_dim=4, hidden=(32,), rank=2)
    unitwise = sum(p.mean.size + p.scale.size for p in priors.init(widths, "unitwise"))
    n = mpp.num_parameters(params)
    assert n == sum(c.size for c in params.codes) + sum(a.size for a in jax.tree.leaves(params.hyper))
    assert n < unitwise / 100


def test_gradients_reach_codes_and_hypernet():
    widths = (2, 6, 1)  # two layers: compile time grows with depth, not width
    params = mpp.init(jax.random.PRNGKey(5), widths, head_init_scale=0.5)
    w = [jax.random.normal(jax.random.PRNGKey(6), (6, 3)), jax.random.normal(jax.random.PRNGKey(7), (1, 7))]
    loss = lambda p: sum(jnp.sum(g.log_prob(x)) for g, x in zip(mpp.layer_priors(p, widths), w))
    grads = jax.jit(jax.grad(loss))(params)  # eager dispatch of every op was most of the time
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(grads))
    assert all(float(jnp.abs(c).sum()) > 0 for c in grads.codes)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="widths"):
        mpp.init(jax.random.PRNGKey(0), (3,))
    with pytest.raises(ValueError, match="rank"):
        mpp.init(jax.random.PRNGKey(0), (3, 2), rank=0)
    params = mpp.init(jax.random.PRNGKey(0), (3, 2))
    with pytest.raises(ValueError, match="widths"):
        mpp.layer_priors(params, (4, 2))

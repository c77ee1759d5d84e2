"""The BNNP model: exact regression limit, minibatched/padded/vmapped against
references, options, jit vs eager, dtypes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.core import blr
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.bnnp import objectives
from bnnp_jax.priors import weight_prior as priors
from bnnp_jax.core.gaussian import kl_divergence


def _data(n=25, x_dim=1, y_dim=1, seed=0, dtype=jnp.float64):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.uniform(k1, (n, x_dim), dtype, -2, 2)
    y = jnp.sin(2 * x[:, :1]) + 0.1 * jax.random.normal(k2, (n, y_dim), dtype)
    return x, y


def _params(seed=0, **kw):
    kw.setdefault("hidden", (6, 5))
    kw.setdefault("dtype", "float64")
    return bnnp.init(jax.random.PRNGKey(seed), bnnp.BNNPConfig(**kw))


def test_no_hidden_layer_exact_regression(x64):
    """Final layer on the true targets with sigma_y is exact BLR: moments, KL and ELBO = log evidence."""
    p = _params(hidden=(), final_layer="exact", sigma_y_init=0.3)
    x, y = _data(30)
    phi = jnp.concatenate([x, jnp.ones_like(x)], -1)
    lam = jnp.full(y.shape, 1 / 0.3**2)
    prior = bnnp.layer_priors(p)[0]
    exact = blr.posterior(phi, y, lam, prior)
    s = 40_000
    post = bnnp.posterior_samples(jax.random.PRNGKey(1), p, x, y, s)
    w = post.weights[0][:, :, 0]  # [S, 2]
    np.testing.assert_allclose(post.kl, jnp.sum(kl_divergence(exact, prior)), rtol=1e-10)
    se = np.sqrt(np.diag(exact.covariance()[0]) / s)
    assert np.all(np.abs(w.mean(0) - exact.mean[0]) < 5 * se)
    np.testing.assert_allclose(np.cov(w.T), exact.covariance()[0], rtol=0.05)
    # ELBO at the exact posterior equals the evidence; the MC error of ctxt_ell sets the tolerance.
    ll = bnnp.log_likelihood_sums(p, post.weights, x, y, jnp.ones((30, 1)))[:, 0]
    elbo, elbo_se = float(ll.mean() - post.kl), float(ll.std() / np.sqrt(s))
    assert abs(elbo - float(blr.log_marginal_likelihood(phi, y, lam, prior))) < 5 * elbo_se


# Both batch sizes leave a ragged last batch (37 = 7 x 5 + 2 = 2 x 16 + 5); each option
# compiles every size anew, so the options run the many-batch size only.
@pytest.mark.parametrize("kw,sizes", [({}, (5, 16)), ({"prior_kind": "shared"}, (5,)),
                                      ({"inference_sees_activations": True}, (5,))])
def test_minibatched_equals_full_batch(x64, kw, sizes):
    p = _params(**kw)
    x, y = _data(37)
    key = jax.random.PRNGKey(3)
    full = bnnp.posterior_samples(key, p, x, y, 4)
    for bs in sizes:
        mb = bnnp.posterior_samples(key, p, x, y, 4, batch_size=bs)
        chex.assert_trees_all_close(mb, full, rtol=1e-8, atol=1e-10)


def test_minibatched_gradients_equal_full(x64):
    p = _params()
    x, y = _data(23)
    ctx = (jnp.arange(23) < 10).astype(jnp.float64)

    def obj(params, bs):
        t = objectives.task_terms(jax.random.PRNGKey(0), params, x, y, ctx, 1 - ctx, 3, bs)
        return objectives.combine(t, "pp_avi")

    grad = jax.jit(jax.grad(obj), static_argnums=1)  # eager dispatch of every op was most of the time
    g_full = grad(p, None)
    g_mb = grad(p, 4)
    chex.assert_trees_all_close(g_mb, g_full, rtol=1e-7, atol=1e-9)
    # Every inference network receives gradient (none is detached).
    assert all(float(jnp.abs(leaf).sum()) > 0 for leaf in jax.tree.leaves(g_mb.inference))


def test_padded_equals_unpadded(x64):
    p = _params()
    x, y = _data(15)
    key = jax.random.PRNGKey(4)
    ref = bnnp.posterior_samples(key, p, x, y, 3)
    xp = jnp.concatenate([x, jnp.full((6, 1), 5.0)])
    yp = jnp.concatenate([y, jnp.full((6, 1), -3.0)])
    w = jnp.concatenate([jnp.ones(15), jnp.zeros(6)])
    pad = jax.jit(bnnp.masked_posterior, static_argnums=5)(key, p, xp, yp, w, 3)  # eager dispatch was most of the time
    chex.assert_trees_all_close(pad, ref, rtol=1e-10, atol=1e-12)


def test_empty_context_is_prior(x64):
    p = _params()
    x, y = _data(8)
    post = jax.jit(bnnp.masked_posterior, static_argnums=5)(jax.random.PRNGKey(0), p, x, y, jnp.zeros(8), 2)
    assert float(post.kl) == pytest.approx(0.0, abs=1e-9)
    pred = bnnp.predict(jax.random.PRNGKey(0), p, x[:0], y[:0], x, 2)
    chex.assert_shape(pred.samples, (2, 8, 1))
    chex.assert_tree_all_finite(pred)


def test_vmapped_terms_equal_loop(x64):
    from bnnp_jax.data.tasks import split, size_mask

    p = _params(hidden=(5,))  # one hidden layer: the batching under test does not depend on depth
    key = jax.random.PRNGKey(5)
    x = jax.random.uniform(key, (3, 12, 1), jnp.float64, -2, 2)
    y = jnp.cos(x)
    batch = split(key, x, y, size_mask(key, 3, 12, (4, 13), jnp.float64), (0.2, 0.6))
    keys = jax.random.split(key, 3)
    task_terms = jax.jit(objectives.task_terms, static_argnums=6)  # compiled once per context size
    # vmapped over tasks (every context gathered to one size) and bucketed (lax.map, one size per task)
    one_size = jax.jit(objectives.batch_terms, static_argnums=(3, 5))(key, p, batch, 4, None, 1)
    bucketed = jax.jit(objectives.batch_terms, static_argnums=(3, 5))(key, p, batch, 4, None, 4)
    sizes = objectives.context_sizes(batch.context_index.shape[1], 4)
    used = {next(s for s in sizes if s >= int(c.sum())) for c in batch.context}
    assert len(used) > 1  # the tasks take different branches of the switch
    for t in range(3):
        args = (keys[t], p, batch.x[t], batch.y[t], batch.context[t], batch.target[t], 4, None)
        size = next(s for s in sizes if s >= int(batch.context[t].sum()))
        for terms, index in ((one_size, batch.context_index[t]), (bucketed, batch.context_index[t][:size])):
            for a, b in zip(terms, task_terms(*args, index)):
                np.testing.assert_allclose(a[t], b, rtol=1e-10)


@pytest.mark.parametrize("kw", [{}, {"prior_kind": "shared", "pseudo_precision": "per_point"}])
def test_predict_equals_posterior_draws_through_feature_form(x64, kw):
    """``predict`` (draws without the KL, bias split off the weights) gives the functions
    of ``posterior_samples``'s draws pushed through ``[act(a), 1] @ W`` layer by layer."""
    from bnnp_jax.core.networks import activation_fn, with_bias

    p = _params(**kw)
    x, y = _data(9)
    key = jax.random.PRNGKey(7)
    post = bnnp.posterior_samples(key, p, x, y, 4)
    assert post.kl.shape == () and np.isfinite(post.kl)
    f = []
    for s in range(4):
        a = x
        for l, w in enumerate(post.weights):
            a = with_bias(a if l == 0 else activation_fn(p.config.activation)(a)) @ w[s]
        f.append(a)
    np.testing.assert_allclose(bnnp.predict(key, p, x, y, x, 4).samples, np.stack(f), rtol=1e-10, atol=1e-12)
    # minibatched over context and test points (batch 4 of 9: a ragged last batch)
    np.testing.assert_allclose(bnnp.predict(key, p, x, y, x, 4, batch_size=4).samples, np.stack(f),
                               rtol=1e-9, atol=1e-11)


def test_options_shapes_and_lora_parameter_count():
    x, y = _data(10, x_dim=2, y_dim=2, dtype=jnp.float32)
    for kw in [{"prior_kind": "diagonal"}, {"prior_kind": "shared"}, {"final_layer": "exact"},
               {"inference_sees_activations": True}, {"lora_rank": 2}, {"sigma_y_bound": 1.0}]:
        p = _params(x_dim=2, y_dim=2, hidden=(5,), dtype="float32", **kw)  # each option compiles predict anew
        pred = bnnp.predict(jax.random.PRNGKey(0), p, x, y, x[:4], 3)
        assert pred.samples.shape == (3, 4, 2) and pred.samples.dtype == jnp.float32, kw
        assert np.all(np.isfinite(pred.samples)) and np.all(pred.variance > 0), kw
    count = lambda tree: sum(a.size for a in jax.tree.leaves(tree))
    big = dict(x_dim=1, y_dim=1, hidden=(64, 64, 64), dtype="float32")
    assert count(_params(lora_rank=4, **big).inference) < 0.5 * count(_params(**big).inference)


def test_prior_samples_moments(x64):
    p = _params(hidden=(4,))
    w = bnnp.prior_samples(jax.random.PRNGKey(0), p, 50_000)
    assert [a.shape for a in w] == [(50_000, 2, 4), (50_000, 5, 1)]
    np.testing.assert_allclose(np.var(w[0], 0), 0.5, rtol=0.05)  # I / (D_in + 1) = 1/2
    np.testing.assert_allclose(np.var(w[1], 0), 0.2, rtol=0.05)


def test_prior_samples_from_an_ill_conditioned_learned_covariance(x64):
    """Meta-training can leave a unit's covariance factor with cond(L) ~ 1e11, whose
    precision cannot be re-factored even in float64; draws come from L itself."""
    p = _params(hidden=(4,))
    raw = p.prior[1].scale  # [1, 5, 5]: log diagonal, strictly lower entries
    d = raw.shape[-1]
    ill = jnp.tril(jnp.ones((d, d)), -1) + jnp.diag(jnp.full(d, math.log(1e-4)))
    layer = p.prior[1]._replace(scale=jnp.broadcast_to(ill, raw.shape).astype(raw.dtype))
    p = p.replace(prior=[p.prior[0], layer])
    tril = np.asarray(priors.scale_tril(layer, p.config.prior_kind))[0]
    assert np.linalg.cond(tril) > 1e10
    w = np.asarray(bnnp.prior_samples(jax.random.PRNGKey(0), p, 50_000)[1])[:, :, 0]  # [S, D]
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(np.cov(w.T), tril @ tril.T, atol=0.05 * np.max(tril @ tril.T))


def test_jit_matches_eager():
    # one hidden layer: op-by-op dispatch compiles each primitive per shape, and a second
    # hidden layer adds shapes, not code paths
    p = _params(dtype="float32", hidden=(5,))
    x, y = _data(12, dtype=jnp.float32)
    key = jax.random.PRNGKey(2)
    with jax.disable_jit():
        eager = bnnp._predict(key, p, x, y, x, 3)
    jitted = bnnp.predict(key, p, x, y, x, 3)
    np.testing.assert_allclose(jitted.samples, eager.samples, rtol=1e-4, atol=1e-5)


def test_float64_requires_x64_switch():
    with pytest.raises(ValueError, match="jax_enable_x64"):
        bnnp.init(jax.random.PRNGKey(0), bnnp.BNNPConfig(dtype="float64"))


@pytest.mark.parametrize("field,value", [("hidden", (0,)), ("activation", "swish2"), ("prior_kind", "full"),
                                         ("final_layer", "fixed"), ("sigma_y_init", -1.0), ("lora_rank", -1),
                                         ("hinge_range", (1.0, -1.0)), ("hinge_range", (0.0, float("nan")))])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        bnnp.BNNPConfig(**{field: value})


@pytest.mark.parametrize("x_dim", [1, 3])
def test_spread_hinges_place_each_hinge_in_the_box(x_dim):
    """Each first-layer unit's prior-mean hinge passes through a point of the box, in 1-D
    at evenly spaced centres; only the first layer's mean changes."""
    cfg = bnnp.BNNPConfig(x_dim=x_dim, hidden=(8, 4), hinge_range=(-2.0, 3.0))
    key = jax.random.PRNGKey(0)
    spread, plain = bnnp.init(key, cfg), bnnp.init(key, bnnp.BNNPConfig(x_dim=x_dim, hidden=(8, 4)))
    m = np.asarray(spread.prior[0].mean)
    w, b = m[:, :-1], m[:, -1]
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)
    if x_dim == 1:
        np.testing.assert_allclose(np.sort(-b / w[:, 0]), -2.0 + 5.0 * (np.arange(8) + 0.5) / 8, rtol=1e-6)
        assert set(np.sign(w[:, 0])) == {-1.0, 1.0}
    else:
        # the point on each hinge nearest the origin lies in the box's bounding ball
        foot = -b[:, None] * w
        assert np.all(np.linalg.norm(foot, axis=1) <= np.sqrt(x_dim) * 3.0)
    np.testing.assert_array_equal(spread.prior[0].scale, plain.prior[0].scale)
    np.testing.assert_array_equal(spread.prior[1].mean, plain.prior[1].mean)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, c: bool(jnp.all(a == c)), spread.inference,
                                                         plain.inference))

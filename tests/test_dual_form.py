"""The dual (N x N) form of the layer posterior and the gathered, size-bucketed
context of the training objectives, against dense float64 references and the
primal (D x D) form: draws, KL, gradients, padding, float32, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from bnnp_jax.core import blr
from bnnp_jax.core import blr_dual
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.bnnp import objectives
from bnnp_jax.data.tasks import context_bound, size_mask, split


def _layer(rng, n, d, o, shared_prec=False, shared_prior=False, pad=0):
    phi = rng.normal(size=(n, d))
    yhat = rng.normal(size=(n, o))
    lam = rng.uniform(0.2, 5.0, size=(n, 1 if shared_prec else o))
    if pad:
        lam[-pad:] = 0.0
    a = rng.normal(size=(1 if shared_prior else o, d, d))
    cov = a @ np.swapaxes(a, -1, -2) / d + 0.3 * np.eye(d)
    mu = rng.normal(size=(o, d))
    return phi, yhat, lam, mu, cov


def _dense(phi, yhat, lam, mu, cov):
    """Per-unit textbook posterior mean, covariance and KL with explicit inverses."""
    o, d = mu.shape
    lam = np.broadcast_to(lam, yhat.shape)
    cov = np.broadcast_to(cov, (o, d, d))
    ms, ss, kls = [], [], []
    for k in range(o):
        p0 = np.linalg.inv(cov[k])
        s = np.linalg.inv(p0 + phi.T @ np.diag(lam[:, k]) @ phi)
        m = s @ (p0 @ mu[k] + phi.T @ (lam[:, k] * yhat[:, k]))
        dm = m - mu[k]
        kls.append(0.5 * (np.trace(p0 @ s) + dm @ p0 @ dm - d + np.linalg.slogdet(cov[k])[1] - np.linalg.slogdet(s)[1]))
        ms.append(m)
        ss.append(s)
    return np.stack(ms), np.stack(ss), np.array(kls)


def _dual_prior(mu, cov):
    return blr_dual.DualPrior(jnp.asarray(mu), jnp.linalg.cholesky(jnp.asarray(cov)))


CASES = [dict(), dict(pad=3), dict(shared_prec=True), dict(shared_prior=True), dict(shared_prec=True, shared_prior=True)]


@pytest.mark.parametrize("case", CASES)
def test_dual_draw_is_the_exact_posterior(x64, case):
    """At zero noise the draw is the posterior mean; its Jacobian J in the noise has
    J J^T = the posterior covariance (the draw is affine in Gaussian noise, so this is
    its whole distribution); the KL is the dense one. Padding rows (lambda = 0) vanish."""
    n, d, o = 7, 10, 3
    phi, yhat, lam, mu, cov = _layer(np.random.default_rng(0), n, d, o, **case)
    prior = _dual_prior(mu, cov)
    m_ref, s_ref, kl_ref = _dense(phi, yhat, lam, mu, cov)
    draw = lambda e0, e1: blr_dual.dual_draw(prior, phi, yhat, lam, e0, e1)  # noqa: E731
    w0, kl = draw(jnp.zeros((o, d)), jnp.zeros((o, n)))
    np.testing.assert_allclose(w0, m_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-9, atol=1e-10)
    j0, j1 = jax.jacrev(lambda e0, e1: draw(e0, e1)[0], argnums=(0, 1))(jnp.zeros((o, d)), jnp.zeros((o, n)))
    for k in range(o):  # units are independent: unit k's draw depends on its own noise only
        jk = np.concatenate([j0[k, :, k, :], j1[k, :, k, :]], -1)  # [D, D + N]
        np.testing.assert_allclose(jk @ jk.T, s_ref[k], rtol=1e-8, atol=1e-10)
        others = np.delete(np.asarray(j0[k]), k, axis=1)
        assert np.all(others == 0)


@pytest.mark.parametrize("case", CASES[:3])
def test_dual_kl_and_mean_gradients_equal_primal(x64, case):
    """The KL and the posterior mean are the same functions in both forms, so their
    gradients in every input (features, targets, precisions, prior mean and factor) agree."""
    n, d, o = 6, 9, 2
    phi, yhat, lam, mu, cov = _layer(np.random.default_rng(1), n, d, o, **case)
    tril = jnp.linalg.cholesky(jnp.asarray(cov))
    zeros = jnp.zeros((o, d)), jnp.zeros((o, n))

    def dual(phi, yhat, lam, mu, tril):
        w, kl = blr_dual.dual_draw(blr_dual.DualPrior(mu, tril), phi, yhat, lam, *zeros)
        return jnp.sum(kl) + jnp.sum(jnp.sin(w))

    def primal(phi, yhat, lam, mu, tril):
        root = blr.inverse_trils([tril])[0]
        stats = blr.natural_stats(phi, yhat, lam)
        p0 = jnp.swapaxes(root, -1, -2) @ root
        g = jnp.linalg.cholesky(p0 + stats.precision)
        h = jnp.einsum("...ij,...j->...i", p0, mu) + stats.shift
        mean = jax.scipy.linalg.cho_solve((g, True), h[..., None])[..., 0]
        _, kl = blr.sample_posterior(jax.random.PRNGKey(0), blr.PriorFactors(mu, root), stats)
        return jnp.sum(kl) + jnp.sum(jnp.sin(mean))

    args = tuple(jnp.asarray(a) for a in (phi, yhat, lam, mu)) + (tril,)
    np.testing.assert_allclose(jax.jit(dual)(*args), jax.jit(primal)(*args), rtol=1e-10)  # eager: op by op
    for i, (gd, gp) in enumerate(zip(jax.jit(jax.grad(dual, argnums=range(5)))(*args),
                                        jax.jit(jax.grad(primal, argnums=range(5)))(*args))):
        if i == 2:  # a padded point (lambda = 0) reports a zero gradient in the dual form (blr_dual.dual_draw)
            assert np.all(np.asarray(gd)[lam == 0] == 0)
            gp = jnp.where(jnp.asarray(lam) > 0, gp, 0.0)
        if gd.ndim == 3:  # a covariance factor is lower-triangular: its upper entries are not parameters
            gd, gp = jnp.tril(gd), jnp.tril(gp)
        np.testing.assert_allclose(gd, gp, rtol=1e-7, atol=1e-9)
    if case.get("pad"):  # at lambda = 0 the draw's noise term ~ sqrt(lambda): no finite difference there
        return
    check_grads(lambda *a: blr_dual.dual_draw(blr_dual.DualPrior(a[3], a[4]), *a[:3], jnp.ones((o, d)), jnp.ones((o, n))),
                args, order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_dual_float32_close_to_float64_and_dtype_kept():
    phi, yhat, lam, mu, cov = _layer(np.random.default_rng(2), 20, 33, 4, pad=4)
    eps = np.random.default_rng(3)
    e0, e1 = eps.normal(size=(4, 33)), eps.normal(size=(4, 20))
    with jax.enable_x64(True):
        w64, kl64 = blr_dual.dual_draw(_dual_prior(mu, cov), phi, yhat, lam, e0, e1)
        w64, kl64 = np.asarray(w64), np.asarray(kl64)
    f32 = [np.asarray(a, np.float32) for a in (phi, yhat, lam, mu, cov, e0, e1)]
    fn = jax.jit(lambda *a: blr_dual.dual_draw(_dual_prior(a[3], a[4]), *a[:3], a[5], a[6]))
    w32, kl32 = fn(*f32)
    assert w32.dtype == kl32.dtype == jnp.float32
    np.testing.assert_allclose(kl32, kl64, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(w32, w64, rtol=1e-3, atol=1e-3)
    eager = blr_dual.dual_draw(_dual_prior(f32[3], f32[4]), *f32[:3], f32[5], f32[6])
    np.testing.assert_allclose(eager[1], kl32, rtol=1e-5)


def test_sample_posterior_dual_without_kl_is_the_same_draw(x64):
    phi, yhat, lam, mu, cov = _layer(np.random.default_rng(4), 5, 8, 3)
    key = jax.random.PRNGKey(7)
    w, kl = blr_dual.sample_posterior_dual(key, _dual_prior(mu, cov), phi, yhat, lam)
    w2, none = blr_dual.sample_posterior_dual(key, _dual_prior(mu, cov), phi, yhat, lam, with_kl=False)
    assert none is None and kl.shape == (3,)
    np.testing.assert_allclose(w2, w, rtol=1e-12)


# ----- the network: layer forms, gathered and bucketed contexts ----------------


def _params(**kw):
    kw.setdefault("dtype", "float64")
    return bnnp.init(jax.random.PRNGKey(0), bnnp.BNNPConfig(inference_hidden=(8,), **kw))


def test_layer_forms_rule():
    cfg = bnnp.BNNPConfig(hidden=(16, 16))
    assert bnnp.layer_forms(cfg, 10) == ("primal", "dual", "dual")  # D = 2, 17, 17
    assert bnnp.layer_forms(cfg, 20) == ("primal",) * 3
    assert bnnp.layer_forms(cfg, 10, batch_size=4) == ("primal",) * 3  # minibatching needs statistics
    fast = bnnp.BNNPConfig(hidden=(16, 16), prior_kind="shared", pseudo_precision="per_point")
    assert bnnp.layer_forms(fast, 10) == ("primal",) * 3
    assert bnnp.layer_forms(bnnp.BNNPConfig(hidden=(16,), layer_form="dual"), 40) == ("dual", "dual")
    with pytest.raises(ValueError, match="layer_form"):
        bnnp.BNNPConfig(layer_form="sideways")


def _batch(t=3, n=24, seed=1, proportion=(0.1, 0.5)):
    key = jax.random.PRNGKey(seed)
    x = jax.random.uniform(key, (t, n, 1), jnp.float64, -2, 2)
    return split(jax.random.fold_in(key, 1), x, jnp.sin(3 * x), size_mask(key, t, n, (6, n + 1), jnp.float64),
                 proportion)


def test_context_index_holds_every_context_point(x64):
    b = _batch(t=64, n=30, proportion=(0.2, 0.7))
    assert b.context_index.shape == (64, context_bound(30, (0.2, 0.7)))
    gathered = jnp.take_along_axis(b.context, b.context_index, 1)
    np.testing.assert_array_equal(gathered.sum(1), b.context.sum(1))


def test_gathered_and_bucketed_context_equal_padded_in_primal_form(x64):
    """Same draws, KL and gradients from all N padded rows, the gathered N_c rows and the
    bucketed sizes: the primal form's noise does not depend on the number of rows."""
    p = _params(hidden=(6, 5), layer_form="primal")
    b = _batch(t=2, n=16)
    key = jax.random.PRNGKey(3)
    padded = b._replace(context_index=None)
    fns = [lambda q, bb=padded: objectives.batch_terms(key, q, bb, 3),
           lambda q: objectives.batch_terms(key, q, b, 3, context_buckets=1),
           # two sizes (4, 8): both tasks (2 context points each) take the size-4 branch, as they
           # took size 3 of three; each further branch only added compile time
           lambda q: objectives.batch_terms(key, q, b, 3, context_buckets=2)]
    # Jitted (eager lax.map/switch runs op by op and takes most of a minute); the padded and
    # bucketed terms come out of their gradient programs (aux), one compile each.
    def loss(q, fn):
        terms = fn(q)
        return jnp.mean(objectives.combine(terms, "pp_avi")), terms

    terms_and_grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g_ref, ref = terms_and_grad(p, fns[0])
    g_bucketed, bucketed = terms_and_grad(p, fns[2])
    for terms in (jax.jit(fns[1])(p), bucketed):
        for a, r in zip(terms, ref):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-10)
    for a, r in zip(jax.tree.leaves(g_bucketed), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, r, rtol=1e-8, atol=1e-10)


def test_dual_network_kl_equals_primal_without_hidden_layers(x64):
    """With no hidden layer the KL does not depend on the draw, so the dual and primal
    forms must agree exactly, padded or gathered and bucketed."""
    b = _batch()
    key = jax.random.PRNGKey(4)
    padded = b._replace(context_index=None)
    kl = jax.jit(lambda q, bb, nb: objectives.batch_terms(key, q, bb, 3, context_buckets=nb).kl,
                 static_argnums=2)  # jitted: eager lax.map/switch ran op by op
    kls = [kl(_params(hidden=(), x_dim=1, layer_form=form), bb, nb)
           for form, bb, nb in (("primal", padded, 1), ("dual", padded, 1), ("dual", b, 1), ("dual", b, 3))]
    for kl in kls[1:]:
        np.testing.assert_allclose(kl, kls[0], rtol=1e-10)


def test_auto_form_objective_gradients(x64):
    """The default layer forms (dual for the hidden layer here) with a bucketed context
    differentiate correctly. Two context sizes (4, 7), not the default four (2, 4, 6, 7): both
    tasks (3 context points each) take the size-4 branch either way, and each unused branch
    only added compile time (most of this test's)."""
    p = _params(hidden=(10,))
    b = _batch(t=2, n=14)
    assert bnnp.layer_forms(p.config, b.context_index.shape[1])[1] == "dual"
    assert objectives.context_sizes(b.context_index.shape[1], 2) == (4, 7) and np.all(b.context.sum(1) == 3)
    check_grads(jax.jit(lambda q: objectives.pp_avi(jax.random.PRNGKey(2), q, b, 3, context_buckets=2)), (p,),
                order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


def test_bucketed_objective_jit_equals_eager_float32():
    p = bnnp.init(jax.random.PRNGKey(0), bnnp.BNNPConfig(hidden=(10,), inference_hidden=(8,)))
    key = jax.random.PRNGKey(1)
    x = jax.random.uniform(key, (3, 16, 1), jnp.float32, -2, 2)
    b = split(key, x, jnp.sin(3 * x), size_mask(key, 3, 16, (6, 17)), (0.1, 0.5))
    eager = objectives.pp_avi(key, p, b, 4)
    jitted = jax.jit(lambda q: objectives.pp_avi(key, q, b, 4))(p)
    assert jitted.dtype == jnp.float32
    np.testing.assert_allclose(jitted, eager, rtol=1e-4)

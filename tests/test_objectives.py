"""Objectives: definitions, gradients (check_grads), jit vs eager."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.bnnp import objectives
from bnnp_jax.data.tasks import size_mask, split


def _setup(dtype=jnp.float64, dt="float64"):
    p = bnnp.init(jax.random.PRNGKey(0), bnnp.BNNPConfig(hidden=(3,), inference_hidden=(4,), dtype=dt))
    key = jax.random.PRNGKey(1)
    x = jax.random.uniform(key, (2, 9, 1), dtype, -2, 2)
    batch = split(key, x, jnp.sin(2 * x), size_mask(key, 2, 9, (5, 10), dtype), (0.3, 0.6))
    return p, batch


@pytest.mark.parametrize("name", objectives.OBJECTIVES)
def test_check_grads(x64, name):
    p, batch = _setup()
    fn = getattr(objectives, name)
    # Jitted: op-by-op dispatch of the finite differences dominated the test's time. One padded
    # context size (context_buckets=1): the bucketed path's gradient is checked by
    # test_dual_form's test_auto_form_objective_gradients (check_grads) and its equality to this
    # padded gradient by test_gathered_and_bucketed_context_equal_padded_in_primal_form; here
    # four switch branches tripled the compile.
    check_grads(jax.jit(lambda params: fn(jax.random.PRNGKey(2), params, batch, 3, 0.5, context_buckets=1)), (p,),
                order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


def test_objectives_relations(x64):
    p, batch = _setup()
    key = jax.random.PRNGKey(3)
    beta = 0.3

    # One jitted program (eager lax.map/switch ran op by op and took most of a minute), on one
    # padded context size: the relations do not depend on it, and test_dual_form checks that
    # the bucketed terms equal the padded ones.
    @jax.jit
    def run(p, batch):
        return (objectives.batch_terms(key, p, batch, 5, context_buckets=1),
                objectives.pp_avi(key, p, batch, 5, beta, context_buckets=1),
                objectives.avi(key, p, batch, 5, beta, context_buckets=1),
                objectives.npml(key, p, batch, 5, context_buckets=1))

    t, pp_avi, avi, npml = run(p, batch)
    np.testing.assert_allclose(pp_avi, jnp.mean(beta * t.trgt_ppl + t.ctxt_ell - beta * t.kl), rtol=1e-12)
    np.testing.assert_allclose(avi, jnp.mean(t.ctxt_ell - beta * t.kl), rtol=1e-12)
    np.testing.assert_allclose(npml, jnp.mean(t.trgt_ppl), rtol=1e-12)
    assert np.all(t.kl > 0)


def test_trgt_ppl_is_log_mean_exp(x64):
    """trgt_ppl = log mean_s exp(sum_t log N): compare against a NumPy float64 computation."""
    p, batch = _setup()
    key = jax.random.PRNGKey(4)
    x, y, c, tg = batch.x[0], batch.y[0], batch.context[0], batch.target[0]
    # jitted (op-by-op dispatch was most of the test's time)
    f, sig = jax.jit(lambda p: (bnnp.forward(bnnp.masked_posterior(key, p, x, y, c, 6).weights, x), bnnp.sigma_y(p)))(p)
    f, sig = np.asarray(f)[..., 0], float(sig[0])
    ll = -0.5 * ((np.asarray(y)[:, 0] - f) / sig) ** 2 - np.log(sig) - 0.5 * np.log(2 * np.pi)
    per_path = (ll * np.asarray(tg)).sum(1)
    ref = np.log(np.mean(np.exp(per_path - per_path.max()))) + per_path.max()
    got = jax.jit(lambda p: objectives.task_terms(key, p, x, y, c, tg, 6).trgt_ppl)(p)
    np.testing.assert_allclose(got, ref, rtol=1e-10)


@pytest.mark.slow  # eager BNNP objectives; jit against eager stays in the default suite through test_bnnp and test_dual_form
def test_jit_equals_eager_float32():
    p, batch = _setup(jnp.float32, "float32")
    key = jax.random.PRNGKey(5)
    with jax.disable_jit():
        eager = objectives.pp_avi(key, p, batch, 3)
    jitted = jax.jit(objectives.pp_avi, static_argnums=(3,))(key, p, batch, 3)
    assert jitted.dtype == jnp.float32
    np.testing.assert_allclose(jitted, eager, rtol=1e-4)


def test_unknown_objective():
    with pytest.raises(ValueError, match="objective"):
        objectives.combine(None, "elbo")

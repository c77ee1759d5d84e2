"""BNAM: the KL term sums over every amortised layer (checked against an independent
dense posterior per layer), an empty context gives the prior, padding is inert,
the context posterior ignores the targets while a target's prediction does not
(the inconsistency the docstring states), the objective terms follow SPEC
section 5, and the prior-fraction mask applies."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.bnnp import bnam
from bnnp_jax.core import blr
from bnnp_jax.bnnp import objectives
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train
from bnnp_jax.core.gaussian import kl_divergence

CFG = bnam.BNAMConfig(d_model=4, num_heads=2, num_blocks=1, ffn_width=6, inference_hidden=(8,), sigma_y_init=0.3,
                      dtype="float64")
S = 4


@jax.jit
def _paths_and_terms(key, params, x, y, context, target):
    """Everything the tests read, in one compiled function: per-path traces (outputs
    ``f [S, N, 1]``, per-layer KL ``[S, L]``, features) and the objective terms, same key."""
    pseudo = bnam.pseudo_observations(params, x, y)
    labels = bnam.set_labels(context, target)
    traces = jax.vmap(lambda k: bnam.sample_path(k, params, x, pseudo, context, labels))(jax.random.split(key, S))
    # task_terms runs task_paths with the same key, so its paths are these traces.
    return traces, pseudo, traces.f, jnp.sum(traces.kl, -1), bnam.task_terms(key, params, x, y, context, target, S)


_init = jax.jit(bnam.init, static_argnums=1)


@pytest.fixture
def params(x64):
    """Priors moved away from their initial value, so every layer's prior is non-trivial."""
    p = _init(jax.random.PRNGKey(0), CFG)
    leaves, tree = jax.tree.flatten(p.prior)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    moved = [a + 0.2 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]
    return p.replace(prior=jax.tree.unflatten(tree, moved))


def _task(n=11, n_ctx=5):
    x = jnp.linspace(-2, 2, n, dtype=jnp.float64)[:, None]
    y = jnp.sin(2 * x) + 0.1 * jnp.cos(7 * x)
    context = (jnp.arange(n) < n_ctx).astype(jnp.float64)
    return x, y, context, 1.0 - context


def test_kl_sums_over_every_amortised_layer(params):
    x, y, context, target = _task()
    traces, pseudo, f, kl, terms = _paths_and_terms(jax.random.PRNGKey(2), params, x, y, context, target)
    assert traces.kl.shape == (S, len(CFG.layers)) == (S, 8)
    posterior = jax.jit(blr.posterior)  # eager, op by op, it was most of the test's time
    for s in range(2):
        for l, ((yhat, lam), prior) in enumerate(zip(pseudo, bnam.layer_priors(params))):
            q = posterior(traces.features[l][s], yhat, lam * context[:, None], prior)  # dense Gaussian route
            ref = jnp.sum(kl_divergence(q, prior))
            np.testing.assert_allclose(traces.kl[s, l], ref, rtol=1e-8, err_msg=CFG.layers[l][0])
            assert float(ref) > 0.0
    np.testing.assert_allclose(terms.kl, jnp.mean(kl), rtol=1e-12)


def test_empty_context_gives_the_prior(params):
    x, y, _, _ = _task()
    none = jnp.zeros(x.shape[0])
    traces, *_ = _paths_and_terms(jax.random.PRNGKey(0), params, x, y, none, 1.0 - none)
    np.testing.assert_allclose(traces.kl, 0.0, atol=1e-9)


def test_padding_is_inert_and_the_context_posterior_ignores_targets(params):
    x, y, context, target = _task()
    key = jax.random.PRNGKey(4)
    _, _, f, kl, _ = _paths_and_terms(key, params, x, y, context, target)
    # The last two targets become padding (and get wild values): nothing else moves but the
    # other targets, which attended to them.
    keep = jnp.ones(11).at[9:].set(0.0)
    _, _, f_pad, kl_pad, _ = _paths_and_terms(key, params, x.at[9:].set(50.0), y.at[9:].set(-30.0),
                                              context * keep, target * keep)
    np.testing.assert_allclose(kl_pad, kl, rtol=1e-10)
    np.testing.assert_allclose(f_pad[:, :5], f[:, :5], rtol=1e-10, atol=1e-12)
    assert not np.allclose(f_pad[:, 5:9], f[:, 5:9], atol=1e-6)  # targets see each other: not consistent
    # Moving the padded points once they are padding changes nothing at all.
    _, _, f_pad2, _, _ = _paths_and_terms(key, params, x.at[9:].set(-8.0), y.at[9:].set(3.0),
                                          context * keep, target * keep)
    np.testing.assert_allclose(f_pad2[:, :9], f_pad[:, :9], rtol=1e-10, atol=1e-12)


def test_terms_match_the_objective_definitions(params):
    x, y, context, target = _task()
    _, _, f, _, terms = _paths_and_terms(jax.random.PRNGKey(5), params, x, y, context, target)
    sig = np.asarray(bnam.sigma_y(params))
    ll = np.sum(-0.5 * ((np.asarray(y) - np.asarray(f)) / sig) ** 2 - np.log(sig) - 0.5 * np.log(2 * np.pi), -1)
    np.testing.assert_allclose(terms.ctxt_ell, np.mean(ll @ np.asarray(context)), rtol=1e-10)
    joint = ll @ np.asarray(target)
    np.testing.assert_allclose(terms.trgt_ppl, np.log(np.mean(np.exp(joint - joint.max()))) + joint.max(),
                               rtol=1e-10)
    np.testing.assert_allclose(objectives.combine(terms, "avi"), terms.ctxt_ell - terms.kl, rtol=1e-12)


def test_prior_fraction_mask_applies_to_bnam(params):
    config = run_config.RunConfig(model="bnam", bnam=CFG,
                                  training=run_config.TrainingConfig(prior_fraction=0.5, prior_side="back"))
    mask = train.gradient_mask(config, params)
    means = [np.asarray(m.mean) for m in mask.prior]
    total = sum(m.size for m in means)
    assert sum(int(m.sum()) for m in means) == total // 2
    assert means[-1].all() and not means[0].any()  # the back half: the head trains, the embedding is frozen
    assert all(np.all(np.asarray(a) == 1.0) for a in jax.tree.leaves(mask.inference))


def test_bnam_training_lowers_the_loss():
    cfg = dataclasses.replace(CFG, dtype="float32")
    config = run_config.RunConfig(model="bnam", data=run_config.DataConfig(n_range=(10, 20)), bnam=cfg,
                                  training=run_config.TrainingConfig(steps=60, tasks_per_step=4, num_samples=4,
                                                                     steps_per_call=30, checkpoint_every=30,
                                                                     lr_start=3e-3, lr_end=1e-3))
    _, history = train.fit(config, progress=False)
    loss = np.asarray(history["loss"])
    assert np.all(np.isfinite(loss)) and loss[-10:].mean() < loss[:5].mean()

"""Neural-process baselines: they train through the shared loop and lower their loss,
context sets are order- and padding-invariant, TNP/ANP/NP predictions at one target
ignore the other targets, the latent objectives behave, and the heteroscedastic
metrics agree with bnnp_jax.metrics where they must."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax import metrics, neural_processes as nps
from bnnp_jax.training import models
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train
from bnnp_jax.config import ConfigError, from_dict
from bnnp_jax.data import registry

TINY_NP = nps.NPConfig(width=16, encoder_depth=2, decoder_depth=2, latent_dim=8, num_heads=2, num_blocks=1)


def _config(kind: str, **training) -> run_config.RunConfig:
    t = dict(steps=40, tasks_per_step=8, num_samples=4, steps_per_call=40, checkpoint_every=40, eval_every=1000,
             lr_start=3e-3, lr_end=1e-3, seed=1)
    t.update(training)
    # The ANP keeps its defining cross-attention; its self-attention blocks are left out to compile fast.
    arch = dataclasses.replace(TINY_NP, num_blocks=0 if kind == "anp" else 1)
    return run_config.RunConfig(model=kind, data=run_config.DataConfig(n_range=(10, 20)), np=arch,
                                training=run_config.TrainingConfig(**t))


@pytest.fixture(scope="module")
def fixed_batch():
    return registry.make_batch_sampler("sawtooth", n_range=(10, 20))(jax.random.PRNGKey(123), 16)


@pytest.mark.parametrize("kind", sorted(nps.KINDS))
def test_training_lowers_the_loss_and_checkpoints_roundtrip(kind, fixed_batch, tmp_path):
    config = _config(kind)
    untrained, _ = train.init_state(config)
    state, history = train.fit(config, tmp_path, progress=False)
    assert np.all(np.isfinite(history["loss"])) and int(state.step) == 40
    loss = jax.jit(lambda p: nps.batch_loss(jax.random.PRNGKey(0), p, fixed_batch, 8))
    before, after = float(loss(untrained.params)), float(loss(state.params))
    assert after < before - 0.1 * abs(before), (before, after)
    loaded_config, params, _ = train.load_run(tmp_path)
    assert loaded_config == config and isinstance(params, nps.NPParams) and params.kind == kind
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


predictive = jax.jit(nps.predictive, static_argnames="num_samples")
outputs = jax.jit(nps.outputs, static_argnames="num_samples")


def _task(key, n=12, n_ctx=5):
    kx, ky = jax.random.split(key)
    x = jax.random.uniform(kx, (n, 1), minval=-2, maxval=2)
    y = jnp.sin(3 * x) + 0.1 * jax.random.normal(ky, (n, 1))
    context = (jnp.arange(n) < n_ctx).astype(jnp.float32)
    return x, y, context, 1.0 - context


@pytest.mark.parametrize("kind", sorted(nps.KINDS))
def test_context_order_and_padding_do_not_matter(kind):
    params = nps.init(jax.random.PRNGKey(0), kind, TINY_NP)
    x, y, context, target = _task(jax.random.PRNGKey(1))
    mean, std = predictive(jax.random.PRNGKey(2), params, x, y, context, target, 3)
    perm = jnp.concatenate([jnp.arange(5)[::-1], jnp.arange(5, 12)])  # reverse the context points
    mean_p, std_p = predictive(jax.random.PRNGKey(2), params, x[perm], y[perm], context, target, 3)
    np.testing.assert_allclose(mean_p, mean[:, perm], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std_p, std[:, perm], rtol=1e-5, atol=1e-5)
    # Three padded points (arbitrary x and y, in neither set) change nothing at the real points:
    # the last three targets become padding, the rest must not move.
    none = jnp.zeros(12).at[:9].set(1.0)
    mean_pad, _ = predictive(jax.random.PRNGKey(2), params, x.at[9:].set(7.0), y.at[9:].set(-9.0),
                             context * none, target * none, 3)
    np.testing.assert_allclose(mean_pad[:, :9], mean[:, :9], rtol=1e-5, atol=1e-5)
    assert mean.shape == (3 if kind in nps.LATENT_KINDS else 1, 12, 1) and bool(jnp.all(std > 0))


@pytest.mark.parametrize("kind", sorted(nps.KINDS))
def test_a_target_prediction_ignores_the_other_targets(kind):
    params = nps.init(jax.random.PRNGKey(0), kind, TINY_NP)
    x, y, context, target = _task(jax.random.PRNGKey(3))
    mean, _ = predictive(jax.random.PRNGKey(4), params, x, y, context, target, 3)
    x2 = x.at[8:].set(x[8:] + 1.5)  # move the other targets; targets never enter the context
    y2 = y.at[6:].set(100.0)
    mean2, _ = predictive(jax.random.PRNGKey(4), params, x2, y2, context, target, 3)
    np.testing.assert_allclose(mean2[:, :8], mean[:, :8], rtol=1e-5, atol=1e-5)
    assert not np.allclose(mean2[:, 8:], mean[:, 8:])


@jax.jit
def _latent_terms(params, params_elbo, x, y, context, target):
    key = jax.random.PRNGKey(1)
    return (nps.outputs(key, params, x, y, context, context, 4),
            nps.outputs(key, params, x, y, context, context + target, 4),
            nps.task_objective(key, params, x, y, context, target, 4),
            nps.task_objective(key, params_elbo, x, y, context, target, 4))


def test_latent_objectives(x64):
    config = dataclasses.replace(TINY_NP, dtype="float64")
    x, y, context, target = (a.astype(jnp.float64) for a in _task(jax.random.PRNGKey(5)))
    params = nps.init(jax.random.PRNGKey(0), "np", config)
    elbo_params = dataclasses.replace(params, config=dataclasses.replace(config, objective="elbo"))
    out, full, value, elbo = _latent_terms(params, elbo_params, x, y, context, target)
    assert float(out.kl) == 0.0 and float(full.kl) > 0.0  # KL(q(z|C) || q(z|C)) = 0 < KL(q(z|C u T) || q(z|C))
    # ml: the log of the Monte-Carlo mean of the joint target likelihoods under z ~ q(z | C).
    m, sd, yy, t = (np.asarray(a) for a in (out.mean, out.std, y, target))
    joint = np.sum(t * np.sum(-0.5 * ((yy - m) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi), -1), -1)
    np.testing.assert_allclose(float(value), np.log(np.mean(np.exp(joint))), rtol=1e-10)
    # elbo: mean joint likelihood under z ~ q(z | C u T) minus the KL.
    m, sd = np.asarray(full.mean), np.asarray(full.std)
    joint_full = np.sum(t * np.sum(-0.5 * ((yy - m) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi), -1), -1)
    np.testing.assert_allclose(float(elbo), joint_full.mean() - float(full.kl), rtol=1e-10)


def test_mixture_metrics_match_homoscedastic_metrics():
    key = jax.random.PRNGKey(0)
    f = jax.random.normal(key, (6, 9, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (9, 2))
    mask = (jnp.arange(9) % 3 != 0).astype(jnp.float32)
    sigma = jnp.array([0.3, 0.7])
    ref, het = jax.jit(lambda f, y: (metrics.summary(f, sigma, y, mask),
                                     models.mixture_summary(f, jnp.broadcast_to(sigma, f.shape), y, mask)))(f, y)
    for k in ref:
        np.testing.assert_allclose(het[k], ref[k], rtol=1e-5, atol=1e-6)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['widht'\] in 'np'"):
        from_dict(run_config.RunConfig, {"model": "cnp", "np": {"widht": 3}})
    with pytest.raises(ConfigError, match="training.prior_fraction"):
        from_dict(run_config.RunConfig, {"model": "tnp", "training": {"prior_fraction": 0.5}})
    with pytest.raises(ConfigError, match="num_heads"):
        from_dict(run_config.RunConfig, {"model": "anp", "np": {"width": 10, "num_heads": 4}})
    with pytest.raises(ConfigError, match=r"np.x_dim: family 'digits' has x_dim=2"):
        from_dict(run_config.RunConfig, {"model": "np", "data": {"family": "digits"}})
    with pytest.raises(ConfigError, match="model: must be one of"):
        from_dict(run_config.RunConfig, {"model": "gp"})

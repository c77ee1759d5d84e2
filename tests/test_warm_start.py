"""Empirical-Bayes warm start of the prior mean (bnnp_jax.bnnp.warm_start): the pieces
against dense or closed-form references, then the training-loop integration
(frozen means stay put, resume is bit-identical, config errors)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.training import checkpoint
from bnnp_jax.priors import weight_prior as priors
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train
from bnnp_jax.bnnp import warm_start
from bnnp_jax.config import ConfigError, from_dict
from bnnp_jax.data.tasks import TaskBatch

TINY = """
model: bnnp
data: {family: sawtooth, n_range: [20, 30]}
bnnp: {x_dim: 1, y_dim: 1, hidden: [8, 8], inference_hidden: [16]}
training:
  steps: 6
  tasks_per_step: 4
  num_samples: 4
  steps_per_call: 2
  checkpoint_every: 2
  eval_every: 1000
  lr_start: 0.001
  lr_end: 0.0001
  seed: 5
  warm_start: {tasks: 8, fit_steps: 50, warmup_steps: 4, warmup_lr: 0.001}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "warm.yaml"
    path.write_text(TINY)
    return run_config.load(path)


def _dense_cov(layer, kind):
    l = priors.scale_tril(layer, kind)
    return np.asarray(l @ jnp.swapaxes(l, -1, -2))


@pytest.mark.parametrize("kind", priors.PRIOR_KINDS)
def test_scale_std_scales_the_dense_covariance(x64, kind):
    layer = priors.init_layer(3, 2, kind, jnp.float64)
    noise = jax.random.normal(jax.random.PRNGKey(0), layer.scale.shape, jnp.float64)
    layer = layer._replace(scale=layer.scale + 0.3 * (jnp.tril(noise) if kind != "diagonal" else noise),
                           mean=jnp.arange(8.0, dtype=jnp.float64).reshape(2, 4))
    scaled = priors.scale_std(layer, kind, 0.2)
    np.testing.assert_allclose(_dense_cov(scaled, kind), 0.04 * _dense_cov(layer, kind), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(scaled.mean, layer.mean)
    assert scaled.scale.dtype == layer.scale.dtype
    with pytest.raises(ValueError, match="factor must be > 0"):
        priors.scale_std(layer, kind, 0.0)


def _linear_batch(dtype=jnp.float64, pad=0):
    """Two tasks of y = 2 x - 1 + noise; ``pad`` extra masked-out points with wild values."""
    key = jax.random.PRNGKey(1)
    x = jax.random.uniform(key, (2, 30, 1), dtype, -2, 2)
    y = 2.0 * x - 1.0 + 0.1 * jax.random.normal(jax.random.fold_in(key, 1), x.shape, dtype)
    mask = jnp.ones((2, 30), dtype)
    if pad:
        x = jnp.concatenate([x, jnp.full((2, pad, 1), 5.0, dtype)], 1)
        y = jnp.concatenate([y, jnp.full((2, pad, 1), 100.0, dtype)], 1)
        mask = jnp.concatenate([mask, jnp.zeros((2, pad), dtype)], 1)
    return TaskBatch(x, y, mask, mask, mask)


def test_fit_network_without_hidden_layer_is_least_squares(x64):
    batch = _linear_batch()
    start = [jnp.zeros((2, 1), jnp.float64)]
    fitted, mse = warm_start.fit_network(start, batch, "relu", steps=3000, learning_rate=0.05)
    design = np.concatenate([np.asarray(batch.x).reshape(-1, 1), np.ones((60, 1))], 1)
    exact, *_ = np.linalg.lstsq(design, np.asarray(batch.y).reshape(-1, 1), rcond=None)
    np.testing.assert_allclose(fitted[0], exact, atol=1e-4)
    resid = design @ exact - np.asarray(batch.y).reshape(-1, 1)
    np.testing.assert_allclose(float(mse), float(np.mean(resid**2)), rtol=1e-6)
    assert fitted[0].dtype == jnp.float64


def test_fit_network_ignores_padding(x64):
    start = [jnp.zeros((2, 1), jnp.float64)]
    plain, _ = warm_start.fit_network(start, _linear_batch(), "relu", steps=200, learning_rate=0.05)
    padded, _ = warm_start.fit_network(start, _linear_batch(pad=7), "relu", steps=200, learning_rate=0.05)
    np.testing.assert_allclose(padded[0], plain[0], rtol=1e-10)


def test_initial_weights_put_hinges_in_range_and_prior_from_fit_uses_them():
    cfg = bnnp.BNNPConfig(hidden=(6, 5), dtype="float32")
    params = bnnp.init(jax.random.PRNGKey(0), cfg)
    weights = warm_start.initial_weights(jax.random.PRNGKey(1), params, (-2.0, 2.0))
    assert [w.shape for w in weights] == [(2, 6), (7, 5), (6, 1)]
    hinges = -weights[0][1] / weights[0][0]
    assert np.all((hinges > -2) & (hinges < 2)) and len(np.unique(np.round(hinges, 5))) == 6
    new = warm_start.prior_from_fit(params.prior, weights, cfg.prior_kind, 0.1, 0.5)
    for l, (layer, w) in enumerate(zip(new, weights)):
        np.testing.assert_array_equal(layer.mean, w.T)
        factor = 0.5 if l == 2 else 0.1
        np.testing.assert_allclose(_dense_cov(layer, "unitwise"), factor**2 * _dense_cov(params.prior[l], "unitwise"),
                                   rtol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        warm_start.prior_from_fit(params.prior, [w.T for w in weights], cfg.prior_kind, 0.1, 0.5)


@pytest.fixture(scope="module")
def frozen_run(config, tmp_path_factory):
    """A finished warm-started run with the prior means frozen (checkpoints at steps 4 and 6),
    evaluated as ``bnnp train`` does (held-out metrics and the prior MMD)."""
    from bnnp_jax.training import report as run_report

    frozen = run_config.override(config, train_prior_mean=False)
    run_dir = tmp_path_factory.mktemp("frozen")
    untrained = train.init_state(frozen)[0].params
    state, history = train.fit(frozen, run_dir, progress=False,
                               evaluate_fn=run_report.training_evaluator(frozen, untrained))
    return frozen, run_dir, state, history


@pytest.fixture(scope="module")
def warm_params(frozen_run):
    """``(fresh, warm, info)``: the frozen run's initial parameters, warm-started again on their own."""
    frozen = frozen_run[0]
    fresh, _ = train.init_state(frozen)
    warm, info = train.warm_start_params(frozen, fresh.params, progress=False)
    return fresh, warm, info


@pytest.mark.slow  # a warm-started training run (about 2 min); the warm start's pieces are tested above
def test_warm_up_freezes_the_prior_and_training_moves_only_its_scales(frozen_run, warm_params):
    frozen, _, state, history = frozen_run
    fresh, warm, info = warm_params
    assert history["warm_start"]["pooled_points"] == info["pooled_points"] > 0
    assert history["warm_start"]["pooled_fit_mse"] == info["pooled_fit_mse"]
    assert math.isfinite(history["warm_start"]["warmup_loss_last_10pct"])
    ws = frozen.training.warm_start
    for l, (before, warmed, after) in enumerate(zip(fresh.params.prior, warm.prior, state.params.prior)):
        factor = ws.output_std_scale if l == len(warm.prior) - 1 else ws.hidden_std_scale
        # The warm-up left the prior exactly as the pooled fit set it ...
        np.testing.assert_array_equal(warmed.scale, priors.scale_std(before, "unitwise", factor).scale)
        assert not np.allclose(warmed.mean, before.mean)
        # ... and training with train_prior_mean=false moved the scales, not the means.
        np.testing.assert_array_equal(after.mean, warmed.mean)
        assert not np.array_equal(after.scale, warmed.scale)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(warm.inference),
                                                       jax.tree.leaves(fresh.params.inference))]
    assert all(moved)  # the warm-up trained the inference networks


@pytest.mark.slow  # a warm-started training run (about 2 min); the warm start's pieces are tested above
def test_step_zero_evaluation_and_reported_mmd_match_the_history(frozen_run, warm_params, tmp_path):
    """The first evaluation is of the warm-started state; the MMD logged at the last
    evaluation is the number metrics.json reports."""
    from bnnp_jax.training import evaluation
    from bnnp_jax.training import report as run_report

    frozen, _, state, history = frozen_run
    fresh, warm, _ = warm_params
    first, last = history["eval"][0], history["eval"][-1]
    assert first["step"] == 0 and last["step"] == frozen.training.steps
    learned, _, _ = evaluation.prior_mmd_tracker(run_report.mmd_key(frozen), fresh.params, "sawtooth",
                                                 frozen.training.plot_samples)
    assert first["mmd2_prior"] == learned(warm)
    report = run_report.write_report(tmp_path, frozen, state.params, fresh.params, history)
    assert last["mmd2_prior"] == report["prior_mmd"]["mmd2_learned_prior"]
    spread = report["prior_spread"]
    assert spread["learned"]["generator"] == spread["untrained"]["generator"]
    assert len(spread["learned"]["layers"]) == len(state.params.prior)
    assert report["warm_start"] == history["warm_start"]
    assert {"log_predictive_density", "mae", "coverage"} <= set(first)


@pytest.mark.slow  # a warm-started training run (about 2 min); the warm start's pieces are tested above
def test_warm_started_resume_is_bit_identical(frozen_run, tmp_path):
    """Drop the last checkpoint (as if killed after step 4) and resume: restoring the
    checkpoint, not warming up again (which would reset Adam), gives the same result."""
    import shutil

    frozen, src, full, _ = frozen_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(src, run_dir)
    checkpoint.list_checkpoints(run_dir / "checkpoints")[-1].unlink()
    assert checkpoint.list_checkpoints(run_dir / "checkpoints")[-1].name.endswith("000000004.pkl")
    resumed, history = train.fit(frozen, run_dir, resume=True, progress=False)
    assert "warm_start" in history and len(history["loss"]) == 6
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_warm_start_config_errors(config):
    raw = dataclasses.asdict(config.training)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['stepz'\].*valid keys are"):
        from_dict(run_config.TrainingConfig, {**raw, "warm_start": {"stepz": 3}}, "training")
    with pytest.raises(ConfigError, match="warm_start.warmup_steps: must be >= 0"):
        from_dict(run_config.TrainingConfig, {**raw, "warm_start": {"warmup_steps": -1}}, "training")
    with pytest.raises(ConfigError, match="warm_start.hidden_std_scale: must be > 0"):
        from_dict(run_config.TrainingConfig, {**raw, "warm_start": {"hidden_std_scale": 0}}, "training")
    with pytest.raises(ConfigError, match="only the bnnp model has a warm start"):
        dataclasses.replace(config, model="cnp")
    with pytest.raises(ConfigError, match="warm_start.warmup_lr: must be >= lr_end"):
        from_dict(run_config.TrainingConfig, {**raw, "warm_start": {"warmup_lr": 1e-5}}, "training")
    with pytest.raises(ConfigError, match="with data: null, set bnnp.hinge_range"):
        dataclasses.replace(config, data=None)
    no_warm = dataclasses.replace(config.training, warm_start=None, train_prior_mean=False)
    with pytest.raises(ConfigError, match="train_prior_mean"):
        dataclasses.replace(config, model="cnp", training=no_warm)


@pytest.mark.parametrize("kind", priors.PRIOR_KINDS)
def test_prior_min_std_adds_a_variance_floor_in_every_direction(x64, kind):
    layer = priors.init_layer(3, 2, kind, jnp.float64)
    noise = jax.random.normal(jax.random.PRNGKey(2), layer.scale.shape, jnp.float64)
    layer = layer._replace(scale=layer.scale - 3.0 + (jnp.tril(noise) if kind != "diagonal" else noise))
    raw = _dense_cov(layer, kind)
    floored = priors.scale_tril(layer, kind, 0.05)
    np.testing.assert_allclose(np.asarray(floored @ jnp.swapaxes(floored, -1, -2)), raw + 0.0025 * np.eye(4),
                               rtol=1e-10, atol=1e-14)
    # The precision form and the BLR factors use the same floored covariance.
    prec = priors.to_gaussian(layer, kind, 0.05).prec_tril
    np.testing.assert_allclose(np.linalg.inv(np.asarray(prec @ jnp.swapaxes(prec, -1, -2))), raw + 0.0025 * np.eye(4),
                               rtol=1e-8)
    factors = priors.layer_factors([layer], kind, 0.05)[0]
    if kind == "diagonal":  # the exact precision root diag(1 / std)
        np.testing.assert_allclose(np.asarray(factors.root @ floored), np.broadcast_to(np.eye(4), floored.shape),
                                   atol=1e-10)
    else:  # the whitened form takes L itself
        np.testing.assert_allclose(np.asarray(factors.scale), np.asarray(floored), rtol=1e-12)
    with pytest.raises(ValueError, match="prior_min_std: must be >= 0"):
        bnnp.BNNPConfig(prior_min_std=-1.0)

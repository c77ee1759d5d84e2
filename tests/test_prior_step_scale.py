"""``training.prior_step_scale: fan_in``: Adam's step on the prior's mean and Cholesky
off-diagonals scaled by ``1 / sqrt(D)``, which under Adam is the scaled parameterisation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnnp_jax.config import ConfigError, from_dict
from bnnp_jax.priors import weight_prior as priors
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train

RUN = {"model": "bnnp", "data": {"family": "sawtooth", "n_range": [20, 30]},
       "bnnp": {"x_dim": 1, "y_dim": 1, "hidden": [4, 3], "inference_hidden": [8]},
       "training": {"steps": 10, "tasks_per_step": 2, "num_samples": 2, "steps_per_call": 5,
                    "checkpoint_every": 5, "lr_start": 0.01, "lr_end": 0.001, "context_buckets": 1}}


def _config(step_scale):
    data = {**RUN, "training": {**RUN["training"], "prior_step_scale": step_scale}}
    return from_dict(run_config.RunConfig, data)


@pytest.mark.parametrize("kind", priors.PRIOR_KINDS)
def test_fan_in_multipliers(kind):
    layer = priors.init_layer(3, 4, kind)  # D = 4
    s = priors.fan_in_step_scale(layer, kind)
    assert s.mean.shape == layer.mean.shape and s.scale.shape == layer.scale.shape
    np.testing.assert_allclose(s.mean, 0.5)
    if kind == "diagonal":
        np.testing.assert_allclose(s.scale, 1.0)  # log standard deviations are scale-free
    else:
        eye = np.broadcast_to(np.eye(4, dtype=bool), s.scale.shape)
        np.testing.assert_allclose(np.asarray(s.scale)[eye], 1.0)
        np.testing.assert_allclose(np.asarray(s.scale)[~eye], 0.5)


def test_step_scale_multiplies_adams_update_and_keeps_the_state_layout():
    """Same gradient, same state: fan_in's update is none's times the multipliers, and the two
    optimiser states have one tree structure (checkpoints restore under either setting)."""
    outs = {}
    for mode in ("none", "fan_in"):
        cfg = _config(mode)
        state, opt = train.init_state(cfg)
        grads = jax.tree.map(lambda a: jnp.ones_like(a) * 0.3, state.params)
        updates, new_opt = jax.jit(opt.update)(grads, state.opt_state, state.params)  # one dispatch, not one per op
        outs[mode] = (state.params, updates, new_opt)
    params, plain, opt_none = outs["none"]
    _, scaled, opt_fan = outs["fan_in"]
    assert jax.tree.structure(opt_none) == jax.tree.structure(opt_fan)
    for layer_plain, layer_scaled, layer in zip(plain.prior, scaled.prior, params.prior):
        d = layer.mean.shape[-1]
        np.testing.assert_allclose(layer_scaled.mean, layer_plain.mean / math.sqrt(d), rtol=1e-6)
        eye = np.broadcast_to(np.eye(d, dtype=bool), layer.scale.shape)
        np.testing.assert_allclose(np.asarray(layer_scaled.scale)[eye], np.asarray(layer_plain.scale)[eye], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(layer_scaled.scale)[~eye], np.asarray(layer_plain.scale)[~eye]
                                   / math.sqrt(d), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(plain.inference), jax.tree.leaves(scaled.inference)):
        np.testing.assert_array_equal(a, b)


def test_fan_in_under_adam_is_the_scaled_parameterisation():
    """Adam on ``theta`` with the step times ``c`` tracks Adam on ``theta'`` with ``theta = c theta'``
    (up to Adam's epsilon), over several steps of a non-quadratic loss."""
    c = 0.125
    loss = lambda th: jnp.sum(jnp.sin(3.0 * th) + th**2)
    adam = optax.adam(0.05, eps=0.0)
    th, th_raw = jnp.array([0.3, -0.2, 0.7]), jnp.array([0.3, -0.2, 0.7]) / c
    s, s_raw = adam.init(th), adam.init(th_raw)
    for _ in range(20):
        u, s = adam.update(jax.grad(loss)(th), s)
        th = th + c * u
        u_raw, s_raw = adam.update(jax.grad(lambda t: loss(c * t))(th_raw), s_raw)
        th_raw = th_raw + u_raw
    np.testing.assert_allclose(th, c * th_raw, rtol=1e-5)


def test_step_scale_config_errors():
    with pytest.raises(ConfigError, match=r"training.prior_step_scale: must be one of \('none', 'fan_in'\)"):
        _config("fanin")
    with pytest.raises(ConfigError, match=r"training.prior_step_scale: model 'cnp' has no weight prior"):
        from_dict(run_config.RunConfig, {"model": "cnp", "training": {"prior_step_scale": "fan_in"}})

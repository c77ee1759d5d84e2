"""``BNNPConfig.prior_kind: metaprior``: the BNNP holds the generated prior's codes and
hypernetwork and its objective uses the generated layer priors; the baselines' model,
training (mask, checkpoints, the CLI's report) and config errors handle the kind."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax import cli
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.bnnp import objectives
from bnnp_jax.config import ConfigError, from_dict
from bnnp_jax.core import blr, blr_dual
from bnnp_jax.inference import model as inference_model
from bnnp_jax.priors import metaprior_prior
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train

ARCH = {"x_dim": 1, "y_dim": 1, "hidden": [4, 3], "inference_hidden": [8], "prior_kind": "metaprior",
        "prior_code_dim": 2, "prior_hypernet_hidden": [8], "prior_rank": 2}


def _params(dtype="float64", **changes):
    """A metaprior BNNP whose prior is far from N(0, I/D) (a large head), so a path that
    ignored it, or read it wrongly, would give other numbers."""
    cfg = bnnp.BNNPConfig(**{**ARCH, "dtype": dtype, **changes})
    params = bnnp.init(jax.random.PRNGKey(0), cfg)
    prior = metaprior_prior.init(jax.random.PRNGKey(1), cfg.widths, cfg.prior_code_dim, cfg.prior_hypernet_hidden,
                                 cfg.prior_rank, head_init_scale=1.0, dtype=jnp.dtype(dtype))
    return params.replace(prior=prior)


def _task(dtype, n=9):
    x = jnp.linspace(-2.0, 2.0, n, dtype=dtype)[:, None]
    ctx = (jnp.arange(n) % 3 != 0).astype(dtype)
    return x, jnp.sin(2.0 * x), ctx, 1.0 - ctx


def _dense_factors(params, forms):
    """Explicit layer priors from :func:`metaprior_prior.layer_priors` (Woodbury precision),
    re-factorised from their dense covariance into the form each layer is drawn in."""
    out = []
    for g, form in zip(metaprior_prior.layer_priors(params.prior, params.config.widths,
                                                    params.config.prior_min_std), forms):
        tril = jnp.linalg.cholesky(g.covariance())
        out.append(blr.ScaleFactors(g.mean, tril) if form == "primal" else blr_dual.DualPrior(g.mean, tril))
    return out


@pytest.mark.parametrize("layer_form,min_std", [("primal", 0.0), ("dual", 0.05)])
def test_objective_equals_the_one_with_explicit_layer_priors(x64, layer_form, min_std):
    params = _params(layer_form=layer_form, prior_min_std=min_std)
    x, y, ctx, tgt = _task(jnp.float64)
    key, s = jax.random.PRNGKey(2), 3
    terms = objectives.task_terms(key, params, x, y, ctx, tgt, s)
    forms = bnnp.layer_forms(params.config, x.shape[0])
    assert set(forms) == {layer_form}
    lp = _dense_factors(params, forms)
    weights, kl = jax.vmap(lambda k: bnnp.sample_path(k, params, lp, x, y, ctx, None))(jax.random.split(key, s))
    ll = bnnp.log_likelihood_sums(params, weights, x, y, jnp.stack([ctx, tgt], -1))
    np.testing.assert_allclose(terms.ctxt_ell, jnp.mean(ll[:, 0]), rtol=1e-9)
    np.testing.assert_allclose(terms.trgt_ppl, jax.nn.logsumexp(ll[:, 1]) - np.log(s), rtol=1e-9)
    np.testing.assert_allclose(terms.kl, jnp.mean(kl), rtol=1e-9)
    # and the two views of the BNNP's prior agree: precision (Woodbury) and covariance factor
    for g, (mean, tril) in zip(bnnp.layer_priors(params), bnnp.prior_scale_trils(params)):
        np.testing.assert_allclose(g.covariance(), tril @ jnp.swapaxes(tril, -1, -2), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(g.mean, mean)
    _, d, u = metaprior_prior.layer_factors(params.prior, params.config.widths)[0]
    cov = jax.vmap(jnp.diag)(d**2 + min_std**2) + u @ jnp.swapaxes(u, -1, -2)  # the floor: + min_std^2 I
    np.testing.assert_allclose(bnnp.layer_priors(params)[0].covariance(), cov, rtol=1e-9, atol=1e-12)


def test_gradients_reach_codes_and_hypernetwork():
    params = _params("float32")
    x, y, ctx, tgt = _task(jnp.float32)

    def loss(p):
        t = objectives.task_terms(jax.random.PRNGKey(3), p, x, y, ctx, tgt, 2)
        return -objectives.combine(jax.tree.map(lambda a: a[None], t), "pp_avi")[0]

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads.prior)
    assert leaves and all(np.all(np.isfinite(a)) for a in leaves)
    assert all(float(jnp.abs(c).sum()) > 0 for c in grads.prior.codes)
    assert all(float(jnp.abs(a).sum()) > 0 for a in jax.tree.leaves(grads.prior.hyper))


def test_from_bnnp_gives_the_same_prior_gaussians(x64):
    params = _params(prior_min_std=0.01)
    model = inference_model.from_bnnp(params)
    for g, mean, tril in zip(bnnp.layer_priors(params), model.prior_means, model.prior_scale_trils):
        np.testing.assert_allclose(mean, g.mean)
        np.testing.assert_allclose(tril @ jnp.swapaxes(tril, -1, -2), g.covariance(), rtol=1e-9, atol=1e-12)


RUN = """
model: bnnp
data: {family: sawtooth, n_range: [10, 20]}
bnnp: {x_dim: 1, y_dim: 1, hidden: [4, 3], inference_hidden: [8], prior_kind: metaprior, prior_code_dim: 2,
       prior_hypernet_hidden: [8], prior_rank: 1}
training: {steps: 4, tasks_per_step: 2, num_samples: 2, steps_per_call: 2, checkpoint_every: 2,
           eval_every: 1000, eval_tasks: 2, eval_samples: 2, plot_samples: 4, seed: 0, context_buckets: 1}
"""


def test_bnnp_train_with_a_metaprior_prior_checkpoints_and_restores(tmp_path, capsys):
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(RUN)
    assert cli.main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0, \
        capsys.readouterr().err
    config, params, history = train.load_run(tmp_path / "run")
    assert config.bnnp.prior_rank == 1 and len(history["loss"]) == 4 and np.all(np.isfinite(history["loss"]))
    assert isinstance(params.prior, metaprior_prior.MetaPriorPriorParams)
    untrained, _ = train.init_state(config)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params.prior),
                                                       jax.tree.leaves(untrained.params.prior))]
    assert all(moved)  # every code and hypernetwork leaf trained
    # resuming from the step-2 checkpoint replays steps 3-4 bit for bit
    (tmp_path / "run" / "checkpoints" / "ckpt_000000004.pkl").unlink()
    state, _ = train.fit(config, tmp_path / "run", resume=True, progress=False)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert np.isfinite(metrics["prior_mmd"]["mmd2_learned_prior"])
    assert len(metrics["prior_spread"]["learned"]["layers"]) == 3
    # prior_fraction 0 freezes the whole generated prior, 1 trains all of it
    for fraction in (0.0, 1.0):
        t = dataclasses.replace(config.training, prior_fraction=fraction)
        mask = train.gradient_mask(dataclasses.replace(config, training=t), params)
        assert all(np.all(np.asarray(m) == fraction) for m in jax.tree.leaves(mask.prior))
        assert all(np.all(np.asarray(m) == 1.0) for m in jax.tree.leaves(mask.inference))


@pytest.mark.parametrize("bnnp_changes,training,match", [
    ({"prior_kind": "unitwise", "prior_code_dim": None, "prior_hypernet_hidden": None},
     {}, r"BNNPConfig\.prior_rank: .*only to prior_kind 'metaprior'"),
    ({"prior_code_dim": 0}, {}, r"BNNPConfig\.prior_code_dim: must be a positive integer"),
    ({"prior_hypernet_hidden": []}, {}, r"BNNPConfig\.prior_hypernet_hidden: must list"),
    ({"hinge_range": [-1, 1]}, {}, r"BNNPConfig\.hinge_range: does not apply to prior_kind 'metaprior'"),
    ({}, {"prior_fraction": 0.5}, r"training\.prior_fraction: .*whole"),
    ({}, {"prior_step_scale": "fan_in"}, r"training\.prior_step_scale: .*leave it 'none'"),
    ({}, {"train_prior_mean": False}, r"training\.train_prior_mean"),
    ({}, {"warm_start": {}}, r"training\.warm_start: .*metaprior"),
])
def test_config_errors_name_the_field(bnnp_changes, training, match):
    arch = {k: v for k, v in {**ARCH, **bnnp_changes}.items() if v is not None}
    data = {"model": "bnnp", "data": {"family": "sawtooth"}, "bnnp": arch,
            "training": training}
    with pytest.raises(ConfigError, match=match):
        from_dict(run_config.RunConfig, data)


def test_defaults_fill_in_and_other_kinds_keep_their_layout():
    cfg = bnnp.BNNPConfig(prior_kind="metaprior")
    assert (cfg.prior_code_dim, cfg.prior_hypernet_hidden, cfg.prior_rank) == (4, (32,), 2)
    plain = bnnp.BNNPConfig(hidden=(4,))
    assert plain.prior_rank is None
    params = bnnp.init(jax.random.PRNGKey(0), plain)
    assert [tuple(p.mean.shape) for p in params.prior] == [(4, 2), (1, 5)]


@pytest.mark.slow  # ~40 s idle: three compiles of the loop (its pieces are tested above and in test_train)
def test_prior_study_trains_each_kind_through_the_training_loop(tmp_path):
    """``bnnp metaprior prior``: each arm is a run config of the training loop (the fixed arm
    freezes its prior), and the study's results come from the trained BNNPs."""
    from bnnp_jax.studies.metaprior import prior_study as ps

    cfg = ps.PriorStudyConfig(num_train_tasks=2, num_test_tasks=2, hidden=(4,), steps=2, num_samples=2,
                              eval_samples=2, code_dim=2, prior_hidden=(4,), rank=1, priors=("metaprior",))
    fixed = ps.run_config(cfg, "fixed", 0)
    assert fixed.bnnp.prior_kind == "unitwise" and fixed.training.prior_fraction == 0.0
    generated = ps.run_config(cfg, "metaprior", 0)
    assert (generated.bnnp.prior_kind, generated.bnnp.prior_code_dim, generated.bnnp.prior_rank) == ("metaprior", 2, 1)
    results = ps.run(cfg, tmp_path)
    row = results["priors"]["metaprior"]
    assert row["num_prior_parameters"] == metaprior_prior.num_parameters(
        bnnp.init(jax.random.PRNGKey(0), generated.bnnp).prior)
    assert np.isfinite(row["target_lpd_per_point"]) and len(row["target_lpd_per_task_point"]) == 2
    assert (tmp_path / "prior_comparison.png").stat().st_size > 100

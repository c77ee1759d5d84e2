"""What a training run records for the prior-learning diagnosis: the objective's terms
and sigma_y at every evaluation, and the training-curve figure that plots them."""

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np

from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.bnnp import objectives
from bnnp_jax.training import plots
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train
from bnnp_jax.training.report import heldout, objective_terms, training_evaluator


def _tiny_config():
    cfg = run_config.load("configs/sawtooth_quick.yaml")
    small = dataclasses.replace(cfg.bnnp, hidden=(4, 4))
    return dataclasses.replace(cfg, bnnp=small, training=dataclasses.replace(
        cfg.training, eval_tasks=3, eval_samples=4, plot_samples=16))


def test_objective_terms_match_the_objective():
    cfg = _tiny_config()
    state, _ = train.init_state(cfg)
    tasks = heldout(cfg)
    got = objective_terms(tasks, 4, seed=5)(state.params)
    # vmapped; jitted (eager, op by op, it was most of the test's time)
    ref = jax.jit(lambda p: objectives.batch_terms(jax.random.PRNGKey(5 + 3), p, tasks, 4, None, 1))(state.params)
    assert got["sigma_y"] == float(jnp.mean(bnnp.sigma_y(state.params)))
    for name in ("ctxt_ell", "trgt_ppl", "kl"):
        np.testing.assert_allclose(got[name], float(jnp.mean(getattr(ref, name))), rtol=1e-5)
    assert got["kl"] > 0


def test_training_evaluator_records_prior_mmd_and_terms():
    cfg = _tiny_config()
    state, _ = train.init_state(cfg)
    out = training_evaluator(cfg, state.params)(state.params)
    assert {"mmd2_prior", "sigma_y", "ctxt_ell", "trgt_ppl", "kl", "log_predictive_density"} <= set(out)
    assert all(np.isfinite(v) for v in out.values())


def test_training_curve_adds_prior_panels(tmp_path):
    ev = [{"step": s, "log_predictive_density": -1.0 + s, "mmd2_prior": 0.2 / (1 + s), "sigma_y": 0.05}
          for s in (0, 1, 2)]
    plots.training_curve({"loss": [3.0, 2.0, 1.0], "eval": ev}, tmp_path / "with.png")
    plain = [{k: e[k] for k in ("step", "log_predictive_density")} for e in ev]
    plots.training_curve({"loss": [3.0, 2.0, 1.0], "eval": plain}, tmp_path / "without.png")
    wide, narrow = (mpimg.imread(tmp_path / f).shape[1] for f in ("with.png", "without.png"))
    assert wide == 2 * narrow  # four panels against two


def test_evaluator_survives_an_ill_conditioned_learned_prior(x64):
    """Evaluation builds each posterior from the gathered context, as training does,
    so a context smaller than the layer input takes the dual form, which never inverts
    the prior's covariance factor. A factor with cond(L) ~ 1e11 here (the paper-settings
    sawtooth run reached 1e11) is beyond the primal form even in float64."""
    cfg = _tiny_config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_range=(12, 14)),
                              bnnp=dataclasses.replace(cfg.bnnp, hidden=(10, 10), inference_hidden=(8,), dtype="float64"))
    state, _ = train.init_state(cfg)
    params = state.params
    raw = params.prior[1].scale  # [O, D, D], D = 11 > every context (at most 7 points)
    d = raw.shape[-1]
    ill = jnp.tril(jnp.ones((d, d)), -1) + jnp.diag(jnp.full(d, np.log(0.1)))
    params = params.replace(prior=[params.prior[0], params.prior[1]._replace(scale=jnp.broadcast_to(ill, raw.shape)),
                                   params.prior[2]])
    assert np.linalg.cond(np.tril(np.ones((d, d)), -1) + 0.1 * np.eye(d)) > 1e10
    out = training_evaluator(cfg, state.params)(params)
    assert all(np.isfinite(v) for v in out.values()), out


def test_report_of_a_one_d_bnnp_run(tmp_path):
    """metrics.json of a 1-D BNNP run: held-out metrics, the prior MMD beside the
    untrained prior's, the prior spread of both, and the figures."""
    from bnnp_jax.training.report import write_report

    cfg = _tiny_config()
    state, _ = train.init_state(cfg)
    history = {"loss": [3.0, 2.0], "eval": [], "seconds": 1.0}
    metrics = write_report(tmp_path, cfg, state.params, state.params, history)
    assert np.isfinite(metrics["heldout"]["log_predictive_density"])
    mmd = metrics["prior_mmd"]
    assert np.isfinite(mmd["mmd2_learned_prior"]) and np.isfinite(mmd["mmd2_untrained_prior"])
    spread = metrics["prior_spread"]
    assert spread["learned"] == spread["untrained"]  # the same params, scored with the same key
    np.testing.assert_allclose([layer["init_sd"] for layer in spread["learned"]["layers"]], [2**-0.5, 5**-0.5, 5**-0.5])
    for name in ("prior_samples.png", "posterior_predictive.png", "training_curve.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 100, name

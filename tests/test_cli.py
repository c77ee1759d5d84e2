"""The ``bnnp`` command line across model kinds: ``_enable_dtype`` reads the dtype of
the model the run config trains (float64 BNAM and neural-process runs through
``bnnp train``); ``predict`` and ``sample-prior`` serve every model kind, in float32
and float64, and write a plot beside their npz; a study subcommand whose module
fails to import stays visible and reports the error."""

import chex
import jax
import numpy as np
import pytest

from bnnp_jax import cli
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train

RUN = """
data: {family: sawtooth, n_range: [10, 20]}
training: {steps: 2, tasks_per_step: 2, num_samples: 2, steps_per_call: 1, checkpoint_every: 1,
           eval_every: 1000, eval_tasks: 2, eval_samples: 2, plot_samples: 4, seed: 0}
"""
ARCH = {
    "bnam": "bnam: {x_dim: 1, y_dim: 1, d_model: 8, num_heads: 2, num_blocks: 1, ffn_width: 8, "
            "inference_hidden: [8], dtype: float64}",
    "np": "np: {x_dim: 1, y_dim: 1, width: 8, encoder_depth: 1, decoder_depth: 1, latent_dim: 4, "
          "num_heads: 2, num_blocks: 1, dtype: float64}",
}


@pytest.fixture
def restore_x64():
    """``bnnp train`` switches x64 on process-wide; put the flag back for the rest of the suite."""
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("model", [pytest.param("bnam", marks=pytest.mark.slow), "np"])  # bnam: ~1 min; its float64
# predict and sample-prior stay in the default suite (test_predict_and_sample_prior_of_float64_runs)
def test_float64_config_of_any_model_trains_through_the_cli(model, tmp_path, capsys, restore_x64):
    cfg = tmp_path / f"{model}64.yaml"
    cfg.write_text(f"model: {model}\n{ARCH[model]}\n{RUN}")
    config = run_config.load(cfg)
    assert config.arch.dtype == "float64" and config.bnnp.dtype == "float32"  # the old check read the latter
    jax.config.update("jax_enable_x64", False)
    code = cli.main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    _, params, history = train.load_run(tmp_path / "run")
    assert len(history["loss"]) == 2 and np.all(np.isfinite(history["loss"]))
    floats = [a for a in jax.tree.leaves(params) if np.issubdtype(np.asarray(a).dtype, np.floating)]
    assert floats and all(np.asarray(a).dtype == np.float64 for a in floats)
    # evaluate reloads the run through the same switch
    jax.config.update("jax_enable_x64", False)
    assert cli.main(["evaluate", str(tmp_path / "run")]) == 0, capsys.readouterr().err


def test_enable_dtype_reads_the_trained_models_section(restore_x64):
    jax.config.update("jax_enable_x64", False)
    cli._enable_dtype(run_config.RunConfig(model="cnp", np=run_config.NPConfig(dtype="float32")))
    assert not jax.config.jax_enable_x64
    cli._enable_dtype(run_config.RunConfig(model="cnp", np=run_config.NPConfig(dtype="float64")))
    assert jax.config.jax_enable_x64


@pytest.fixture
def broken_studies(tmp_path, monkeypatch):
    """Two study modules that fail at import: a missing dependency and a module that raises."""
    (tmp_path / "bnnp_broken_study.py").write_text("raise RuntimeError('study module crashed at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.STUDIES, "missing-dep", ("bnnp_jax_no_such_module", "study with a missing dependency"))
    monkeypatch.setitem(cli.STUDIES, "crashing", ("bnnp_broken_study", "study that raises on import"))


def test_study_that_fails_to_import_stays_listed_and_reports_the_error(broken_studies, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "missing-dep" in help_text and "crashing" in help_text
    assert "UNAVAILABLE: ModuleNotFoundError" in help_text and "UNAVAILABLE: RuntimeError" in help_text
    for argv, match in ((["missing-dep"], "No module named 'bnnp_jax_no_such_module'"),
                        (["crashing", "--quick", "--out", "d"], "study module crashed at import"),
                        (["crashing", "-h"], "RuntimeError")):
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"bnnp: error: the {argv[0]!r} study is unavailable")
        assert match in lines[0] and "Traceback" not in err
    # the working subcommands are untouched, and unknown arguments are still refused for them
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "somewhere", "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_shipped_studies_import():
    """Every shipped study registers its real subcommand (no ``UNAVAILABLE`` placeholder)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in cli.STUDIES:
        assert sub.choices[name].get_default("import_error") is None, sub.choices[name].description


# ----- predict and sample-prior serve every model kind ------------------------------

TINY = {
    "bnnp": "bnnp: {x_dim: 1, y_dim: 1, hidden: [8], dtype: DTYPE}",
    "bnam": ARCH["bnam"].replace("float64", "DTYPE"),
    "np": ARCH["np"].replace("float64", "DTYPE"),
}


def _run_dir(root, model, dtype):
    """A run directory as ``bnnp train`` leaves it (config.yaml, a checkpoint), holding the
    untrained parameters: what predict and sample-prior read, without a training compile."""
    from bnnp_jax.config import dump_yaml
    from bnnp_jax.training import checkpoint

    run = root / f"{model}_{dtype}"
    run.mkdir()
    (root / f"{model}.yaml").write_text(f"model: {model}\n{TINY.get(model, TINY['np']).replace('DTYPE', dtype)}\n{RUN}")
    config = run_config.load(root / f"{model}.yaml")
    cli._enable_dtype(config)
    state, _ = train.init_state(config)
    dump_yaml(config, run / "config.yaml")
    checkpoint.save(run / "checkpoints", 0, state, {"history": {"loss": [], "eval": [], "seconds": 0.0}})
    return run


@pytest.fixture
def xy_files(tmp_path):
    x = np.linspace(-1, 1, 5)[:, None]
    np.savez(tmp_path / "ctx.npz", x=x, y=np.sin(3 * x))
    np.savez(tmp_path / "tgt.npz", x=np.linspace(-1.5, 1.5, 7)[:, None])
    return ["--context", str(tmp_path / "ctx.npz"), "--targets", str(tmp_path / "tgt.npz")]


def _predict(capsys, run, xy_files, out, *extra):
    code = cli.main(["predict", str(run), *xy_files, "--num-samples", "3", "--out", str(out), *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("model", ["bnnp", "bnam", "cnp", "np"])
def test_predict_and_sample_prior_serve_every_model(model, tmp_path, capsys, xy_files, restore_x64):
    run = _run_dir(tmp_path, model, "float32")
    has_draws = model in ("bnnp", "bnam")
    code, err = _predict(capsys, run, xy_files, tmp_path / "pred.npz", *(["--samples"] if has_draws else []))
    assert code == 0, err
    out = np.load(tmp_path / "pred.npz")
    chex.assert_shape([out["mean"], out["variance"]], (7, 1))
    assert (tmp_path / "pred.png").stat().st_size > 0
    assert np.all(np.isfinite(out["mean"])) and np.all(out["variance"] > 0)
    if has_draws:
        chex.assert_shape(out["samples"], (3, 7, 1))
        np.testing.assert_allclose(out["samples"].mean(0), out["mean"], rtol=1e-5, atol=1e-6)
    else:  # a neural process gives no joint function draws: --samples is refused, naming it
        assert "samples" not in out
        code, err = _predict(capsys, run, xy_files, tmp_path / "refused.npz", "--samples")
        assert code == 2 and err.startswith("bnnp: error: --samples: model") and "no joint" in err
        assert not (tmp_path / "refused.npz").exists()

    code = cli.main(["sample-prior", str(run), "--num", "3", "--grid", "20", "--out", str(tmp_path / "prior.npz")])
    err = capsys.readouterr().err
    if has_draws:
        assert code == 0, err
        prior = np.load(tmp_path / "prior.npz")
        chex.assert_shape(prior["x"], (20, 1))
        chex.assert_shape(prior["f"], (3, 20, 1))
        assert np.all(np.isfinite(prior["f"])) and (tmp_path / "prior.png").stat().st_size > 0
    else:
        assert code == 2 and err.startswith("bnnp: error: sample-prior: model") and "neural process" in err
        assert not (tmp_path / "prior.npz").exists()


@pytest.mark.parametrize("model", ["bnnp", "bnam", "anp"])
def test_predict_and_sample_prior_of_float64_runs(model, tmp_path, capsys, xy_files, restore_x64):
    run = _run_dir(tmp_path, model, "float64")
    jax.config.update("jax_enable_x64", False)  # the commands switch it on from the run's config
    code, err = _predict(capsys, run, xy_files, tmp_path / "pred.npz")
    assert code == 0, err
    out = np.load(tmp_path / "pred.npz")
    assert out["mean"].dtype == out["variance"].dtype == np.float64 and np.all(np.isfinite(out["mean"]))
    if model == "bnnp":  # the sample-prior path is shared by BNNP and BNAM; one float64 check of it
        jax.config.update("jax_enable_x64", False)
        code = cli.main(["sample-prior", str(run), "--num", "2", "--grid", "10", "--out", str(tmp_path / "p.npz")])
        assert code == 0, capsys.readouterr().err
        assert np.load(tmp_path / "p.npz")["f"].dtype == np.float64


def test_predict_batch_size_is_for_bnnp_runs(tmp_path, capsys, xy_files, restore_x64):
    code, err = _predict(capsys, _run_dir(tmp_path, "cnp", "float32"), xy_files, tmp_path / "p.npz",
                         "--batch-size", "2")
    assert code == 2 and err.startswith("bnnp: error: --batch-size: only bnnp runs")

"""CLI defects of issue 17: ``_enable_dtype`` reads the dtype of the model the run
config trains (float64 BNAM and neural-process runs through ``bnnp train``), and a
study subcommand whose module fails to import stays visible and reports the error."""

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


@pytest.mark.parametrize("model", ["bnam", "np"])
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

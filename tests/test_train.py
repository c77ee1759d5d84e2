"""Meta-training: loss goes down, resume is bit-identical, sharding matches one
device, divergence stops with the last good checkpoint, config errors name keys."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from bnnp_jax.training import checkpoint
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train
from bnnp_jax.config import ConfigError, from_dict

TINY = """
model: bnnp
data: {family: sawtooth, n_range: [20, 30]}
bnnp: {x_dim: 1, y_dim: 1, hidden: [8, 8], inference_hidden: [16]}
training: {steps: 30, tasks_per_step: 4, num_samples: 4, steps_per_call: 5, checkpoint_every: 10,
           eval_every: 1000, lr_start: 0.01, lr_end: 0.001, seed: 3, context_buckets: 1}
"""
# context_buckets 1: these tests are about the loop (loss, resume, divergence, checkpoints), and one
# padded context size compiles several times faster than four switch branches. Training with the
# default buckets runs through the CLI in test_cli; bucketed objectives are checked in test_dual_form.


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return run_config.load(path)


@pytest.fixture(scope="module")
def full_run(tiny_config, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    state, history = train.fit(tiny_config, run_dir, progress=False)
    return run_dir, state, history


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def test_thirty_steps_lower_the_loss(full_run):
    _, state, history = full_run
    loss = np.asarray(history["loss"])
    assert loss.shape == (30,) and np.all(np.isfinite(loss))
    assert loss[-10:].mean() < loss[:5].mean()
    assert int(state.step) == 30


def test_resume_is_bit_identical(tiny_config, full_run, tmp_path):
    """Drop the last checkpoint of a finished run (as if killed after step 20), resume, compare."""
    import shutil

    src, full_state, _ = full_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(src, run_dir)
    checkpoint.list_checkpoints(run_dir / "checkpoints")[-1].unlink()
    assert checkpoint.list_checkpoints(run_dir / "checkpoints")[-1].name.endswith("000000020.pkl")
    resumed, history = train.fit(tiny_config, run_dir, resume=True, progress=False)
    assert len(history["loss"]) == 30
    for a, b in zip(_leaves(resumed), _leaves(full_state)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_stops_after_the_chunk_checkpoints_and_resumes_identically(tiny_config, full_run, tmp_path):
    """SIGTERM at step 15 (between the checkpoints at 10 and 20): the loop finishes the
    running chunk, writes a checkpoint and history.json at that step and returns; resuming
    ends where the uninterrupted run does, bit for bit."""
    import signal

    _, full_state, full_history = full_run
    run_dir = tmp_path / "stopped"
    seen = []

    def on_eval(params):  # called by the loop after the chunk ending at each eval step
        seen.append(1)
        if len(seen) == 2:  # after the chunk ending at step 15 (step 0 is evaluated first)
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    cfg = dataclasses.replace(tiny_config, training=dataclasses.replace(tiny_config.training, eval_every=15))
    previous = signal.getsignal(signal.SIGTERM)
    state, history = train.fit(cfg, run_dir, progress=False, evaluate_fn=on_eval)
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is removed again
    assert int(state.step) == 15 and len(history["loss"]) == 15
    assert checkpoint.list_checkpoints(run_dir / "checkpoints")[-1].name.endswith("000000015.pkl")
    assert len(json.loads((run_dir / "history.json").read_text())["loss"]) == 15
    resumed, history = train.fit(tiny_config, run_dir, resume=True, progress=False)
    np.testing.assert_array_equal(history["loss"], full_history["loss"])
    for a, b in zip(_leaves(resumed), _leaves(full_state)):
        np.testing.assert_array_equal(a, b)


def test_checkpoints_keep_last_two_and_load_run(full_run, tiny_config):
    run_dir, state, _ = full_run
    names = [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")]
    assert names == ["ckpt_000000020.pkl", "ckpt_000000030.pkl"]
    config, params, history = train.load_run(run_dir)
    assert config == tiny_config and len(history["loss"]) == 30
    for a, b in zip(_leaves(params), _leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_divergence_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
    bad = dataclasses.replace(tiny_config, training=dataclasses.replace(tiny_config.training, lr_start=1e9, lr_end=1e9))
    with pytest.raises(train.TrainingDiverged, match="non-finite loss") as err:
        train.fit(bad, tmp_path, progress=False)
    assert ("bnnp.dtype: float64" in str(err.value)) == (bad.arch.dtype == "float32")
    for p in checkpoint.list_checkpoints(tmp_path / "checkpoints"):
        template, _ = train.init_state(bad)
        _, state, _ = checkpoint.restore(p, template)
        assert all(np.all(np.isfinite(a)) for a in _leaves(state.params))


def test_corrupt_checkpoint_is_reported(full_run, tmp_path, tiny_config):
    template, _ = train.init_state(tiny_config)
    path = tmp_path / "ckpt_000000001.pkl"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.restore(path, template)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.restore_latest(tmp_path / "empty", template)


@pytest.mark.slow  # over a minute on 2 cores
def test_sharded_equals_unsharded(tmp_path):
    """Run in a subprocess with 4 host devices; compare one chunk of steps. In
    float64, so that reduction-order differences between the sharded and the
    single-device programs (about 1e-6 relative in float32) stay far below the tolerance."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("inference_hidden: [16]", "inference_hidden: [16], dtype: float64"))
    script = textwrap.dedent(f"""
        import dataclasses, jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        from bnnp_jax.training import config as run_config
        from bnnp_jax.training import loop as train
        assert len(jax.devices()) == 4, jax.devices()
        c = run_config.load({str(cfg)!r})
        outs = []
        for shard in (False, True):
            cc = dataclasses.replace(c, training=dataclasses.replace(c.training, shard=shard))
            state, opt = train.init_state(cc)
            new, losses = train.make_train_chunk(cc, opt, train.make_mesh(cc))(state, 3)
            outs.append([np.asarray(a) for a in jax.tree.leaves(new.params)] + [np.asarray(losses)])
        for a, b in zip(*outs):
            assert a.dtype != np.float32 or a.size == 0, a.dtype
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        print("SHARDED_OK")
    """)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert "SHARDED_OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("data,match", [
    ({"training": {"stepz": 3}}, r"unknown config key\(s\) \['stepz'\] in 'training'; valid keys are"),
    ({"bnnp": {"hidden": [8], "widht": 3}}, r"'widht'"),
    ({"training": {"steps": 0}}, r"training.steps"),
    ({"training": {"lr_start": "fast"}}, r"training.lr_start: expected a number"),
    ({"training": {"objective": "elbo"}}, r"training.objective"),
    ({"data": {"family": "sawtoth"}}, r"data.family"),
    ({"bnnp": {"activation": "relu6"}}, r"activation"),
    ({"modle": "bnnp"}, r"unknown config key\(s\) \['modle'\]; valid keys are \[.*'bnnp', 'data', 'model'.*'training'\]"),
])
def test_config_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(run_config.RunConfig, data)


def test_cli_reports_bad_config_with_exit_2(tmp_path, capsys):
    from bnnp_jax.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("training: {steps: -1}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "training.steps" in err and "Traceback" not in err


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    import yaml

    run_cfgs = [p for p in configs if not p.name.startswith(("kl_", "metaprior", "goldilocks", "large_meta"))]  # study configs, tested with their studies
    bnnp_cfgs = [p for p in run_cfgs if yaml.safe_load(p.read_text()).get("model", "bnnp") in run_config.MODELS]
    assert len(bnnp_cfgs) >= 14, [p.name for p in bnnp_cfgs]
    for p in bnnp_cfgs:
        run_config.load(p)


def test_embedded_default_config_is_the_shipped_quick_config():
    """`bnnp train` with no CONFIG uses a packaged copy of configs/main_job.yaml; keep them equal."""
    from pathlib import Path

    from bnnp_jax import cli

    shipped = Path(__file__).resolve().parents[1] / "configs" / "main_job.yaml"
    assert cli.DEFAULT_CONFIG.read_text() == shipped.read_text()
    args = cli.build_parser().parse_args(["train"])
    assert args.config is None


@pytest.mark.slow  # over a minute on 2 cores
def test_digits_report_writes_image_plots(tmp_path):
    """The digits branch of the run report: prior draws as 8x8 images and 8x8 -> 16x16 super-resolution."""
    from bnnp_jax.training.report import write_report

    cfg = tmp_path / "digits.yaml"
    cfg.write_text("model: bnnp\ndata: {family: digits}\nbnnp: {x_dim: 2, y_dim: 1, hidden: [4], inference_hidden: [8]}\n"
                   "training: {steps: 2, tasks_per_step: 2, num_samples: 2, steps_per_call: 2, checkpoint_every: 2,\n"
                   "           eval_every: 1000, eval_tasks: 4, eval_samples: 4, plot_samples: 8}\n")
    config = run_config.load(cfg)
    state, history = train.fit(config, tmp_path / "run", progress=False)
    untrained, _ = train.init_state(config)
    metrics = write_report(tmp_path / "run", config, state.params, untrained.params, history)
    assert np.isfinite(metrics["heldout"]["log_predictive_density"])
    for name in ("prior_samples.png", "super_resolution.png", "training_curve.png"):
        assert (tmp_path / "run" / name).stat().st_size > 1000, name

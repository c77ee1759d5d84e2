"""Issue 8, part 1 (files and command line): the config loader, checkpoint
loading and the ``bnnp`` CLI. Config and checkpoint errors name the key or
file and the problem; CLI usage errors exit with status 2 and print one
``bnnp: error:`` line, no traceback (checked in-process through
``cli.main`` and, for the process exit status itself, in subprocesses).

The cases in ``NONFINITE_SEED_AND_PARAMS_CONFIG`` and ``test_cli_bad_counts_and_unwritable_out``
are listed in docs/robustness.md.
"""

import hashlib
import pickle
import shutil
import subprocess
import textwrap

import numpy as np
import pytest
import yaml
from test_robustness_common import TINY_YAML, cli_command, shared_run, subprocess_env, write_config

from bnnp_jax import cli
from bnnp_jax.training import checkpoint
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train
from bnnp_jax.config import ConfigError

BASE = yaml.safe_load(TINY_YAML)


@pytest.fixture(scope="module")
def run():
    """``(run_dir, config, state)`` with an untrained step-0 checkpoint (read-only)."""
    return shared_run()


# ----- config loader ---------------------------------------------------------------


def _mutated(path: str, value):
    data = yaml.safe_load(TINY_YAML)
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return yaml.safe_dump(data)


CONFIG_ERRORS = [
    ("unknown_top_key", "modle: bnnp\n" + TINY_YAML, r"unknown config key\(s\) \['modle'\]; valid keys are \["),
    ("unknown_nested_key", _mutated("training.stpes", 3), r"unknown config key\(s\) \['stpes'\] in 'training'"),
    ("invalid_yaml", "training: {steps: [1,}\n", r"not valid YAML"),
    ("top_level_list", "- 1\n- 2\n", r"expected a mapping, got list"),
    ("null_section", _mutated("training", None), r"training: expected a mapping, got NoneType"),
    ("steps_string", _mutated("training.steps", "ten"), r"training\.steps: expected an integer, got 'ten'"),
    ("steps_fraction", _mutated("training.steps", 1.5), r"training\.steps: expected an integer, got 1\.5"),
    ("steps_bool", _mutated("training.steps", True), r"training\.steps: expected an integer, got True"),
    ("hidden_scalar", _mutated("bnnp.hidden", 8), r"bnnp\.hidden: expected a list, got 8"),
    ("steps_zero", _mutated("training.steps", 0), r"training\.steps: must be a positive integer, got 0"),
    ("num_samples_zero", _mutated("training.num_samples", 0), r"training\.num_samples: must be a positive"),
    ("lr_negative", _mutated("training.lr_start", -1.0), r"training\.lr_start: learning rates must be > 0"),
    ("prior_fraction_high", _mutated("training.prior_fraction", 1.5), r"training\.prior_fraction: must be in \[0, 1\]"),
    ("prior_fraction_nan", _mutated("training.prior_fraction", float("nan")), r"training\.prior_fraction: must be in"),
    ("beta_negative", _mutated("training.beta", -0.5), r"training\.beta: must be >= 0"),
    ("objective_unknown", _mutated("training.objective", "elbo"), r"training\.objective: must be one of"),
    ("batch_size_zero", _mutated("training.batch_size", 0), r"training\.batch_size: must be a positive integer"),
    ("checkpoint_misaligned", _mutated("training.checkpoint_every", 7), r"training\.checkpoint_every: must be a "
                                                                         r"multiple of steps_per_call=5"),
    ("activation_unknown", _mutated("bnnp.activation", "swish"), r"BNNPConfig\.activation: must be one of"),
    ("hidden_zero_width", _mutated("bnnp.hidden", [0]), r"BNNPConfig\.hidden: widths must be positive"),
    ("sigma_y_zero", _mutated("bnnp.sigma_y_init", 0.0), r"BNNPConfig\.sigma_y_init: must be > 0"),
    ("dtype_unknown", _mutated("bnnp.dtype", "float16"), r"BNNPConfig\.dtype: must be 'float32' or 'float64'"),
    ("x_dim_vs_family", _mutated("bnnp.x_dim", 2), r"bnnp\.x_dim: family 'sawtooth' has x_dim=1, config says 2"),
    ("family_unknown", _mutated("data.family", "nope"), r"data\.family: unknown family 'nope'; valid"),
    ("n_range_reversed", _mutated("data.n_range", [50, 10]), r"data\.n_range: need \[lo, hi\] with 1 <= lo < hi"),
    ("proportion_reversed", _mutated("data.context_proportion", [0.6, 0.2]), r"data\.context_proportion: need"),
    ("model_unknown", _mutated("model", "gpt"), r"model: must be one of"),
]


@pytest.mark.parametrize("case,text,match", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_config_loader_rejects(tmp_path, case, text, match):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        run_config.load(path)


def test_config_file_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        run_config.load(tmp_path / "nope.yaml")


NONFINITE_SEED_AND_PARAMS_CONFIG = [
    ("beta_nan", _mutated("training.beta", float("nan")), r"training\.beta"),
    ("beta_inf", _mutated("training.beta", float("inf")), r"training\.beta"),
    ("lr_start_inf", _mutated("training.lr_start", float("inf")), r"training\.lr_start"),
    ("lr_end_nan_names_lr_end", _mutated("training.lr_end", float("nan")), r"training\.lr_end"),
    ("sigma_y_init_inf", _mutated("bnnp.sigma_y_init", float("inf")), r"sigma_y_init"),
    # PRNGKey keeps the low 32 bits without x64: seed 2**32 is seed 0.
    ("seed_aliases_past_32_bits", _mutated("training.seed", 2**32), r"training\.seed"),
    ("family_params_checked_at_load", _mutated("data.params", {"noise": -1.0}), r"noise"),
]


@pytest.mark.parametrize("case,text,match", NONFINITE_SEED_AND_PARAMS_CONFIG, ids=[c[0] for c in NONFINITE_SEED_AND_PARAMS_CONFIG])
def test_config_loader_rejects_nonfinite_aliased_seed_and_family_params(tmp_path, case, text, match):
    with pytest.raises(ConfigError, match=match):
        run_config.load(write_config(tmp_path, text))


# ----- checkpoints -------------------------------------------------------------------


def _blob(payload: bytes, version: int = checkpoint.FORMAT_VERSION) -> bytes:
    return checkpoint.MAGIC + version.to_bytes(4, "little") + hashlib.sha256(payload).digest() + payload


def _damage(good: bytes, how: str) -> bytes:
    if how == "truncated":
        return good[: len(good) // 2]
    if how == "short_header":
        return good[:10]
    if how == "bit_flip":
        b = bytearray(good)
        b[-100] ^= 0x01
        return bytes(b)
    if how == "empty":
        return b""
    if how == "random":
        return np.random.default_rng(0).bytes(4096)
    if how == "future_version":
        return _blob(good[checkpoint._HEADER:], 99)
    if how == "checksummed_junk":
        return _blob(b"junk that is no pickle")
    raise AssertionError(how)


DAMAGE = [
    ("truncated", r"is corrupt: checksum mismatch"),
    ("short_header", r"is corrupt: truncated header"),
    ("bit_flip", r"is corrupt: checksum mismatch"),
    ("empty", r"is corrupt or not a bnnp checkpoint"),
    ("random", r"is corrupt or not a bnnp checkpoint"),
    ("future_version", r"unsupported format version 99"),
    ("checksummed_junk", r"holds no bnnp checkpoint"),
]


@pytest.mark.parametrize("how,match", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_checkpoint_is_reported(run, tmp_path, how, match):
    run_dir, _, state = run
    good = checkpoint.list_checkpoints(run_dir / "checkpoints")[-1].read_bytes()
    path = tmp_path / "ckpt_000000001.pkl"
    path.write_bytes(_damage(good, how))
    with pytest.raises(checkpoint.CheckpointError, match=match):
        checkpoint.restore(path, state)


def test_missing_checkpoints(run, tmp_path):
    _, _, state = run
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.restore(tmp_path / "ckpt_000000005.pkl", state)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint found in"):
        checkpoint.restore_latest(tmp_path / "nothing_here", state)
    with pytest.raises(checkpoint.CheckpointError, match="is not a run directory"):
        train.load_run(tmp_path)


def test_checkpoint_from_another_config_is_named(run):
    """A template with 6 hidden units instead of 4 in the first prior layer."""
    run_dir, _, state = run
    prior = list(state.params.prior)
    prior[0] = prior[0]._replace(mean=np.zeros((6, 2), np.float32))
    template = state._replace(params=state.params.replace(prior=prior))
    with pytest.raises(checkpoint.CheckpointError, match=r"\.params\.prior\[0\]\.mean is \(4, 2\) float32, the model "
                                                         r"expects \(6, 2\) float32: was it written with a different"):
        checkpoint.restore(checkpoint.list_checkpoints(run_dir / "checkpoints")[-1], template)


def test_corrupt_newest_falls_back_with_warning(run, tmp_path):
    _, _, state = run
    d = tmp_path / "ck"
    checkpoint.save(d, 10, state)
    newest = checkpoint.save(d, 20, state)
    newest.write_bytes(newest.read_bytes()[:-7])
    with pytest.warns(UserWarning, match=r"skipping unusable checkpoint: .*ckpt_000000020.pkl is corrupt"):
        step, _, _ = checkpoint.restore_latest(d, state)
    assert step == 10
    checkpoint.list_checkpoints(d)[0].write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint: "):
        checkpoint.restore_latest(d, state)


def test_save_prunes_and_clears_orphaned_temp_files(run, tmp_path):
    _, _, state = run
    orphan = tmp_path / ".ckpt_tmp_killed"
    orphan.write_bytes(b"half a checkpoint")
    for step in (5, 10, 15):
        checkpoint.save(tmp_path, step, state)
    assert not orphan.exists()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt_000000010.pkl", "ckpt_000000015.pkl"]


def test_format_1_checkpoints_still_load(run, tmp_path):
    _, _, state = run
    import jax

    payload = pickle.dumps({"step": 3, "leaves": [np.asarray(a) for a in jax.tree.leaves(state)], "extra": {"k": 1}})
    env = {"version": 1, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    path = tmp_path / "ckpt_000000003.pkl"
    path.write_bytes(pickle.dumps(env))
    step, restored, extra = checkpoint.restore(path, state)
    assert step == 3 and extra == {"k": 1}
    env["payload"] = payload[:-1] + b"\x00"
    path.write_bytes(pickle.dumps(env))
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
        checkpoint.restore(path, state)


# ----- the CLI, in-process ------------------------------------------------------------


def _main(capsys, *args):
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def _assert_usage_error(code, err, match):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("bnnp: error: ")]
    assert len(lines) == 1, err
    import re

    assert re.search(match, lines[0]), lines[0]


def test_cli_train_config_errors(capsys, tmp_path, run):
    run_dir = run[0]
    cases = [
        ((tmp_path / "nope.yaml",), r"config file not found"),
        ((write_config(tmp_path / "a", "trainig: {}\n"),), r"unknown config key\(s\) \['trainig'\]"),
        ((write_config(tmp_path / "b"), "--steps", "0", "--out", tmp_path / "o"), r"training\.steps: must be a positive"),
        ((write_config(tmp_path / "c"), "--out", run_dir), r"already holds checkpoints: pass --resume"),
        ((write_config(tmp_path / "d", _mutated("data.params", {"noise": -1.0})), "--out", tmp_path / "o2"),
         r"noise must be >= 0"),
    ]
    for args, match in cases:
        _assert_usage_error(*_main(capsys, "train", *args), match)


def test_cli_evaluate_errors(capsys, tmp_path, run):
    _assert_usage_error(*_main(capsys, "evaluate", tmp_path / "nope"), r"is not a run directory \(no config.yaml\)")
    broken = tmp_path / "broken"
    shutil.copytree(run[0], broken)
    ckpt = checkpoint.list_checkpoints(broken / "checkpoints")[-1]
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.warns(UserWarning):
        _assert_usage_error(*_main(capsys, "evaluate", broken), r"no usable checkpoint: .* is corrupt")


def _csv(tmp_path, name, header, rows):
    p = tmp_path / name
    p.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return p


def test_cli_predict_errors_and_success(capsys, tmp_path, run):
    run_dir = run[0]
    x = np.linspace(-1, 1, 5)
    ctx = _csv(tmp_path, "ctx.csv", "x0,y0", zip(x, np.sin(3 * x)))
    tgt = _csv(tmp_path, "tgt.csv", "x0", zip(np.linspace(-1.5, 1.5, 4)))
    nan_ctx = _csv(tmp_path, "nan.csv", "x0,y0", [(0.1, 0.2), (0.3, "nan")])
    wide_ctx = _csv(tmp_path, "wide.csv", "x0,x1,y0", [(0.1, 0.2, 0.3)])
    common = ("--num-samples", "3", "--out", tmp_path / "pred.npz")
    cases = [
        (("--context", nan_ctx, "--targets", tgt), r"--context: 'y' in .* non-finite value.*row 1"),
        (("--context", wide_ctx, "--targets", tgt), r"x_c: x_dim \(last dimension\) is 2 .*model expects 1"),
        (("--context", ctx, "--targets", tmp_path / "missing.csv"), r"--targets: file not found"),
        (("--context", ctx, "--targets", tgt, "--batch-size", "0"), r"batch_size: must be a positive integer, got 0"),
    ]
    for args, match in cases:
        _assert_usage_error(*_main(capsys, "predict", run_dir, *args, *common), match)
    _assert_usage_error(*_main(capsys, "predict", run_dir, "--context", ctx, "--targets", tgt, "--num-samples", "0"),
                        r"num_samples: must be a positive integer, got 0")
    code, err = _main(capsys, "predict", run_dir, "--context", ctx, "--targets", tgt, "--samples", *common)
    assert code == 0, err
    out = np.load(tmp_path / "pred.npz")
    assert out["samples"].shape == (3, 4, 1) and np.all(np.isfinite(out["samples"]))


def test_cli_argparse_errors_exit_2(capsys):
    for argv in ([], ["nope"], ["predict", "somewhere"], ["train", "c.yaml", "--steps", "many"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["sample-prior", "RUN", "--num", "-3", "--out", "OUT"],  # was a TypeError traceback
    ["sample-prior", "RUN", "--num", "0", "--out", "OUT"],  # was an empty file and exit 0
    ["predict", "RUN", "--context", "CTX", "--targets", "TGT", "--seed", "4294967296", "--out", "OUT"],  # aliased 0
    ["predict", "RUN", "--context", "CTX", "--targets", "TGT", "--num-samples", "3", "--out", "UNDER_FILE"],
], ids=["num_negative", "num_zero", "seed_past_32_bits", "out_under_a_file"])
def test_cli_bad_counts_and_unwritable_out(capsys, tmp_path, run, argv):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    x = np.linspace(-1, 1, 5)
    ctx = _csv(tmp_path, "ctx.csv", "x0,y0", zip(x, np.sin(3 * x)))
    tgt = _csv(tmp_path, "tgt.csv", "x0", zip(np.linspace(-1.5, 1.5, 4)))  # the shapes compiled above
    subs = {"RUN": str(run[0]), "OUT": str(tmp_path / "s.npz"), "CTX": str(ctx), "TGT": str(tgt),
            "UNDER_FILE": str(afile / "p.npz")}
    argv = [subs.get(a, a) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own report of a bad argument type
        code = e.code
    except BaseException as e:  # a traceback
        code = f"raised {type(e).__name__}"
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "error: " in err, err
    assert not (tmp_path / "s.npz").exists()


# ----- the CLI as a process -----------------------------------------------------------


def test_cli_process_exit_status_and_no_traceback(tmp_path):
    bad = write_config(tmp_path, _mutated("training.lr_start", -1.0))
    runs = [
        (cli_command("train", str(bad)), r"bnnp: error: .*training\.lr_start: learning rates must be > 0"),
    ]
    for cmd, match in runs:
        out = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        import re

        assert re.search(match, out.stderr), textwrap.shorten(out.stderr, 500)

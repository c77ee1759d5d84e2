"""Issue 8, parts 3 and 4: crash safety and determinism of training.

``bnnp train`` runs in a subprocess, is SIGKILLed mid-run after some
checkpoints exist, and is resumed; every checkpoint it left must be intact and
the resumed run must end with exactly the parameters (and loss history) of an
uninterrupted run with the same seed, run in yet another process. All the
processes share a persistent JAX compilation cache in the test's directory,
so the training step compiles once, and they inherit the suite's XLA flags
(optimisation passes off, see conftest; every process uses the same flags, so
the results are still bit-comparable).

The default test trains, is killed and resumes through ``train.fit`` (what ``bnnp
train`` calls; the CLI adds an evaluator, whose step-0 evaluation and end-of-run
report cost more to compile than the training); the ``slow`` test runs all three
stages through the CLI.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from test_robustness_common import cli_command, shared_run, subprocess_env, write_config

from bnnp_jax.training import checkpoint
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train

CRASH_YAML = """
model: bnnp
data: {family: sawtooth}
bnnp: {x_dim: 1, y_dim: 1, hidden: [4]}
training: {steps: 100, tasks_per_step: 2, num_samples: 2, steps_per_call: 5, checkpoint_every: 10,
           eval_every: 100000, eval_tasks: 4, eval_samples: 4, plot_samples: 16, seed: 0, context_buckets: 1}
"""
STEPS = 100
# context_buckets 1 (one padded context size, not four switch branches) and 100 steps (the kill
# still lands with 80 left): the three processes' compile and steps were most of this test's time.


def _env(tmp):
    # XLA_FLAGS come from conftest (optimisation passes off unless BNNP_TEST_FULL_OPT=1), the same in every process.
    return subprocess_env(JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                          JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def _fit_command(cfg, out, resume=False):
    """``train.fit`` in a fresh process (no CLI evaluator or report)."""
    script = textwrap.dedent(f"""
        from bnnp_jax.training import config as run_config
        from bnnp_jax.training import loop as train
        train.fit(run_config.load({str(cfg)!r}), {str(out)!r}, resume={resume}, progress=False)
    """)
    return [sys.executable, "-c", script]


def _fit_in_subprocess(tmp, cfg, out, resume=False):
    done = subprocess.run(_fit_command(cfg, out, resume), env=_env(tmp), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def _train_and_kill(tmp, cfg, out, min_step=20, cli=False):
    """Start training in a subprocess (``train.fit``, or ``bnnp train`` with ``cli``), SIGKILL it
    at a random moment after the checkpoint of ``min_step`` exists; returns the newest
    checkpoint step at the kill."""
    command = cli_command("train", str(cfg), "--out", str(out), "--no-progress") if cli else _fit_command(cfg, out)
    proc = subprocess.Popen(command, env=_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    try:
        while _newest(out) < min_step:
            assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.005)
        time.sleep(random.Random(0).uniform(0.0, 0.1))  # land anywhere: in a chunk or in a save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return _newest(out)


def _newest(out):
    paths = checkpoint.list_checkpoints(out / "checkpoints")
    return int(paths[-1].stem.split("_")[1]) if paths else -1


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _check_killed_run(out, template, reference_history):
    """Every checkpoint the killed run left restores, and holds the reference's
    loss history up to its step (same seed, different process)."""
    paths = checkpoint.list_checkpoints(out / "checkpoints")
    assert paths
    for path in paths:
        step, state, extra = checkpoint.restore(path, template)
        assert int(state.step) == step and 0 < step < STEPS
        np.testing.assert_array_equal(extra["history"]["loss"], reference_history["loss"][:step])


def _compare(reference_dir, resumed_dir, template):
    _, ref_state, ref_extra = checkpoint.restore_latest(reference_dir / "checkpoints", template)
    ref_params, ref_history = ref_state.params, ref_extra["history"]
    _, params, history = train.load_run(resumed_dir)
    for a, b in zip(_leaves(params), _leaves(ref_params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(history["loss"], ref_history["loss"])
    assert len(history["loss"]) == STEPS
    assert not list((resumed_dir / "checkpoints").glob(".ckpt_tmp_*")), "orphaned temporary checkpoint files"


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    cfg = write_config(tmp_path / "cfg", CRASH_YAML)
    template, _ = train.init_state(run_config.load(cfg))
    _fit_in_subprocess(tmp_path, cfg, tmp_path / "reference")  # compiles once, fills the cache
    reference_history = json.loads((tmp_path / "reference" / "history.json").read_text())

    out = tmp_path / "killed"
    killed_at = _train_and_kill(tmp_path, cfg, out)
    assert 20 <= killed_at < STEPS
    _check_killed_run(out, template, reference_history)

    _fit_in_subprocess(tmp_path, cfg, out, resume=True)
    _compare(tmp_path / "reference", out, template)


def test_seeds_drive_every_random_input_of_training():
    """Another seed changes the initial parameters and the tasks of a step (the
    step keys are ``fold_in(PRNGKey(seed), t)``); the same seed repeats them (and,
    across processes, the whole run: the test above)."""
    _, base, state = shared_run()  # seed 0
    other = run_config.override(base, seed=1)
    sampler = train.make_sampler(base)  # the seed enters through the key only

    def tasks(seed):
        batch = sampler(jax.random.fold_in(jax.random.PRNGKey(seed), 0), 2)
        return [np.asarray(batch.x), np.asarray(batch.y), np.asarray(batch.context)]

    def kernels(params):  # the randomly initialised leaves (the prior starts at a fixed N(0, I/D))
        leaves = jax.tree_util.tree_leaves_with_path(params)
        return [np.asarray(v) for k, v in leaves if "kernel" in jax.tree_util.keystr(k)]

    k0, k1 = kernels(state.params), kernels(train.init_state(other)[0].params)
    assert k0 and not any(np.array_equal(a, b) for a, b in zip(k0, k1))
    t0, t0_again, t1 = tasks(0), tasks(0), tasks(1)
    for a, b in zip(t0, t0_again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(t0[0], t1[0]) and not np.array_equal(t0[1], t1[1])


@pytest.mark.slow
def test_sigkill_then_cli_resume_matches_cli_run(tmp_path):
    """All through ``bnnp train``: uninterrupted, killed, ``--resume``; both write reports."""
    cfg = write_config(tmp_path / "cfg", CRASH_YAML)
    template, _ = train.init_state(run_config.load(cfg))
    ref = tmp_path / "reference"
    done = subprocess.run(cli_command("train", str(cfg), "--out", str(ref), "--no-progress"), env=_env(tmp_path),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    reference_history = json.loads((ref / "history.json").read_text())
    out = tmp_path / "killed"
    _train_and_kill(tmp_path, cfg, out, min_step=30, cli=True)
    _check_killed_run(out, template, reference_history)
    done = subprocess.run(cli_command("train", str(cfg), "--out", str(out), "--resume", "--no-progress"),
                          env=_env(tmp_path), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    _compare(ref, out, template)
    assert (ref / "metrics.json").is_file() and (out / "metrics.json").is_file()
    assert os.path.getsize(out / "config.yaml") > 0

"""Shared pieces of the robustness tests (issue 8): one tiny architecture for
every test, so the jitted ``predict``/``posterior_samples`` compile once per
shape across the modules, and a subprocess environment."""

import atexit
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bnnp_jax.training import checkpoint
from bnnp_jax.training import config as run_config
from bnnp_jax.training import loop as train
from bnnp_jax.config import dump_yaml

REPO = Path(__file__).resolve().parents[1]

TINY_YAML = """
model: bnnp
data: {family: sawtooth}
bnnp: {x_dim: 1, y_dim: 1, hidden: [4]}
training: {steps: 40, tasks_per_step: 2, num_samples: 2, steps_per_call: 5, checkpoint_every: 10,
           eval_every: 1000, eval_tasks: 4, eval_samples: 4, plot_samples: 16, seed: 0}
"""


def write_config(directory: Path, text: str = TINY_YAML) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tiny.yaml"
    path.write_text(text)
    return path


def make_run_dir(directory: Path):
    """A run directory holding the tiny config and an untrained step-0
    checkpoint (what ``bnnp train`` leaves, without training): ``(config, state)``."""
    config = run_config.load(write_config(directory / "cfg"))
    state, _ = train.init_state(config)
    dump_yaml(config, directory / "config.yaml")
    checkpoint.save(directory / "checkpoints", 0, state, {"history": {"loss": [], "eval": [], "seconds": 0.0}})
    return config, state


@functools.lru_cache(maxsize=None)
def shared_run():
    """One :func:`make_run_dir` per test process (read-only for the tests):
    ``(run_dir, config, state)``."""
    run_dir = Path(tempfile.mkdtemp(prefix="bnnp_robustness_"))
    atexit.register(shutil.rmtree, run_dir, True)
    config, state = make_run_dir(run_dir)
    return run_dir, config, state


def subprocess_env(**extra) -> dict:
    """The test process's environment with one BLAS thread, CPU JAX and the repo importable."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnnp_jax.cli", *args]

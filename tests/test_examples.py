"""The scripts in examples/ run end to end on tiny settings."""

import importlib.util
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_amortised_posterior_in_jit():
    out = _load("amortised_posterior_in_jit").main(steps=3)
    assert out["mean_shape"] == (8, 50)
    assert np.isfinite(out["final_loss"]) and out["mean_sd"] > 0


def test_learned_prior_in_numpyro():
    out = _load("learned_prior_in_numpyro").main(samples=10)
    assert out["sites"] == ["W00", "W01", "W02"]
    assert out["draws"] == 10 and np.isfinite(out["predictive_mean_at_0"])

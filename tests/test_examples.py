"""The scripts in examples/ run end to end on tiny settings."""

import functools
import importlib.util
from pathlib import Path

import numpy as np

import bnnp_jax

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_amortised_posterior_in_jit(monkeypatch):
    # The script's pp_avi on one padded context size: compiling the default four bucket
    # branches' gradient was most of this test (bucketed gradients: test_dual_form).
    monkeypatch.setattr(bnnp_jax, "pp_avi", functools.partial(bnnp_jax.pp_avi, context_buckets=1))
    out = _load("amortised_posterior_in_jit").main(steps=3)
    assert out["mean_shape"] == (8, 50)
    assert np.isfinite(out["final_loss"]) and out["mean_sd"] > 0


def test_learned_prior_in_numpyro():
    out = _load("learned_prior_in_numpyro").main(samples=10)
    assert out["sites"] == ["W00", "W01", "W02"]
    assert out["draws"] == 10 and np.isfinite(out["predictive_mean_at_0"])


def test_kl_against_ais():
    out = _load("kl_against_ais").main(steps=50, temps=20, particles=8, leapfrog=2, elbo_samples=256)
    assert np.isfinite(out["log_z_lower"]) and np.isfinite(out["log_z_upper"])
    for name in ("mfvi", "mfvi_scales_x2"):
        q = out[name]
        assert np.isfinite(q["elbo"]) and q["elbo_stderr"] > 0
        # one sandwich for every q: the bracket is log p(D)'s, shifted by each ELBO
        np.testing.assert_allclose([q["kl_lower"], q["kl_upper"]],
                                   [out["log_z_lower"] - q["elbo"], out["log_z_upper"] - q["elbo"]], rtol=1e-6)

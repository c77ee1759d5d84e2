"""MetaPrior experiments: seeded quick half-moons accuracy, illation on permuted tasks, configs, CLI."""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.metaprior import model as mp
from bnnp_jax.metaprior.fit import FitConfig, illate
from bnnp_jax.studies.metaprior import experiments as me


def _fit_moons(**fit):
    from bnnp_jax.studies.metaprior.toys import fit_moons

    cfg = me.load_config("moons", quick=True)
    cfg = dataclasses.replace(cfg, fit={**cfg.fit, **fit})
    return {**fit_moons(cfg, jax.random.PRNGKey(cfg.seed)), "eval_samples": cfg.eval_samples}


@pytest.fixture(scope="module")
def quick_moons():
    """The seeded quick run exactly as the config gives it."""
    return _fit_moons()


@pytest.fixture(scope="module")
def moons():
    """The quick run with 2000 fit steps (KL warm-up scaled with them) instead of 8000: the fit
    is step-bound, and the illation tests keep their margin with it (seed 0, when this was
    set: after ~0.96 against >= 0.9, before <= 0.27)."""
    return _fit_moons(steps=2000, kl_warmup=500)


def _accuracy(params, mcfg, x, y, num_samples) -> float:
    """Same static arguments as ``fit_moons``'s evaluation, so the compiled predict is reused."""
    logits = mp.predict(jax.random.PRNGKey(5), params, mcfg, jnp.asarray(x), num_samples)
    return float(jnp.mean(jnp.argmax(jnp.mean(jax.nn.softmax(logits, -1), 0), -1) == y))


@pytest.mark.slow  # a whole quick experiment; an accuracy result, not a unit check
def test_quick_moons_reaches_95_percent(quick_moons):
    """Seeded quick run (the config's quick: overrides); accuracy of the predictive mean."""
    assert quick_moons["metrics"]["accuracy"] >= 0.95
    x_te, y_te = quick_moons["data"][4:]
    assert _accuracy(quick_moons["params"], quick_moons["mcfg"], x_te, y_te, quick_moons["eval_samples"]) >= 0.95


@pytest.mark.parametrize("task,which", [("classes", "output"), ("input", "input")])
def test_illation_improves_permuted_task(moons, task, which):
    """Swap the two classes (or the two input coordinates), re-fit only the output (input)
    codes on 40 shots with g fixed: accuracy on the permuted test set must rise well above
    the unadapted model's."""
    x_tr, y_tr, _, _, x_te, y_te = moons["data"]
    if task == "classes":
        shots, test = (x_tr[:40], 1 - y_tr[:40]), (x_te, 1 - y_te)
    else:
        shots, test = (x_tr[:40, ::-1].copy(), y_tr[:40]), (x_te[:, ::-1].copy(), y_te)
    params, mcfg = moons["params"], moons["mcfg"]
    before = _accuracy(params, mcfg, *test, moons["eval_samples"])
    adapted, _ = illate(jax.random.PRNGKey(1), params, mcfg, FitConfig(steps=300, lr=0.05, num_samples=4),
                        jnp.asarray(shots[0]), jnp.asarray(shots[1]), which=which)
    after = _accuracy(adapted, mcfg, *test, moons["eval_samples"])
    assert after >= 0.9 and after > before + 0.3, (before, after)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="valid keys"):
        me.config_from_dict({"seed": 1, "epochs": 3})
    with pytest.raises(ValueError, match="'model'"):
        me.config_from_dict({"model": {"codedim": 2}})
    with pytest.raises(ValueError, match="'fit'"):
        me.config_from_dict({"quick": {"fit": {"step": 2}}}, quick=True)
    with pytest.raises(ValueError, match="experiment"):
        me.load_config("mnist")


@pytest.mark.parametrize("name", [e for e in me.EXPERIMENTS if e != "prior"])  # prior: own loader, tested in test_metaprior_prior
def test_shipped_configs_load_and_quick_merges(name):
    full, quick = me.load_config(name), me.load_config(name, quick=True)
    assert full.model == quick.model or set(full.model) <= set(quick.model)
    assert quick.fit.get("steps", 0) <= full.fit.get("steps", 0)


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    me.add_arguments(parser)
    args = parser.parse_args(["fewshot", "--quick", "--out", "d", "--seed", "3", "--mnist", "m.npz"])
    assert (args.experiment, args.quick, args.out, args.seed, args.mnist) == ("fewshot", True, "d", 3, "m.npz")
    args = parser.parse_args(["moons", "--seeds", "1", "2", "--n-val", "40"])
    assert (args.seeds, args.n_val, args.seed) == ([1, 2], 40, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["imagenet"])


def test_mnist_file_loader(tmp_path):
    from bnnp_jax.studies.metaprior.digits import load_data

    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (30, 4, 4), dtype=np.uint8), "y_train": rng.integers(0, 10, 30),
              "x_test": rng.integers(0, 256, (12, 4, 4), dtype=np.uint8), "y_test": rng.integers(0, 10, 12)}
    np.savez(tmp_path / "mnist.npz", **arrays)
    x_tr, y_tr, x_te, y_te, side = load_data(0, 20, 0, str(tmp_path / "mnist.npz"))
    assert (x_tr.shape, x_te.shape, side) == ((20, 16), (12, 16), 4)
    assert x_tr.dtype == np.float32 and 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    np.testing.assert_allclose(np.sort(x_te.sum(1)), np.sort(arrays["x_test"].reshape(12, -1).sum(1) / 255.0),
                               rtol=1e-5)
    np.savez(tmp_path / "bad.npz", x_train=arrays["x_train"])
    with pytest.raises(ValueError, match="lacks arrays"):
        load_data(0, 0, 0, str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="does not exist"):
        load_data(0, 0, 0, str(tmp_path / "missing.npz"))


def test_prior_study_config_loads_and_rejects_unknown_keys(tmp_path):
    from bnnp_jax.studies.metaprior import prior_study as ps

    full = ps.load_config(me.CONFIG_DIR / "metaprior_prior.yaml")
    quick = ps.load_config(me.CONFIG_DIR / "metaprior_prior.yaml", quick=True)
    assert quick.steps <= full.steps and set(full.priors) <= set(ps.PRIORS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match=r"unknown keys \['stepz'\].*valid keys"):
        ps.load_config(bad)

"""Validation split, multi-seed CLI and validation-only selection of the MetaPrior experiments (fast; one slow cubic fit)."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.metaprior.fit import FitConfig
from bnnp_jax.studies.metaprior import experiments as me
from bnnp_jax.studies.metaprior import selection as ms
from bnnp_jax.studies.metaprior import mlp_baseline as mlp
from bnnp_jax.studies.metaprior.toys import moons_data


def _rows(a: np.ndarray) -> set[tuple]:
    return {tuple(r) for r in np.asarray(a).tolist()}


def test_moons_validation_split_is_disjoint_and_from_training_points():
    from sklearn.datasets import make_moons

    x_fit, y_fit, x_val, y_val, x_te, y_te = moons_data(1, 500, 1000, 0.2, n_val=100)
    assert (len(y_fit), len(y_val), len(y_te)) == (400, 100, 1000)
    assert not _rows(x_val) & _rows(x_fit) and not _rows(x_val) & _rows(x_te) and not _rows(x_fit) & _rows(x_te)
    # the validation points are training points 400..499 of the seeded draw; the test set is untouched
    raw_x, raw_y = make_moons(1500, noise=0.2, random_state=1)
    mu, sd = raw_x[:400].mean(0), raw_x[:400].std(0)  # statistics of the fitting points only
    np.testing.assert_allclose(x_val * sd + mu, raw_x[400:500], atol=1e-5)
    np.testing.assert_allclose(x_te * sd + mu, raw_x[500:], atol=1e-5)
    assert np.array_equal(y_val, raw_y[400:500]) and np.array_equal(y_te, raw_y[500:])
    no_val = moons_data(1, 500, 1000, 0.2, n_val=0)
    assert len(no_val[3]) == 0 and np.array_equal(no_val[5], y_te)


def test_digits_validation_split_is_stratified_and_leaves_test_alone():
    from bnnp_jax.studies.metaprior.digits import hold_out, load_data

    x_all, y_all, x_te, y_te, _ = load_data(1, 0, 360)
    x_fit, y_fit, x_val, y_val = hold_out(1, x_all, y_all, 300)
    assert (len(y_fit), len(y_val)) == (len(y_all) - 300, 300)
    # the fit and validation images partition the training images (no image lost, none from the test split)
    assert sorted(map(tuple, np.concatenate([x_fit, x_val]).tolist())) == sorted(map(tuple, x_all.tolist()))
    assert np.bincount(y_val, minlength=10).min() >= 25  # stratified: every class about 30 times
    x_same, *_ = hold_out(1, x_all, y_all, 0)
    assert x_same is x_all


def test_n_val_must_leave_training_points():
    with pytest.raises(ValueError, match="n_val"):
        me.config_from_dict({"n_train": 100, "n_val": 100})
    with pytest.raises(ValueError, match="n_val"):
        me.config_from_dict({"n_val": -1})
    assert me.load_config("moons").n_val > 0  # the shipped moons config holds a validation split


def test_cli_seeds_and_n_val(tmp_path, monkeypatch):
    """``--seeds`` runs once per seed into seed_S/ and summarises; ``--n-val`` reaches the runner."""
    from bnnp_jax.studies.metaprior import toys as metaprior_toys

    seen = []

    def fake_run_moons(cfg, out):
        seen.append((cfg.seed, cfg.n_val, out.name))
        return {"metaprior": {"accuracy": 0.9 + 0.01 * cfg.seed, "nll": 0.2}, "flag": True}

    monkeypatch.setattr(metaprior_toys, "run_moons", fake_run_moons)
    assert me.main(["moons", "--quick", "--seeds", "1", "2", "3", "--n-val", "50", "--out", str(tmp_path)]) == 0
    assert seen == [(1, 50, "seed_1"), (2, 50, "seed_2"), (3, 50, "seed_3")]
    per_seed = json.loads((tmp_path / "seed_2" / "results.json").read_text())
    assert (per_seed["seed"], per_seed["config"]["n_val"], per_seed["quick"]) == (2, 50, True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    acc = summary["mean_sd"]["metaprior/accuracy"]
    assert summary["seeds"] == [1, 2, 3] and acc["values"] == pytest.approx([0.91, 0.92, 0.93])
    assert acc["mean"] == pytest.approx(0.92) and acc["sd"] == pytest.approx(0.01)
    assert "flag" not in summary["mean_sd"]  # booleans are not averaged
    assert ms.main(["report", str(tmp_path), "--out", str(tmp_path / "table.md")]) == 0
    assert "| metaprior | 0.9200 ± 0.0100 | 0.910, 0.920, 0.930 |" in (tmp_path / "table.md").read_text()

    seen.clear()
    assert me.main(["moons", "--seed", "7", "--out", str(tmp_path / "one")]) == 0
    assert seen == [(7, me.load_config("moons").n_val, "one")]
    with pytest.raises(ValueError, match="not both"):
        me.main(["moons", "--seed", "1", "--seeds", "2", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="does not apply to the prior study"):
        me.main(["prior", "--n-val", "5", "--out", str(tmp_path)])


def test_selection_uses_validation_only(monkeypatch):
    """The candidate with the better validation accuracy wins even when its test accuracy is
    worse, and no test metric is recorded."""
    def fake_evaluate(cfg, models):
        good = cfg.fit.get("steps") == 7
        return {models[0]: {"val_accuracy": 0.9 if good else 0.8, "val_nll": 0.3, "accuracy": 0.5 if good else 0.99,
                            "nll": 1.0, "final_objective_per_point": -0.2, "trace_drift": 0.0}}

    monkeypatch.setattr(ms, "_evaluator", lambda experiment: fake_evaluate)
    record = ms.run_sweep({"experiment": "moons", "quick": True, "seeds": [1, 2],
                           "candidates": {"metaprior": {"a": {}, "b": {"fit": {"steps": 7}}}}}, progress=lambda s: None)
    assert record["chosen"] == {"metaprior": "b"}
    rows = record["candidates"]["metaprior"]
    assert rows["b"]["val_accuracy_mean"] == pytest.approx(0.9) and [p["seed"] for p in rows["b"]["per_seed"]] == [1, 2]
    for row in rows.values():
        for p in row["per_seed"]:
            assert set(p) == {"seed", "wall_seconds", "val_accuracy", "val_nll", "final_objective_per_point",
                              "trace_drift"}
    assert "(chosen)" in ms.markdown_table(record)


def test_cubic_split_keeps_the_fitting_points_and_draws_validation_apart():
    from bnnp_jax.studies.metaprior.toys import cubic_data, cubic_split

    x, y, x_va, y_va, x_te, y_te = cubic_split(3, 40, 20, 50, 3.0)
    assert (len(y), len(y_va), len(y_te)) == (20, 20, 50)
    # the fitting points are those of a run without a split (the paper's 20 points)
    x0, y0 = cubic_data(3, 20, 3.0)
    assert np.array_equal(x, x0) and np.array_equal(y, y0)
    assert np.array_equal(cubic_split(3, 20, 0, 50, 3.0)[0], x0)
    # validation and test are their own draws: no point shared with each other or the fit
    assert not _rows(x_va) & _rows(x) and not _rows(x_va) & _rows(x_te) and not _rows(x) & _rows(x_te)
    np.testing.assert_allclose(y_va[:, 0], x_va[:, 0] ** 3, atol=5 * 3.0)  # same generator


def test_cubic_selection_scores_validation_density(monkeypatch):
    """For the cubic the rule is the validation log density (higher wins, RMSE breaks ties), and
    no test metric is recorded."""
    def fake_evaluate(cfg, models):
        good = cfg.model.get("init_code_std") == 1.0
        return {models[0]: {"val_lpd": -2.5 if good else -3.0, "val_rmse": 4.0, "test_lpd": -9.0 if good else -1.0,
                            "test_rmse": 1.0, "final_objective_per_point": -0.2, "trace_drift": 0.0}}

    monkeypatch.setattr(ms, "_evaluator", lambda experiment: fake_evaluate)
    record = ms.run_sweep({"experiment": "cubic", "seeds": [1, 2],
                           "candidates": {"metaprior": {"a": {}, "b": {"model": {"init_code_std": 1.0}}}}},
                          progress=lambda s: None)
    assert record["chosen"] == {"metaprior": "b"} and record["score"] == "val_lpd"
    rows = record["candidates"]["metaprior"]
    assert rows["b"]["val_lpd_mean"] == pytest.approx(-2.5) and rows["a"]["val_rmse_mean"] == pytest.approx(4.0)
    for row in rows.values():
        for p in row["per_seed"]:
            assert not any(k.startswith("test") for k in p)
    assert "| val_lpd (mean ± s.d.) |" in ms.markdown_table(record)


def test_seed_table_reads_a_regression_summary():
    runs = [{"metaprior": {"test_lpd": v, "test_rmse": 5.0, "val_lpd": -3.0}, "wall_seconds": 10.0} for v in (-3.0, -2.0)]
    table = ms.seed_table({"seeds": [1, 2], "mean_sd": me.summarise(runs)}, "cubic")
    assert "| metaprior | -2.5000 ± 0.7071 | -3.000, -2.000 | 5.000 ± 0.000 | -3.0000 ± 0.0000 |" in table


def test_with_overrides_merges_nested_and_rejects_unknown():
    cfg = me.load_config("moons", quick=True)
    new = ms.with_overrides(cfg, {"hidden": [50], "fit": {"kl_warmup": 10}})
    assert new.hidden == (50,) and new.fit == {**cfg.fit, "kl_warmup": 10} and new.model == cfg.model
    with pytest.raises(ValueError, match="unknown keys"):
        ms.with_overrides(cfg, {"widht": 3})
    with pytest.raises(ValueError, match="validation split"):
        ms.score_candidate("moons", me.config_from_dict({"n_val": 0}), "mlp", [1])


def test_mlp_baseline_fits_and_weight_decay_shrinks():
    x, y, *_ = moons_data(0, 200, 10, 0.1)
    x, y = jnp.asarray(x), jnp.asarray(y)
    norms = []
    for wd in (0.0, 20.0):
        cfg = mlp.MLPConfig(widths=(2, 16, 2), weight_decay=wd)
        w, trace = mlp.fit(jax.random.PRNGKey(1), mlp.init(jax.random.PRNGKey(0), cfg), cfg,
                           FitConfig(steps=300, lr=0.02), x, y, progress=False)
        if wd == 0.0:
            assert float(trace[-1]) < 0.5 * float(trace[0])
        norms.append(sum(float(jnp.sum(a**2)) for a in w))
    assert mlp.predict(w, cfg, x).shape == (1, 200, 2)
    assert norms[1] < 0.5 * norms[0]


def test_fewshot_balanced_illation_weights_shots_by_n_fit_over_n(monkeypatch):
    """The balanced arm illates under N(0, I) with every shot weighted n_fit / n_shots (the code KL
    weighted n_shots / n_fit); the other arms see the shots' own weights; every split is scored."""
    from bnnp_jax.studies.metaprior import digits

    calls = []

    def fake_illate(key, params, mcfg, fcfg, x, y, weight, which="all", prior="standard"):
        calls.append((which, prior, np.asarray(weight)))
        return params, None

    monkeypatch.setattr(digits, "illate", fake_illate)
    monkeypatch.setattr(digits, "_mp_acc", lambda key, p, mcfg, x, y, s: {"accuracy": float(len(y))})
    cfg = me.config_from_dict({"illate_subsets": ["output"], "illate_posterior_subsets": ["all"],
                               "illate_balanced_subsets": ["all"], "finetune_priors": []})
    weight = jnp.asarray([1.0, 1.0, 1.0, 0.0])  # 3 shots padded to 4
    evals = {"test": (None, np.zeros(7)), "val": (None, np.zeros(5))}
    out = digits._adapt_all(cfg, {"params": None, "mcfg": None}, (None, None, weight), 3, 1200, evals,
                            jax.random.PRNGKey(0))
    assert [c[:2] for c in calls] == [("output", "standard"), ("all", "posterior"), ("all", "standard")]
    np.testing.assert_array_equal(calls[0][2], weight)
    np.testing.assert_allclose(calls[2][2], [400.0, 400.0, 400.0, 0.0])
    assert out["illate_all_balanced_kl"] == {"test": 7.0, "val": 5.0} and set(out) == {
        "illate_output", "illate_all_posterior_prior", "illate_all_balanced_kl"}
    with pytest.raises(ValueError, match="illate_balanced_subsets"):
        me.config_from_dict({"illate_balanced_subsets": ["pixels"]})


@pytest.mark.slow
def test_evaluate_cubic_reports_validation_and_fits_on_the_fitting_points():
    """A short cubic fit of both models: validation metrics come from the validation draw, and the
    MetaPrior's fit beats the untrained model on it."""
    from bnnp_jax.studies.metaprior.toys import evaluate_cubic

    cfg = me.load_config("cubic")
    short = dataclasses.replace(cfg, seed=1, fit={**cfg.fit, "steps": 300}, baseline_fit={**cfg.baseline_fit, "steps": 300},
                                eval_samples=20)
    untrained = dataclasses.replace(short, fit={**short.fit, "steps": 1}, baseline_fit={**short.baseline_fit, "steps": 1})
    res, res0 = evaluate_cubic(short), evaluate_cubic(untrained, ("metaprior",))
    assert len(res["_fit"]["data"][0]) == cfg.n_train - cfg.n_val and len(res["_fit"]["data"][3]) == cfg.n_val
    for model in ("metaprior", "mfvi"):
        assert {"val_lpd", "val_rmse", "test_lpd", "test_rmse", "trace_drift"} <= set(res[model])
    assert res["metaprior"]["val_lpd"] > res0["metaprior"]["val_lpd"] + 1.0

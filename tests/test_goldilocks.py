"""Goldilocks study: age-group task splits are disjoint, complete and seeded; the
meta-dataset is standardised on the training groups only; meta-training tasks never
touch the test group; configs load strictly; the summary statistics are right."""

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bnnp_jax.config import ConfigError, from_dict, load_yaml
from bnnp_jax.studies import goldilocks as gl

CONFIGS = Path(__file__).parents[1] / "configs"


def test_age_groups_and_splits_are_disjoint_complete_and_seeded():
    from sklearn.datasets import load_diabetes

    age = load_diabetes(scaled=False).data[:, 0]
    groups = gl.age_groups()
    assert groups.shape == (442,) and set(groups.tolist()) == {0, 1, 2}
    assert age[groups == 0].max() < age[groups == 1].min() <= age[groups == 1].max() < age[groups == 2].min()
    train, ctx, tgt = gl.split_groups(0, groups, 2, 0.25)
    every = np.concatenate(train + [ctx, tgt])
    assert every.size == 442 and np.unique(every).size == 442  # disjoint and complete
    assert [set(groups[t].tolist()) for t in train] == [{0}, {1}]
    assert set(groups[ctx].tolist()) == set(groups[tgt].tolist()) == {2}
    assert ctx.size == round(0.25 * np.sum(groups == 2))
    again = gl.split_groups(0, groups, 2, 0.25)
    np.testing.assert_array_equal(again[1], ctx)
    np.testing.assert_array_equal(again[2], tgt)
    other = gl.split_groups(1, groups, 2, 0.25)
    assert other[1].size == ctx.size and not np.array_equal(other[1], ctx)
    for a, b in zip(other[0], train):
        np.testing.assert_array_equal(a, b)  # the training tasks do not depend on the seed
    with pytest.raises(ValueError, match="test_group"):
        gl.split_groups(0, groups, 5, 0.25)


def test_metadataset_standardises_on_training_groups_only():
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(scaled=False)
    meta = gl.make_metadataset(3, gl.DataSection())
    valid = meta.valid > 0
    pooled_y = meta.y[..., 0][valid]
    np.testing.assert_allclose([pooled_y.mean(), pooled_y.std()], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(meta.x[valid].mean(0), 0.0, atol=1e-5)
    assert np.all(meta.x[~valid] == 0) and valid.sum() == sum(t.size for t in meta.train_index)
    # The test task holds exactly the split's points, context first, in the same standardisation.
    test = meta.test
    assert test.x.shape == (1, meta.context_index.size + meta.target_index.size, 10)
    assert int(test.context.sum()) == meta.context_index.size and np.all(test.context + test.target == 1)
    pooled = np.concatenate(meta.train_index)
    y_std = (raw.target[meta.target_index] - raw.target[pooled].mean()) / raw.target[pooled].std()
    np.testing.assert_allclose(test.y[0, meta.context_index.size:, 0], y_std, rtol=1e-5, atol=1e-5)
    assert 0.3 < meta.residual_scale < 1.0


def test_training_tasks_come_from_training_groups_only():
    data = gl.DataSection(train_n_range=(20, 60))
    meta = gl.make_metadataset(0, data)
    batch = jax.jit(gl.make_sampler(meta, data), static_argnums=1)(jax.random.PRNGKey(0), 6)
    train_rows = {tuple(np.round(r, 4)) for r in meta.x[meta.valid > 0]}
    test_rows = {tuple(np.round(r, 4)) for r in np.asarray(meta.test.x[0])}
    mask, ctx, tgt = (np.asarray(a) for a in (batch.mask, batch.context, batch.target))
    assert np.all(ctx * tgt == 0) and np.allclose(ctx + tgt, mask)
    assert np.all((mask.sum(1) >= 20) & (mask.sum(1) < 60)) and np.all(ctx.sum(1) >= 1)
    for x_task, m in zip(np.asarray(batch.x), mask):
        rows = {tuple(np.round(r, 4)) for r in x_task[m > 0]}
        assert rows <= train_rows and not rows & test_rows


def test_configs_load_strictly_and_contenders_dedupe_the_endpoints():
    full = load_yaml(gl.GoldilocksConfig, CONFIGS / "goldilocks.yaml")
    quick = load_yaml(gl.GoldilocksConfig, CONFIGS / "goldilocks_quick.yaml")
    names = [n for n, _ in gl.contenders(full)]
    assert len(full.study.seeds) == 4 and full.study.fractions == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert names.count("bnnp_p0.00_front") == 1 and "bnnp_p0.00_back" not in names and "bnnp_p1.00_back" not in names
    assert {"bnnp_p0.25_front", "bnnp_p0.25_back", "cnp", "np", "anp", "tnp", "mfvi", "givi"} <= set(names)
    assert quick.training.steps < full.training.steps
    medium = load_yaml(gl.GoldilocksConfig, CONFIGS / "goldilocks_medium.yaml")  # the committed results' config
    assert len(medium.study.seeds) == 4 and medium.training.steps < full.training.steps
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['seedz'\] in 'study'"):
        from_dict(gl.GoldilocksConfig, {"study": {"seedz": [1]}})
    with pytest.raises(ConfigError, match="bnnp.x_dim/y_dim"):
        from_dict(gl.GoldilocksConfig, {"bnnp": {"x_dim": 3}})
    with pytest.raises(ConfigError, match="study.neural_processes"):
        from_dict(gl.GoldilocksConfig, {"study": {"neural_processes": ["gp"]}})
    rc = gl._run_config(full, "tnp", 2)
    assert rc.training.lr_start == full.np_training["lr_start"] and rc.training.seed == 2 and rc.data is None


def test_summary_means_and_standard_errors(tmp_path):
    results = {f"cnp/seed{s}": {"method": "cnp", "seed": s, "log_predictive_density": v, "mae": 2 * v,
                                "expected_log_density": v - 1, "coverage": 0.9}
               for s, v in enumerate([1.0, 2.0, 4.0])}
    summary = gl.summarise(results)
    mean, se, n = summary["cnp"]["log_predictive_density"]
    assert n == 3 and mean == pytest.approx(7 / 3) and se == pytest.approx(np.std([1, 2, 4], ddof=1) / np.sqrt(3))
    assert summary["cnp"]["mae"][0] == pytest.approx(14 / 3)
    table = gl.markdown_table(summary, ["bnnp_p0.00_front", "cnp"])
    assert "| cnp | 2.333 ± 0.882 |" in table and "bnnp" not in table


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    args = argparse.Namespace(config=str(CONFIGS / "goldilocks_quick.yaml"), out=str(tmp_path), seeds=None,
                              report_only=False, no_progress=True)
    assert gl.run(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 8 and all(np.isfinite(r["log_predictive_density"]) for r in results.values())
    assert (tmp_path / "goldilocks.png").is_file() and (tmp_path / "summary.md").is_file()

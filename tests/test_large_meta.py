"""Large-meta-dataset contrast (issue 7, item 4): the K fixed sawtooth datasets are
fixed by K alone, tasks draw only from them, K = 0 is the unlimited stream, the
config loads strictly, and the summary statistics are right."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bnnp_jax.config import ConfigError, from_dict, load_yaml
from bnnp_jax.studies import large_meta as lm

CONFIG = Path(__file__).parents[1] / "configs" / "large_meta_sawtooth.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_yaml(lm.LargeMetaConfig, CONFIG)


def _points(batch):
    keep = np.asarray(batch.mask) > 0
    return set(zip(np.asarray(batch.x)[..., 0][keep].round(6), np.asarray(batch.y)[..., 0][keep].round(6)))


def test_fixed_datasets_depend_only_on_k_and_tasks_draw_from_them(cfg):
    a, b = lm.fixed_datasets_sampler(cfg, 3), lm.fixed_datasets_sampler(cfg, 3)
    pts = set()
    for i in range(6):
        ba, bb = a(jax.random.PRNGKey(i), 4), b(jax.random.PRNGKey(i), 4)
        np.testing.assert_array_equal(ba.y, bb.y)
        pts |= _points(ba)
    n_max = cfg.data.n_range[1] - 1
    assert len(pts) <= 3 * n_max  # 24 tasks, but only the 3 datasets' points
    other = _points(lm.fixed_datasets_sampler(cfg, 4)(jax.random.PRNGKey(0), 4))
    assert not other <= pts  # another K draws other functions


def test_unlimited_stream_keeps_drawing_new_functions(cfg):
    stream = lm.fixed_datasets_sampler(cfg, 0)
    pts = set()
    for i in range(6):
        pts |= _points(stream(jax.random.PRNGKey(i), 4))
    assert len(pts) > 3 * (cfg.data.n_range[1] - 1)


def test_config_errors_name_the_problem(cfg):
    raw = {"data": {"family": "gp"}}
    with pytest.raises(ConfigError, match="data.family"):
        from_dict(lm.LargeMetaConfig, raw)
    with pytest.raises(ConfigError, match="study.models"):
        from_dict(lm.LargeMetaConfig, {"study": {"models": ["bnnp", "gpt"]}})
    with pytest.raises(ConfigError, match="num_datasets"):
        from_dict(lm.LargeMetaConfig, {"study": {"num_datasets": [2, -1]}})
    with pytest.raises(ConfigError, match="seeds"):  # unknown keys list the valid ones
        from_dict(lm.LargeMetaConfig, {"study": {"seed": [0]}})
    assert lm._model_settings("bnnp_p0.5_back") == ("bnnp", 0.5, "back")


def test_summary_mean_and_standard_error():
    results = {f"cnp/K2/seed{s}": {"model": "cnp", "num_datasets": 2, "seed": s, "log_predictive_density": v,
                                   "mae": 0.1 * v} for s, v in enumerate([-1.0, -2.0, -3.0])}
    mean, se, n = lm.summarise(results)["cnp"][2]["log_predictive_density"]
    assert (mean, n) == (-2.0, 3) and se == pytest.approx(1.0 / np.sqrt(3))
    table = lm.markdown_table(lm.summarise(results), [2, 0], "log_predictive_density")
    assert "-2.000 ± 0.577" in table and "| - |" in table


def test_report_only_without_results_is_an_error(tmp_path, capsys):
    from bnnp_jax import cli

    assert cli.main(["large-meta", str(CONFIG), "--out", str(tmp_path), "--report-only"]) == 2
    assert "no results" in capsys.readouterr().err
    (tmp_path / "results.json").write_text(json.dumps(
        {"bnnp/K2/seed0": {"model": "bnnp", "num_datasets": 2, "seed": 0, "log_predictive_density": -0.3, "mae": 0.2}}))
    assert cli.main(["large-meta", str(CONFIG), "--out", str(tmp_path), "--report-only"]) == 0
    assert (tmp_path / "large_meta.png").is_file() and "-0.300" in (tmp_path / "summary.md").read_text()

"""The KL-table study driver: strict configs, table and plot outputs, and (slow)
an end-to-end run on the exact no-hidden-layer model."""

import argparse
import json

import numpy as np
import pytest

from bnnp_jax.config import ConfigError, load_yaml
from bnnp_jax.studies import kl_table


def test_configs_load_and_unknown_keys_raise(tmp_path):
    for name in ("kl_table", "kl_table_quick", "kl_linear"):
        cfg = load_yaml(kl_table.KLTableConfig, f"configs/{name}.yaml")
        assert set(cfg.methods) <= set(kl_table.METHODS)
    quick = load_yaml(kl_table.KLTableConfig, "configs/kl_table_quick.yaml")
    assert len(quick.sigma_grid()) <= 6
    full = load_yaml(kl_table.KLTableConfig, "configs/kl_table.yaml")
    np.testing.assert_allclose(full.sigma_grid()[[0, -1]], [0.01, 10.0])
    assert len(full.sigma_grid()) == 40
    bad = tmp_path / "bad.yaml"
    bad.write_text("sigma_y_values: [0.1]\nnum_stepz: 3\n")
    with pytest.raises(ConfigError, match="num_stepz.*valid keys"):
        load_yaml(kl_table.KLTableConfig, bad)
    bad.write_text("methods: [mfvi, lcvi]\n")
    with pytest.raises(ConfigError, match="lcvi"):
        load_yaml(kl_table.KLTableConfig, bad)


def test_simulated_dataset_follows_the_recipe(x64):
    cfg = kl_table.KLTableConfig()
    w, x, f, eps = kl_table.simulate(cfg)
    assert 21 <= x.shape[0] < 42 and x.shape[1] == 1
    assert float(x.min()) >= -4.0 and float(x.max()) <= 4.0
    assert w.shape == (2 * 20 + 21 * 20 + 21,)
    assert f.shape == eps.shape == (x.shape[0], 1)


def test_markdown_and_plot_from_records(tmp_path):
    recs = [
        dict(method="mfvi", sigma_y=0.1, kl_lower=30.0, kl_upper=31.0, upper_is_bound=False),
        dict(method="givi", sigma_y=0.1, kl_lower=1.0, kl_upper=1.5, upper_is_bound=False),
        dict(method="mfvi", sigma_y=1.0, kl_lower=-0.01, kl_upper=0.02, kl_exact=0.004, upper_is_bound=True),
        dict(method="givi", sigma_y=1.0, kl_lower=0.5, kl_upper=0.4, upper_is_bound=True),  # bounds crossed by noise
    ]
    md = kl_table.markdown_table(recs, ("givi", "mfvi"))
    assert "| 0.1 | 1 .. 1.5* | 30 .. 31* |" in md
    assert "| 1 | 0.5 .. 0.4† | 0.004 |" in md  # lower > upper: a crossed AIS sandwich is marked
    kl_table.plot(recs, ("givi", "mfvi"), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.slow
def test_end_to_end_linear_table_matches_exact_evidence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "widths: [1, 1]\nsigma_y_values: [0.3]\nelbo_samples: 2000\n"
        "train: {num_steps: 1500, lr_start: 0.02, lr_end: 0.0001, givi_inducing: 4}\n"
        "ais: {num_temps: 1000, num_particles: 32}\n"
    )
    assert kl_table.run(argparse.Namespace(config=str(cfg), out=str(tmp_path / "out"))) == 0
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    for r in out["records"]:
        assert r["log_evidence_lower"] - 4 * r["log_evidence_lower_stderr"] < r["log_evidence_exact"]
        assert r["log_evidence_upper"] + 4 * r["log_evidence_upper_stderr"] > r["log_evidence_exact"]
        assert r["kl_exact"] > -4 * r["elbo_stderr"]
    assert (tmp_path / "out" / "kl_table.md").exists() and (tmp_path / "out" / "kl_vs_sigma.png").exists()

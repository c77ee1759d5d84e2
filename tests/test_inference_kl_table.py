"""The KL-table study driver: strict configs, table and plot outputs, the meta-BNNP
column (a tiny meta-training run, then the table on it; errors naming the config field)
and (slow) an end-to-end run on the exact no-hidden-layer model."""

import argparse
import dataclasses
import json

import jax
import numpy as np
import pytest

from bnnp_jax.config import ConfigError, load_yaml
from bnnp_jax.studies import kl_table, kl_table_evidence


def test_configs_load_and_unknown_keys_raise(tmp_path):
    for name in ("kl_table", "kl_table_quick", "kl_table_paper_reduced", "kl_linear", "kl_linear_grid"):
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
    bad.write_text("methods: [mfvi, xcvi]\n")
    with pytest.raises(ConfigError, match="xcvi"):
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


def test_nested_family_ordering_and_rising_flags():
    recs = [dict(method=m, sigma_y=0.1, elbo=e, elbo_stderr=0.1, kl_lower=1.0, kl_upper=1.0, upper_is_bound=True)
            for m, e in (("fcvi", -10.0), ("lcvi", -10.2), ("ucvi", -10.1), ("mfvi", -12.0))]
    assert kl_table.ordering_violations(recs) == []  # lcvi < ucvi by 0.1 is within 3 standard errors
    recs[0]["elbo"] = -13.0  # FCVI below every smaller family: three violations
    bad = kl_table.ordering_violations(recs)
    assert len(bad) == 3 and all(str(v).startswith("sigma_y=0.1: fcvi") for v in bad)
    assert [(v.larger, v.smaller, v.measure) for v in bad] == [("fcvi", m, "elbo") for m in ("lcvi", "ucvi", "mfvi")]
    assert bad[0].larger_value == -13.0 and bad[0].smaller_value == -10.2
    recs[1]["elbo_rising"] = True
    md = kl_table.markdown_table(recs, ("ucvi", "lcvi", "fcvi", "mfvi"))
    assert "1 ↑" in md and "violated at sigma_y=0.1: fcvi" in md
    trace = kl_table.elbo_trace(np.concatenate([np.linspace(10.0, 0.0, 700), np.zeros(300)]), max_points=50)
    assert len(trace["elbo_trace"]) == 50 and trace["elbo_trace_steps"][-1] == 1000
    assert trace["elbo_trace"][0] < trace["elbo_trace"][-1] and not trace["elbo_rising"]


@pytest.mark.slow
def test_end_to_end_linear_table_matches_exact_evidence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "widths: [1, 1]\nsigma_y_values: [0.3]\nelbo_samples: 2000\nmethods: [bnnp_per_task, givi, ucvi, lcvi, fcvi]\n"
        "train: {num_steps: 1500, lr_start: 0.02, lr_end: 0.0001, givi_inducing: 4}\n"
        "ais: {num_temps: 1000, num_particles: 32}\n"
    )
    assert kl_table.run(argparse.Namespace(config=str(cfg), out=str(tmp_path / "out"))) == 0
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    for r in out["records"]:
        assert r["log_evidence_lower"] - 4 * r["log_evidence_lower_stderr"] < r["log_evidence_exact"]
        assert r["log_evidence_upper"] + 4 * r["log_evidence_upper_stderr"] > r["log_evidence_exact"]
        assert r["kl_exact"] > -4 * r["elbo_stderr"]
        assert 0.0 <= r["kl_closed_form"] < 0.05 and len(r["elbo_trace"]) > 10  # every family here holds the posterior
    assert (tmp_path / "out" / "kl_table.md").exists() and (tmp_path / "out" / "kl_vs_sigma.png").exists()


# ----- the meta-BNNP column (bnnp_amortised) ----------------------------------------


def _tiny_meta_config(hidden=(8,)):
    """configs/kl_meta_bnnp.yaml shrunk to a few steps of a 1-8-1 BNN."""
    import yaml

    from bnnp_jax.training import config as run_config
    from bnnp_jax.config import from_dict

    raw = yaml.safe_load(open("configs/kl_meta_bnnp.yaml"))
    raw["bnnp"]["hidden"] = list(hidden)
    raw["data"]["params"]["hidden"] = list(hidden)
    raw["training"].update(steps=4, steps_per_call=2, checkpoint_every=2, eval_every=2, num_samples=2,
                           eval_tasks=2, eval_samples=2)
    return from_dict(run_config.RunConfig, raw)


def test_meta_bnnp_config_is_the_table_recipe():
    from bnnp_jax.training import config as run_config

    cfg = run_config.load("configs/kl_meta_bnnp.yaml")
    table = load_yaml(kl_table.KLTableConfig, "configs/kl_table.yaml")
    assert (cfg.bnnp.x_dim, *cfg.bnnp.hidden, cfg.bnnp.y_dim) == tuple(table.widths)
    assert cfg.bnnp.activation == table.activation == "relu"
    assert cfg.data.family == "bnn_prior" and tuple(cfg.data.n_range) == (5, 50)
    p = cfg.data.params
    assert tuple(p["hidden"]) == (20, 20) and p["activation"] == "relu"
    assert tuple(p["x_range"]) == tuple(table.x_range) and p["noise"] == table.data_noise
    t = cfg.training
    assert t.objective == "avi" and t.beta == 1.0
    assert t.prior_fraction == 0.0 and not t.learn_sigma_y  # the fixed prior, sigma_y = the data noise
    assert cfg.bnnp.sigma_y_init == 0.1 and cfg.bnnp.final_layer == "exact" and cfg.bnnp.dtype == "float64"
    assert t.steps * t.tasks_per_step == 50_000  # the paper's 50,000 prior datasets


@pytest.mark.slow  # meta-trains a BNNP; every other column's end-to-end test stays in the default suite
def test_meta_bnnp_column_end_to_end(tmp_path, x64):
    """A few meta-training steps into a run directory (prior frozen), then the table's
    bnnp_amortised column loads it through train.load_run and scores it at each sigma_y."""
    from bnnp_jax.training import loop as train

    meta = _tiny_meta_config()
    run_dir = tmp_path / "meta"
    state, _ = train.fit(meta, run_dir, progress=False)
    untrained, _ = train.init_state(meta)
    for a, b in zip(jax.tree.leaves(state.params.prior), jax.tree.leaves(untrained.params.prior)):
        np.testing.assert_array_equal(a, b)  # prior_fraction: 0 kept the table's prior

    cfg = tmp_path / "table.yaml"
    cfg.write_text(
        f"seeds: [69]\nwidths: [1, 8, 1]\nsigma_y_values: [0.1, 1.0]\nmethods: [bnnp_amortised]\nmode: certified\n"
        f"elbo_samples: 64\nbnnp_checkpoint: {run_dir}\nais: {{num_temps: 5, num_particles: 4, num_leapfrog: 2}}\n"
    )
    assert kl_table.run(argparse.Namespace(config=str(cfg), out=str(tmp_path / "out"))) == 0
    recs = json.loads((tmp_path / "out" / "results.json").read_text())["records"]
    assert [r["method"] for r in recs] == ["bnnp_amortised"] * 2
    assert [r["sigma_y"] for r in recs] == [0.1, 1.0]
    assert all(np.isfinite([r["elbo"], r["kl_lower"], r["kl_upper"]]).all() for r in recs)
    assert recs[0]["elbo"] != recs[1]["elbo"]  # the table's sigma_y replaced the trained one
    assert "bnnp_amortised" in (tmp_path / "out" / "kl_table.md").read_text()


def test_meta_bnnp_bad_paths_name_the_field(tmp_path, x64):
    from bnnp_jax.training import checkpoint
    from bnnp_jax.training import loop as train
    from bnnp_jax.config import dump_yaml

    def table(path, widths=(1, 8, 1)):
        return kl_table.KLTableConfig(widths=widths, methods=("bnnp_amortised",), bnnp_checkpoint=str(path))

    with pytest.raises(ConfigError, match="bnnp_checkpoint: .*does not exist"):
        kl_table.load_meta_bnnp(table(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="bnnp_checkpoint: .*not a BNNP run directory"):
        kl_table.load_meta_bnnp(table(tmp_path / "empty"))
    # a run directory whose checkpoint has a learned (moved) prior, or the wrong widths
    meta = _tiny_meta_config()
    state, _ = train.init_state(meta)
    prior = [p._replace(mean=p.mean + 0.5) for p in state.params.prior]
    state = state._replace(params=state.params.replace(prior=prior))
    run_dir = tmp_path / "learned"
    run_dir.mkdir()
    dump_yaml(meta, run_dir / "config.yaml")
    with pytest.raises(ConfigError, match="bnnp_checkpoint: .*no checkpoint"):
        kl_table.load_meta_bnnp(table(run_dir))
    checkpoint.save(run_dir / "checkpoints", 1, state)
    with pytest.raises(ConfigError, match="bnnp_checkpoint: .*not the table's fixed prior"):
        kl_table.load_meta_bnnp(table(run_dir))
    with pytest.raises(ConfigError, match="bnnp_checkpoint: .*widths"):
        kl_table.load_meta_bnnp(table(run_dir, (1, 6, 1)))


# ----- batching over (seed, sigma_y) and resuming per method ----------------------------


def test_seed_is_shorthand_for_seeds_and_the_grid_pads_ragged_datasets(tmp_path, x64):
    assert kl_table.KLTableConfig(seed=7).seeds == (7,)
    assert kl_table.KLTableConfig().seeds == (21, 42, 69, 420)  # the paper's four datasets
    with pytest.raises(ValueError, match="seed or seeds"):
        kl_table.KLTableConfig(seed=7, seeds=(1, 2))
    cfg = kl_table.KLTableConfig(seeds=(1, 2), widths=(1, 2, 1), sigma_y_values=(0.1, 1.0))
    g = kl_table.grid(cfg)
    assert len(g.sigmas) == 4 and list(g.seeds) == [1, 1, 2, 2] and list(g.sigmas) == [0.1, 1.0, 0.1, 1.0]
    assert g.sizes[0] != g.sizes[2]  # these two seeds draw datasets of different sizes
    assert g.x.shape[1] == g.sizes.max() and np.array_equal(g.mask.sum(1), g.sizes)
    np.testing.assert_allclose(g.models.sigma_y[:, 0], g.sigmas)
    model, x, y, _ = g.element(2)
    _, x2, f2, eps2 = kl_table.simulate(cfg, 2)
    np.testing.assert_allclose(x, x2)
    np.testing.assert_allclose(y, f2 + 0.1 * eps2)  # certified: noise = the model's sigma_y
    assert float(model.sigma_y[0]) == 0.1


def test_table_resumes_per_method(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    base = ("seeds: [1, 2]\nwidths: [1, 2, 1]\nsigma_y_values: [0.1, 1.0]\nelbo_samples: 32\n"
            "train: {num_steps: 6, givi_inducing: 3}\nais: {num_temps: 4, num_particles: 4, num_leapfrog: 2}\n")
    cfg.write_text(base + "methods: [mfvi, givi]\n")
    out = tmp_path / "out"
    calls = []
    run_method, evidence = kl_table.run_method, kl_table.run_evidence
    monkeypatch.setattr(kl_table, "run_method", lambda m, *a, **k: calls.append(m) or run_method(m, *a, **k))
    monkeypatch.setattr(kl_table, "run_evidence", lambda *a, **k: calls.append("evidence") or evidence(*a, **k))
    args = argparse.Namespace(config=str(cfg), out=str(out))
    assert kl_table.run(args) == 0
    assert calls == ["mfvi", "givi", "evidence"]
    recs = json.loads((out / "results.json").read_text())["records"]
    assert sorted((r["method"], r["seed"], r["sigma_y"]) for r in recs) == sorted(
        (m, s, v) for m in ("mfvi", "givi") for s in (1, 2) for v in (0.1, 1.0))
    assert all(np.isfinite([r["elbo"], r["kl_lower"], r["kl_upper"]]).all() for r in recs)
    assert {"mfvi", "givi", "evidence"} <= set(json.loads((out / "timing.json").read_text()))
    before = (out / "methods" / "mfvi.json").read_text()
    # a rerun with one more method fits only that one, and keeps the evidence
    calls.clear()
    cfg.write_text(base + "methods: [mfvi, givi, ucvi]\n")
    assert kl_table.run(args) == 0
    assert calls == ["ucvi"]
    assert (out / "methods" / "mfvi.json").read_text() == before
    assert len(json.loads((out / "results.json").read_text())["records"]) == 12
    # stored records from another config are not mixed in
    cfg.write_text(base.replace("elbo_samples: 32", "elbo_samples: 16") + "methods: [mfvi]\n")
    with pytest.raises(ConfigError, match="different config"):
        kl_table.run(args)
    # --evidence-first changes the order of the work, not its results
    calls.clear()
    first = argparse.Namespace(config=str(cfg), out=str(tmp_path / "first"), evidence_first=True)
    cfg.write_text(base + "methods: [mfvi]\n")
    assert kl_table.run(first) == 0
    assert calls == ["evidence", "mfvi"]
    key = lambda r: (r["seed"], r["sigma_y"])
    for name in ("evidence.json", "methods/mfvi.json"):
        a, b = (sorted(json.loads((d / name).read_text())["records"], key=key) for d in (out, tmp_path / "first"))
        np.testing.assert_allclose([r.get("log_evidence_lower", r.get("elbo")) for r in a],
                                   [r.get("log_evidence_lower", r.get("elbo")) for r in b], rtol=1e-5)
    # --report rewrites the outputs from what is stored, and fits nothing
    calls.clear()
    (out / "kl_table.md").unlink()
    assert kl_table.run(argparse.Namespace(config=str(cfg), out=str(out), report=True)) == 0
    assert calls == [] and "| 0.1 |" in (out / "kl_table.md").read_text()
    with pytest.raises(FileNotFoundError, match="no stored results"):
        kl_table.run(argparse.Namespace(config=str(cfg), out=str(tmp_path / "none"), report=True))


def test_only_runs_the_named_parts_and_reports_them_all(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seeds: [1]\nwidths: [1, 2, 1]\nsigma_y_values: [0.1]\nelbo_samples: 8\nmethods: [mfvi, ucvi]\n"
                   "train: {num_steps: 4}\nais: {num_temps: 4, num_particles: 4, num_leapfrog: 2}\n")
    calls = []
    run_method, evidence = kl_table.run_method, kl_table.run_evidence

    def method(m, *a, **k):
        calls.append(m)
        if m == "mfvi":  # another process runs ucvi on the same --out while mfvi fits
            assert run("ucvi") == 0
        return run_method(m, *a, **k)

    monkeypatch.setattr(kl_table, "run_method", method)
    monkeypatch.setattr(kl_table, "run_evidence", lambda *a, **k: calls.append("evidence") or evidence(*a, **k))

    def run(*only):
        return kl_table.run(argparse.Namespace(config=str(cfg), out=str(tmp_path / "out"), only=list(only)))

    assert run("evidence") == 0 and calls == ["evidence"]
    assert run("mfvi") == 0 and calls == ["evidence", "mfvi", "ucvi"]
    # the mfvi run's outputs, written last, hold the ucvi column stored meanwhile, with its KL
    recs = json.loads((tmp_path / "out" / "results.json").read_text())["records"]
    assert sorted(r["method"] for r in recs) == ["mfvi", "ucvi"]
    assert all(np.isfinite(r["kl_lower"]) for r in recs)
    assert {"mfvi", "ucvi", "evidence"} <= set(json.loads((tmp_path / "out" / "timing.json").read_text()))
    for bad in (["fcvi"], ["mfvi", "nope"], []):
        with pytest.raises(ConfigError, match="--only.*expected some of mfvi, ucvi, evidence"):
            run(*bad)


def test_runs_of_other_seeds_on_one_out_keep_each_others_work(tmp_path, monkeypatch):
    """``--seeds 2`` finishes on the same ``--out`` while ``--seeds 1`` fits (as a second process
    would): both seeds' records and wall times are kept, each equal to a run of every seed."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seeds: [1, 2]\nwidths: [1, 2, 1]\nsigma_y_values: [0.1, 1.0]\nelbo_samples: 16\n"
                   "methods: [ucvi]\ntrain: {num_steps: 4}\nais: {num_temps: 4, num_particles: 4, num_leapfrog: 2}\n")

    def run(out, seeds=None):
        return kl_table.run(argparse.Namespace(config=str(cfg), out=str(tmp_path / out), only=["ucvi"], seeds=seeds))

    assert run("all") == 0
    run_method, fitted = kl_table.run_method, []

    def method(m, g, *a, **k):
        fitted.append(sorted({int(s) for s in g.seeds}))
        if len(fitted) == 1:
            assert run("shared", seeds=[2]) == 0
        return run_method(m, g, *a, **k)

    monkeypatch.setattr(kl_table, "run_method", method)
    assert run("shared", seeds=[1]) == 0
    assert fitted == [[1], [2]]
    key = lambda r: (r["seed"], r["sigma_y"])
    one, shared = (sorted(json.loads((tmp_path / d / "methods" / "ucvi.json").read_text())["records"], key=key)
                   for d in ("all", "shared"))
    assert [key(r) for r in shared] == [key(r) for r in one]
    np.testing.assert_allclose([r["elbo"] for r in shared], [r["elbo"] for r in one], rtol=1e-5)
    assert len(json.loads((tmp_path / "shared" / "results.json").read_text())["records"]) == 4
    assert json.loads((tmp_path / "shared" / "timing.json").read_text())["ucvi"]["fits"] == 4
    fitted.clear()
    assert run("shared") == 0 and fitted == []  # nothing left to fit
    for bad in ([3], [1, 3], []):
        with pytest.raises(ConfigError, match="--seeds.*expected some of this config's seeds 1, 2"):
            run("shared", seeds=bad)


def test_the_out_lock_excludes_another_process(tmp_path):
    """A second process waits for ``DIR/.lock`` while this one holds it."""
    import subprocess
    import sys
    import time

    code = ("import sys, pathlib\nfrom bnnp_jax.studies.kl_table import _locked\n"
            "out = pathlib.Path(sys.argv[1])\n(out / 'ready').write_text('')\n"
            "with _locked(out):\n    (out / 'took').write_text('')\n")
    with kl_table._locked(tmp_path):
        proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "ready").exists(), "the second process did not start"
        time.sleep(2.0)  # it has asked for the lock; it must still be waiting
        assert proc.poll() is None and not (tmp_path / "took").exists()
    assert proc.wait(timeout=120) == 0 and (tmp_path / "took").exists()


def test_seed_batches_resume_per_seed_and_equal_one_batch(tmp_path, monkeypatch):
    base = ("seeds: [1, 2]\nwidths: [1, 2, 1]\nsigma_y_values: [0.1, 1.0]\nelbo_samples: 32\nmethods: [ucvi]\n"
            "train: {num_steps: 6}\nais: {num_temps: 4, num_particles: 4, num_leapfrog: 2}\n")
    (tmp_path / "all.yaml").write_text(base)
    (tmp_path / "seed.yaml").write_text(base + "fit_batches: seed\n")
    run = lambda name, out: kl_table.run(argparse.Namespace(config=str(tmp_path / name), out=str(tmp_path / out)))
    assert run("all.yaml", "all") == 0
    # the per-seed run stops after its first seed's batch (as if killed there), then resumes
    run_method, sizes = kl_table.run_method, []

    def first_batch_only(m, g, *a, **k):
        if sizes:
            raise KeyboardInterrupt
        sizes.append(len(g.sigmas))
        return run_method(m, g, *a, **k)

    monkeypatch.setattr(kl_table, "run_method", first_batch_only)
    with pytest.raises(KeyboardInterrupt):
        run("seed.yaml", "seed")
    kept = json.loads((tmp_path / "seed" / "methods" / "ucvi.json").read_text())["records"]
    assert sizes == [2] and {r["seed"] for r in kept} == {1}
    sizes.clear()
    monkeypatch.setattr(kl_table, "run_method", lambda m, g, *a, **k: sizes.append(list(g.seeds)) or
                        run_method(m, g, *a, **k))
    assert run("seed.yaml", "seed") == 0
    assert sizes == [[2, 2]]  # only the missing seed was fitted
    key = lambda r: (r["seed"], r["sigma_y"])
    one, per_seed = (sorted(json.loads((tmp_path / d / "methods" / "ucvi.json").read_text())["records"], key=key)
                     for d in ("all", "seed"))
    assert [key(r) for r in one] == [key(r) for r in per_seed]
    np.testing.assert_allclose([r["elbo"] for r in per_seed], [r["elbo"] for r in one], rtol=1e-5)
    with pytest.raises(ConfigError, match="fit_batches"):
        (tmp_path / "bad.yaml").write_text(base + "fit_batches: task\n")
        load_yaml(kl_table.KLTableConfig, tmp_path / "bad.yaml")


def test_stored_records_without_later_settings_still_load(tmp_path):
    # a methods file written before a setting existed matches a config that leaves it at its default
    cfg = kl_table.KLTableConfig(seeds=(1,), widths=(1, 2, 1), sigma_y_values=(0.1,))
    fp = kl_table._fingerprint(cfg)
    del fp["vi"]["step_rule"]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"config": fp, "records": [{"seed": 1}]}))
    assert kl_table._load(path, cfg) == [{"seed": 1}]
    changed = kl_table.KLTableConfig(seeds=(1,), widths=(1, 2, 1), sigma_y_values=(0.1,),
                                     vi=kl_table.VISettings(step_rule="row"))
    with pytest.raises(ConfigError, match="different config"):
        kl_table._load(path, changed)


def test_committed_meta_bnnp_serves_the_table(x64):
    """The paper config's meta-BNNP column runs from a fresh clone: the committed run loads and
    passes every check against the table's model (widths, activation, the fixed prior)."""
    table = load_yaml(kl_table.KLTableConfig, "configs/kl_table.yaml")
    assert "bnnp_amortised" in table.methods
    params = kl_table.load_meta_bnnp(table)
    assert params.likelihood["raw_sigma"].dtype == np.float64


def test_elbo_gap_plot_needs_the_reference_family(tmp_path):
    methods = ["mfvi", "ucvi", "lcvi", "fcvi"]
    records = [{"seed": seed, "sigma_y": s, "method": m, "elbo": -10.0 - i - seed * 0.1}
               for seed in (1, 2) for s in (0.1, 1.0, 10.0) for i, m in enumerate(reversed(methods))]
    assert kl_table.plot_elbo_gaps(records, methods, tmp_path / "gaps.png")
    assert (tmp_path / "gaps.png").stat().st_size > 0
    without = [r for r in records if r["method"] != "fcvi"]
    assert not kl_table.plot_elbo_gaps(without, methods, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_ordering_uses_the_closed_form_kl_where_there_is_one():
    # ELBOs 3.3 standard errors apart, exact KLs equal to 1e-3: no violation
    recs = [dict(method="lcvi", sigma_y=0.3, elbo=-13.126, elbo_stderr=0.01, kl_closed_form=0.0005),
            dict(method="fcvi", sigma_y=0.3, elbo=-13.174, elbo_stderr=0.01, kl_closed_form=0.0008)]
    assert kl_table.ordering_violations(recs) == []
    assert kl_table.ordering_violations([{k: v for k, v in r.items() if k != "kl_closed_form"} for r in recs])
    recs[1]["kl_closed_form"] = 0.05  # the larger family 0.05 nats worse, exactly: a violation
    assert list(map(str, kl_table.ordering_violations(recs))) == ["sigma_y=0.3: fcvi exact KL 0.0500 > lcvi 0.0005"]


def test_many_violations_are_summarised_per_pair():
    recs = [dict(method=m, sigma_y=s, elbo=e, elbo_stderr=0.01, kl_lower=1.0, kl_upper=1.0, upper_is_bound=True)
            for s in (0.1, 0.2, 0.3, 0.4, 0.5) for m, e in (("fcvi", -20.0), ("ucvi", -10.0), ("mfvi", -11.0))]
    md = kl_table.markdown_table(recs, ("ucvi", "fcvi", "mfvi"))
    assert "violated in 10 comparisons (fcvi below ucvi: 5, fcvi below mfvi: 5 cells)" in md


def test_paper_evidence_resumes_per_seed_and_keeps_nuts_runs(tmp_path, monkeypatch):
    """Paper mode, one seed per batch: a run killed in its first seed's AIS keeps that seed's
    NUTS runs, the rerun reuses them and runs NUTS only for the other seed; the bounds equal a
    run of the whole grid as one batch, and the NUTS cache is gone at the end."""
    from bnnp_jax.inference import evidence, nuts

    base = ("seeds: [1, 2]\nwidths: [1, 2, 1]\nsigma_y_values: [0.1, 1.0]\nelbo_samples: 16\nmethods: [mfvi]\n"
            "mode: paper\ntrain: {num_steps: 4}\nais: {num_temps: 4, num_particles: 4, num_leapfrog: 2}\n"
            "nuts: {num_warmup: 20, num_samples: 20, num_chains: 1}\n")
    (tmp_path / "all.yaml").write_text(base)
    (tmp_path / "seed.yaml").write_text(base + "fit_batches: seed\n")
    run = lambda name, out: kl_table.run(argparse.Namespace(config=str(tmp_path / name), out=str(tmp_path / out)))
    assert run("all.yaml", "all") == 0
    estimate, fit, nuts_seeds = evidence.estimate, nuts.fit, []

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evidence, "estimate", killed)
    with pytest.raises(KeyboardInterrupt):
        run("seed.yaml", "seed")
    assert not (tmp_path / "seed" / "evidence.json").exists()
    assert sorted(p.name for p in (tmp_path / "seed" / "nuts_cache").iterdir()) == ["1_0.1.npz", "1_1.0.npz"]
    # a stored NUTS run is reused only by the config that made it
    cfg = load_yaml(kl_table.KLTableConfig, tmp_path / "seed.yaml")
    other = dataclasses.replace(cfg, nuts=kl_table.NUTSSettings(num_warmup=5, num_samples=4, num_chains=1))
    cached, copy = tmp_path / "seed" / "nuts_cache" / "1_0.1.npz", tmp_path / "copy.npz"
    copy.write_bytes(cached.read_bytes())
    with jax.enable_x64(True):
        g = kl_table.grid(cfg)
        kept, _ = kl_table_evidence.nuts_starts(jax.random.PRNGKey(0), *g.element(0)[:3], cfg, cached)
        redone, _ = kl_table_evidence.nuts_starts(jax.random.PRNGKey(0), *g.element(0)[:3], other, copy)
        with np.load(cached) as f:  # a stored run without a diagnostic recorded now is redone too
            np.savez(tmp_path / "old.npz", starts=np.zeros_like(f["starts"]), config=f["config"],
                     diagnostics=json.dumps({"nuts_max_r_hat": 1.0}))
        again, diags = kl_table_evidence.nuts_starts(jax.random.PRNGKey(0), *g.element(0)[:3], cfg, tmp_path / "old.npz")
    assert np.all(np.asarray(again) != 0.0)
    assert set(diags) == set(kl_table_evidence.NUTS_DIAGNOSTICS)
    np.testing.assert_array_equal(kept, np.load(cached)["starts"])
    assert not np.array_equal(redone, kept) and np.array_equal(np.load(copy)["starts"], redone)
    monkeypatch.setattr(evidence, "estimate", estimate)
    monkeypatch.setattr(nuts, "fit", lambda key, model, x, *a, **k: nuts_seeds.append(x.shape[0]) or
                        fit(key, model, x, *a, **k))
    assert run("seed.yaml", "seed") == 0
    assert not (tmp_path / "seed" / "nuts_cache").exists()
    key = lambda r: (r["seed"], r["sigma_y"])
    one, per_seed = (sorted(json.loads((tmp_path / d / "evidence.json").read_text())["records"], key=key)
                     for d in ("all", "seed"))
    sizes = {r["seed"]: r["num_points"] for r in one}
    assert sizes[1] != sizes[2] and nuts_seeds == [sizes[2]] * 2  # seed 1's NUTS runs came from the cache
    assert [key(r) for r in one] == [key(r) for r in per_seed]
    assert all(set(kl_table_evidence.NUTS_DIAGNOSTICS) <= set(r) for r in per_seed)
    for field in ("log_evidence_lower", "log_evidence_upper", "nuts_max_r_hat", "nuts_max_r_hat_f"):
        np.testing.assert_allclose([r[field] for r in per_seed], [r[field] for r in one], rtol=1e-5)


def test_validation_sweep_records_each_value(tmp_path, x64):
    """``kl_sweep`` fits through the table's own ``run_method``: one record per (value, method,
    seed, sigma_y) with the start ELBO, which the start scale moves; unknown settings raise."""
    from bnnp_jax.studies import kl_sweep

    recs = kl_sweep.sweep("init_log_scale", [-1.0, 0.0], tmp_path, seeds=(1,), sigmas=(0.1, 1.0), methods=("ucvi",),
                          num_steps=3, elbo_samples=8)
    assert [(r["init_log_scale"], r["sigma_y"]) for r in recs] == [(-1.0, 0.1), (-1.0, 1.0), (0.0, 0.1), (0.0, 1.0)]
    assert json.loads((tmp_path / "sweep.json").read_text()) == recs
    assert all(r["vi"]["init_log_scale"] == r["init_log_scale"] and r["num_steps"] == 3 for r in recs)
    assert recs[0]["start_elbo"] != recs[2]["start_elbo"] and np.isfinite([r["elbo"] for r in recs]).all()
    assert "| -1.0 | ucvi |" in kl_sweep.table(recs, "init_log_scale")
    with pytest.raises(ValueError, match="unknown vi setting"):
        kl_sweep.sweep("learning_rate", [1], tmp_path)
    # cells: only the pairs named, not the product of their seeds and sigmas
    cells = kl_sweep.sweep("init_log_scale", [-1.0], tmp_path / "cells", cells=[(2, 1.0), (1, 0.1)],
                           methods=("ucvi",), num_steps=3, elbo_samples=8)
    assert sorted((r["seed"], r["sigma_y"]) for r in cells) == [(1, 0.1), (2, 1.0)]
    assert np.isfinite([r["elbo"] for r in cells]).all()
    mixed = [dict(r, method="lcvi") if r["sigma_y"] == 0.1 else r for r in cells]  # ucvi lacks sigma_y 0.1
    assert "| -1.0 | ucvi | – | " in kl_sweep.table(mixed, "init_log_scale")
    with pytest.raises(ValueError, match="cells"):
        kl_sweep.sweep("init_log_scale", [-1.0], tmp_path, cells=[])


def test_seed_cells_use_the_seeds_whose_evidence_is_in():
    rec = lambda seed, lo, hi: dict(method="mfvi", seed=seed, sigma_y=0.1, elbo=-1.0, elbo_stderr=0.1,
                                    kl_lower=lo, kl_upper=hi, upper_is_bound=False)
    md = kl_table.markdown_table([rec(1, 2.0, 3.0), rec(2, float("nan"), float("nan"))], ("mfvi",))
    assert "| 2 .. 3* [1 of 2 seeds] |" in md
    md = kl_table.markdown_table([rec(1, 2.0, 3.0), rec(2, 4.0, 5.0), rec(3, float("nan"), float("nan"))], ("mfvi",))
    assert "| 3 .. 4 ± 1.4* [2 of 3 seeds] |" in md
    md = kl_table.markdown_table([rec(1, float("nan"), float("nan")), rec(2, float("nan"), float("nan"))], ("mfvi",))
    assert "| nan |" in md
    # a method not yet fitted on every seed is counted against the table's seeds, not its own
    ucvi = [dict(rec(s, 1.0, 2.0), method="ucvi") for s in (1, 2)]
    md = kl_table.markdown_table([rec(1, 2.0, 3.0), rec(2, 4.0, 5.0), rec(3, 1.0, 1.0)] + ucvi, ("mfvi", "ucvi"))
    assert "| 2.33 .. 3 ± 1.8* | 1 .. 2 ± 0* [2 of 3 seeds] |" in md


def test_paper_rows_sit_beside_the_spec_reference():
    from bnnp_jax.studies import kl_table_report

    rec = lambda seed, s, lo, hi, m="mfvi": dict(method=m, seed=seed, sigma_y=s, elbo=-1.0, elbo_stderr=0.1,
                                                 kl_lower=lo, kl_upper=hi, upper_is_bound=False)
    grid = np.geomspace(0.01, 10.0, 40)  # the paper's grid: 0.024 and 0.2 are not on it
    recs = [rec(69, s, 1.0, 2.0) for s in grid] + [rec(21, s, 3.0, 4.0) for s in grid]
    recs += [rec(69, s, 0.1, 0.2, "givi") for s in grid]
    recs += [rec(21, s, float("nan"), float("nan"), "givi") for s in grid]  # evidence not in
    md = kl_table_report.paper_rows_table(recs, ("mfvi", "givi", "ucvi"))
    assert "| 0.024 (0.0242) | 2 .. 3 ± 1.4* | 0.1 .. 0.2* [1 of 2 seeds] |  |" in md  # nearest grid value
    assert "| 0.2 (0.203) | 22 / 1 .. 4 [2] | 0.11 / 0.1 .. 0.2 [1] | 19.2 / – |" in md  # SPEC beside our span
    assert md.count("\n| ") == 2 * (1 + 4)  # two tables: a header and the four rows each


def test_every_violation_is_listed_with_its_reading():
    rec = lambda m, e, rising: dict(method=m, seed=1, sigma_y=0.1, elbo=e, elbo_stderr=0.1, elbo_rising=rising,
                                    elbo_final_gain=2.0 if rising else 0.1, elbo_final_gain_stderr=0.2)
    md = kl_table.violations_table([rec("lcvi", -12.0, True), rec("ucvi", -10.0, False), rec("mfvi", -11.0, False)])
    assert "| 1 | 0.1 | lcvi | ucvi | 2.00 ± 0.14 | 2.00 ± 0.20 | still rising: not converged |" in md
    assert "| 1 | 0.1 | lcvi | mfvi | 1.00 ± 0.14 |" in md and "(2: 2 still rising" in md
    md = kl_table.violations_table([rec("lcvi", -12.0, False), rec("ucvi", -10.0, False)])
    assert "| 0.10 ± 0.20 | still gaining, under the flag's 3 standard errors |" in md
    flat = dict(rec("lcvi", -12.0, False), elbo_final_gain=-0.1)
    assert "| flat: stalled below the smaller family |" in kl_table.violations_table([flat, rec("ucvi", -10.0, False)])
    assert kl_table.violations_table([rec("lcvi", -10.0, False), rec("ucvi", -10.2, False)]) == ""

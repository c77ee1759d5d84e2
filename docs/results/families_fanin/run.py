"""Learned priors on the other 1-D families with the main job's settings (issue: "other
families"): each family's quick config with ``training.prior_step_scale: fan_in`` and
``lr_start: 1e-2`` (the settings chosen for ``configs/main_job.yaml`` on Heaviside validation
draws, applied unchanged here), trained with ``bnnp train`` into ``runs/FAMILY``.

For each run, ``summary.json`` records the report's learned and untrained prior MMD² and the
generator's own floor: the MMD² between the report's fixed generator draws and an independent
set of generator draws of the same size, under the same lengthscale. A learned prior cannot
be expected below that floor. Only metrics, history, configs and the prior-draw plot are kept
in git. Reduced settings ([32, 32], S = 8, 600 steps, float32): not the paper's.

    python docs/results/families_fanin/run.py [FAMILY ...]
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
FAMILIES = ("gp", "bnn_prior", "ecg")
OVERRIDES = {"prior_step_scale": "fan_in", "lr_start": 1.0e-2}


def floor(run_dir: Path) -> dict:
    """The report's prior MMD² numbers again, plus generator vs independent generator draws."""
    from bnnp_jax.data import registry
    from bnnp_jax.training import evaluation, loop, report

    config, params, _ = loop.load_run(run_dir)
    untrained, _ = loop.init_state(config)
    fam, num = config.data.family, 200
    learned, score, reference = evaluation.prior_mmd_tracker(report.mmd_key(config), untrained.params, fam, num,
                                                             config.data.params)
    grid = evaluation.grid_for(fam)
    draw = evaluation.draw_params(fam, config.data.params)
    other = registry.true_function_samples(jax.random.PRNGKey(config.training.seed + 2000), fam, grid, num, **draw)
    return {**reference, "mmd2_learned_prior": learned(params), "mmd2_generator_floor": score(other[..., 0])}


def run(family: str) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / f"{family}_quick.yaml").read_text())
    cfg["training"].update(OVERRIDES)
    out = HERE / "runs" / family
    out.mkdir(parents=True, exist_ok=True)
    (out / "candidate.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run(["bnnp", "train", str(out / "candidate.yaml"), "--out", str(out), "--no-progress"], check=True,
                   cwd=REPO, stdout=subprocess.DEVNULL)
    rec = {"family": family, "config": f"configs/{family}_quick.yaml", "overrides": OVERRIDES, **floor(out)}
    rec["ratio"] = rec["mmd2_learned_prior"] / rec["mmd2_untrained_prior"]
    print(json.dumps(rec), flush=True)
    return rec


def main(families) -> None:
    path = HERE / "summary.json"
    done = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["family"] not in families]
    for fam in families:
        done.append(run(fam))
        path.write_text(json.dumps(done, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:] or list(FAMILIES))

"""What do sawtooth prior-MMD values mean? Reference points on the same scale (docs/sawtooth.md).

Every row is the MMD^2 against the *same* generator draws with the *same* RBF
lengthscale that a run's ``metrics.json`` uses (``evaluation.prior_mmd_tracker``
with ``run_report.mmd_key``), so the rows can be read beside a run's number:

- ``generator (fresh draws)``: a second independent sample from the generator (about 0);
- ``slope and offset, no teeth``: the generator's random lines ``e1 x / 3 + 0.25 e2``;
- ``mean sawtooth, no spread``: the deterministic teeth, identical in every draw;
- ``untrained prior`` and each run directory given on the command line.

    python docs/results/sawtooth_diagnostics/mmd_references.py docs/results/sawtooth_5k docs/results/sawtooth_warm
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from bnnp_jax.training import evaluation
from bnnp_jax.training import report as run_report
from bnnp_jax.training import loop as train
from bnnp_jax.cli import _load_run
from bnnp_jax.data import registry


def main(run_dirs):
    if not run_dirs:
        raise SystemExit("give at least one run directory (its seed and plot_samples fix the reference draws)")
    config, _, _ = _load_run(run_dirs[0])
    untrained, _ = train.init_state(config)
    num = config.training.plot_samples
    learned, score, ref = evaluation.prior_mmd_tracker(run_report.mmd_key(config), untrained.params, "sawtooth", num)
    grid = evaluation.grid_for("sawtooth")
    fresh = registry.true_function_samples(jax.random.PRNGKey(12345), "sawtooth", grid, num)[..., 0]
    teeth = 1.33 * (jnp.mod(grid[:, 0], 0.75) - 0.375)  # the deterministic part of SPEC section 11's sawtooth
    rows = {
        "generator (fresh draws)": score(fresh),
        "slope and offset, no teeth": score(fresh - teeth),
        "mean sawtooth, no spread": score(jnp.broadcast_to(teeth, fresh.shape)),
        "untrained prior": ref["mmd2_untrained_prior"],
    }
    for d in run_dirs:
        _, params, _ = _load_run(d)
        rows[f"learned: {d}"] = learned(params)
    rows = {k: round(float(v), 4) for k, v in rows.items()}
    for k, v in rows.items():
        print(f"{v:8.4f}  {k}")
    out = Path(__file__).with_name("mmd_references.json")
    out.write_text(json.dumps({"lengthscale": ref["mmd_lengthscale"], "num_samples": num, "mmd2": rows}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])

"""GIVI's layer posterior with one ``D x D`` factor per layer against one per unit, on one
seed of the KL table's paper grid (40 batched fits, SPEC section 11).

GIVI's pseudo-precision ``Lambda_l`` is shared by a layer's units, and under the table's
fixed prior ``N(0, I / (D_in + 1))`` so is the prior covariance (``BNNModel.shared_cov``),
so every unit has the same posterior covariance: one Cholesky per layer and path instead
of ``D_l`` (SPEC section 9's fast path). The script fits the same 40 problems both ways
side by side in one process, checks that the loss trajectories agree, and reports the
time per step from the difference of two budgets (so compilation drops out).

    python benchmarks/givi_shared_factor.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import _common as C


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    args = C.parse_args(parser, argv)
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from bnnp_jax.config import load_yaml
    from bnnp_jax.inference import registry
    from bnnp_jax.studies import kl_table

    cfg = load_yaml(kl_table.KLTableConfig, "configs/kl_table.yaml")
    g = kl_table.grid(dataclasses.replace(cfg, seeds=(21,)))
    t = cfg.train
    kf, _ = kl_table._keys(g, "givi")
    short, long = (100, 300) if args.quick else (200, 1200)
    rows, losses = [], {}
    per_unit = dataclasses.replace(g.models, shared_cov=(False,) * g.models.num_layers)
    for name, models in (("per_unit", per_unit), ("shared", g.models)):
        walls = {}
        for steps in (short, long):
            budget = registry.budget("givi", steps, (t.lr_start, t.lr_end), t.num_particles, False)
            t0 = time.perf_counter()
            res = registry.fit_batch("givi", kf, models, g.x, g.y, g.mask, **budget, num_inducing=t.givi_inducing)
            C.block(res.losses)
            walls[steps] = time.perf_counter() - t0
        step_s = (walls[long] - walls[short]) / (long - short)
        losses[name] = np.asarray(res.losses)
        rows.append({"factors": name, "fits": len(g.sigmas), "steps": [short, long],
                     "wall_s": [walls[short], walls[long]], "step_s": step_s,
                     "paper_grid_h": step_s * t.num_steps * len(cfg.seeds) / 3600})
    rows[1]["speedup"] = rows[0]["step_s"] / rows[1]["step_s"]
    rel = np.abs(losses["shared"] - losses["per_unit"]) / (1.0 + np.abs(losses["per_unit"]))
    rows[1]["max_rel_loss_diff"] = float(rel.max())
    C.print_table(rows, ["factors", "fits", "step_s", "paper_grid_h", "speedup", "max_rel_loss_diff"])
    C.write_json("givi_shared_factor", args, rows)


if __name__ == "__main__":
    sys.exit(main())

"""AIS settings for the KL table at a fraction of the paper's cost: does the BDMC sandwich hold?

The KL table's 1-20-20-1 ReLU BNN in float64, certified mode (data re-simulated from the
generating weights at each sigma_y, so reverse AIS starts at an exact posterior sample and
both bounds are certified), one seed, ``--sigmas`` of the 40-point grid. Each setting runs
``ais.bdmc(batched=True)`` over those datasets once (tuning, forward, reverse) and records,
per sigma_y, the lower and upper bounds, their standard errors, the gap ``upper - lower`` and
its standard error, and whether the sandwich crosses (``lower - upper`` more than
``z`` = 2 combined standard errors; a crossing within noise is not a crossing). Cost is
``temps x particles x leapfrog`` relative to the paper's 10,000 x 64 x 10 (the three anneals
scale alike); the measured seconds are under whatever load the JSON records.

    python benchmarks/kl_ais_settings.py [--settings T:K:L,...] [--sigmas ...] [--seed 69]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import _common as C

PAPER = (10_000, 64, 10)
DEFAULT_SETTINGS = "500:64:10,1000:32:10,2000:32:5"
Z_CROSS = 2.0


def run_setting(g, temps: int, particles: int, leapfrog: int, seed: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bnnp_jax.inference import ais

    b = g.w_true.shape[0]
    starts = jnp.broadcast_to(g.w_true[:, None], (b, particles, g.w_true.shape[1]))
    keys = jax.random.split(jax.random.PRNGKey(seed), b)
    tic = time.perf_counter()
    res = ais.bdmc(keys, g.models, g.x, g.y, num_temps=temps, num_particles=particles, num_leapfrog=leapfrog,
                   posterior_init=starts, mask=g.mask, batched=True, progress_bar=False)
    lo, up = np.asarray(res.forward.log_z), np.asarray(res.reverse.log_z)
    seconds = time.perf_counter() - tic
    rows = []
    for i in range(b):
        se_lo, se_up = float(res.forward.stderr[i]), float(res.reverse.stderr[i])
        se = math.hypot(se_lo, se_up)
        rows.append({"sigma_y": float(g.sigmas[i]), "temps": temps, "particles": particles, "leapfrog": leapfrog,
                     "cost_vs_paper": temps * particles * leapfrog / math.prod(PAPER),
                     "lower": float(lo[i]), "upper": float(up[i]), "lower_stderr": se_lo, "upper_stderr": se_up,
                     "gap": float(up[i] - lo[i]), "gap_stderr": se,
                     "crossed": bool(lo[i] - up[i] > Z_CROSS * se), "forward_ess": float(res.forward.ess[i]),
                     "reverse_ess": float(res.reverse.ess[i]), "batch_seconds": seconds})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="temps:particles:leapfrog, comma-separated")
    parser.add_argument("--sigmas", default="0.01,0.03,0.1,0.3,1,3", help="sigma_y values (nearest grid points)")
    parser.add_argument("--seed", type=int, default=69, help="dataset seed")
    args = C.parse_args(parser, argv)
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from bnnp_jax.studies import kl_table

    full = np.geomspace(0.01, 10.0, 40)
    want = [float(s) for s in args.sigmas.split(",")]
    sigmas = tuple(float(full[np.argmin(abs(np.log(full) - np.log(s)))]) for s in want)
    cfg = kl_table.KLTableConfig(seeds=(args.seed,), sigma_y_values=sigmas, mode="certified")
    g = kl_table.grid(cfg)
    rows = []
    for spec in args.settings.split(","):
        t, k, lf = (int(v) for v in spec.split(":"))
        rows += run_setting(g, t, k, lf, seed=args.seed)
        C.print_table(rows[-len(sigmas):], ["sigma_y", "temps", "particles", "leapfrog", "lower", "upper", "gap",
                                             "gap_stderr", "crossed", "batch_seconds"], f"AIS {spec}")
        C.write_json("kl_ais_settings", args, rows, z_cross=Z_CROSS, paper_setting=PAPER,
                     note=("certified mode: both bounds certified (reverse AIS from the generating weights); "
                           + ("under load" if C.START_LOAD[0] > 1 else "load average <= 1") + "; seconds include compile"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

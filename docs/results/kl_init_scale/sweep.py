"""Validation sweep of the Gaussian families' initial scale (``vi.init_log_scale``) at the
reduced paper budget, on validation datasets (seeds 1 and 2, not the table's 21, 42, 69, 420).

    python docs/results/kl_init_scale/sweep.py   # writes sweep.json and sweep.md here

Each setting fits UCVI, LCVI and FCVI at 5 sigma_y values per seed (1000 Adam steps,
5e-3 -> 5e-5, S = 8, as configs/kl_table_paper_reduced.yaml) and records the final
ELBO (2000 samples) and whether it was still rising.
"""

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from bnnp_jax.inference import registry  # noqa: E402
from bnnp_jax.studies import kl_table  # noqa: E402
from bnnp_jax.studies.kl_table_config import KLTableConfig, VISettings  # noqa: E402

HERE = Path(__file__).parent
SEEDS, SIGMAS, SCALES = (1, 2), (0.024, 0.1, 0.2, 1.0, 3.0), (0.0, -1.0, -2.0, -3.0)
METHODS = ("ucvi", "lcvi", "fcvi")


def main():
    cfg = KLTableConfig(seeds=SEEDS, sigma_y_values=SIGMAS, mode="paper", methods=METHODS)
    g = kl_table.grid(cfg)
    records = []
    for scale in SCALES:
        for method in METHODS:
            kf, ke = kl_table._keys(g, method)
            vi = {**dataclasses.asdict(VISettings()), "init_log_scale": scale}
            t0 = time.perf_counter()
            res = registry.fit_batch(method, kf, g.models, g.x, g.y, g.mask,
                                     **registry.budget(method, 1000, (5e-3, 5e-5), 8), **vi)
            est = registry.elbo_batch(ke, res, g.x, g.y, g.mask, 2000)
            sec = time.perf_counter() - t0
            for i in range(len(g.sigmas)):
                trace = kl_table.elbo_trace(res.losses[i])
                records.append({"init_log_scale": scale, "method": method, "seed": int(g.seeds[i]),
                                "sigma_y": float(g.sigmas[i]), "elbo": float(est.value[i]),
                                "elbo_stderr": float(est.stderr[i]), "rising": bool(trace["elbo_rising"]),
                                "start_elbo": float(-res.losses[i, 0]), "seconds": sec / len(g.sigmas)})
            print(f"init_log_scale {scale:+.0f} {method}: {sec:.0f} s", flush=True)
            (HERE / "sweep.json").write_text(json.dumps(records, indent=1))
    lines = ["| init_log_scale | method | " + " | ".join(f"sigma_y {s}" for s in SIGMAS) + " | rising |",
             "|---|---|" + "---|" * (len(SIGMAS) + 1)]
    for scale in SCALES:
        for m in METHODS:
            rs = [r for r in records if r["init_log_scale"] == scale and r["method"] == m]
            cells = [np.mean([r["elbo"] for r in rs if r["sigma_y"] == s]) for s in SIGMAS]
            lines.append(f"| {scale:+.0f} | {m} | " + " | ".join(f"{c:.1f}" for c in cells)
                         + f" | {sum(r['rising'] for r in rs)}/{len(rs)} |")
    (HERE / "sweep.md").write_text("Mean final ELBO over validation seeds " + str(SEEDS) + " (1000 steps).\n\n"
                                   + "\n".join(lines) + "\n")
    print((HERE / "sweep.md").read_text())


if __name__ == "__main__":
    main()

"""Validation sweep of the Gaussian families' initial scale (``vi.init_log_scale``) at the
reduced paper budget, on validation datasets (seeds 1 and 2, not the table's 21, 42, 69, 420).

    python docs/results/kl_init_scale/sweep.py   # writes sweep.json and sweep.md here

Each setting fits UCVI, LCVI and FCVI at 5 sigma_y values per seed (1000 Adam steps,
5e-3 -> 5e-5, S = 8, as configs/kl_table_paper_reduced.yaml) and records the final
ELBO (2000 samples) and whether it was still rising (:mod:`bnnp_jax.studies.kl_sweep`).
"""

from pathlib import Path

from bnnp_jax.studies import kl_sweep

if __name__ == "__main__":
    raise SystemExit(kl_sweep.main(["--setting", "init_log_scale", "--values", "0", "-1", "-2", "-3",
                                    "--out", str(Path(__file__).parent)]))

"""Accuracy cost of the width-scalable fast path (SPEC section 9) on sawtooth:
the same short PP-AVI training run for the paper's layer (unitwise prior,
per-unit pseudo-precisions) and the fast path (shared prior, per-point
pseudo-precisions), then the held-out log predictive density on fresh tasks.

Metric: per task, the mean over target points of the log of the posterior
mean density from S = 100 function draws given the context
(``metrics.log_predictive_density``), averaged over 64 test tasks (standard
error across tasks given). Training wall time is reported too.

    python benchmarks/fast_path_accuracy.py [--quick] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import _common as C

LAYERS = {
    "unitwise": {"prior_kind": "unitwise", "pseudo_precision": "per_unit"},
    "fast": {"prior_kind": "shared", "pseudo_precision": "per_point"},
}
NUM_TEST_TASKS = 64


def evaluate(params, batch, num_samples: int = 100):
    """Held-out log predictive density per task ``[T]`` on the target points."""
    import jax

    from bnnp_jax import metrics
    from bnnp_jax.bnnp import model as bnnp

    def one(key, x, y, ctx, tgt):
        post = bnnp.masked_posterior(key, params, x, y, ctx, num_samples)
        f = bnnp.forward(post.weights, x, params.config.activation)
        return metrics.log_predictive_density(f, bnnp.sigma_y(params), y, tgt)

    keys = jax.random.split(jax.random.PRNGKey(123), batch.x.shape[0])
    return jax.jit(jax.vmap(one))(keys, batch.x, batch.y, batch.context, batch.target)


def main(argv=None):
    args = C.parse_args(argparse.ArgumentParser(description=__doc__), argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bnnp_jax.bnnp import model as bnnp
    from bnnp_jax.data.registry import make_batch_sampler

    width = 32 if args.quick else 64
    steps = 300 if args.quick else 1000
    test = make_batch_sampler("sawtooth", dtype=jnp.float32)(jax.random.PRNGKey(999), NUM_TEST_TASKS)
    rows = []
    for layer, kw in LAYERS.items():
        cfg = bnnp.BNNPConfig(hidden=(width, width), **kw)
        t0 = time.perf_counter()
        params, losses = C.train_bnnp(jax.random.PRNGKey(0), cfg, "sawtooth", steps, num_tasks=5, num_samples=8)
        train_s = time.perf_counter() - t0
        lpd = np.asarray(evaluate(params, test))
        rows.append({"layer": layer, "width": width, "steps": steps, "train_seconds": train_s,
                     "s_per_step": train_s / steps, "final_train_loss": float(losses[-50:].mean()),
                     "heldout_log_density": float(lpd.mean()),
                     "heldout_log_density_se": float(lpd.std(ddof=1) / math.sqrt(len(lpd))),
                     "sigma_y": float(bnnp.sigma_y(params)[0])})
        C.print_table(rows[-1:], ["layer", "width", "steps", "train_seconds", "heldout_log_density",
                                  "heldout_log_density_se"])
    C.print_table(rows, ["layer", "width", "steps", "train_seconds", "s_per_step", "final_train_loss",
                         "heldout_log_density", "heldout_log_density_se", "sigma_y"], "fast path accuracy, sawtooth")
    by = {r["layer"]: r for r in rows}
    summary = {"heldout_log_density_fast_minus_unitwise":
               by["fast"]["heldout_log_density"] - by["unitwise"]["heldout_log_density"],
               "train_time_ratio_unitwise_over_fast": by["unitwise"]["train_seconds"] / by["fast"]["train_seconds"]}
    print(summary)
    C.write_json("fast_path_accuracy", args, rows, summary=summary,
                 settings={"family": "sawtooth", "tasks_per_step": 5, "S_train": 8, "lr": "3e-3 -> 3e-4 linear",
                           "test_tasks": NUM_TEST_TASKS, "S_eval": 100, "layers": LAYERS})


if __name__ == "__main__":
    sys.exit(main())

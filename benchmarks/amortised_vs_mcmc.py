"""Time to a posterior for one new task, next to the predictive log density
it reaches: amortised BNNP (zero-shot; also its width-scalable fast path, with its
own learned prior), per-task BNNP, MFVI, GIVI and NUTS on
the KL-table network (1 -> 20 -> 20 -> 1, ReLU), N = 30 context points,
100 held-out points from the same function (noise 0.1).

All methods except the fast-path row use the same model: the BNNP's learned
prior and ``sigma_y`` (``inference.model.from_bnnp``); the fast path is trained
the same way and uses its own learned prior. The BNNP is trained here for a few hundred
PP-AVI steps on BNN-prior tasks; ``--run DIR`` loads a meta-training run's newest
checkpoint instead and draws the new task from that run's family.
"log_density" is the mean over held-out points of the log of the posterior
mean density, from 1000 posterior function draws (``metrics.log_predictive_density``).

"seconds" is wall time from data to posterior samples in this process,
compile included, except for the amortised BNNP where the compiled
``predict`` call is timed (median of 21: 1000 functions at the 100 test
points, more work than NUTS's timed fit) and its first call (compile + run)
is reported beside it. The amortised rows also carry ``matched_s``: the
compiled draw of as many weight samples as NUTS keeps, with no test-point
forward pass, the like-for-like counterpart of ``nuts.fit``. NUTS compiles on every call; its row also carries
``compile_s_est`` (a 1 + 1 step run) and ``run_s_est`` = seconds - compile, and
the summary gives the speedup both ways (``nuts_over_*`` with NUTS's compile,
``nuts_run_over_*`` without it). Target: amortised >= 1000x faster than NUTS with a log
density within 10% of NUTS's.

    python benchmarks/amortised_vs_mcmc.py [--quick] [--device cpu|gpu] [--run DIR]
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as C

NUM_DRAWS = 1000


def _data(key, n_ctx: int, n_test: int, family: str = "bnn_prior", family_params: dict | None = None):

    from bnnp_jax.data.registry import make_sampler

    n = n_ctx + n_test
    kw = dict(hidden=(20, 20), x_range=(-4.0, 4.0), noise=0.1) if family_params is None else family_params
    x, y, _ = make_sampler(family, n_max=n, n_range=(n, n + 1), **kw)(key, 1)
    return x[0, :n_ctx], y[0, :n_ctx], x[0, n_ctx:], y[0, n_ctx:]


def _bnnp(args, key):
    from bnnp_jax.bnnp import model as bnnp

    if args.run:  # a meta-training run: its newest checkpoint, and new tasks from its family
        from bnnp_jax.training import loop as train

        config, params, _ = train.load_run(args.run)
        return params, {"source": f"checkpoint {args.run}", "family": config.data.family,
                        "family_params": dict(config.data.params or {})}
    params, info = _train_here(args, key, bnnp.BNNPConfig(hidden=(20, 20), activation="relu"))
    return params, {"source": "trained here", **info}


def _train_here(args, key, cfg):
    """A short PP-AVI run on BNN-prior tasks: ``(params, {steps, ..., train_seconds, final_loss})``."""
    steps = 150 if args.quick else 400
    t0 = time.perf_counter()
    params, losses = C.train_bnnp(key, cfg, "bnn_prior", steps, num_tasks=5, num_samples=8, lr=3e-3,
                                  hidden=(20, 20), x_range=(-4.0, 4.0), noise=0.1, n_range=(5, 50))
    return params, {"steps": steps, "tasks_per_step": 5, "S": 8, "train_seconds": time.perf_counter() - t0,
                    "final_loss": float(losses[-20:].mean())}


def _bnnp_fast(args, key):
    """The width-scalable fast path (shared prior covariance, one pseudo-precision per
    point; SPEC section 9), trained like :func:`_bnnp`; ``(None, {})`` with ``--run``."""
    from bnnp_jax.bnnp import model as bnnp

    if args.run:
        return None, {}
    return _train_here(args, key, bnnp.BNNPConfig(hidden=(20, 20), activation="relu", prior_kind="shared",
                                                  pseudo_precision="per_point"))


def _timed(fn):
    t0 = time.perf_counter()
    out = C.block(fn())
    return out, time.perf_counter() - t0


def run_methods(args, key, params, data, fast=None) -> list[dict]:
    import jax

    from bnnp_jax import metrics
    from bnnp_jax.bnnp import model as bnnp
    from bnnp_jax.inference import model as bnn

    x_c, y_c, x_t, y_t = data
    model = bnn.from_bnnp(params)
    sig = bnnp.sigma_y(params)
    mask = jax.numpy.ones(x_t.shape[0])
    steps = 1000 if args.quick else 3000
    k = iter(jax.random.split(key, 20))
    rows = []

    def add(method, seconds, f, noise=sig, **extra):
        ld = float(metrics.log_predictive_density(f, noise, y_t, mask))
        rows.append({"method": method, "n": int(x_c.shape[0]), "seconds": seconds, "log_density": ld, **extra})
        C.print_table(rows[-1:], ["method", "n", "seconds", "log_density"])

    warm = 500 if args.quick else 1000
    kp = next(k)

    def amortised(method, p):
        """``seconds``: compiled ``predict`` (NUM_DRAWS functions at the test points; median
        of 21). ``matched_s``: weight draws alone, as many as NUTS keeps: like ``nuts.fit``."""
        pred = lambda: bnnp.predict(kp, p, x_c, y_c, x_t, NUM_DRAWS).samples
        draws = lambda: bnnp.posterior_samples(kp, p, x_c, y_c, warm, with_kl=False).weights
        t, m = C.time_fn(pred, repeats=21), C.time_fn(draws, repeats=21)
        add(method, t["run_median_s"], pred(), noise=bnnp.sigma_y(p), first_call_s=t["first_call_s"],
            compile_s_est=t["compile_s_est"], run_min_s=t["run_min_s"], matched_s=m["run_median_s"],
            matched_draws=warm, matched_first_call_s=m["first_call_s"])

    amortised("bnnp_amortised", params)
    if fast is not None:  # its own learned prior and noise: the log density is still of the same held-out data
        amortised("bnnp_amortised_fast", fast)

    try:
        from bnnp_jax.inference import bnnp_methods, givi, nuts, vi
    except ImportError as e:  # a baseline module is missing: say so rather than fake it
        rows.append({"method": "baselines", "error": f"missing: {e}"})
        return rows
    res, s = _timed(lambda: bnnp_methods.per_task_fit(next(k), model, x_c, y_c, num_steps=steps, progress_bar=False))
    add("bnnp_per_task", s, bnnp_methods.per_task_predict(next(k), res, x_t, NUM_DRAWS), steps=steps)
    res, s = _timed(lambda: vi.fit(next(k), model, x_c, y_c, "mfvi", num_steps=steps, progress_bar=False))
    add("mfvi", s, vi.predict(next(k), res, x_t, NUM_DRAWS), steps=steps)
    res, s = _timed(lambda: givi.fit(next(k), model, x_c, y_c, num_inducing=10, num_steps=steps, progress_bar=False))
    add("givi", s, givi.predict(next(k), res, x_t, NUM_DRAWS), steps=steps, num_inducing=10)
    res, s = _timed(lambda: nuts.fit(next(k), model, x_c, y_c, num_warmup=warm, num_samples=warm, num_chains=1,
                                     progress_bar=False))
    d = res.diagnostics
    # NUTS compiles on every call (its potential closes over the data): a 1 + 1 step run
    # of the same program estimates that compile, so the run time can be quoted apart.
    _, compile_s = _timed(lambda: nuts.fit(next(k), model, x_c, y_c, num_warmup=1, num_samples=1, num_chains=1,
                                           progress_bar=False))
    add("nuts", s, nuts.predict(next(k), res, x_t, NUM_DRAWS), num_warmup=warm, num_samples=warm, num_chains=1,
        compile_s_est=compile_s, run_s_est=s - compile_s,
        mean_tree_size=d.mean_tree_size, accept_rate=d.accept_rate, num_divergent=d.num_divergent,
        min_ess=float(d.ess.min()), max_r_hat=None)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=None, help="load a trained BNNP from this run directory")
    args = C.parse_args(parser, argv)
    import jax

    k_train, k_data, k_methods = jax.random.split(jax.random.PRNGKey(0), 3)
    params, training = _bnnp(args, k_train)
    fast, fast_training = _bnnp_fast(args, k_train)
    if fast_training:
        training["fast_path"] = fast_training
    data = _data(k_data, 30, 100, training.get("family", "bnn_prior"), training.get("family_params"))
    rows = run_methods(args, k_methods, params, data, fast)
    by = {r["method"]: r for r in rows if "seconds" in r}
    summary = {}
    if "nuts" in by and "bnnp_amortised" in by:
        a, n = by["bnnp_amortised"], by["nuts"]
        summary = {
            "nuts_over_amortised_run": n["seconds"] / a["seconds"],
            "nuts_over_amortised_first_call": n["seconds"] / a["first_call_s"],
            "log_density_relative_gap_to_nuts": abs(a["log_density"] - n["log_density"]) / abs(n["log_density"]),
            "targets": {"speedup": 1000, "log_density_gap": 0.10},
        }
        if "bnnp_amortised_fast" in by:
            f = by["bnnp_amortised_fast"]
            summary["nuts_over_amortised_fast_run"] = n["seconds"] / f["seconds"]
            summary["fast_log_density_relative_gap_to_nuts"] = abs(f["log_density"] - n["log_density"]) / abs(n["log_density"])
            summary["nuts_run_over_amortised_fast_run"] = n["run_s_est"] / f["seconds"]
            summary["nuts_over_amortised_fast_matched"] = n["seconds"] / f["matched_s"]
            summary["nuts_run_over_amortised_fast_matched"] = n["run_s_est"] / f["matched_s"]
        summary["nuts_run_over_amortised_run"] = n["run_s_est"] / a["seconds"]
        summary["nuts_over_amortised_matched"] = n["seconds"] / a["matched_s"]
    C.print_table(rows, ["method", "n", "seconds", "log_density", "first_call_s", "matched_s", "compile_s_est"], "time to a posterior, one task")
    print(summary)
    C.write_json("amortised_vs_mcmc", args, rows, summary=summary, training=training,
                 settings={"network": list(params.config.widths), "activation": params.config.activation, "n_context": 30, "n_test": 100,
                           "family": training.get("family", "bnn_prior"), "draws_for_log_density": NUM_DRAWS,
                           "dtype": params.config.dtype,
                           "reference_nuts_s_per_dataset_spec14": 27.9})


if __name__ == "__main__":
    sys.exit(main())

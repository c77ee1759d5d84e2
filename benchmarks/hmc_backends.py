"""NUTS backends on the same BNN posterior: numpyro vs blackjax, each on the
flat weight vector and on the per-layer weight pytree. Reported: wall time
of the first run (compile + sampling) and of a second, compiled run, the
effective sample size (min and median over weights, numpyro's estimator for
both) and ESS per second of the compiled run.

Posterior: the KL-table network (1 -> 20 -> 20 -> 1, ReLU, fixed prior
``N(0, I / (D_in + 1))``, sigma_y = 0.1), N = 30 points drawn from the prior,
one chain, float32.

blackjax is an optional dependency (``pip install blackjax``, the ``bench``
extra); if it cannot be imported its rows record that instead.

    python benchmarks/hmc_backends.py [--quick] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common as C


def _problem():
    import jax

    from bnnp_jax.data.registry import make_sampler
    from bnnp_jax.inference import model as bnn

    x, y, _ = make_sampler("bnn_prior", n_max=30, n_range=(30, 31), hidden=(20, 20), x_range=(-4.0, 4.0),
                           noise=0.1)(jax.random.PRNGKey(69), 1)
    return bnn.fixed_prior_model((1, 20, 20, 1), "relu", 0.1), x[0], y[0]


def _log_density(model, x, y, layout):
    from bnnp_jax.inference import model as bnn

    if layout == "flat":
        return lambda theta: bnn.log_joint(model, bnn.unflatten(model, theta), x, y)
    return lambda ws: bnn.log_joint(model, ws, x, y)


def _init(key, model, layout):
    from bnnp_jax.inference import model as bnn

    w = bnn.prior_sample(key, model)
    return bnn.flatten(w) if layout == "flat" else list(w)


def run_numpyro(key, model, x, y, layout, warmup, samples):
    import jax
    from numpyro.infer import MCMC, NUTS

    logp = _log_density(model, x, y, layout)
    mcmc = MCMC(NUTS(potential_fn=lambda t: -logp(t)), num_warmup=warmup, num_samples=samples, num_chains=1,
                progress_bar=False)
    init = _init(key, model, layout)
    times = []
    for k in jax.random.split(key, 2):
        t0 = time.perf_counter()
        mcmc.run(k, init_params=init, extra_fields=("num_steps",))
        C.block(mcmc.get_samples())
        times.append(time.perf_counter() - t0)
    return mcmc.get_samples(), times, float(mcmc.get_extra_fields()["num_steps"].mean())


def run_blackjax(key, model, x, y, layout, warmup, samples):
    import blackjax
    import jax

    logp = _log_density(model, x, y, layout)

    @jax.jit
    def sample(key, init):
        k_warm, k_run = jax.random.split(key)
        adapt = blackjax.window_adaptation(blackjax.nuts, logp, target_acceptance_rate=0.8)
        (state, params), _ = adapt.run(k_warm, init, num_steps=warmup)
        kernel = blackjax.nuts(logp, **params).step

        def one(state, k):
            state, info = kernel(k, state)
            return state, (state.position, info.num_integration_steps)

        _, (pos, steps) = jax.lax.scan(one, state, jax.random.split(k_run, samples))
        return pos, steps

    init = _init(key, model, layout)
    times = []
    for k in jax.random.split(key, 2):
        t0 = time.perf_counter()
        pos, steps = C.block(sample(k, init))
        times.append(time.perf_counter() - t0)
    return pos, times, float(steps.mean())


def _ess(samples) -> tuple[float, float]:
    import jax
    import numpy as np
    from numpyro.diagnostics import effective_sample_size

    flat = np.concatenate([np.asarray(a).reshape(a.shape[0], -1) for a in jax.tree.leaves(samples)], axis=1)
    ess = effective_sample_size(flat[None])
    return float(np.min(ess)), float(statistics.median(ess.tolist()))


def main(argv=None):
    args = C.parse_args(argparse.ArgumentParser(description=__doc__), argv)
    import jax

    model, x, y = _problem()
    warmup = samples = 300 if args.quick else 1000
    rows = []
    cols = ["backend", "layout", "first_run_s", "second_run_s", "min_ess", "median_ess", "min_ess_per_s",
            "mean_tree_size", "error"]
    for backend, fn in (("numpyro", run_numpyro), ("blackjax", run_blackjax)):
        for layout in ("flat", "pytree"):
            row = {"backend": backend, "layout": layout, "num_warmup": warmup, "num_samples": samples, "chains": 1}
            try:
                draws, times, tree = fn(jax.random.PRNGKey(1), model, x, y, layout, warmup, samples)
            except ImportError as e:
                row["error"] = f"{backend} not importable: {e} (pip install blackjax)"
            else:
                mn, med = _ess(draws)
                row.update(first_run_s=times[0], second_run_s=times[1], min_ess=mn, median_ess=med,
                           min_ess_per_s=mn / times[1], median_ess_per_s=med / times[1], mean_tree_size=tree)
            rows.append(row)
            C.print_table(rows[-1:], cols)
    C.print_table(rows, cols, f"NUTS, KL-table BNN posterior ({warmup} warm-up + {samples} draws, 1 chain)")
    C.write_json("hmc_backends", args, rows,
                 settings={"network": [1, 20, 20, 1], "n": 30, "sigma_y": 0.1, "dtype": "float32",
                           "ess_estimator": "numpyro.diagnostics.effective_sample_size, one chain",
                           "reference_nuts_s_per_dataset_spec14": 27.9})


if __name__ == "__main__":
    sys.exit(main())

"""The KL table's fits over a (seed x sigma_y) grid: one batched, vmapped program per method
against a Python loop of single fits, and the paper grid's wall time extrapolated from both.

The data and model are the KL table's (``configs/kl_table.yaml``: a 1-20-20-1 ReLU BNN,
float64, one seed's dataset, B sigma_y values of the 40-point grid). For each method:

- ``batched``: ``registry.fit_batch`` over the B grid points (one compiled program, chunked
  ``lax.scan`` over steps), first call (compile + run) and a second call (run), once with
  ``num_steps=0`` (the start: prior draw, and for the Gaussian families 30 Gauss-Newton
  steps and the whitening), and the steps (``--quick`` 200, else 1000) from a cheap start
  (``mean_init="prior_draw"``: the same per-step program) less that start's own time;
- ``loop``: ``registry.fit`` once per grid point, the same two ways, the first fit's
  compile left out (every fit here has the same shapes, so one compile);
- ``elbo``: ``registry.elbo_batch`` with the table's 10,000 samples per fit.

A method spelled ``METHOD:FACTOR`` (e.g. ``fcvi:whitened``) is the Gaussian family fitted with
``factor=FACTOR`` (:mod:`bnnp_jax.inference.gaussian_vi`): ``fcvi:whitened`` next to ``fcvi``
(the direct factor) is the before/after of FCVI's per-step cost, measured in one process.

The paper grid is 4 seeds x 40 sigma_y = 160 fits of 20,000 steps per method. Its time is
extrapolated from the largest B measured: starts and ELBOs scaled by 160 / B, steps by
160 x 20,000 at the measured cost per fit and step, compiles once. AIS: ``ais.bdmc(batched=True)``
at ``--ais-temps`` temperatures with ``--ais-particles`` particles and ``--ais-leapfrog``
leapfrog steps, at B grid points, extrapolated to the table's AIS setting
(``configs/kl_table.yaml``) and to the old one (10,000 temperatures, 64 particles, 10 leapfrog
steps) for 160 datasets (tuning, forward and reverse runs are three anneals of the same length;
the cost scales with temperatures x particles x leapfrog steps).

``--quick`` (about 10 minutes on the 2-core CPU): B = 4, 100 steps, 1000-sample ELBOs, a loop
of 3 single fits (the first, compiling, left out).

    python benchmarks/kl_grid_batching.py [--quick] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as C

PAPER_FITS, PAPER_STEPS = 160, 20_000
OLD_AIS = (10_000, 64, 10)  # temperatures, particles, leapfrog steps


def _grid(num_points: int):
    """The table's data at ``num_points`` sigma_y values of the paper grid (one seed)."""
    import numpy as np

    from bnnp_jax.studies import kl_table

    full = np.geomspace(0.01, 10.0, 40)
    sigmas = tuple(float(s) for s in full[np.linspace(0, 39, num_points).round().astype(int)])
    cfg = kl_table.KLTableConfig(seeds=(69,), sigma_y_values=sigmas, mode="certified")
    return cfg, kl_table.grid(cfg)


def _settings(method: str, cfg, steps: int) -> dict:
    import dataclasses

    from bnnp_jax.inference import registry, vi

    method, _, factor = method.partition(":")
    own = {"givi": {"num_inducing": cfg.train.givi_inducing}, **{m: dataclasses.asdict(cfg.vi) for m in vi.METHODS}}
    out = {**registry.budget(method, steps, (cfg.train.lr_start, cfg.train.lr_end), cfg.train.num_particles),
           **own.get(method, {})}
    return dict(out, factor=factor) if factor else out


def _timed(fn):
    tic = time.perf_counter()
    out = C.block(fn())
    return out, time.perf_counter() - tic


def _fit(method, keys, g, kw, steps):
    """Batched fit, first call and second call (seconds), and the result."""
    from bnnp_jax.inference import registry

    fits = []

    def fit():
        fits.append(registry.fit_batch(method.partition(":")[0], keys, g.models, g.x, g.y, g.mask,
                                       **dict(kw, num_steps=steps)))
        return fits[-1].losses

    _, first = _timed(fit)
    _, run = _timed(fit)
    return first, run, fits[-1]


def bench_method(method: str, sizes, steps: int, elbo_samples: int, loop_fits: int) -> list[dict]:
    """Per B: the batch's start (``num_steps=0``: prior draw, Gauss-Newton MAP, whitening) and
    its steps timed apart, so the per-step cost extrapolates to 20,000 steps; the same for
    a loop of ``loop_fits`` single fits at the smallest B (the first, compiling, left out)."""
    import jax

    from bnnp_jax.inference import registry

    rows = []
    for b in sizes:
        cfg, g = _grid(b)
        kw = _settings(method, cfg, steps)
        keys = jax.random.split(jax.random.PRNGKey(0), b)
        f0, start, _ = _fit(method, keys, g, kw, 0)
        # the steps timed from a cheap start (a prior draw; the same per-step program), since
        # the Gauss-Newton start costs as much as a few hundred steps and the load is noisy
        cheap = dict(kw, mean_init="prior_draw") if "mean_init" in kw else kw
        f1, run, res = _fit(method, keys, g, cheap, steps)
        _, quick_start, _ = _fit(method, keys, g, cheap, 0)
        step_s = max(run - quick_start, 0.0) / steps
        row = {"method": method, "B": b, "steps": steps, "batched_compile_s": max(f0 - start, 0.0) + max(f1 - run, 0.0),
               "batched_start_s": start, "batched_run_s": run, "batched_step_ms": 1e3 * step_s,
               "fit_step_ms": 1e3 * step_s / b}
        ek = jax.random.split(jax.random.PRNGKey(1), b)
        _, e_first = _timed(lambda: registry.elbo_batch(ek, res, g.x, g.y, g.mask, elbo_samples).value)
        _, e_run = _timed(lambda: registry.elbo_batch(ek, res, g.x, g.y, g.mask, elbo_samples).value)
        row.update(elbo_run_s=e_run, elbo_compile_s=max(e_first - e_run, 0.0))
        if b == sizes[0]:  # the loop of single fits, at the smallest B (first fit: compile, left out)
            starts, runs = [], []
            n_loop = min(loop_fits, b)
            for i in range(n_loop):
                model, x, y, _ = g.element(i)
                for n, opts, out in ((0, kw, starts), (steps, cheap, runs), (0, cheap, runs)):
                    _, t = _timed(lambda: registry.fit(method.partition(":")[0], keys[i], model, x, y,
                                                       **dict(opts, num_steps=n)).losses)
                    out.append(t)
            start1 = sum(starts[1:]) / (n_loop - 1)
            run1 = sum(runs[2::2]) / (n_loop - 1) - sum(runs[3::2]) / (n_loop - 1)  # steps less the cheap start
            row.update(loop_start_s=start1 * b, loop_run_s=sum(runs[2::2]) / (n_loop - 1) * b,
                       loop_fit_step_ms=1e3 * max(run1, 0.0) / steps, batched_speedup=max(run1, 0.0) * b / (run - quick_start))
        rows.append(row)
    big = rows[-1]
    scale = PAPER_FITS / big["B"]
    elbo = big["elbo_run_s"] * 10_000 / elbo_samples  # the table's ELBOs take 10,000 draws
    paper = scale * (big["batched_start_s"] + elbo) + PAPER_FITS * PAPER_STEPS * big["fit_step_ms"] / 1e3
    big["paper_batched_h"] = (paper + big["batched_compile_s"] + big["elbo_compile_s"]) / 3600
    if "loop_fit_step_ms" in rows[0]:
        one = rows[0]["loop_start_s"] / rows[0]["B"] + PAPER_STEPS * rows[0]["loop_fit_step_ms"] / 1e3
        big["paper_loop_h"] = (PAPER_FITS * one + scale * elbo) / 3600
    return rows


def bench_ais(b: int, temps: int, particles: int, leapfrog: int) -> dict:
    import jax
    import jax.numpy as jnp

    from bnnp_jax.inference import ais
    from bnnp_jax.studies import kl_table

    cfg, g = _grid(b)
    starts = jnp.broadcast_to(g.w_true[:, None], (b, particles, g.w_true.shape[1]))
    keys = jax.random.split(jax.random.PRNGKey(2), b)
    run = lambda: ais.bdmc(keys, g.models, g.x, g.y, num_temps=temps, num_particles=particles,
                           num_leapfrog=leapfrog, posterior_init=starts, mask=g.mask, batched=True,
                           progress_bar=False).forward.log_z
    _, first = _timed(run)
    _, again = _timed(run)
    run_temps = -(-temps // 100) * 100  # each anneal runs whole chunks of 100 temperatures (ais._anneal)
    per = again / (b * run_temps)  # seconds per dataset and temperature, all three anneals
    unit = per / (particles * leapfrog)  # per dataset, temperature, particle and leapfrog step
    from pathlib import Path

    from bnnp_jax.config import load_yaml

    table = load_yaml(kl_table.KLTableConfig, Path(__file__).parent.parent / "configs" / "kl_table.yaml").ais
    paper = (table.num_temps, table.num_particles, table.num_leapfrog)
    hours = lambda t, k, lf: (PAPER_FITS * t * k * lf * unit + max(first - again, 0.0)) / 3600
    return {"method": "ais_bdmc", "B": b, "temps": temps, "run_temps": run_temps, "particles": particles,
            "leapfrog": leapfrog, "batched_first_s": first, "batched_run_s": again,
            "batched_compile_s": max(first - again, 0.0), "temp_ms_per_dataset": 1e3 * per,
            "paper_setting": list(paper), "paper_batched_h": hours(*paper), "old_setting": list(OLD_AIS),
            "old_setting_batched_h": hours(*OLD_AIS)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", default=None, help="comma-separated (default: every optimised method)")
    parser.add_argument("--ais-temps", type=int, default=None, help="AIS temperatures measured (default 200, quick 100)")
    parser.add_argument("--ais-particles", type=int, default=32, help="AIS particles measured")
    parser.add_argument("--ais-leapfrog", type=int, default=10, help="AIS leapfrog steps measured")
    args = C.parse_args(parser, argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    methods = (args.methods.split(",") if args.methods else
               ["mfvi", "ucvi", "lcvi", "fcvi", "fcvi:whitened", "givi", "bnnp_per_task"])
    sizes, steps, elbo_samples, loop_fits = ((4,), 100, 1000, 3) if args.quick else ((4, 16, 40), 1000, 10_000, 4)
    temps = args.ais_temps or (100 if args.quick else 200)
    rows = []
    cols = ["method", "B", "steps", "batched_compile_s", "batched_start_s", "batched_run_s", "fit_step_ms",
            "loop_fit_step_ms", "batched_speedup", "elbo_run_s", "paper_batched_h", "paper_loop_h"]

    def write():
        big = [r for r in rows if r["B"] == sizes[-1] and not r["method"].endswith(":whitened")]
        total = sum(r.get("paper_batched_h", 0.0) for r in big)
        load = max(C.START_LOAD[0], __import__("os").getloadavg()[0])
        C.write_json("kl_grid_batching", args, rows, paper_total_batched_h=total, methods=methods,
                     note=("under load (load average > 1 on the 2 cores, shared with other jobs): absolute times "
                           "are inflated; ratios measured side by side are the figures to use" if load > 1 else
                           "load average <= 1") + "; paper_total_batched_h sums the measured methods (the "
                     "METHOD:whitened rows left out) and AIS at the table's setting")
        return total

    for m in methods:
        rows += bench_method(m, sizes, steps, elbo_samples, loop_fits)
        C.print_table(rows, cols, "fits (time per fit and step; paper grid: 160 fits x 20k steps + ELBOs)")
        write()
    rows.append(bench_ais(sizes[-1], temps, args.ais_particles, args.ais_leapfrog))
    C.print_table(rows[-1:], ["method", "B", "temps", "particles", "leapfrog", "batched_compile_s", "batched_run_s",
                              "temp_ms_per_dataset", "paper_batched_h", "old_setting_batched_h"],
                  "AIS (BDMC: tuning + forward + reverse; paper: 160 datasets at the table's setting)")
    total = write()
    print(f"\npaper grid, all measured methods and AIS, batched: {total:.1f} h (load average {C.START_LOAD})")


if __name__ == "__main__":
    sys.exit(main())

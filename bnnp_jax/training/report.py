"""What a finished run writes: ``metrics.json`` and plots in the run directory.

Every registered model gets the held-out metrics, the training curve and (1-D
families) posterior predictives on held-out tasks; the BNNP also gets the
prior MMD and prior-draw figures (the other models have no weight prior to
sample from the same way: a neural process has none, and a BNAM's functions
depend on the whole query set).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.bnnp import bnam
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.training import evaluation
from bnnp_jax.training import models
from bnnp_jax.training import plots
from bnnp_jax.training import prior_spread
from bnnp_jax.data import registry
from bnnp_jax.training.config import RunConfig

__all__ = ["heldout", "mmd_key", "has_prior_mmd", "training_evaluator", "write_report"]


def heldout(config: RunConfig):
    from bnnp_jax.training.loop import make_sampler

    return evaluation.heldout_tasks(make_sampler(config), config.training.seed, config.training.eval_tasks)


def mmd_key(config: RunConfig):
    return jax.random.PRNGKey(config.training.seed + 7)


def has_prior_mmd(config: RunConfig) -> bool:
    """The BNNP on a 1-D family with a function generator gets the prior MMD."""
    fam = config.data.family if config.data is not None else None
    return (config.model == "bnnp" and fam in _draw_families() and registry.family_info(fam)["x_dim"] == 1)


def training_evaluator(config: RunConfig, untrained):
    """``evaluate(params) -> dict`` for the training loop: the held-out metrics, plus
    ``mmd2_prior`` (the number ``metrics.json`` reports at the end) where the run has one."""
    t = config.training
    evaluate = evaluation.make_evaluator(heldout(config), t.eval_samples, t.seed)
    if not has_prior_mmd(config):
        return evaluate
    learned, _, _ = evaluation.prior_mmd_tracker(mmd_key(config), untrained, config.data.family, t.plot_samples,
                                              config.data.params)
    terms = objective_terms(heldout(config), t.eval_samples, t.seed)
    return lambda params: {**evaluate(params), "mmd2_prior": learned(params), **terms(params)}


def objective_terms(tasks, num_samples: int, seed: int = 0):
    """``terms(params) -> dict``: the BNNP's noise level and the three terms of SPEC
    section 5 (``ctxt_ell``, ``trgt_ppl``, ``kl``, task means) on fixed held-out tasks,
    so a run's history shows which term moves (e.g. sigma_y growing to explain structure
    as noise, or the KL pulling the posteriors onto the prior)."""
    from bnnp_jax.bnnp import objectives

    keys = jax.random.split(jax.random.PRNGKey(seed + 3), tasks.x.shape[0])
    args = (keys, tasks.x, tasks.y, tasks.context, tasks.target, tasks.context_index)
    # One task at a time (lax.map): vmapped over 64 tasks at the paper's widths, the
    # unitwise layer's [S, D, D]-per-unit matrices would take gigabytes in float64.
    one = lambda params, a: objectives.task_terms(a[0], params, *a[1:5], num_samples, None, a[5])  # noqa: E731
    fn = jax.jit(lambda params: jax.lax.map(lambda a: one(params, a), args))

    def terms(params) -> dict:
        out = fn(params)
        return {"sigma_y": float(jnp.mean(bnnp.sigma_y(params))), "ctxt_ell": float(jnp.mean(out.ctxt_ell)),
                "trgt_ppl": float(jnp.mean(out.trgt_ppl)), "kl": float(jnp.mean(out.kl))}

    return terms


def write_report(run_dir: Path, config: RunConfig, params, untrained, history: dict) -> dict:
    """Evaluate, compute the prior MMD (BNNP), write ``metrics.json`` and the figures."""
    run_dir = Path(run_dir)
    t = config.training
    tasks = heldout(config)
    tic = time.perf_counter()
    final = evaluation.make_evaluator(tasks, t.eval_samples, t.seed)(params)
    untrained_eval = evaluation.make_evaluator(tasks, t.eval_samples, t.seed)(untrained)
    out = {
        "model": config.model,
        "family": config.data.family,
        "steps": t.steps,
        "tasks_per_step": t.tasks_per_step,
        "heldout": final,
        "heldout_untrained": untrained_eval,
        "sigma_y": _sigma_y(params),
        "train_seconds": history.get("seconds"),
        "tasks_per_second": (t.steps * t.tasks_per_step / history["seconds"]) if history.get("seconds") else None,
        **evaluation.summarise(history),
        "eval_history": history.get("eval", []),
        "warm_start": history.get("warm_start"),
        "device": jax.devices()[0].device_kind,
    }
    key = mmd_key(config)
    one_d = registry.family_info(config.data.family)["x_dim"] == 1
    if config.model != "bnnp":
        if one_d:
            _model_predictive_plot(run_dir, config, params, tasks, key)
    elif has_prior_mmd(config):
        out["prior_mmd"] = evaluation.prior_mmd(key, params, untrained, config.data.family, t.plot_samples,
                                                config.data.params)
        out["prior_spread"] = {name: prior_spread.prior_spread(key, p, config.data.family,
                                                               family_params=config.data.params)
                               for name, p in (("learned", params), ("untrained", untrained))}
        _one_d_plots(run_dir, config, params, untrained, tasks, key)
    elif config.data.family == "digits":
        _image_plots(run_dir, config, params, tasks, key)
    out["eval_seconds"] = time.perf_counter() - tic
    plots.training_curve(history, run_dir / "training_curve.png")
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=2))
    return out


def _sigma_y(params):
    if isinstance(params, bnnp.BNNPParams):
        return np.asarray(bnnp.sigma_y(params)).tolist()
    if isinstance(params, bnam.BNAMParams):
        return np.asarray(bnam.sigma_y(params)).tolist()
    return None  # neural processes predict a noise level per point


def _model_predictive_plot(run_dir, config, params, tasks, key, num: int = 4):
    """Held-out 1-D tasks under any model: mean and +-2 sd of the predictive mixture on a grid."""
    import matplotlib.pyplot as plt

    grid = evaluation.grid_for(config.data.family, 200)
    predict = models.for_params(params).predict
    fig, axes = plt.subplots(1, num, figsize=(4 * num, 3.3))
    g = np.asarray(grid)[:, 0]
    for i, ax in enumerate(np.atleast_1d(axes)):
        c, t = np.asarray(tasks.context[i]) > 0, np.asarray(tasks.target[i]) > 0
        x, y = np.asarray(tasks.x[i]), np.asarray(tasks.y[i])
        f, var = predict(jax.random.fold_in(key, i), params, x[c], y[c], grid.astype(x.dtype), 32)
        plots.predictive_band(ax, g, np.asarray(f).mean(0)[:, 0], np.sqrt(np.asarray(var)[:, 0]))
        ax.scatter(x[t, 0], y[t, 0], s=8, c="C3", label="target")
        ax.scatter(x[c, 0], y[c, 0], s=14, c="k", label="context")
        ax.set_title(f"{config.model}: held-out task {i} ({int(c.sum())} context)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "posterior_predictive.png", dpi=120)
    plt.close(fig)


def _draw_families():
    from bnnp_jax.data import synthetic

    return set(synthetic.DRAWS)


def _one_d_plots(run_dir, config, params, untrained, tasks, key):
    family = config.data.family
    grid = evaluation.grid_for(family, 200)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    truth = registry.true_function_samples(k1, family, grid, 12, **evaluation.draw_params(family, config.data.params))[..., 0]
    learned = evaluation.prior_function_samples(k2, params, grid, 12)[..., 0]
    init = evaluation.prior_function_samples(k3, untrained, grid, 12)[..., 0]
    plots.prior_draws(np.asarray(grid)[:, 0], learned, truth, init, run_dir / "prior_samples.png")
    n = min(4, tasks.x.shape[0])
    f = _predict_grid(jax.random.split(k4, n), params, jax.tree.map(lambda a: a[:n], tasks), grid)
    plots.posterior_predictive(tasks, grid, f, bnnp.sigma_y(params)[0], run_dir / "posterior_predictive.png")


@jax.jit
def _predict_grid(keys, params, tasks, grid):
    """Posterior function draws ``[T, 32, G, y_dim]`` on ``grid`` for each task's context,
    built from the gathered context rows when the tasks carry them (as evaluation does:
    :func:`bnnp_jax.training.evaluation._task_functions`)."""
    def one(key, x, y, c, i):
        return evaluation._task_functions(key, params, x, y, c, 32, i, grid)

    return jax.vmap(one)(keys, tasks.x, tasks.y, tasks.context, tasks.context_index)


def _image_plots(run_dir, config, params, tasks, key):
    """Digits: prior samples as 8x8 images; super-resolution (16x16) from a coarse context."""
    from bnnp_jax.data import images

    grid = images.pixel_grid(8, 8)
    prior_f = evaluation.prior_function_samples(key, params, grid, 16)[..., 0]
    plots.image_grid(np.asarray(prior_f).reshape(-1, 8, 8), run_dir / "prior_samples.png", "learned prior draws")
    fine = images.fine_grid(8, 8, 2)
    rows = []
    for i in range(4):
        f = bnnp.masked_functions(jax.random.fold_in(key, i), params, tasks.x[i], tasks.y[i], tasks.context[i],
                                  fine, 16)
        ctx = np.full(64, np.nan)
        xs = np.asarray(tasks.x[i]); c = np.asarray(tasks.context[i]) > 0
        idx = np.round((xs[c] + 1) / 2 * 7).astype(int)
        ctx[idx[:, 1] * 8 + idx[:, 0]] = np.asarray(tasks.y[i])[c, 0]
        rows += [ctx.reshape(8, 8), np.asarray(f.mean(0)).reshape(16, 16)]
    plots.image_grid(rows, run_dir / "super_resolution.png", "context (8x8) -> posterior mean (16x16)", cols=2)

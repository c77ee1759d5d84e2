"""MetaPrior toy experiments (SPEC section 13; paper sec. 5.1-5.2): cubic regression and half-moons."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_moons

from bnnp_jax.core import networks
from bnnp_jax.core.gaussian import normal_log_prob
from bnnp_jax.metaprior import mfvi as mf
from bnnp_jax.metaprior import codes as mc
from bnnp_jax.metaprior import model as mp
from bnnp_jax.metaprior.fit import FitConfig
from bnnp_jax.studies.metaprior import mlp_baseline as mlp
from bnnp_jax.studies.metaprior.common import classification_metrics, final_elbo, train_metaprior, train_mfvi
from bnnp_jax.studies.metaprior.experiments import ExperimentConfig

__all__ = ["LAYER_COLOURS", "cubic_data", "cubic_split", "evaluate_cubic", "with_hidden_code", "metaprior_code_draws", "mf_weight_draws",
           "run_cubic", "moons_data", "fit_moons", "run_moons"]

Array = jax.Array
LAYER_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


# ----- cubic ---------------------------------------------------------------


def cubic_data(seed: int, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """``x ~ U[-4, 4]``, ``y = x^3 + N(0, noise^2)`` (Hernandez-Lobato & Adams): ``[n, 1]`` each."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4.0, 4.0, (n, 1))
    return x.astype(np.float32), (x**3 + noise * rng.normal(size=(n, 1))).astype(np.float32)


def cubic_split(seed: int, n_train: int, n_val: int, n_test: int, noise: float) -> tuple[np.ndarray, ...]:
    """``(x_fit, y_fit, x_val, y_val, x_test, y_test)`` for the cubic, each ``[n, 1]``.

    The ``n_train - n_val`` fitting points are ``cubic_data(seed, n_train - n_val)``, so the
    fitting set does not depend on ``n_val`` (with ``n_train = 40, n_val = 20`` it is the
    20 points of the paper's setting and of every run without a split). The ``n_val``
    validation points come from their own stream (``seed + 2000``) and the test points from
    ``seed + 1000``: three disjoint draws of the same generator."""
    x, y = cubic_data(seed, n_train - n_val, noise)
    x_va, y_va = cubic_data(seed + 2000, n_val, noise)
    x_te, y_te = cubic_data(seed + 1000, n_test, noise)
    return x, y, x_va, y_va, x_te, y_te


def with_hidden_code(z: mc.ZSample, layer: int, unit: int, value: Array) -> mc.ZSample:
    """``z`` with the code of one unit replaced by ``value [K]``."""
    units = list(z.units)
    units[layer] = units[layer].at[unit].set(value)
    return mc.ZSample(tuple(units), z.glob)


@partial(jax.jit, static_argnames=("mcfg", "num_draws", "layer"))
def metaprior_code_draws(key: Array, params: mp.MetaPriorParams, mcfg: mp.MetaPriorConfig, x: Array,
                         num_draws: int, unit: int, z: mc.ZSample, layer: int = 1) -> tuple[Array, Array]:
    """Paper fig. 2b: all codes clamped at ``z`` (their means in the paper) except hidden unit
    ``unit``, moved by ``delta ~ N(0, I)``; weights at the Gaussian head's mean.
    Returns ``(f [R, N, D_L], |delta| [R])``."""
    deltas = jax.random.normal(key, (num_draws, mcfg.code_dim))

    def one(d: Array) -> Array:
        zz = with_hidden_code(z, layer, unit, z.units[layer][unit] + d)
        w = mp.sample_weights(jax.random.PRNGKey(0), params.hyper, mcfg, zz, noise=mcfg.head == "implicit")
        return networks.forward(w, x, mcfg.activation)

    return jax.vmap(one)(deltas), jnp.linalg.norm(deltas, axis=-1)


@partial(jax.jit, static_argnames=("bcfg", "num_draws", "num_weights"))
def mf_weight_draws(key: Array, params: mf.MFParams, bcfg: mf.MFConfig, x: Array, num_draws: int,
                    num_weights: int) -> Array:
    """Paper fig. 2b right: posterior means except ``num_weights`` random weights drawn from
    their priors (a fresh subset per draw). Returns ``f [R, N, D_L]``."""
    prior = mf.prior(bcfg)
    sizes = [m.size for m in params.mean]
    flat_mean = jnp.concatenate([m.ravel() for m in params.mean])
    flat_prior = jnp.concatenate([s.ravel() for s in prior.std])

    def one(k: Array) -> Array:
        k_idx, k_eps = jax.random.split(k)
        idx = jax.random.choice(k_idx, flat_mean.size, (num_weights,), replace=False)
        flat = flat_mean.at[idx].set(flat_prior[idx] * jax.random.normal(k_eps, (num_weights,)))
        parts = jnp.split(flat, np.cumsum(sizes)[:-1])
        return networks.forward([p.reshape(m.shape) for p, m in zip(parts, params.mean)], x, bcfg.activation)

    return jax.vmap(one)(jax.random.split(key, num_draws))


def _regression_summary(f: Array, y: np.ndarray, noise: float) -> dict[str, float]:
    """Log predictive density (mixture over samples) and RMSE: ``f [S, N, 1]``, ``y [N, 1]``."""
    lp = normal_log_prob(y[None], f, noise)
    lpd = jax.scipy.special.logsumexp(lp[..., 0], axis=0) - math.log(f.shape[0])
    return {"test_lpd": float(jnp.mean(lpd)), "test_rmse": float(jnp.sqrt(jnp.mean((f.mean(0) - y) ** 2)))}


def _plot_band(ax, grid: np.ndarray, f: np.ndarray, colour: str, label: str) -> None:
    mean, sd = f.mean(0)[:, 0], f.std(0)[:, 0]
    ax.fill_between(grid, mean - 2 * sd, mean + 2 * sd, color=colour, alpha=0.2, label=f"{label} +-2 sd")
    ax.plot(grid, mean, color=colour, lw=2, label=f"{label} mean")


def _plot_code_maps(path: Path, before: mc.Codes, after: mc.Codes, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, codes, name in zip(axes, (before, after), ("at initialisation", "after training")):
        for l, q in enumerate(codes.units):
            m = np.asarray(q.mean)
            ax.scatter(m[:, 0], m[:, 1], s=14, color=LAYER_COLOURS[l % 4], label=f"layer {l} ({m.shape[0]} units)")
        ax.set(title=f"{title}: code means {name}", xlabel="z[0]", ylabel="z[1]")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cubic_draws(key: Array, cfg: ExperimentConfig, params, mcfg, mfp, bcfg, grid: Array) -> dict:
    """Function draws on ``grid``: one hidden code moved with the others at their means (paper)
    or at one draw from Q; MF-VI with ``mf_draw_weights`` or 1 weight(s) from the prior."""
    k_unit, k_z, k_mp, k_mf = jax.random.split(key, 4)
    unit = int(jax.random.randint(k_unit, (), 0, cfg.hidden[0]))
    at_mean, offsets = metaprior_code_draws(k_mp, params, mcfg, grid, cfg.num_draws, unit, mc.mean_codes(params.codes))
    at_draw, _ = metaprior_code_draws(k_mp, params, mcfg, grid, cfg.num_draws, unit, mc.sample_codes(k_z, params.codes))
    return {"unit": unit, "offsets": offsets, "mp_at_mean": at_mean, "mp_at_draw": at_draw,
            "mf_many": mf_weight_draws(k_mf, mfp, bcfg, grid, cfg.num_draws, cfg.mf_draw_weights),
            "mf_one": mf_weight_draws(k_mf, mfp, bcfg, grid, cfg.num_draws, 1)}


def _plot_cubic(path: Path, cfg: ExperimentConfig, x, y, grid, f_mp, f_mf, draws: dict, y_scale: float) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True, sharey=True)
    _plot_band(axes[0, 0], grid, y_scale * np.asarray(f_mp), "tab:blue", "MetaPrior")
    axes[0, 0].set_title("MetaPrior: predictive over Q(Z) and p(W|Z)")
    _plot_band(axes[0, 1], grid, y_scale * np.asarray(f_mf), "tab:red", "MF-VI")
    axes[0, 1].set_title("MF-VI: predictive over Q(W)")
    cmap, norm = plt.get_cmap("viridis"), plt.Normalize(0, float(draws["offsets"].max()))
    for ax, name, what in ((axes[1, 0], "mp_at_mean", "others at their means (paper)"),
                           (axes[1, 1], "mp_at_draw", "others at one draw from Q")):
        for f, o in zip(np.asarray(draws[name]), np.asarray(draws["offsets"])):
            ax.plot(grid, y_scale * f[:, 0], color=cmap(norm(o)), lw=1)
        ax.set_title(f"MetaPrior: move hidden code {draws['unit']}; {what}", fontsize=9)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[1, 1], label="|offset| of the moved code")
    for ax, name, n in ((axes[0, 2], "mf_many", cfg.mf_draw_weights), (axes[1, 2], "mf_one", 1)):
        for f in np.asarray(draws[name]):
            ax.plot(grid, y_scale * f[:, 0], color="tab:red", lw=1, alpha=0.6)
        ax.set_title(f"MF-VI: {n} random weight(s) from the prior, rest at the mean", fontsize=9)
    for ax in axes.ravel():
        ax.scatter(x[:, 0], y[:, 0], s=12, color="k", zorder=5)
        ax.plot(grid, grid**3, "k--", lw=0.8)
        ax.set_ylim(-150, 150)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CUBIC_MODELS = ("metaprior", "mfvi")


def evaluate_cubic(cfg: ExperimentConfig, models: tuple[str, ...] = CUBIC_MODELS) -> dict:
    """Fit the chosen ``models`` on one seed's cubic data (``cfg.seed`` sets data and keys).

    ``y`` is standardised with the fitting points' s.d. and the fixed noise follows it.
    Returns ``{model: metrics}`` with the test (and, with ``n_val > 0``, validation) log
    predictive density per point and RMSE in original units, plus convergence diagnostics,
    and ``_fit`` holding the data and the fitted models (for the plots)."""
    unknown = set(models) - set(CUBIC_MODELS)
    if unknown:
        raise ValueError(f"models must be drawn from {CUBIC_MODELS}, got {sorted(unknown)}")
    k_mp, k_mf, k_pred = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    data = cubic_split(cfg.seed, cfg.n_train, cfg.n_val, cfg.n_test, cfg.noise)
    x, y, x_va, y_va, x_te, y_te = data
    y_scale = float(y.std())  # standardise y; the fixed noise follows
    widths, sig = (1, *cfg.hidden, 1), cfg.noise / y_scale
    cfg_s = dataclasses.replace(cfg, model={**cfg.model, "sigma_y": sig}, baseline={**cfg.baseline, "sigma_y": sig})
    xj, yj = jnp.asarray(x), jnp.asarray(y / y_scale)
    out: dict = {"_fit": {"data": data, "y_scale": y_scale}}

    def scores(predict) -> dict[str, float]:
        res = _regression_summary(y_scale * predict(jnp.asarray(x_te)), y_te, cfg.noise)
        if len(y_va):
            val = _regression_summary(y_scale * predict(jnp.asarray(x_va)), y_va, cfg.noise)
            res.update(val_lpd=val["test_lpd"], val_rmse=val["test_rmse"])
        return res

    if "metaprior" in models:
        mcfg, p0, params, trace = train_metaprior(k_mp, cfg_s, widths, "gaussian", xj, yj)
        out["metaprior"] = {**scores(lambda a: mp.predict(k_pred, params, mcfg, a, cfg.eval_samples)),
                            **convergence(trace), "final_elbo_per_point": final_elbo(trace),
                            "code_std_per_layer": [float(jnp.exp(q.log_std).mean()) for q in params.codes.units]}
        out["_fit"].update(mcfg=mcfg, p0=p0, params=params)
    if "mfvi" in models:
        bcfg, mfp, mf_trace = train_mfvi(k_mf, cfg_s, widths, "gaussian", xj, yj)
        out["mfvi"] = {**scores(lambda a: mf.predict(k_pred, mfp, bcfg, a, cfg.eval_samples)),
                       **convergence(mf_trace), "final_elbo_per_point": final_elbo(mf_trace)}
        out["_fit"].update(bcfg=bcfg, mfp=mfp)
    return out


def run_cubic(cfg: ExperimentConfig, out: Path) -> dict:
    """Cubic toy: fits, uncertainty bands, one-code vs 40-weight function draws."""
    out.mkdir(parents=True, exist_ok=True)
    res = evaluate_cubic(cfg)
    fitted = res.pop("_fit")
    x, y = fitted["data"][:2]
    params, mcfg, mfp, bcfg, y_scale = (fitted[k] for k in ("params", "mcfg", "mfp", "bcfg", "y_scale"))
    k_pred, k_draw = jax.random.split(jax.random.PRNGKey(cfg.seed + 10_000))
    grid = np.linspace(-6, 6, 241, dtype=np.float32)[:, None]
    f_mp = mp.predict(k_pred, params, mcfg, jnp.asarray(grid), cfg.eval_samples)
    f_mf = mf.predict(k_pred, mfp, bcfg, jnp.asarray(grid), cfg.eval_samples)
    draws = _cubic_draws(k_draw, cfg, params, mcfg, mfp, bcfg, jnp.asarray(grid))
    inside = np.abs(grid[:, 0]) <= 4

    def spread(f):  # mean over the data range of the across-draw std, original units
        return float(y_scale * np.asarray(f).std(0)[inside, 0].mean())

    res["metaprior"].update({"hidden_unit_moved": draws["unit"],
                             "draw_spread_one_code_others_at_mean": spread(draws["mp_at_mean"]),
                             "draw_spread_one_code_others_at_q_draw": spread(draws["mp_at_draw"])})
    res["mfvi"].update({f"draw_spread_{cfg.mf_draw_weights}_weights": spread(draws["mf_many"]),
                        "draw_spread_1_weight": spread(draws["mf_one"])})
    for name, f in (("metaprior", f_mp), ("mfvi", f_mf)):
        sd = y_scale * np.asarray(f).std(0)[:, 0]
        res[name].update(pred_sd_in_data=float(sd[inside].mean()), pred_sd_outside=float(sd[~inside].mean()))
    res.update(n_fit=len(y), n_val=len(fitted["data"][3]), n_test=len(fitted["data"][5]))
    _plot_code_maps(out / "codes.png", fitted["p0"].codes, params.codes, "cubic")
    _plot_cubic(out / "cubic_fits.png", cfg, x, y, grid[:, 0], f_mp, f_mf, draws, y_scale)
    return res


# ----- moons ---------------------------------------------------------------


def moons_data(seed: int, n_train: int, n_test: int, noise: float, n_val: int = 0) -> tuple[np.ndarray, ...]:
    """Half-moons as ``(x_fit, y_fit, x_val, y_val, x_test, y_test)``: ``x [N, 2]``, labels ``[N]``,
    with ``n_train - n_val`` fitting, ``n_val`` validation and ``n_test`` test points.

    ``make_moons`` shuffles, so the splits are consecutive blocks of one seeded draw and
    disjoint by construction; the validation block comes out of the ``n_train`` labelled
    points, never the test set. Inputs are standardised with the fitting points' statistics
    (validation and test points must not inform the model)."""
    x, y = make_moons(n_train + n_test, noise=noise, random_state=seed)
    n_fit = n_train - n_val
    mu, sd = x[:n_fit].mean(0), x[:n_fit].std(0)
    x, y = ((x - mu) / sd).astype(np.float32), y.astype(np.int32)
    return x[:n_fit], y[:n_fit], x[n_fit:n_train], y[n_fit:n_train], x[n_train:], y[n_train:]


def split_metrics(logits_fn, data: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Test ``accuracy`` / ``nll`` and, when there is a validation split, ``val_accuracy`` /
    ``val_nll``; ``logits_fn(x [N, D]) -> [S, N, C]``, ``data`` as from :func:`moons_data`."""
    _, _, x_va, y_va, x_te, y_te = data
    out = classification_metrics(logits_fn(jnp.asarray(x_te)), y_te)
    if len(y_va):
        out.update({f"val_{k}": v for k, v in classification_metrics(logits_fn(jnp.asarray(x_va)), y_va).items()})
    return out


def convergence(trace: Array) -> dict[str, float]:
    """Final training objective per point (mean of the last 10% of steps) and its change from
    the 10% before (``trace_drift``): near zero when training has converged."""
    n = max(1, trace.shape[0] // 10)
    last, before = float(jnp.mean(trace[-n:])), float(jnp.mean(trace[-2 * n:-n]))
    return {"final_objective_per_point": last, "trace_drift": last - before}


@partial(jax.jit, static_argnames=("mcfg", "unit", "num"))
def _weight_correlations(key: Array, params: mp.MetaPriorParams, mcfg: mp.MetaPriorConfig, unit: int,
                         num: int) -> tuple[Array, Array, Array]:
    """Paper fig. 3a: sample hidden unit ``unit``'s code from Q (others at their means) and read
    its incoming input weights ``[R, 2]``, outgoing weights ``[R, 2]`` and the offset angle ``[R]``."""
    q = params.codes.units[1]
    deltas = jnp.exp(q.log_std[unit]) * jax.random.normal(key, (num, mcfg.code_dim))
    z = mc.mean_codes(params.codes)

    def one(d):
        zz = with_hidden_code(z, 1, unit, q.mean[unit] + d)
        w = mp.sample_weights(jax.random.PRNGKey(0), params.hyper, mcfg, zz, noise=mcfg.head == "implicit")
        return w[0][:2, unit], w[1][unit, :2]

    w_in, w_out = jax.vmap(one)(deltas)
    return w_in, w_out, jnp.arctan2(deltas[:, 1], deltas[:, 0])


def _plot_moons(path: Path, key: Array, params, mcfg, x_te, y_te) -> None:
    g = np.linspace(-3, 3, 121, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1))
    p1 = np.asarray(mp.predictive_probs(key, params, mcfg, grid, 100))[:, 1].reshape(gx.shape)
    entropy = -(p1 * np.log(p1 + 1e-12) + (1 - p1) * np.log(1 - p1 + 1e-12))
    pred = np.asarray(jnp.argmax(mp.predictive_probs(key, params, mcfg, jnp.asarray(x_te), 100), -1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, field, title, cmap in ((axes[0], p1, "predictive p(class 1)", "RdBu_r"),
                                   (axes[1], entropy, "predictive entropy (nats)", "magma")):
        im = ax.contourf(gx, gy, field, levels=20, cmap=cmap)
        fig.colorbar(im, ax=ax)
        ax.scatter(x_te[:, 0], x_te[:, 1], c=pred, cmap="coolwarm", s=6, edgecolors="none")
        wrong = pred != y_te
        ax.scatter(x_te[wrong, 0], x_te[wrong, 1], marker="x", color="lime", s=18, label="misclassified")
        ax.set(title=f"MetaPrior: {title}; points = predicted label", xlim=(-3, 3), ylim=(-3, 3))
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_correlations(path: Path, key: Array, snapshots: list, mcfg, unit: int) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    for row, (name, params) in enumerate(snapshots):
        w_in, w_out, angle = map(np.asarray, _weight_correlations(key, params, mcfg, unit, 400))
        for ax, w, what in ((axes[row, 0], w_in, "layer 1: weights into"), (axes[row, 1], w_out, "layer 2: weights out of")):
            ax.scatter(w[:, 0], w[:, 1], c=angle, cmap="hsv", s=6)
            ax.set(title=f"{name}: {what} hidden unit {unit}", xlabel="weight 1", ylabel="weight 2")
    fig.suptitle("Sampling one hidden code from Q (colour = direction of the offset)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fit_moons(cfg: ExperimentConfig, key: Array) -> dict:
    """Data, trained MetaPrior and its validation / test metrics (no baselines, no plots): a dict
    with ``data`` (as from :func:`moons_data`), ``mcfg``, ``p0``, ``params``, ``trace``, ``metrics``."""
    k_mp, k_pred = jax.random.split(key)
    data = moons_data(cfg.seed, cfg.n_train, cfg.n_test, cfg.noise, cfg.n_val)
    mcfg, p0, params, trace = train_metaprior(k_mp, cfg, (2, *cfg.hidden, 2), "categorical",
                                              jnp.asarray(data[0]), jnp.asarray(data[1]))
    mean_z = mc.mean_codes(params.codes)
    metrics = {**split_metrics(lambda x: mp.predict(k_pred, params, mcfg, x, cfg.eval_samples), data),
               **convergence(trace), "final_elbo_per_point": final_elbo(trace),
               "accuracy_mean_codes": split_metrics(
                   lambda x: mp.predict(k_pred, params, mcfg, x, 1, z=mean_z, weight_noise=False), data)["accuracy"],
               "code_std_per_layer": [float(jnp.exp(q.log_std).mean()) for q in params.codes.units]}
    return {"data": data, "mcfg": mcfg, "p0": p0, "params": params, "trace": trace, "metrics": metrics}


def fit_moons_mfvi(cfg: ExperimentConfig, key: Array, data: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Mean-field BNN baseline (``baseline`` / ``baseline_fit``) on the fitting split; its metrics."""
    k_mf, k_pred = jax.random.split(key)
    bcfg, params, trace = train_mfvi(k_mf, cfg, (2, *cfg.hidden, 2), "categorical", jnp.asarray(data[0]),
                                     jnp.asarray(data[1]))
    return {**split_metrics(lambda x: mf.predict(k_pred, params, bcfg, x, cfg.eval_samples), data),
            **convergence(trace), "final_elbo_per_point": final_elbo(trace)}


def fit_moons_mlp(cfg: ExperimentConfig, key: Array, data: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Deterministic MLP baseline (``mlp`` / ``mlp_fit``) on the fitting split; its metrics
    (``final_objective_per_point`` is minus the training NLL, to read like an ELBO)."""
    lcfg = cfg.mlp_config((2, *cfg.hidden, 2), "categorical")
    k_init, k_fit = jax.random.split(key)
    weights, trace = mlp.fit(k_fit, mlp.init(k_init, lcfg), lcfg, FitConfig(**cfg.mlp_fit), jnp.asarray(data[0]),
                             jnp.asarray(data[1]))
    return {**split_metrics(lambda x: mlp.predict(weights, lcfg, x), data), **convergence(-trace)}


MOONS_MODELS = ("metaprior", "mfvi", "mlp")


def evaluate_moons(cfg: ExperimentConfig, models: tuple[str, ...] = MOONS_MODELS) -> dict:
    """Fit the chosen ``models`` on one seed's data (``cfg.seed`` sets data and keys); returns
    ``{model: metrics}`` plus ``_fit`` (the MetaPrior fit of :func:`fit_moons`, for the plots)."""
    unknown = set(models) - set(MOONS_MODELS)
    if unknown:
        raise ValueError(f"models must be drawn from {MOONS_MODELS}, got {sorted(unknown)}")
    k_fit, k_mf, k_mlp = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    out: dict = {}
    if "metaprior" in models:
        res = fit_moons(cfg, k_fit)
        out.update(metaprior=res["metrics"], _fit=res)
    data = moons_data(cfg.seed, cfg.n_train, cfg.n_test, cfg.noise, cfg.n_val)
    if "mfvi" in models:
        out["mfvi"] = fit_moons_mfvi(cfg, k_mf, data)
    if "mlp" in models:
        out["mlp"] = fit_moons_mlp(cfg, k_mlp, data)
    return out


def run_moons(cfg: ExperimentConfig, out: Path) -> dict:
    """Half-moons: MetaPrior vs mean-field BNN and MLP accuracy, predictive uncertainty, weight correlations."""
    out.mkdir(parents=True, exist_ok=True)
    k_pred, k_corr = jax.random.split(jax.random.PRNGKey(cfg.seed + 10_000))
    res = evaluate_moons(cfg)
    fitted = res.pop("_fit")
    x_te, y_te = fitted["data"][4:]
    results = {**res, "paper_reported_accuracy": 0.955, "accuracy": res["metaprior"]["accuracy"],
               "n_fit": len(fitted["data"][1]), "n_val": len(fitted["data"][3]), "n_test": len(y_te)}
    if "val_accuracy" in res["metaprior"]:
        results["val_accuracy"] = res["metaprior"]["val_accuracy"]
    _plot_moons(out / "moons_uncertainty.png", k_pred, fitted["params"], fitted["mcfg"], x_te, y_te)
    _plot_correlations(out / "moons_weight_correlations.png", k_corr,
                       [("init", fitted["p0"]), ("trained", fitted["params"])], fitted["mcfg"], 0)
    return results

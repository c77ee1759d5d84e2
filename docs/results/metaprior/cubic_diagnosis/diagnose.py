"""Why the cubic's hidden codes collapse (paper sec. 5.1, fig. 2; issue 18 item 3).

Fits the MetaPrior of ``configs/metaprior_cubic.yaml`` (seed 0 data: 20 points,
``y = x^3 + N(0, 3^2)``, 1 -> 100 ReLU -> 1, K = 2, g of width 32) under one
change at a time and measures, for every trained model:

- the ELBO of paper eq. 3 at ``beta = 1`` (whatever the training objective was),
  its expected log-likelihood and the code KL per layer (input, hidden, output);
- how far the hidden codes are spread (s.d. of the means across units) against
  their posterior s.d.;
- the paper's fig. 2b draw for *every* hidden unit: all codes at their posterior
  means except that unit's, drawn from its prior ``N(0, I)``, weights at the
  Gaussian head's mean. ``spread`` is the across-draw s.d. of ``f(x)``, averaged over
  ``|x| <= 4``, in the units of ``y``; ``global`` is the fraction of ``|x| <= 4`` where
  that s.d. is at least half its maximum (1 = the whole function moves);
- the participation ratio of the hidden units' contributions
  ``c_j(x) = v_j relu(w_j x + b_j)`` at the mean codes (about 100 = every unit
  matters equally, about 1 = one unit carries the function);
- topography: the Spearman correlation, over hidden-unit pairs, between the
  distance of two codes and the distance of the two units' ``(w, b, v)``.

``beta`` weighs the code KL: a training objective ``E log p(D|W) - beta KL``. It is
implemented by weighting every point by ``1 / beta`` (``fit``'s ``weight``), which is the
same as seeing each point ``1 / beta`` times, so ``beta = 0.05`` is the KL balance of
``N = 400`` points.

Run from the repository root::

    python docs/results/metaprior/cubic_diagnosis/diagnose.py run              # every variant, seed 0
    python docs/results/metaprior/cubic_diagnosis/diagnose.py run --only shipped beta0.01 --seed 1
    python docs/results/metaprior/cubic_diagnosis/diagnose.py report           # summary.md and figures

Each variant writes ``fits/seed_S/NAME.json`` and ``NAME.pkl`` (the trained
parameters as numpy arrays, for the figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.core import networks
from bnnp_jax.core.gaussian import diag_normal_kl
from bnnp_jax.metaprior import mfvi as mf
from bnnp_jax.metaprior import codes as mc
from bnnp_jax.metaprior import model as mp
from bnnp_jax.metaprior.fit import FitConfig, fit
from bnnp_jax.studies.metaprior.experiments import load_config
from bnnp_jax.studies.metaprior.toys import cubic_data, mf_weight_draws, with_hidden_code

HERE = Path(__file__).resolve().parent
GRID = np.linspace(-6, 6, 241, dtype=np.float32)[:, None]
INSIDE = np.abs(GRID[:, 0]) <= 4

# name -> (model overrides, fit overrides, beta, standardise x, start from variant, description)
VARIANTS: dict[str, tuple[dict, dict, float, bool, str | None, str]] = {
    "shipped": ({}, {}, 1.0, False, None, "configs/metaprior_cubic.yaml as shipped (5000 steps, no warm-up)"),
    "warmup": ({}, {"kl_warmup": 2500}, 1.0, False, None, "code-KL warm-up over 2500 steps"),
    "code_std1": ({"init_code_std": 1.0}, {}, 1.0, False, None, "initial code s.d. 1 (prior) instead of 0.1"),
    "no_fan_in": ({"fan_in_scaling": False}, {}, 1.0, False, None, "g's outputs not scaled by 1/sqrt(D+1)"),
    "x_std": ({}, {}, 1.0, True, None, "x standardised (s.d. 1) as well as y"),
    "beta0.1": ({}, {}, 0.1, False, None, "code KL weighted 0.1 (the balance of N = 200)"),
    "beta0.01": ({}, {}, 0.01, False, None, "code KL weighted 0.01 (the balance of N = 2000)"),
    "point": ({"codes": "point"}, {}, 1.0, False, None, "point (maximum-likelihood) codes, no KL"),
    "beta0.01_then_1": ({}, {}, 1.0, False, "beta0.01",
                        "beta0.01's solution trained 5000 more steps at beta = 1 (does it collapse?)"),
    "hidden10": ({"hidden": [10]}, {}, 1.0, False, None, "10 hidden units instead of 100"),
    "hidden10_beta0.01": ({"hidden": [10]}, {}, 0.01, False, None, "10 hidden units, code KL weighted 0.01"),
}


def setup(seed: int):
    """Data and the shipped experiment config (seed-``seed`` data, standardised y as in run_cubic)."""
    cfg = load_config("cubic")
    x, y = cubic_data(seed, cfg.n_train - cfg.n_val, cfg.noise)  # the fitting points of run_cubic
    y_scale = float(y.std())
    return cfg, x, y, y_scale


def model_config(cfg, y_scale: float, overrides: dict) -> mp.MetaPriorConfig:
    """The experiment's MetaPriorConfig with ``overrides`` (``hidden`` replaces the hidden widths)."""
    overrides = dict(overrides)
    hidden = tuple(overrides.pop("hidden", cfg.hidden))
    return mp.MetaPriorConfig(widths=(1, *hidden, 1), likelihood="gaussian",
                              **{**cfg.model, "sigma_y": cfg.noise / y_scale, **overrides})


def layer_kl(codes: mc.Codes) -> list[float]:
    """``KL(Q || N(0, I))`` of each layer's codes (nats): ``[input, hidden, output]``."""
    return [float(jnp.sum(diag_normal_kl(q.mean, jnp.exp(q.log_std), 0.0, 1.0))) for q in codes.units]


def elbo_terms(key, params, mcfg, x, y, reps: int = 16) -> dict:
    """Eq. 3 at beta = 1: expected log-likelihood by 16 x 64 draws, KL exactly (nats, not per point)."""
    ells = [mp.elbo(k, params, mcfg, x, y, num_samples=64)[1] for k in jax.random.split(key, reps)]
    ell = float(np.mean([float(e) for e in ells]))
    out = {"ell": ell}
    if mcfg.codes == "latent":
        kl = layer_kl(params.codes)
        out.update(kl_per_layer=kl, kl=sum(kl), elbo=ell - sum(kl))
    return out


def unit_draws(key, params, mcfg, x, num: int, mode: str) -> np.ndarray:
    """``f [U, R, N]`` for every hidden unit ``u``: codes at their posterior means except
    ``z_u``, which is drawn ``R`` times; weights at the Gaussian head's mean.

    ``mode``: ``prior`` draws ``z_u ~ N(0, I)`` (the paper's fig. 2b wording), ``offset``
    draws ``z_u = mean_u + delta``, ``delta ~ N(0, I)`` (the fig. 2b caption's "offset"),
    ``posterior`` draws ``z_u`` from its own ``Q``. Under ``prior`` the moved unit's weights are
    ``g`` of a fresh code, so the change ``c(z_new) - c(mean_u)`` differs between units only by
    the removed contribution ``c(mean_u)``, a constant: the across-draw spread is the same for
    every unit (a property of ``g`` alone)."""
    z = mp.point_codes(params, mcfg)
    q = z.units[1]
    eps = jax.random.normal(key, (num, mcfg.code_dim))
    if mode == "posterior":
        scale = jnp.exp(params.codes.units[1].log_std) if mcfg.codes == "latent" else jnp.zeros_like(q)
    else:
        scale = jnp.ones_like(q)
    centre = jnp.zeros_like(q) if mode == "prior" else q

    @jax.jit
    def all_units(hyper, z, eps, centre, scale):
        def unit(u):
            def draw(e):
                zz = with_hidden_code(z, 1, u, centre[u] + scale[u] * e)
                w = [m for m, _ in mp.weight_moments(hyper, mcfg, zz)]
                return networks.forward(w, x, mcfg.activation)[:, 0]
            return jax.vmap(draw)(eps)
        return jax.lax.map(unit, jnp.arange(q.shape[0]))

    return np.asarray(all_units(params.hyper, z, eps, centre, scale))


def unit_features(params, mcfg) -> np.ndarray:
    """Hidden units' mean weights at the mean codes: ``[U, 3]`` = (w_in, bias, w_out)."""
    w1, w2 = [np.asarray(m) for m, _ in mp.weight_moments(params.hyper, mcfg, mp.point_codes(params, mcfg))]
    return np.stack([w1[0], w1[1], w2[:-1, 0]], axis=1)


def participation_ratio(feat: np.ndarray, x: np.ndarray) -> float:
    """``(sum_j |c_j|)^2 / sum_j |c_j|^2`` of the unit contributions ``c_j(x)`` on ``|x| <= 4``."""
    c = feat[:, 2:3] * np.maximum(feat[:, 0:1] * x[None, :] + feat[:, 1:2], 0.0)
    norms = np.sqrt((c**2).mean(1))
    return float(norms.sum() ** 2 / max((norms**2).sum(), 1e-30))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def topography(codes_mean: np.ndarray, feat: np.ndarray) -> float:
    """Spearman correlation over unit pairs between code distance and (standardised) weight distance."""
    iu = np.triu_indices(codes_mean.shape[0], 1)
    dz = np.linalg.norm(codes_mean[:, None] - codes_mean[None], axis=-1)[iu]
    f = feat / np.maximum(feat.std(0), 1e-12)
    dw = np.linalg.norm(f[:, None] - f[None], axis=-1)[iu]
    return spearman(dz, dw)


def draw_stats(f: np.ndarray, y_scale: float) -> dict:
    """Per-unit spread (``y`` units) and globality of ``f [U, R, N]`` on ``|x| <= 4``."""
    sd = y_scale * f[:, :, INSIDE].std(1)  # [U, N_in]
    spread = sd.mean(1)
    glob = (sd >= 0.5 * sd.max(1, keepdims=True)).mean(1)
    order = np.argsort(spread)
    return {"spread_mean": float(spread.mean()), "spread_median": float(np.median(spread)),
            "spread_max": float(spread.max()), "spread_top5": [float(s) for s in spread[order[-5:]][::-1]],
            "most_sensitive_unit": int(order[-1]), "global_fraction_mean": float(glob.mean()),
            "global_fraction_of_most_sensitive": float(glob[order[-1]]), "spread_per_unit": spread.tolist()}


def analyse(key, params, p0, mcfg, x, y, y_scale, grid) -> dict:
    k_e, k_d, k_q, k_p = jax.random.split(key, 4)
    feat, feat0 = unit_features(params, mcfg), unit_features(p0, mcfg)
    z, z0 = np.asarray(mp.point_codes(params, mcfg).units[1]), np.asarray(mp.point_codes(p0, mcfg).units[1])
    f_pred = np.asarray(mp.predict(k_p, params, mcfg, grid, 200))[..., 0]
    f_mean = np.asarray(mp.predict(k_p, params, mcfg, grid, 1, z=mp.point_codes(params, mcfg),
                                   weight_noise=False))[0, :, 0]
    res = {**elbo_terms(k_e, params, mcfg, x, y),
           "pred_sd_in_data": float(y_scale * f_pred.std(0)[INSIDE].mean()),
           "pred_sd_outside": float(y_scale * f_pred.std(0)[~INSIDE].mean()),
           "rmse_mean_codes_vs_cubic": float(np.sqrt(np.mean((y_scale * f_mean[INSIDE] - GRID[INSIDE, 0] ** 3) ** 2))),
           "hidden_mean_sd_across_units": float(z.std(0).mean()),
           "hidden_mean_sd_across_units_init": float(z0.std(0).mean()),
           "hidden_mean_abs_max": float(np.abs(z).max()),
           "participation_ratio": participation_ratio(feat, GRID[INSIDE, 0]),
           "participation_ratio_init": participation_ratio(feat0, GRID[INSIDE, 0]),
           "topography_spearman": topography(z, feat), "topography_spearman_init": topography(z0, feat0),
           "draws_prior": draw_stats(unit_draws(k_d, params, mcfg, grid, 20, "prior"), y_scale),
           "draws_offset": draw_stats(unit_draws(k_d, params, mcfg, grid, 20, "offset"), y_scale)}
    if mcfg.codes == "latent":
        res["code_posterior_sd_per_layer"] = [float(jnp.exp(q.log_std).mean()) for q in params.codes.units]
        res["draws_own_posterior"] = draw_stats(unit_draws(k_q, params, mcfg, grid, 20, "posterior"), y_scale)
        res["hidden_separation"] = res["hidden_mean_sd_across_units"] / res["code_posterior_sd_per_layer"][1]
    return res


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def run_variant(name: str, seed: int, steps: int, out: Path) -> dict:
    model_o, fit_o, beta, x_std, start, desc = VARIANTS[name]
    cfg, x, y, y_scale = setup(seed)
    x_scale = float(x.std()) if x_std else 1.0
    mcfg = model_config(cfg, y_scale, model_o)
    xj, yj = jnp.asarray(x / x_scale), jnp.asarray(y / y_scale)
    grid = jnp.asarray(GRID / x_scale)
    k_init, k_fit, k_an = jax.random.split(jax.random.PRNGKey(seed), 3)
    p0 = mp.init(k_init, mcfg)
    if start is not None:
        with open(out / f"{start}.pkl", "rb") as fh:
            p_start = jax.tree.map(jnp.asarray, pickle.load(fh))
    else:
        p_start = p0
    fcfg = FitConfig(**{**cfg.fit, "steps": steps, **fit_o})
    t0 = time.perf_counter()
    params, trace = fit(k_fit, p_start, mcfg, fcfg, xj, yj, jnp.full((x.shape[0],), 1.0 / beta), progress=False)
    wall = time.perf_counter() - t0
    res = {"variant": name, "description": desc, "seed": seed, "beta": beta, "x_standardised": x_std,
           "model_overrides": model_o, "fit": dataclasses.asdict(fcfg), "start_from": start,
           "wall_seconds_under_load": round(wall, 1), "final_objective_per_point": float(jnp.mean(trace[-100:])),
           **analyse(k_an, params, p0, mcfg, xj, yj, y_scale, grid)}
    with open(out / f"{name}.pkl", "wb") as fh:
        pickle.dump(to_numpy(params), fh)
    with open(out / f"{name}_init.pkl", "wb") as fh:
        pickle.dump(to_numpy(p0), fh)
    (out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def run_mfvi(seed: int, steps: int, out: Path) -> dict:
    """The MF-VI reference of fig. 2b right: 1 or 40 random weights redrawn from their priors."""
    cfg, x, y, y_scale = setup(seed)
    bcfg = mf.MFConfig(widths=(1, *cfg.hidden, 1), likelihood="gaussian",
                       **{**cfg.baseline, "sigma_y": cfg.noise / y_scale})
    k_init, k_fit, k_d = jax.random.split(jax.random.PRNGKey(seed + 500), 3)
    params, _ = mf.fit(k_fit, mf.init(k_init, bcfg), mf.prior(bcfg), bcfg,
                       FitConfig(**{**cfg.baseline_fit, "steps": steps}), jnp.asarray(x), jnp.asarray(y / y_scale))
    res = {"variant": "mfvi", "seed": seed, "baseline": dict(cfg.baseline), "steps": steps}
    for n in (1, 40):
        f = np.asarray(mf_weight_draws(k_d, params, bcfg, jnp.asarray(GRID), 200, n))[..., 0]
        res[f"spread_{n}_weights"] = float(y_scale * f[:, INSIDE].std(0).mean())
    (out / "mfvi.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("run", "report"))
    ap.add_argument("--only", nargs="+", default=None, choices=[*VARIANTS, "mfvi"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5000)
    args = ap.parse_args(argv)
    if args.command == "report":
        from report import report  # noqa: E402  (sibling script)
        report(HERE)
        return 0
    out = HERE / "fits" / f"seed_{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only or [*VARIANTS, "mfvi"]:
        res = run_mfvi(args.seed, args.steps, out) if name == "mfvi" else run_variant(name, args.seed, args.steps, out)
        brief = {k: v for k, v in res.items() if k in ("elbo", "ell", "kl_per_layer", "hidden_separation",
                                                       "participation_ratio", "spread_1_weights",
                                                       "spread_40_weights")}
        if "draws_prior" in res:
            brief["spread_prior/offset_mean/offset_max"] = (
                round(res["draws_prior"]["spread_mean"], 3), round(res["draws_offset"]["spread_mean"], 3),
                round(res["draws_offset"]["spread_max"], 3))
        print(name, json.dumps(brief), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())

"""Tables and figures of the cubic diagnosis from ``fits/seed_S/*.json`` and ``*.pkl``.

    python docs/results/metaprior/cubic_diagnosis/diagnose.py report

writes ``summary.md``, ``code_maps.png`` and ``function_draws.png`` in this folder.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bnnp_jax.metaprior import model as mp  # noqa: E402

__all__ = ["report"]

FIG_VARIANTS = ("shipped", "code_std1", "beta0.01", "beta0.01_then_1", "point", "hidden10")


def _table(rows: list[dict], mf: dict | None) -> str:
    head = ("| variant | what changes | ELBO (beta = 1, nats) | E log p(D) | code KL in / hidden / out | hidden code "
            "posterior s.d. | spread of hidden means / posterior s.d. | participation ratio (init) | one code from "
            "prior: spread | one code offset: mean / max spread | fraction of \\|x\\| <= 4 that moves | predictive "
            "s.d., \\|x\\| <= 4 | f at mean codes: RMSE to x^3 | topography rho (init) |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        kl = r.get("kl_per_layer")
        kl_s = " / ".join(f"{v:.1f}" for v in kl) if kl else "none"
        sd = f"{r['code_posterior_sd_per_layer'][1]:.2f}" if "code_posterior_sd_per_layer" in r else "point"
        sep = f"{r['hidden_separation']:.2f}" if "hidden_separation" in r else "-"
        elbo = f"{r['elbo']:.1f}" if "elbo" in r else "-"
        lines.append(
            f"| {r['variant']} | {r['description']} | {elbo} | {r['ell']:.1f} | {kl_s} | {sd} | {sep} | "
            f"{r['participation_ratio']:.0f} ({r['participation_ratio_init']:.0f}) | "
            f"{r['draws_prior']['spread_mean']:.2f} | {r['draws_offset']['spread_mean']:.2f} / "
            f"{r['draws_offset']['spread_max']:.2f} | {r['draws_offset']['global_fraction_mean']:.2f} | "
            f"{r['pred_sd_in_data']:.2f} | {r['rmse_mean_codes_vs_cubic']:.1f} | "
            f"{r['topography_spearman']:.2f} ({r['topography_spearman_init']:.2f}) |")
    if mf:
        lines += ["", f"MF-VI reference (same data, `prior_std` {mf['baseline']['prior_std']}): redrawing 1 random "
                      f"weight from its prior gives a spread of {mf['spread_1_weights']:.2f}, 40 weights "
                      f"{mf['spread_40_weights']:.2f} (200 draws)."]
    return "\n".join(lines)


def _load(run: Path, name: str):
    with open(run / f"{name}.pkl", "rb") as fh:
        return jax.tree.map(jnp.asarray, pickle.load(fh))


def _mcfg(res: dict) -> mp.MetaPriorConfig:
    from diagnose import model_config, setup  # noqa: E402  (sibling script)

    cfg, _, _, y_scale = setup(res["seed"])
    return model_config(cfg, y_scale, res["model_overrides"]), y_scale


def _features(params, mcfg, x_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Hidden code means ``[U, 2]`` and each unit's kink location ``-b / w`` in x units."""
    z = mp.point_codes(params, mcfg)
    w1 = np.asarray(mp.weight_moments(params.hyper, mcfg, z)[0][0])
    return np.asarray(z.units[1]), x_scale * -w1[1] / np.where(np.abs(w1[0]) > 1e-9, w1[0], 1e-9)


def _code_maps(run: Path, results: dict, path: Path) -> None:
    names = [n for n in FIG_VARIANTS if n in results]
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        res = results[name]
        mcfg, _ = _mcfg(res)
        x_scale = 1.0
        for row, (tag, when) in enumerate((("_init", "init"), ("", "trained"))):
            params = _load(run, name + tag) if not (tag == "_init" and res["start_from"]) else \
                _load(run, res["start_from"])
            z, kink = _features(params, mcfg, x_scale)
            ax = axes[row, col]
            sc = ax.scatter(z[:, 0], z[:, 1], c=np.clip(kink, -6, 6), cmap="coolwarm", s=14, vmin=-6, vmax=6)
            if params.codes.units[1].log_std is not None:
                sd = np.exp(np.asarray(params.codes.units[1].log_std)).mean()
                ax.add_patch(plt.Circle((0, 0), sd, fill=False, ls="--", color="grey"))
            for layer, c in ((0, "k"), (2, "g")):
                m = np.asarray(params.codes.units[layer].mean)
                ax.scatter(m[:, 0], m[:, 1], marker="*", s=90, color=c)
            ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal",
                   title=f"{name}: {when if not (tag == '_init' and res['start_from']) else 'start (' + res['start_from'] + ')'}")
            ax.tick_params(labelsize=7)
        ax.title.set_fontsize(8)
    fig.colorbar(sc, ax=axes, label="hidden unit's kink location -b/w (x units)", shrink=0.6)
    fig.suptitle("Hidden code means (dots, colour = kink location), input (black star) and output (green star) "
                 "codes; dashed circle = mean hidden posterior s.d.", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _function_draws(run: Path, results: dict, path: Path) -> None:
    from diagnose import GRID, INSIDE, cubic_data, unit_draws  # noqa: E402,F401

    names = [n for n in FIG_VARIANTS if n in results]
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 6.5), squeeze=False, sharex=True)
    for col, name in enumerate(names):
        res = results[name]
        mcfg, y_scale = _mcfg(res)
        params = _load(run, name)
        x, y = cubic_data(res["seed"], 20, 3.0)
        unit = res["draws_offset"]["most_sensitive_unit"]
        f_off = y_scale * unit_draws(jax.random.PRNGKey(1), params, mcfg, jnp.asarray(GRID), 20, "offset")[unit]
        f_pred = y_scale * np.asarray(mp.predict(jax.random.PRNGKey(2), params, mcfg, jnp.asarray(GRID), 20))[..., 0]
        for ax, f, what in ((axes[0, col], f_off, f"move hidden code {unit} (largest effect)"),
                            (axes[1, col], f_pred, "20 draws of the predictive (Q(Z), p(W|Z))")):
            ax.plot(GRID[:, 0], f.T, lw=0.8, alpha=0.8)
            ax.scatter(x[:, 0], y[:, 0], s=8, color="k", zorder=5)
            ax.plot(GRID[:, 0], GRID[:, 0] ** 3, "k--", lw=0.6)
            ax.set(ylim=(-150, 150))
            ax.set_title(f"{name}: {what}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(here: Path) -> None:
    out = []
    for run in sorted((here / "fits").glob("seed_*")):
        results = {p.stem: json.loads(p.read_text()) for p in sorted(run.glob("*.json")) if p.stem != "mfvi"}
        mf = json.loads((run / "mfvi.json").read_text()) if (run / "mfvi.json").exists() else None
        order = [n for n in ("shipped", "warmup", "code_std1", "no_fan_in", "x_std", "beta0.1", "beta0.01",
                             "beta0.01_then_1", "point", "hidden10", "hidden10_beta0.01") if n in results]
        out.append(f"### {run.name}\n\n" + _table([results[n] for n in order], mf) + "\n")
        if run.name == "seed_0":
            _code_maps(run, results, here / "code_maps.png")
            _function_draws(run, results, here / "function_draws.png")
    (here / "summary.md").write_text(
        "Cubic diagnosis (`python docs/results/metaprior/cubic_diagnosis/diagnose.py run`, then `... report`). "
        "Spreads and s.d.s are in the units of y, averaged over |x| <= 4; ELBO terms are in nats for the 20 "
        "points (y standardised).\n\n" + "\n".join(out))

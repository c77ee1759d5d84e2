"""Figures for training runs (matplotlib, Agg backend): training curve, prior
function draws beside the generator's, posterior predictives on held-out
tasks, and image grids for pixel-regression families."""

from __future__ import annotations

from pathlib import Path

import matplotlib

__all__ = ["training_curve", "prior_draws", "posterior_predictive", "image_grid"]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curve(history: dict, path: Path) -> None:
    loss = np.asarray(history["loss"])
    ev = history.get("eval", [])
    # Runs that track the prior (BNNP on a 1-D family) get the prior MMD and sigma_y panels.
    extra = [k for k in ("mmd2_prior", "sigma_y") if ev and all(k in e for e in ev)]
    fig, axes = plt.subplots(1, 2 + len(extra), figsize=(5 * (2 + len(extra)), 3.5))
    axes[0].plot(loss, lw=0.5, alpha=0.4, label="per step")
    if loss.size > 20:
        w = max(loss.size // 50, 5)
        axes[0].plot(np.arange(w - 1, loss.size), np.convolve(loss, np.ones(w) / w, "valid"), label=f"mean of {w}")
    axes[0].set(xlabel="step", ylabel="-objective (per task)", title="training loss")
    axes[0].set_yscale("symlog")
    axes[0].legend()
    if ev:
        steps = [e["step"] for e in ev]
        axes[1].plot(steps, [e["log_predictive_density"] for e in ev], "o-")
        axes[1].set(xlabel="step", ylabel="nats / target point", title="held-out log predictive density")
    if "mmd2_prior" in extra:
        ax = axes[2]
        ax.plot(steps, [e["mmd2_prior"] for e in ev], "o-", label="learned prior")
        if steps[0] == 0:  # the step-0 evaluation is the untrained prior
            ax.axhline(ev[0]["mmd2_prior"], color="gray", ls="--", label="untrained prior")
            ax.axhline(0.5 * ev[0]["mmd2_prior"], color="gray", ls=":", label="0.5x untrained")
        ax.set(xlabel="step", ylabel="MMD$^2$ to generator draws", title="prior MMD$^2$ (lower is better)")
        ax.set_yscale("log")
        ax.legend()
    if "sigma_y" in extra:
        axes[-1].plot(steps, [e["sigma_y"] for e in ev], "o-")
        axes[-1].set(xlabel="step", ylabel="$\\sigma_y$", title="learned noise level")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prior_draws(grid, learned, truth, untrained, path: Path) -> None:
    """Function draws ``[K, G]`` from the learned prior, the generator and the untrained prior."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5), sharey=True)
    for ax, f, title in zip(axes, (truth, learned, untrained), ("generator", "learned prior", "untrained prior")):
        ax.plot(grid, np.asarray(f)[:12].T, lw=1)
        ax.set_title(title)
        ax.set_xlabel("x")
    lo, hi = np.percentile(np.asarray(truth), [1, 99])
    pad = 0.5 * (hi - lo)
    axes[0].set_ylim(lo - pad, hi + pad)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def posterior_predictive(tasks, grid, f_grid, sigma, path: Path, num: int = 4) -> None:
    """Held-out 1-D tasks: context (black), targets (red), predictive band and draws."""
    fig, axes = plt.subplots(1, num, figsize=(4 * num, 3.3))
    g = np.asarray(grid)[:, 0]
    for i, ax in enumerate(np.atleast_1d(axes)):
        f = np.asarray(f_grid[i])[..., 0]  # [S, G]
        mean, sd = f.mean(0), np.sqrt(f.var(0) + float(sigma) ** 2)
        ax.fill_between(g, mean - 2 * sd, mean + 2 * sd, alpha=0.25, label="±2 sd")
        ax.plot(g, f[:8].T, lw=0.6, color="C0", alpha=0.6)
        ax.plot(g, mean, color="C0")
        x, y = np.asarray(tasks.x[i])[:, 0], np.asarray(tasks.y[i])[:, 0]
        c, t = np.asarray(tasks.context[i]) > 0, np.asarray(tasks.target[i]) > 0
        ax.scatter(x[t], y[t], s=8, c="C3", label="target")
        ax.scatter(x[c], y[c], s=14, c="k", label="context")
        ax.set_title(f"held-out task {i} ({int(c.sum())} context)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def image_grid(images, path: Path, title: str, cols: int = 8) -> None:
    """``images``: a sequence of 2-D arrays, which may differ in size (a coarse context beside a fine prediction)."""
    images = [np.asarray(im) for im in images]
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.4 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, im in zip(np.ravel(axes), images):
        ax.imshow(im, cmap="gray")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

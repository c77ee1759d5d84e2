"""Figures for training runs (matplotlib, Agg backend): training curve, prior
function draws beside the generator's, posterior predictives on held-out
tasks, image grids for pixel-regression families, and the figures of
``bnnp sample-prior`` (function draws on a grid) and ``bnnp predict`` (a
predictive at new inputs)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

__all__ = ["training_curve", "prior_draws", "predictive_band", "posterior_predictive", "function_draws",
           "prediction", "image_grid"]

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


def predictive_band(ax, x, mean, sd, draws=None, num_draws: int = 8) -> None:
    """On ``ax``: the predictive mean over 1-D inputs ``x [G]`` with a +-2 ``sd`` band
    (``mean``, ``sd [G]``) and, when given, the first ``num_draws`` of ``draws [S, G]``."""
    ax.fill_between(x, mean - 2 * sd, mean + 2 * sd, alpha=0.25, label="±2 sd")
    if draws is not None:
        ax.plot(x, np.asarray(draws)[:num_draws].T, lw=0.6, color="C0", alpha=0.6)
    ax.plot(x, mean, color="C0")


def posterior_predictive(tasks, grid, f_grid, sigma, path: Path, num: int = 4) -> None:
    """Held-out 1-D tasks: context (black), targets (red), predictive band and draws."""
    fig, axes = plt.subplots(1, num, figsize=(4 * num, 3.3))
    g = np.asarray(grid)[:, 0]
    for i, ax in enumerate(np.atleast_1d(axes)):
        f = np.asarray(f_grid[i])[..., 0]  # [S, G]
        predictive_band(ax, g, f.mean(0), np.sqrt(f.var(0) + float(sigma) ** 2), f)
        x, y = np.asarray(tasks.x[i])[:, 0], np.asarray(tasks.y[i])[:, 0]
        c, t = np.asarray(tasks.context[i]) > 0, np.asarray(tasks.target[i]) > 0
        ax.scatter(x[t], y[t], s=8, c="C3", label="target")
        ax.scatter(x[c], y[c], s=14, c="k", label="context")
        ax.set_title(f"held-out task {i} ({int(c.sum())} context)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def function_draws(grid, f, path: Path, title: str, num: int = 12) -> None:
    """The first ``num`` function draws ``f [K, G, y_dim]`` over a 1-D grid ``grid [G]``,
    one panel per output dimension."""
    f = np.asarray(f)
    fig, axes = plt.subplots(1, f.shape[-1], figsize=(5 * f.shape[-1], 3.5), squeeze=False)
    for d, ax in enumerate(axes[0]):
        ax.plot(grid, f[:num, :, d].T, lw=1)
        ax.set(xlabel="x", ylabel=f"f_{d}(x)" if f.shape[-1] > 1 else "f(x)")
    fig.suptitle(f"{title} ({min(num, f.shape[0])} of {f.shape[0]})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prediction(x_t, mean, variance, path: Path, x_c=None, y_c=None, draws=None, title: str = "",
               max_outputs: int = 4) -> None:
    """A predictive at target inputs ``x_t [N_t, x_dim]``: ``mean``, ``variance [N_t, y_dim]``,
    optional function ``draws [S, N_t, y_dim]``, one panel per output dimension (at most
    ``max_outputs``). With one input dimension the panels are over ``x`` with the context
    ``x_c [N_c, 1]``, ``y_c [N_c, y_dim]`` as points; otherwise over the target index,
    mean with +-2 sd error bars."""
    x_t, mean, sd = np.asarray(x_t), np.asarray(mean), np.sqrt(np.asarray(variance))
    dims = min(mean.shape[-1], max_outputs)
    fig, axes = plt.subplots(1, dims, figsize=(5 * dims, 3.5), squeeze=False)
    for d, ax in enumerate(axes[0]):
        if x_t.shape[-1] == 1:
            order = np.argsort(x_t[:, 0])
            f = None if draws is None else np.asarray(draws)[:, order, d]
            predictive_band(ax, x_t[order, 0], mean[order, d], sd[order, d], f)
            if x_c is not None and len(x_c):
                ax.scatter(np.asarray(x_c)[:, 0], np.asarray(y_c)[:, d], s=14, c="k", label="context")
            ax.set_xlabel("x")
        else:
            ax.errorbar(np.arange(len(mean)), mean[:, d], yerr=2 * sd[:, d], fmt=".", lw=0.8, label="mean ±2 sd")
            ax.set_xlabel("target index")
        ax.set_ylabel(f"y_{d}" if mean.shape[-1] > 1 else "y")
        ax.legend(fontsize=7)
    fig.suptitle(title)
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

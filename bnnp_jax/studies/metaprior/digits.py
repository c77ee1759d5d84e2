"""MetaPrior on digits / MNIST (paper sec. 5.3-5.4, 6): a map of the learned unit codes, and
few-shot adaptation to permuted inputs / classes by illation of input, output or all codes
against a fine-tuned mean-field BNN.

Data: sklearn's bundled 8x8 digits (offline) or user-supplied MNIST: a ``.npz`` with arrays
``x_train, y_train, x_test, y_test`` (the Keras layout) or a directory holding MNIST's four
IDX files (``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``, plain or ``.gz``).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from bnnp_jax.metaprior import codes as mc
from bnnp_jax.metaprior import model as mp
from bnnp_jax.data.images import MNIST_KEYS, load_mnist_dataset  # noqa: F401 (MNIST_KEYS re-exported)
from bnnp_jax.metaprior.fit import FitConfig, illate
from bnnp_jax.metaprior import mfvi as mf
from bnnp_jax.studies.metaprior.common import classification_metrics, final_elbo, train_metaprior, train_mfvi
from bnnp_jax.studies.metaprior.experiments import ExperimentConfig

__all__ = ["load_data", "hold_out", "train_both", "evaluate_digits", "run_digits", "permute_task", "run_fewshot"]

Array = jax.Array


def load_data(seed: int, n_train: int, n_test: int, mnist: str | None = None,
              what: str = "--mnist") -> tuple[np.ndarray, ...]:
    """``(x_tr [N, D], y_tr [N], x_te, y_te, side)`` with pixels in [0, 1]; ``n_* = 0`` keeps all
    (digits: a stratified split with ``n_test`` test points). ``mnist``: a Keras-layout ``.npz``
    or a directory of MNIST's four IDX files (:func:`bnnp_jax.data.images.load_mnist_dataset`);
    a seeded random ``n_train`` / ``n_test`` subset of its training / test images is kept.
    Errors name ``what`` (the command-line option) and the file."""
    if mnist is None:
        d = load_digits()
        x_tr, x_te, y_tr, y_te = train_test_split(d.data / 16.0, d.target, test_size=n_test or 360,
                                                  random_state=seed, stratify=d.target)
        side = 8
    else:
        x_tr, y_tr, x_te, y_te = load_mnist_dataset(mnist, what)
        side = x_tr.shape[1]
        if x_tr.shape[1] != x_tr.shape[2]:
            raise ValueError(f"{what} {str(mnist)!r}: images must be square (the code maps are drawn side x side), "
                             f"got {x_tr.shape[1]} x {x_tr.shape[2]}")
        x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
        rng = np.random.default_rng(seed)
        tr = rng.permutation(len(x_tr))[: n_train or None]
        te = rng.permutation(len(x_te))[: n_test or None]
        x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    f32 = lambda a: np.asarray(a, np.float32)
    i32 = lambda a: np.asarray(a, np.int32)
    return f32(x_tr), i32(y_tr), f32(x_te), i32(y_te), side


def hold_out(seed: int, x: np.ndarray, y: np.ndarray, n_val: int) -> tuple[np.ndarray, ...]:
    """Split training images into ``(x_fit, y_fit, x_val, y_val)`` with ``n_val`` validation images,
    stratified by class and seeded; ``n_val = 0`` returns empty validation arrays. The test
    images are never touched."""
    if n_val == 0:
        return x, y, x[:0], y[:0]
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=n_val, random_state=seed, stratify=y)
    return x_fit, y_fit, x_val, y_val


def train_both(cfg: ExperimentConfig, data: tuple) -> dict:
    """Train the MetaPrior and the MF-VI baseline on clean data."""
    x_tr, y_tr = jnp.asarray(data[0]), jnp.asarray(data[1])
    widths = (x_tr.shape[1], *cfg.hidden, 10)
    k_mp, k_mf = jax.random.split(jax.random.PRNGKey(cfg.seed))
    mcfg, p0, params, trace = train_metaprior(k_mp, cfg, widths, "categorical", x_tr, y_tr)
    bcfg, mfp, mf_trace = train_mfvi(k_mf, cfg, widths, "categorical", x_tr, y_tr)
    return {"mcfg": mcfg, "p0": p0, "params": params, "trace": trace, "bcfg": bcfg, "mfp": mfp, "mf_trace": mf_trace}


DIGITS_MODELS = ("metaprior", "mfvi")


def evaluate_digits(cfg: ExperimentConfig, models: tuple[str, ...] = DIGITS_MODELS, mnist: str | None = None) -> dict:
    """Fit the chosen ``models`` on one seed's digits (the training images less the ``n_val``
    validation split; the same keys as :func:`train_both`). Returns ``{model: metrics}``: test
    and validation accuracy / NLL, and the final training objective and its drift over the last
    10% of steps (the selection's convergence diagnostics)."""
    unknown = set(models) - set(DIGITS_MODELS)
    if unknown:
        raise ValueError(f"models must be drawn from {DIGITS_MODELS}, got {sorted(unknown)}")
    x_all, y_all, x_te, y_te, _ = load_data(cfg.seed, cfg.n_train, cfg.n_test, mnist)
    x_tr, y_tr, x_va, y_va = hold_out(cfg.seed, x_all, y_all, cfg.n_val)
    widths = (x_tr.shape[1], *cfg.hidden, 10)
    k_mp, k_mf = jax.random.split(jax.random.PRNGKey(cfg.seed))
    key, out = jax.random.PRNGKey(cfg.seed + 1), {}
    xj, yj = jnp.asarray(x_tr), jnp.asarray(y_tr)

    def drift(trace: Array) -> dict[str, float]:
        n = max(1, trace.shape[0] // 10)
        last, before = float(jnp.mean(trace[-n:])), float(jnp.mean(trace[-2 * n:-n]))
        return {"final_objective_per_point": last, "trace_drift": last - before}

    if "metaprior" in models:
        mcfg, _, params, trace = train_metaprior(k_mp, cfg, widths, "categorical", xj, yj)
        acc = lambda x, y: _mp_acc(key, params, mcfg, x, y, cfg.eval_samples)  # noqa: E731
        out["metaprior"] = {**acc(x_te, y_te), **drift(trace)}
        if len(y_va):
            out["metaprior"].update({f"val_{k}": v for k, v in acc(x_va, y_va).items()})
    if "mfvi" in models:
        bcfg, mfp, mf_trace = train_mfvi(k_mf, cfg, widths, "categorical", xj, yj)
        acc = lambda x, y: _mf_acc(key, mfp, bcfg, x, y, cfg.eval_samples)  # noqa: E731
        out["mfvi"] = {**acc(x_te, y_te), **drift(mf_trace)}
        if len(y_va):
            out["mfvi"].update({f"val_{k}": v for k, v in acc(x_va, y_va).items()})
    return out


def _mp_acc(key, params, mcfg, x, y, s) -> dict:
    return classification_metrics(mp.predict(key, params, mcfg, jnp.asarray(x), s), y)


def _mf_acc(key, params, bcfg, x, y, s) -> dict:
    return classification_metrics(mf.predict(key, params, bcfg, jnp.asarray(x), s), y)


def _code_geometry(codes: mc.Codes, x_tr: np.ndarray, dim: float = 0.05) -> dict:
    """Paper fig. 4c claim: rarely lit (border) input pixels share codes. Mean distance of the
    input code means to their group centroid and mean code std (latent codes only), for pixels
    whose mean training intensity is below ``dim`` vs the others."""
    m = np.asarray(codes.units[0].mean)
    rare = x_tr.mean(0) < dim
    spread = lambda a: float(np.linalg.norm(a - a.mean(0), axis=1).mean()) if len(a) else float("nan")
    out = {"num_dim_pixels": int(rare.sum()), "num_never_lit_pixels": int((x_tr.max(0) == 0).sum()),
           "input_code_spread_dim": spread(m[rare]), "input_code_spread_lit": spread(m[~rare])}
    if codes.units[0].log_std is not None:
        sd = np.exp(np.asarray(codes.units[0].log_std))
        out.update(input_code_std_dim=float(sd[rare].mean()) if rare.any() else float("nan"),
                   input_code_std_lit=float(sd[~rare].mean()))
    return out


def _code_summary(params: mp.MetaPriorParams, x_tr: np.ndarray) -> dict:
    """Code statistics of a trained model: per-layer mean code std (latent codes) and the input-code
    geometry (latent and point codes); one-hot codes are fixed, so there is nothing to report."""
    if params.codes is None:
        return {}
    out = _code_geometry(params.codes, x_tr)
    if params.codes.units[0].log_std is not None:
        out["code_std_per_layer"] = [float(jnp.exp(q.log_std).mean()) for q in params.codes.units]
    return out


def _plot_codes(path: Path, p0: mp.MetaPriorParams, params: mp.MetaPriorParams, x_tr: np.ndarray, side: int,
                seed: int) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.5))
    names = ("input", "hidden", "output")
    for ax, codes, when in ((axes[0], p0.codes, "at initialisation"), (axes[1], params.codes, "after training")):
        means = [np.asarray(q.mean) for q in codes.units]
        emb = TSNE(2, perplexity=20, random_state=seed, init="pca").fit_transform(np.concatenate(means))
        start = 0
        for l, m in enumerate(means):
            e = emb[start:start + len(m)]
            start += len(m)
            ax.scatter(e[:, 0], e[:, 1], s=8 if l == 0 else 16, label=f"{names[min(l, 2)]} units ({len(m)})")
        ax.set_title(f"t-SNE of code means {when}")
        ax.legend(fontsize=7)
    pca = PCA(3).fit_transform(np.asarray(params.codes.units[0].mean))
    rgb = (pca - pca.min(0)) / (np.ptp(pca, 0) + 1e-12)
    axes[2].imshow(rgb.reshape(side, side, 3))
    axes[2].set_title("input-pixel codes (RGB = first 3 PCA components)")
    im = axes[3].imshow(x_tr.mean(0).reshape(side, side), cmap="gray")
    fig.colorbar(im, ax=axes[3])
    axes[3].set_title("mean pixel intensity (training set)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_digits(cfg: ExperimentConfig, out: Path, mnist: str | None = None) -> dict:
    """One hidden layer, K = 10: test (and validation) accuracy of MetaPrior and MF-VI, and the
    map of the codes (not for ``model.codes = one_hot``, whose codes are fixed). With
    ``n_val > 0`` the models are fitted on the training images less the validation split."""
    out.mkdir(parents=True, exist_ok=True)
    x_all, y_all, x_te, y_te, side = load_data(cfg.seed, cfg.n_train, cfg.n_test, mnist)
    x_tr, y_tr, x_va, y_va = hold_out(cfg.seed, x_all, y_all, cfg.n_val)
    m = train_both(cfg, (x_tr, y_tr, x_te, y_te, side))
    key = jax.random.PRNGKey(cfg.seed + 1)
    results = {"dataset": "mnist" if mnist else "sklearn-digits-8x8", "n_train": len(x_tr), "n_val": len(x_va),
               "n_test": len(x_te), "codes": m["mcfg"].codes,
               "metaprior": {**_mp_acc(key, m["params"], m["mcfg"], x_te, y_te, cfg.eval_samples),
                             "final_elbo_per_point": final_elbo(m["trace"]),
                             **_code_summary(m["params"], x_tr)},
               "mfvi": {**_mf_acc(key, m["mfp"], m["bcfg"], x_te, y_te, cfg.eval_samples),
                        "final_elbo_per_point": final_elbo(m["mf_trace"])}}
    if len(y_va):
        for name, metrics in (("metaprior", _mp_acc(key, m["params"], m["mcfg"], x_va, y_va, cfg.eval_samples)),
                              ("mfvi", _mf_acc(key, m["mfp"], m["bcfg"], x_va, y_va, cfg.eval_samples))):
            results[name].update({f"val_{k}": v for k, v in metrics.items()})
    results["accuracy"] = results["metaprior"]["accuracy"]
    if m["params"].codes is not None:
        _plot_codes(out / "digits_codes.png", m["p0"], m["params"], x_tr, side, cfg.seed)
    return results


# ----- few-shot ------------------------------------------------------------


def permute_task(kind: str, x: np.ndarray, y: np.ndarray, pi_x: np.ndarray, pi_y: np.ndarray) -> tuple:
    """Apply the pixel permutation (``input``), the class permutation (``classes``) or both."""
    if kind in ("input", "both"):
        x = x[:, pi_x]
    if kind in ("classes", "both"):
        y = pi_y[y]
    return x, y


def _derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    """A permutation with no fixed point, so every class really moves."""
    while True:
        p = rng.permutation(n)
        if np.all(p != np.arange(n)):
            return p


def _padded(x: np.ndarray, y: np.ndarray, n: int, n_max: int) -> tuple[Array, Array, Array]:
    """First ``n`` shots padded to ``n_max`` with zero weight (one compile for every shot count)."""
    xp = np.zeros((n_max, x.shape[1]), np.float32)
    yp = np.zeros(n_max, np.int32)
    xp[:n], yp[:n] = x[:n], y[:n]
    return jnp.asarray(xp), jnp.asarray(yp), jnp.asarray((np.arange(n_max) < n).astype(np.float32))


def _adapt_all(cfg: ExperimentConfig, m: dict, shots: tuple, n_shots: int, n_fit: int, evals: dict,
               key: Array) -> dict:
    """Every method on one permuted task and one shot count: ``{method: {split: accuracy}}`` for the
    splits of ``evals`` (``{split: (x, y)}``: the task's test, the clean test, the task's validation).

    ``shots = (x, y, weight)`` padded to one size; balanced illation weights each shot by
    ``n_fit / n_shots``, which weights the code KL by ``n_shots / n_fit`` against the likelihood."""
    out, s = {}, cfg.eval_samples

    def scores(acc) -> dict[str, float]:
        return {split: acc(*xy)["accuracy"] for split, xy in evals.items()}

    runs = ([(w, "standard", 1.0, "") for w in cfg.illate_subsets]
            + [(w, "posterior", 1.0, "_posterior_prior") for w in cfg.illate_posterior_subsets]
            + [(w, "standard", n_fit / n_shots, "_balanced_kl") for w in cfg.illate_balanced_subsets])
    x_s, y_s, w_s = shots
    for which, prior_kind, scale, suffix in runs:
        p, _ = illate(key, m["params"], m["mcfg"], FitConfig(**cfg.illate_fit), x_s, y_s, w_s * scale, which=which,
                      prior=prior_kind)
        out[f"illate_{which}{suffix}"] = scores(lambda x, y, p=p: _mp_acc(key, p, m["mcfg"], x, y, s))
    for prior_kind in cfg.finetune_priors:
        prior = mf.as_prior(m["mfp"]) if prior_kind == "posterior" else mf.prior(m["bcfg"])
        p, _ = mf.fit(key, m["mfp"], prior, m["bcfg"], FitConfig(**cfg.finetune_fit), *shots, progress=False)
        out[f"mfvi_finetune_{prior_kind}_prior"] = scores(lambda x, y, p=p: _mf_acc(key, p, m["bcfg"], x, y, s))
    return out


def run_fewshot(cfg: ExperimentConfig, out: Path, mnist: str | None = None) -> dict:
    """Accuracy against the number of shots on permuted tasks (paper figs. 5 and 6).

    With ``n_val > 0`` the models are trained on the training images less a stratified validation
    split, the shots are drawn from the training images, and every adapted model is also scored
    on the permuted validation images (``tasks[kind]['val_accuracy']``), so that methods and
    settings can be compared without the test images."""
    out.mkdir(parents=True, exist_ok=True)
    x_all, y_all, x_te, y_te, side = load_data(cfg.seed, cfg.n_train, cfg.n_test, mnist)
    x_tr, y_tr, x_va, y_va = hold_out(cfg.seed, x_all, y_all, cfg.n_val)
    m = train_both(cfg, (x_tr, y_tr, x_te, y_te, side))
    rng = np.random.default_rng(cfg.seed + 7)
    pi_x, pi_y = rng.permutation(x_tr.shape[1]), _derangement(rng, 10)
    order = rng.permutation(len(x_tr))  # nested shot sets: the first n of one shuffled order
    key, s = jax.random.PRNGKey(cfg.seed + 2), cfg.eval_samples
    shots = tuple(n for n in cfg.shots if n <= len(x_tr))
    clean = (x_te, y_te)
    results = {"dataset": "mnist" if mnist else "sklearn-digits-8x8", "shots": list(shots), "n_fit": len(x_tr),
               "n_val": len(x_va),
               "clean_accuracy": {"metaprior": _mp_acc(key, m["params"], m["mcfg"], *clean, s)["accuracy"],
                                  "mfvi": _mf_acc(key, m["mfp"], m["bcfg"], *clean, s)["accuracy"]},
               "tasks": {}}
    jobs = [(kind, n) for kind in cfg.permutations for n in shots]
    for kind in cfg.permutations:
        test = permute_task(kind, x_te, y_te, pi_x, pi_y)
        results["tasks"][kind] = {"no_adaptation": {
            "metaprior": _mp_acc(key, m["params"], m["mcfg"], *test, s)["accuracy"],
            "mfvi": _mf_acc(key, m["mfp"], m["bcfg"], *test, s)["accuracy"]}, "accuracy": {}, "clean_accuracy": {}}
        if len(y_va):
            results["tasks"][kind]["val_accuracy"] = {}
    names = {"test": "accuracy", "clean": "clean_accuracy", "val": "val_accuracy"}
    for kind, n in tqdm(jobs, desc="few-shot"):
        xs, ys = permute_task(kind, x_tr[order], y_tr[order], pi_x, pi_y)
        evals = {"test": permute_task(kind, x_te, y_te, pi_x, pi_y), "clean": clean}
        if len(y_va):
            evals["val"] = permute_task(kind, x_va, y_va, pi_x, pi_y)
        res = _adapt_all(cfg, m, _padded(xs, ys, n, max(shots)), n, len(x_tr), evals, jax.random.fold_in(key, n))
        for method, accs in res.items():
            for split, acc in accs.items():
                results["tasks"][kind][names[split]].setdefault(method, []).append(acc)
    _plot_fewshot(out / "fewshot_accuracy.png", results)
    return results


def _plot_fewshot(path: Path, results: dict) -> None:
    """Row 1: accuracy on the permuted task; row 2: the adapted model on the clean task."""
    kinds, shots = list(results["tasks"]), results["shots"]
    fig, axes = plt.subplots(2, len(kinds), figsize=(5.5 * len(kinds), 8), squeeze=False, sharex=True)
    for col, kind in enumerate(kinds):
        task = results["tasks"][kind]
        for row, (field, what) in enumerate((("accuracy", "permuted task"), ("clean_accuracy", "clean task"))):
            ax = axes[row, col]
            for i, method in enumerate(task[field]):
                style = "o-" if method.startswith("illate") else "s--"
                ax.plot(shots, task[field][method], style, color=f"C{i}", label=method)
            base = task["no_adaptation"] if row == 0 else results["clean_accuracy"]
            ax.axhline(base["metaprior"], color="k", ls=":", label="MetaPrior without adaptation")
            ax.axhline(base["mfvi"], color="grey", ls=":", label="MF-VI without adaptation")
            ax.set(xscale="log", ylim=(0, 1), ylabel=f"accuracy on the {what}", title=f"permuted {kind}: {what}")
            if row == 1:
                ax.set_xlabel("shots from the permuted task")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)

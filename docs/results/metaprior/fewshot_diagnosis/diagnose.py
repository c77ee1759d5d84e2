"""Why holistic illation fails in the few-shot study (paper sec. 5.4; issue 18 item 3).

Holistic illation re-fits every code of the trained digits MetaPrior under
``p(Z) = N(0, I)`` with ``g`` fixed (paper sec. 5.4), maximising
``E_Q log p(D_t | W) - beta KL(Q(Z) || p(Z))`` on ``n`` shots. The trained
``Q(Z)`` holds ``(64 + 100 + 10) x 10 = 1,740`` code dimensions whose KL was balanced
against the 1,437 training images; on ``n <= 300`` shots the same KL weighs up to
140 times more per point.

This script trains the fewshot experiment's MetaPrior once (``configs/metaprior_fewshot.yaml``,
full settings, the seed's data; cached in ``fits/seed_S/model.pkl``) and illates all codes on
the *clean* task (no permutation: a correct procedure must not lose accuracy) and on
the permuted-input and permuted-class tasks of ``run_fewshot`` (same permutations and
nested shot sets), for

- ``beta = 1`` (the paper's objective), ``beta = n / N_train`` (the KL balance the codes
  were trained under), ``beta = 0`` approximated by ``1e-4``;
- the trained ``Q(Z)`` as the prior (``prior='posterior'``);
- 0, 10, 30, 100 and 300 illation steps (the paper plots accuracy against "inference work").

It records accuracy on the task's test images and on the clean test images, the code KL to
``N(0, I)`` and the mean code s.d. per layer after illation.

    python docs/results/metaprior/fewshot_diagnosis/diagnose.py [--seed 0] [--shots 30 300]

writes ``fits/seed_S/illation.json``; ``report.py`` in this folder turns it into tables.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.metaprior import codes as mc
from bnnp_jax.metaprior import model as mp
from bnnp_jax.metaprior.fit import FitConfig, illate
from bnnp_jax.studies.metaprior.common import classification_metrics, train_metaprior
from bnnp_jax.studies.metaprior.digits import _derangement, _padded, load_data, permute_task
from bnnp_jax.studies.metaprior.experiments import load_config

HERE = Path(__file__).resolve().parent
STEPS = (10, 30, 100, 300)


def trained_model(cfg, x_tr, y_tr, out: Path):
    """The fewshot experiment's MetaPrior (``train_metaprior`` with the run_fewshot key), cached."""
    path = out / "model.pkl"
    widths = (x_tr.shape[1], *cfg.hidden, 10)
    mcfg = cfg.model_config(widths, "categorical")
    if path.exists():
        with open(path, "rb") as fh:
            return mcfg, jax.tree.map(jnp.asarray, pickle.load(fh))
    k_mp, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))
    t0 = time.perf_counter()
    mcfg, _, params, _ = train_metaprior(k_mp, cfg, widths, "categorical", jnp.asarray(x_tr), jnp.asarray(y_tr))
    print(f"trained in {time.perf_counter() - t0:.0f} s (under load)", flush=True)
    with open(path, "wb") as fh:
        pickle.dump(jax.tree.map(np.asarray, params), fh)
    return mcfg, params


def code_stats(params) -> dict:
    kl = mc.code_kl(params.codes)
    return {"code_kl": float(kl), "code_sd_per_layer": [float(jnp.exp(q.log_std).mean()) for q in params.codes.units]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shots", type=int, nargs="+", default=[30, 300])
    ap.add_argument("--tasks", nargs="+", default=["clean", "input", "classes"])
    args = ap.parse_args(argv)
    cfg = load_config("fewshot")
    cfg = type(cfg)(**{**cfg.__dict__, "seed": args.seed})
    out = HERE / "fits" / f"seed_{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te, _ = load_data(cfg.seed, cfg.n_train, cfg.n_test)
    mcfg, params = trained_model(cfg, x_tr, y_tr, out)
    rng = np.random.default_rng(cfg.seed + 7)  # the permutations and shot order of run_fewshot
    pi_x, pi_y = rng.permutation(x_tr.shape[1]), _derangement(rng, 10)
    order = rng.permutation(len(x_tr))
    key, s = jax.random.PRNGKey(cfg.seed + 2), cfg.eval_samples
    acc = lambda p, x, y: classification_metrics(mp.predict(key, p, mcfg, jnp.asarray(x), s), y)["accuracy"]  # noqa: E731
    n_train = len(x_tr)
    result = {"seed": args.seed, "n_train": n_train, "code_dims": int(sum(q.mean.size for q in params.codes.units)),
              "clean_accuracy_trained": acc(params, x_te, y_te), "trained": code_stats(params),
              "illate_fit": cfg.illate_fit, "runs": []}
    print(json.dumps({k: result[k] for k in ("clean_accuracy_trained", "code_dims", "trained")}), flush=True)
    n_max = max(args.shots)
    for task in args.tasks:
        kind = None if task == "clean" else task
        xs, ys = (x_tr[order], y_tr[order]) if kind is None else permute_task(kind, x_tr[order], y_tr[order], pi_x, pi_y)
        test = (x_te, y_te) if kind is None else permute_task(kind, x_te, y_te, pi_x, pi_y)
        for n in args.shots:
            x_s, y_s, w = _padded(xs, ys, n, n_max)
            k_n = jax.random.fold_in(key, n)
            methods = [("beta=1", 1.0, "standard"), ("beta=n/N", n / n_train, "standard"),
                       ("beta=1e-4", 1e-4, "standard"), ("posterior prior", 1.0, "posterior")]
            for name, beta, prior in methods:
                row = {"task": task, "shots": n, "method": name, "beta": beta, "prior": prior,
                       "steps": [0], "task_accuracy": [acc(params, *test)], "clean_accuracy": [acc(params, x_te, y_te)],
                       "code_kl": [float(mc.code_kl(params.codes))]}
                for steps in STEPS:
                    fc = FitConfig(**{**cfg.illate_fit, "steps": steps})
                    p, _ = illate(k_n, params, mcfg, fc, x_s, y_s, w / beta, which="all", prior=prior)
                    row["steps"].append(steps)
                    row["task_accuracy"].append(acc(p, *test))
                    row["clean_accuracy"].append(acc(p, x_te, y_te))
                    row["code_kl"].append(float(mc.code_kl(p.codes)))
                row["code_sd_per_layer_final"] = code_stats(p)["code_sd_per_layer"]
                result["runs"].append(row)
                print(task, n, name, "task", np.round(row["task_accuracy"], 3).tolist(), "clean",
                      np.round(row["clean_accuracy"], 3).tolist(), "kl", np.round(row["code_kl"], 0).tolist(),
                      flush=True)
                (out / "illation.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

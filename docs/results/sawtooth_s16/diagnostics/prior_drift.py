"""Does the learned prior's covariance move by signal or by Adam noise? For each committed
checkpoint of this run (taken from the run's commits), per layer: the median diagonal of the
Cholesky factor L, the RMS of its strictly-lower entries, the median row norm of L (a weight's
prior standard deviation), the mean |prior mean|, and Adam's per-entry signal-to-noise
|m| / sqrt(v) for the off-diagonal entries and for the log-diagonal. A gradient that is pure
Monte-Carlo noise gives |m| / sqrt(v) of about sqrt((1 - b1) / (1 + b1)) = 0.23 with b1 = 0.9,
and then Adam moves every entry by a random walk whose size grows like sqrt(step), whatever the
gradient's magnitude. Writes prior_drift.json beside this file.

    python docs/results/sawtooth_s16/diagnostics/prior_drift.py
"""

import json
import subprocess
import tempfile
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from bnnp_jax.priors import weight_prior  # noqa: E402
from bnnp_jax.training import checkpoint, loop  # noqa: E402

RUN = Path(__file__).resolve().parents[1]
REPO = RUN.parents[2]
REL = RUN.relative_to(REPO)


def committed_checkpoints() -> list[tuple[int, str]]:
    """``(step, commit)`` of every checkpoint of this run in the git history."""
    log = subprocess.run(["git", "log", "--no-renames", "--format=%H", "--name-only", "--diff-filter=A", "--", f"{REL}/checkpoints"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    out, commit = {}, None
    for tok in log:
        if len(tok) == 40 and "/" not in tok:
            commit = tok
        elif tok.endswith(".pkl"):
            out.setdefault(int(Path(tok).stem.split("_")[1]), (commit, tok))
    return [(s, *out[s]) for s in sorted(out)]


def adam_state(opt_state):
    for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu") and hasattr(x, "nu")):
        if hasattr(leaf, "mu"):
            return leaf
    raise ValueError("no Adam state in the checkpoint")


def layer_stats(layer, mu, nu, kind):
    L = np.asarray(weight_prior.scale_tril(layer, kind))
    d = L.shape[-1]
    eye = np.broadcast_to(np.eye(d, dtype=bool), L.shape)
    strict = np.broadcast_to(np.tril(np.ones((d, d), bool), -1), L.shape)
    snr = np.abs(np.asarray(mu.scale)) / np.sqrt(np.asarray(nu.scale) + 1e-30)
    return {"shape": list(L.shape), "diag_median": float(np.median(np.abs(L[eye]))),
            "offdiag_rms": float(np.sqrt(np.mean(L[strict] ** 2))) if strict.any() else 0.0,
            "row_norm_median": float(np.median(np.linalg.norm(L, axis=-1))),
            "mean_abs_mu": float(np.abs(np.asarray(layer.mean)).mean()),
            "adam_snr_offdiag": float(np.median(snr[strict])) if strict.any() else None,
            "adam_snr_logdiag": float(np.median(snr[eye])),
            "adam_snr_mean": float(np.median(np.abs(np.asarray(mu.mean)) / np.sqrt(np.asarray(nu.mean) + 1e-30)))}


def main() -> dict:
    config, _, _ = loop.load_run(RUN)
    kind = config.bnnp.prior_kind
    untrained, _ = loop.init_state(config)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for step, commit, path in committed_checkpoints():
            blob = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, check=True).stdout
            local = Path(tmp) / Path(path).name
            local.write_bytes(blob)
            state = checkpoint.restore(local, untrained)[1]
            adam = adam_state(state.opt_state)
            layers = [layer_stats(p, m, v, kind) for p, m, v in zip(state.params.prior, adam.mu.prior, adam.nu.prior)]
            records.append({"step": step, "commit": commit[:7], "layers": layers})
            print(step, [(round(l["offdiag_rms"], 4), round(l["row_norm_median"], 3), round(l["adam_snr_offdiag"] or 0, 3))
                         for l in layers], flush=True)
    init = [layer_stats(p, p, jax.tree.map(lambda a: a * 0 + 1.0, p), kind) for p in untrained.params.prior]
    out = {"run": str(REL), "untrained": [{k: v for k, v in l.items() if not k.startswith("adam")} for l in init],
           "checkpoints": records}
    (Path(__file__).parent / "prior_drift.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

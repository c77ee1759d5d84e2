"""The evidence stage of the KL table: bounds on ``log p(D)`` per ``(seed, sigma_y)`` by
bidirectional AIS, batched over the grid; in paper mode the reverse chains start at samples
of one NUTS run per element, kept on disk until their batch is stored."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bnnp_jax.studies.kl_table_config import KLTableConfig, fingerprint

__all__ = ["NUTS_DIAGNOSTICS", "nuts_starts", "nuts_file", "run_evidence"]


# Per NUTS run: weight-space R-hat (max) and ESS (min), the acceptance rate, and R-hat and ESS
# of the network's output at the data (``nuts.function_diagnostics``). Weight-space R-hat is
# large whenever chains sit in permuted copies of one mode, which a reverse-AIS start does not
# mind; the function-space R-hat says whether the chains agree on the posterior.
NUTS_DIAGNOSTICS = ("nuts_max_r_hat", "nuts_min_ess", "nuts_accept_rate", "nuts_max_r_hat_f", "nuts_min_ess_f")


def nuts_starts(key, model, x, y, cfg: KLTableConfig, cache: Path | None = None):
    """Reverse-AIS starts ``[K, P]`` for paper mode, drawn from a NUTS run's samples, and its
    diagnostics (:data:`NUTS_DIAGNOSTICS`). With ``cache`` (a file), a result stored there by
    the same config is reused, and a new one is stored (atomically): the NUTS runs of a group
    survive an interruption before its AIS is done."""
    from bnnp_jax.inference import nuts

    made_by = json.dumps(fingerprint(cfg), sort_keys=True)
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            diags = json.loads(str(f["diagnostics"]))
            # another config's run, or one without every diagnostic recorded now: redone and replaced
            if str(f["config"]) == made_by and set(NUTS_DIAGNOSTICS) <= set(diags):
                return jnp.asarray(f["starts"]), diags
    kn, kp = jax.random.split(key)
    n = cfg.nuts
    run = nuts.fit(kn, model, x, y, num_warmup=n.num_warmup, num_samples=n.num_samples, num_chains=n.num_chains,
                   progress_bar=False)
    pool = nuts.flat_samples(run)
    starts = pool[jax.random.choice(kp, pool.shape[0], (cfg.ais.num_particles,), replace=False)]
    fd = nuts.function_diagnostics(run, x)
    diags = {"nuts_max_r_hat": float(np.nanmax(run.diagnostics.r_hat)),
             "nuts_min_ess": float(np.min(run.diagnostics.ess)), "nuts_accept_rate": run.diagnostics.accept_rate,
             "nuts_max_r_hat_f": float(np.nanmax(fd["r_hat"])), "nuts_min_ess_f": float(np.nanmin(fd["ess"]))}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, starts=np.asarray(starts), diagnostics=json.dumps(diags), config=made_by)
        tmp.replace(cache)
    return starts, diags


def nuts_file(folder: Path, g, i: int) -> Path:
    """Where element ``i`` of ``g``'s NUTS run is kept."""
    seed, sigma = g.key(i)
    return folder / f"{seed}_{sigma!r}.npz"


def run_evidence(g, cfg: KLTableConfig, keys, progress: bool = True, nuts_cache: Path | None = None) -> dict:
    """Bounds on ``log p(D)`` at every element of the grid ``g`` (:class:`kl_table_grid.Grid`), from
    the per-element keys ``[B, 2]``, all AIS runs batched (one vmapped
    program per stage, :func:`evidence.estimate`) -> ``(seed, sigma_y) -> record``. Reverse AIS
    starts at the generating weights (certified), at exact posterior samples (no hidden
    layer) or, in paper mode, at samples of one NUTS run per element (run one at a time, each
    kept in the folder ``nuts_cache`` when given: :func:`nuts_starts`)."""
    from bnnp_jax.inference import evidence

    a = cfg.ais
    t0 = time.perf_counter()
    parts = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    starts, diags = None, [{}] * len(g.sigmas)
    if len(cfg.widths) > 2 and cfg.mode == "certified":
        starts = jnp.broadcast_to(g.w_true[:, None], (g.w_true.shape[0], a.num_particles, g.w_true.shape[1]))
    elif len(cfg.widths) > 2:
        cached = lambda i: None if nuts_cache is None else nuts_file(nuts_cache, g, i)
        nuts = [nuts_starts(parts[i, 0], *g.element(i)[:3], cfg, cached(i))
                for i in tqdm(range(len(g.sigmas)), desc="NUTS", disable=not progress)]
        starts, diags = jnp.stack([s for s, _ in nuts]), [d for _, d in nuts]
    ev = evidence.estimate(parts[:, 1], g.models, g.x, g.y, cfg.mode, posterior_init=starts, mask=g.mask,
                           batched=True, num_temps=a.num_temps, num_particles=a.num_particles,
                           num_leapfrog=a.num_leapfrog, schedule_kind=a.schedule, progress_bar=progress)
    seconds = (time.perf_counter() - t0) / len(g.sigmas)
    out = {}
    for i in range(len(g.sigmas)):
        seed, sigma = g.key(i)
        rec = {"seed": seed, "sigma_y": sigma, "log_evidence_lower": float(ev.lower[i]),
               "log_evidence_upper": float(ev.upper[i]), "log_evidence_lower_stderr": float(ev.lower_stderr[i]),
               "log_evidence_upper_stderr": float(ev.upper_stderr[i]), "upper_is_bound": ev.upper_is_bound,
               "evidence_mode": ev.mode, "evidence_seconds": seconds, "num_points": int(g.sizes[i]), **diags[i]}
        if not math.isnan(ev.exact[i]):
            rec["log_evidence_exact"] = float(ev.exact[i])
        out[seed, sigma] = rec
    return out

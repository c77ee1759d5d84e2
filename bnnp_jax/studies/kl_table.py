"""``bnnp compare CONFIG --out DIR``: the KL-to-the-true-posterior table (SPEC sections 10, 11).

One dataset per seed is drawn from the BNN prior (default 1 -> 20 -> 20 -> 1, ReLU,
``N(0, I / (D_in + 1))``, ``x ~ U[-4, 4]``, ``N`` uniform in ``[21, 42)``, noise 0.1;
the paper's seeds 21, 42, 69, 420). For every seed and model ``sigma_y`` on the grid, each
method is trained, its ELBO is estimated with ``elbo_samples`` draws, and ``log p(D)`` is
bracketed by bidirectional Monte Carlo, giving ``KL(q || p(W | D))`` in
``[lower - ELBO, upper - ELBO]``:

- ``certified`` mode: the data at each ``sigma_y`` are re-simulated from the same
  generating weights and inputs with noise ``sigma_y`` (same standard-normal
  draws), so the generating weights are an exact posterior sample and the
  reverse-AIS upper bound is valid.
- ``paper`` mode: the paper's single dataset (noise ``data_noise``) for every
  ``sigma_y``; reverse AIS starts from a NUTS run, so the upper value is an
  approximate upper estimate (``upper_is_bound: false`` in the records).
- Without hidden layers the evidence is exact and reported too, and so is every method's
  closed-form ``KL(q || p(W | D))`` (``kl_closed_form``: ``q`` and the posterior are both
  Gaussian there), the check that every family holding the posterior reaches it.
- Every record keeps its fit's ELBO trajectory (``elbo_trace``) and whether the ELBO was
  still rising at the end (``elbo_rising``, marked ↑ in the table); under the table, the
  nested Gaussian families MFVI ⊂ UCVI ⊂ LCVI ⊂ FCVI are checked for the order their optima
  must have (:func:`ordering_violations`).
- ``bnnp_amortised`` (the meta-BNNP column) is not trained per ``sigma_y``: it is the
  zero-shot posterior of a BNNP meta-trained on prior datasets with the prior frozen
  (``configs/kl_meta_bnnp.yaml``), read from the run directory ``bnnp_checkpoint``
  (:func:`load_meta_bnnp`) with its ``sigma_y`` set to the model's.

Batching: the ``(seed, sigma_y)`` grid is one batch axis (:class:`kl_table_grid.Grid`; datasets padded to
the largest ``N`` with a mask), and each method's fits over all of it run as one vmapped,
jitted program (:func:`bnnp_jax.inference.registry.fit_batch`), its ELBOs as another;
``fit_batches: seed`` runs one such program per dataset seed instead, for the fits and the
evidence alike.

Outputs in ``DIR``, resumable per method (and per seed with ``fit_batches: seed``):
``methods/<method>.json`` (a method's records, written when a batch finishes; finished
``(seed, sigma_y)`` elements are skipped on a rerun with the same config),
``evidence.json`` (the ``log p(D)`` bounds per ``(seed, sigma_y)``, written when a batch
finishes; in paper mode each element's NUTS run is kept in ``nuts_cache/`` until its batch's
evidence is stored, so an interrupted batch does not rerun them),
``timing.json`` (wall time of each method's batch and of the evidence), ``results.json``
(config and one record per seed, ``sigma_y`` and method, rewritten after every step),
``kl_table.md`` (in the paper's design its four rows first, with SPEC section 11's
reference beside the span of our seeds; then every ``sigma_y``), ``ordering.md`` (every nested-family
violation with its reading), ``kl_vs_sigma.png`` (the paper's figure: log-log, a line per
method with a band over seeds; non-positive values, possible at large ``sigma_y`` from
Monte-Carlo error, are drawn at the axis floor) and ``elbo_gaps.png``. ``--report``
rewrites these from what is stored, fitting nothing. ``--only PART ...`` runs some of the
parts (methods, ``evidence``) and ``--seeds S ...`` some of the config's dataset seeds, and
leave the rest to another run, on the same ``DIR`` if wanted: processes sharing ``DIR`` take
turns on the lock file ``DIR/.lock`` to merge their records into the stored ones (one per
element) and to add their wall time to ``timing.json``, and the outputs are rewritten from
everything stored. With ``--seeds`` the grid (its padding and per-element keys) is still the
config's, so a seed fits as it would in a run of every seed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # no flock (Windows): one process per --out
    fcntl = None

import jax
import numpy as np
from tqdm.auto import tqdm

from bnnp_jax.config import ConfigError, from_dict, load_yaml
from bnnp_jax.studies.kl_table_meta import amortised_elbo, load_meta_bnnp
from bnnp_jax.studies.kl_table_config import (GAUSSIAN_VI, METHODS, MODES, AISSettings, KLTableConfig,
                                              NUTSSettings, TrainSettings, VISettings)
from bnnp_jax.studies.kl_table_config import fingerprint as _fingerprint
from bnnp_jax.studies.kl_table_evidence import nuts_file
from bnnp_jax.studies.kl_table_evidence import run_evidence as _evidence
from bnnp_jax.studies.kl_table_grid import Grid, element_keys, grid, simulate
from bnnp_jax.studies.kl_table_report import (Violation, elbo_trace, markdown_table, ordering_violations, plot,
                                              plot_elbo_gaps, rising_flags, violations_table, write_outputs)
from bnnp_jax.training.checkpoint import write_text_atomic

__all__ = ["METHODS", "GAUSSIAN_VI", "MODES", "TrainSettings", "VISettings", "AISSettings", "NUTSSettings",
           "KLTableConfig", "Grid", "simulate", "grid", "load_meta_bnnp", "closed_form_kl", "run_method",
           "run_evidence", "elbo_trace", "markdown_table", "ordering_violations", "violations_table", "Violation", "plot",
           "plot_elbo_gaps", "add_arguments", "run"]


# ----- methods ------------------------------------------------------------------

def run_method(method: str, g: Grid, cfg: KLTableConfig, meta_bnnp=None, progress: bool = True) -> list[dict]:
    """Fit ``method`` at every element of ``g`` as one batched program and estimate the ELBOs
    (another) -> one record per element (``seed``, ``sigma_y``, ``method``, ``elbo``,
    ``elbo_stderr``, the ELBO trajectory and its first value ``start_elbo``, ``kl_closed_form``
    without hidden layers, and ``seconds``: the batch's wall time shared out).
    ``bnnp_amortised`` is zero-shot, per element."""
    from bnnp_jax.inference import registry, vi

    t = cfg.train
    kf, ke = element_keys(g, method)
    t0 = time.perf_counter()
    res = None
    if method == "bnnp_amortised":  # zero-shot at the table's sigma_y: nothing is trained
        meta_bnnp = meta_bnnp or load_meta_bnnp(cfg)
        ests = [amortised_elbo(ke[i], meta_bnnp, *g.element(i)[:3], cfg)
                for i in tqdm(range(len(g.sigmas)), desc=method, disable=not progress, leave=False)]
        values = np.array([[float(e.value), float(e.stderr)] for e in ests])
    else:
        own = {"givi": {"num_inducing": t.givi_inducing}, **{m: dataclasses.asdict(cfg.vi) for m in vi.METHODS}}
        budget = registry.budget(method, t.num_steps, (t.lr_start, t.lr_end), t.num_particles, progress)
        res = registry.fit_batch(method, kf, g.models, g.x, g.y, g.mask, **budget, **own.get(method, {}))
        est = registry.elbo_batch(ke, res, g.x, g.y, g.mask, cfg.elbo_samples)
        values = np.stack([np.asarray(est.value, float), np.asarray(est.stderr, float)], -1)
    seconds = time.perf_counter() - t0
    records = []
    for i, (elbo, stderr) in enumerate(values):
        seed, sigma = g.key(i)
        rec = {"seed": seed, "sigma_y": sigma, "method": method, "elbo": float(elbo),
               "elbo_stderr": float(stderr), "seconds": seconds / len(values), "batch_seconds": seconds}
        if res is not None:
            rec.update(elbo_trace(res.losses[i]), start_elbo=float(-res.losses[i, 0]))
            if len(cfg.widths) == 2:
                rec["kl_closed_form"] = closed_form_kl(registry.take(res, i), *g.element(i)[:3])
        records.append(rec)
    return records


def closed_form_kl(res, model, x, y) -> float:
    """``KL(q || p(W | D))`` in closed form for a model with no hidden layer, where every
    method's ``q`` is Gaussian and the posterior is exact (no Monte Carlo) -> float."""
    from bnnp_jax.inference import model as bnn
    from bnnp_jax.inference import registry

    return float(registry.linear_kl(res, [bnn.exact_posterior(model, x, y)]))


def run_evidence(g: Grid, cfg: KLTableConfig, progress: bool = True, nuts_cache: Path | None = None) -> dict:
    """:func:`kl_table_evidence.run_evidence` with the grid's evidence keys."""
    return _evidence(g, cfg, element_keys(g, None), progress, nuts_cache)


def _key(r: dict) -> tuple:
    """A record's grid element ``(seed, sigma_y)`` (:meth:`Grid.key`): what the evidence and the resume match on."""
    return r["seed"], r["sigma_y"]


def _combine(method_records: list[dict], evidence: dict) -> list[dict]:
    """Method records joined with their element's evidence, and the KL interval (NaN until the
    evidence is in)."""
    out = []
    for r in method_records:
        if "elbo_trace" in r:  # the still-rising test from the stored trajectory, whoever wrote the record
            r = dict(r, **rising_flags(r["elbo_trace"]))
        ev = evidence.get(_key(r))
        if ev is None:
            out.append(dict(r, kl_lower=math.nan, kl_upper=math.nan, upper_is_bound=False))
            continue
        rec = dict(ev, **r, kl_lower=ev["log_evidence_lower"] - r["elbo"], kl_upper=ev["log_evidence_upper"] - r["elbo"])
        if "log_evidence_exact" in ev:
            rec["kl_exact"] = ev["log_evidence_exact"] - r["elbo"]
        out.append(rec)
    return out


# ----- outputs and resuming ----------------------------------------------------------


def _same_config(stored: dict | None, cfg: KLTableConfig) -> bool:
    """Did ``cfg`` write a stored fingerprint? Keys the stored one lacks (settings added since)
    take their defaults."""
    if stored is None:
        return False
    try:
        old = from_dict(KLTableConfig, {**stored, "methods": list(cfg.methods), "seed": None,
                                        "bnnp_checkpoint": stored.get("bnnp_checkpoint", cfg.bnnp_checkpoint)})
    except (ConfigError, ValueError):
        return False
    return _fingerprint(old) == _fingerprint(cfg)


def _load(path: Path, cfg: KLTableConfig):
    """The records stored at ``path`` (None if absent); an error if another config wrote them."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if not _same_config(stored.get("config"), cfg):
        raise ConfigError(f"{path} was written by a different config; use a new --out directory (or delete it) "
                          "to rerun with this one")
    return stored["records"]


@contextlib.contextmanager
def _locked(out: Path):
    """Hold ``out/.lock`` (an exclusive ``flock``): one process at a time reads, merges and
    rewrites the stored records, ``timing.json`` and the outputs of ``out``."""
    with open(out / ".lock", "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _dump(path: Path, cfg: KLTableConfig, records) -> tuple[list[dict], bool]:
    """Merge ``records`` into those stored at ``path`` (one per element ``(seed, sigma_y)``;
    where both have one, ``records``' wins), so another process's records stored meanwhile
    are kept. Call under :func:`_locked`. Returns the stored records and whether ``path`` held
    none before."""
    before = _load(path, cfg) or []
    merged = {_key(r): r for r in before}
    merged.update((_key(r), r) for r in records)
    stored = list(merged.values())
    write_text_atomic(path, json.dumps({"config": _fingerprint(cfg), "records": stored}, indent=1))
    return stored, not before


def _add_time(path: Path, name: str, seconds: float, unit: str, count: int, fresh: bool, **extra) -> None:
    """Add one batch's wall time and size to ``timing.json``'s entry ``name`` (under :func:`_locked`);
    ``fresh`` (the part had nothing stored) drops an entry left by an earlier run."""
    timing = json.loads(path.read_text()) if path.is_file() else {}
    prev = {} if fresh else timing.get(name, {})
    timing[name] = {"seconds": prev.get("seconds", 0.0) + seconds, unit: prev.get(unit, 0) + count, **extra}
    write_text_atomic(path, json.dumps(timing, indent=1))


def _write(out: Path, cfg: KLTableConfig) -> None:
    """Rewrite the outputs from every part stored in ``out`` (under :func:`_locked`)."""
    evidence = {_key(r): r for r in _load(out / "evidence.json", cfg) or []}
    records = [r for m in cfg.methods for r in _combine(_load(out / "methods" / f"{m}.json", cfg) or [], evidence)]
    write_outputs(out, cfg, records)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file (see configs/kl_table*.yaml)")
    parser.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    parser.add_argument("--evidence-first", action="store_true",
                        help="estimate log p(D) before fitting the methods not yet done (the order of the work only: "
                             "the results are the same), so every finished column gets its KL sooner")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite the table and figures from what --out holds (fits nothing)")
    parser.add_argument("--only", nargs="+", metavar="PART",
                        help="run only these parts: some of the config's methods and/or 'evidence' (the outputs "
                             "still show every part stored in --out)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="run only these of the config's dataset seeds (same grid, padding and keys as a run "
                             "of all; another process may run the others on the same --out)")


def run(args: argparse.Namespace) -> int:
    cfg = load_yaml(KLTableConfig, args.config)
    with jax.enable_x64(cfg.float64):  # scoped, so a caller's float32 work is untouched
        return _run(cfg, Path(args.out), evidence_first=getattr(args, "evidence_first", False),
                    report_only=getattr(args, "report", False), only=getattr(args, "only", None),
                    seeds=getattr(args, "seeds", None))


def _todo(g: Grid, done, seeds=None) -> list[int]:
    """Indices of the elements of ``g`` whose ``(seed, sigma_y)`` is not in ``done`` (and whose
    seed is in ``seeds``, when given)."""
    return [i for i in range(len(g.sigmas)) if g.key(i) not in done and (seeds is None or g.key(i)[0] in seeds)]


def _groups(g: Grid, todo: list[int], cfg: KLTableConfig) -> list[list[int]]:
    """``todo`` split into the batches that run (and are stored) together: all at once, or one
    per dataset seed (``cfg.fit_batches``)."""
    if cfg.fit_batches == "all":
        return [todo]
    return [[i for i in todo if g.seeds[i] == s] for s in dict.fromkeys(int(g.seeds[i]) for i in todo)]


def _run(cfg: KLTableConfig, out: Path, progress: bool = True, evidence_first: bool = False,
         report_only: bool = False, only=None, seeds=None) -> int:
    if report_only and not (out / "methods").is_dir():
        raise FileNotFoundError(f"--out {out}: no stored results to report (expected {out / 'methods'})")
    parts = (*cfg.methods, "evidence")
    if only is not None and (not only or set(only) - set(parts)):
        raise ConfigError(f"--only {' '.join(only)}: expected some of {', '.join(parts)} (this config's methods "
                          "and 'evidence')")
    if seeds is not None and (not seeds or set(seeds) - set(cfg.seeds)):
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))}: expected some of this config's seeds "
                          f"{', '.join(map(str, cfg.seeds))}")
    run_parts = parts if only is None else tuple(only)
    # loaded and checked before the long runs, so a bad path fails at once
    meta_bnnp = load_meta_bnnp(cfg) if "bnnp_amortised" in run_parts and not report_only else None
    (out / "methods").mkdir(parents=True, exist_ok=True)
    path = {m: out / "methods" / f"{m}.json" for m in cfg.methods} | {"evidence": out / "evidence.json"}
    for p in path.values():  # records written by another config fail here, before any work
        _load(p, cfg)
    g = grid(cfg)
    timing_path = out / "timing.json"

    def write():
        with _locked(out):
            _write(out, cfg)

    if report_only:
        write()
        print((out / "kl_table.md").read_text())
        return 0
    b = len(g.sigmas)
    print(f"KL table: {len(cfg.seeds)} seeds x {b // len(cfg.seeds)} sigma_y = {b} fits per method "
          f"(N {int(g.sizes.min())}..{int(g.sizes.max())}, padded to {g.x.shape[1]})"
          + ("" if seeds is None else f"; this run: seeds {', '.join(map(str, seeds))}"), flush=True)

    def stage(name: str, run_group, unit: str, on_stored=None, **extra):
        """Run the elements of part ``name`` not stored yet, one batch (:func:`_groups`) at a
        time: ``run_group(part) -> the part's new records``, merged into the stored ones, its
        wall time added to ``timing.json`` and the outputs rewritten after each batch, then
        ``on_stored(group)``."""
        todo = _todo(g, {_key(r) for r in _load(path[name], cfg) or []}, seeds)
        if not todo:
            print(f"{name}: done already ({path[name]}), skipped", flush=True)
            return
        for group in _groups(g, todo, cfg):
            t0 = time.perf_counter()
            records = run_group(g if len(group) == b else g.subset(group))
            seconds = time.perf_counter() - t0
            with _locked(out):
                stored, fresh = _dump(path[name], cfg, records)
                _add_time(timing_path, name, seconds, unit, len(group), fresh, **extra)
                _write(out, cfg)
            if on_stored is not None:
                on_stored(group)
            print(f"{name}: {len(group)} {unit} in {seconds:.0f} s ({len(stored)} of {b} done)", flush=True)

    def methods():
        for m in (m for m in cfg.methods if m in run_parts):
            stage(m, lambda part, m=m: run_method(m, part, cfg, meta_bnnp, progress), "fits",
                  num_steps=cfg.train.num_steps)

    cache = out / "nuts_cache"

    def bounds(part: Grid) -> list[dict]:
        return list(run_evidence(part, cfg, progress, nuts_cache=cache).values())

    def drop_nuts(group):  # the group's evidence is stored: its NUTS runs are no longer needed
        for i in group:
            nuts_file(cache, g, i).unlink(missing_ok=True)

    def log_evidence():
        if "evidence" in run_parts:
            stage("evidence", bounds, "elements", drop_nuts)

    stages = [methods, log_evidence]
    for run_stage in reversed(stages) if evidence_first else stages:
        run_stage()
    with _locked(out):
        if cache.is_dir() and not any(cache.iterdir()):
            cache.rmdir()
        _write(out, cfg)
    print((out / "kl_table.md").read_text())
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))

"""Outputs of the KL table (``bnnp compare``): the markdown table, the nested-family ordering
check, the KL-vs-sigma_y plot and each fit's ELBO trajectory. Records carry a ``seed``; with
several seeds a cell is the mean over seeds and its spread (records without one are one seed)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bnnp_jax.config import to_dict
from bnnp_jax.studies.kl_table_config import GAUSSIAN_VI, KLTableConfig

__all__ = ["Violation", "elbo_trace", "rising_flags", "markdown_table", "paper_rows_table", "ordering_violations",
           "violations_table", "plot", "plot_elbo_gaps", "write_outputs", "PAPER_ROWS", "SPEC_REFERENCE"]


# SPEC section 11: the paper's gaps log p(D) - ELBO on its dataset seed 69, its evidence a naive
# Monte-Carlo estimate of log p(D) (biased low, so these gaps are too): sigma_y -> method -> nats.
PAPER_ROWS = (0.024, 0.1, 0.2, 1.0)
SPEC_REFERENCE = {
    0.024: {"bnnp_per_task": 15.8, "bnnp_amortised": 36.2, "givi": 27.7, "ucvi": 91.7, "lcvi": 100.5, "fcvi": 156.2,
            "mfvi": 617.6},
    0.1: {"bnnp_per_task": 0.37, "bnnp_amortised": 0.93, "givi": 1.19, "ucvi": 30.9, "lcvi": 33.5, "fcvi": 35.3,
          "mfvi": 39.2},
    0.2: {"bnnp_per_task": 0.06, "bnnp_amortised": 0.20, "givi": 0.11, "ucvi": 19.2, "lcvi": 21.0, "fcvi": 21.3,
          "mfvi": 22.0},
    1.0: {"bnnp_per_task": 0.02, "bnnp_amortised": 0.05, "givi": 0.03, "ucvi": 3.2, "lcvi": 3.7, "fcvi": 3.7,
          "mfvi": 4.0},
}


def elbo_trace(losses, max_points: int = 200) -> dict:
    """The ELBO trajectory of a fit, kept in the records: the ELBO averaged over ``<= max_points``
    equal windows of steps (``steps``: each window's last step), and whether it is still rising
    at the end (:func:`rising_flags` of those window means)."""
    a = -np.asarray(losses, float)
    k = max(1, math.ceil(a.size / max_points))
    n = a.size // k
    trace = a[: n * k].reshape(n, k).mean(1)
    return {"elbo_trace": [float(v) for v in trace], "elbo_trace_steps": [int((i + 1) * k) for i in range(n)],
            **rising_flags(trace)}


def rising_flags(trace) -> dict:
    """``elbo_rising``, ``elbo_final_gain`` and its stderr from a stored ELBO trajectory
    (:func:`gaussian_vi.still_rising` over its last quarter): computed from the trace, so
    records written by any version of the study get the same test."""
    from bnnp_jax.inference import gaussian_vi

    rising = gaussian_vi.still_rising(-np.asarray(trace, float))
    return {"elbo_rising": rising["rising"], "elbo_final_gain": rising["gain"],
            "elbo_final_gain_stderr": rising["gain_stderr"]}


def _groups(records: list[dict]) -> dict:
    """``(sigma_y, method) -> records`` (one per seed)."""
    out = defaultdict(list)
    for r in records:
        out[(r["sigma_y"], r["method"])].append(r)
    return out


def _seeds(records: list[dict]) -> list:
    """The dataset seeds the records cover, in numeric order (``None``, a single-dataset run's, last)."""
    return sorted({r.get("seed") for r in records}, key=lambda s: (s is None, s or 0))


def _ends(r: dict) -> tuple[float, float]:
    """A record's KL interval ``(lower, upper)``; the exact KL twice where there is one."""
    return r.get("kl_exact", r["kl_lower"]), r.get("kl_exact", r["kl_upper"])


def _with_evidence(rs: list[dict]) -> list[dict]:
    """The records whose evidence is in (a NaN KL until it is)."""
    return [r for r in rs if np.isfinite(_ends(r)[0])]


def _cell(rs: list[dict], n_seeds: int) -> str:
    """One ``(sigma_y, method)`` cell of a table over ``n_seeds`` dataset seeds: one seed's
    interval, or the mean over seeds."""
    return _one_cell(rs[0]) if n_seeds == 1 else _seed_cell(rs, n_seeds)


def _one_cell(r: dict) -> str:
    if "kl_exact" in r:
        return f"{r['kl_exact']:.3g}"
    crossed = "†" if r["kl_lower"] > r["kl_upper"] else ""
    return f"{r['kl_lower']:.3g} .. {r['kl_upper']:.3g}" + ("" if r["upper_is_bound"] else "*") + crossed


def _seed_cell(rs: list[dict], n_seeds: int) -> str:
    """Mean over seeds of the KL interval's ends, ± the standard deviation over seeds of its
    middle; over the seeds whose evidence is in, counted (``[k of n seeds]``, ``n`` the
    table's seeds) when not all are."""
    have = _with_evidence(rs)
    if len(have) < 2:
        return (_one_cell(have[0]) if have else "nan") + (f" [{len(have)} of {n_seeds} seeds]" if have else "")
    lo, hi = np.array([_ends(r) for r in have], float).T
    sd = float(np.std(0.5 * (lo + hi), ddof=1))
    ends = f"{lo.mean():.3g}" if all("kl_exact" in r for r in have) else f"{lo.mean():.3g} .. {hi.mean():.3g}"
    cell = ends + f" ± {sd:.2g}" + ("" if all(r.get("upper_is_bound", True) for r in have) else "*")
    return cell + ("" if len(have) == n_seeds else f" [{len(have)} of {n_seeds} seeds]")


def markdown_table(records: list[dict], methods) -> str:
    """Rows ``sigma_y``, columns methods, cells ``KL lower .. upper`` (or the exact KL; with
    several seeds the mean over seeds ± its spread); then, where present, the closed-form KLs
    (no hidden layer) and the nested-family ordering check."""
    sigmas = sorted({r["sigma_y"] for r in records})
    by = _groups(records)
    seeds = _seeds(records)
    lines = ["| sigma_y | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in sigmas:
        cells = []
        for m in methods:
            rs = by.get((s, m), [])
            if not rs:
                cells.append("")
                continue
            cell = _cell(rs, len(seeds))
            rising = sum(bool(r.get("elbo_rising")) for r in rs)
            cells.append(cell + ("" if not rising else " ↑" if len(rs) == 1 else f" ↑{rising}"))
        lines.append(f"| {s:.3g} | " + " | ".join(cells) + " |")
    note = ("\nCells: KL(q || p(W|D)) in [log p(D)_lower - ELBO, log p(D)_upper - ELBO]; "
            "* marks an approximate upper end (reverse AIS from NUTS, paper mode); "
            "† marks a crossed sandwich: the forward-AIS estimate of log p(D) exceeded the reverse-AIS one. "
            "Both are bounds only in expectation, so the evidence is pinned down to within their Monte-Carlo "
            "noise there (the same gap for every method at that sigma_y). "
            "↑ marks a fit whose ELBO was still rising at the end (a least-squares line through the last "
            "quarter of its trajectory rises by more than 3 standard errors): not converged.\n")
    if len(seeds) > 1:
        note += (f"With {len(seeds)} seeds (datasets {', '.join(map(str, seeds))}), a cell is the mean over seeds "
                 "of both ends, ± the standard deviation over seeds of the interval's middle; ↑k: k seeds' fits "
                 "still rising.\n")
    out = "\n".join(lines) + "\n" + note
    if any("kl_closed_form" in r for r in records):
        lines = ["", "Closed-form KL(q || p(W|D)) (no hidden layer: q and the posterior are Gaussian; no Monte Carlo"
                 + ("; the largest over seeds" if len(seeds) > 1 else "") + "):",
                 "", "| sigma_y | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for s in sigmas:
            cells = []
            for m in methods:
                vals = [r["kl_closed_form"] for r in by.get((s, m), []) if "kl_closed_form" in r]
                cells.append(f"{max(vals):.2g}" if vals else "")
            lines.append(f"| {s:.3g} | " + " | ".join(cells) + " |")
        out += "\n".join(lines) + "\n"
    bad = ordering_violations(records)
    if len([m for m in methods if m in GAUSSIAN_VI]) > 1:
        out += ("\nNested families (gaps FCVI <= LCVI <= UCVI <= MFVI at every sigma_y, within 3 ELBO standard "
                "errors, or 0.01 nats of the closed-form KL where there is one): " + _violations_text(bad))
    return out


def paper_rows_table(records: list[dict], methods, rows=PAPER_ROWS, reference=SPEC_REFERENCE) -> str:
    """The KL at the paper's rows (the grid's ``sigma_y`` nearest each of ``rows``): per
    method the mean over seeds ± spread (as :func:`markdown_table`), then SPEC section 11's
    reference beside the span of our seeds' KL intervals (the smallest to the largest interval
    end, crossed sandwiches included), since the reference's dataset is one draw from the same prior as ours."""
    sigmas = np.array(sorted({r["sigma_y"] for r in records}))
    if not sigmas.size:
        return ""
    by = _groups(records)
    n_seeds = len(_seeds(records))
    near = [(want, float(sigmas[np.argmin(np.abs(np.log(sigmas / want)))])) for want in rows]
    head = "| sigma_y (grid) | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods)
    mean_rows, ref_rows = [head], [head]
    for want, s in near:
        rs = {m: by.get((s, m), []) for m in methods}
        mean_rows.append(f"| {want:g} ({s:.3g}) | " + " | ".join(_cell(rs[m], n_seeds) if rs[m] else "" for m in methods)
                         + " |")
        cells = []
        for m in methods:
            have = _with_evidence(rs[m])
            ends = [e for r in have for e in _ends(r)]
            ref = reference.get(want, {}).get(m)
            ours = f"{min(ends):.3g} .. {max(ends):.3g} [{len(have)}]" if have else "–"
            cells.append(ours if ref is None else f"{ref:g} / {ours}")
        ref_rows.append(f"| {want:g} ({s:.3g}) | " + " | ".join(cells) + " |")
    return ("KL(q || p(W|D)) at the paper's rows, over all seeds whose evidence is in:\n\n" + "\n".join(mean_rows)
            + "\n\nSPEC section 11's reference / the span of ours (smallest .. largest interval end over "
            "[k] seeds). The reference is one dataset (its seed 69, drawn by another random-number generator, so "
            "not our seed 69's data) from the same prior; its evidence is a naive Monte-Carlo estimate of "
            "log p(D), biased low, so its gaps are biased low by the same amount for every method in a row; "
            "– : not run yet:\n\n" + "\n".join(ref_rows) + "\n")


def _violations_text(bad: list["Violation"], show: int = 8) -> str:
    """``holds.`` or the violations: all of them when few, else a count per pair of families
    and the first ``show`` (``results.json`` has every cell)."""
    if not bad:
        return "holds.\n"
    if len(bad) <= show:
        return "violated at " + "; ".join(map(str, bad)) + ".\n"
    pairs: dict[str, int] = {}
    for b in bad:
        key = f"{b.larger} below {b.smaller}"
        pairs[key] = pairs.get(key, 0) + 1
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(pairs.items(), key=lambda kv: -kv[1]))
    return (f"violated in {len(bad)} comparisons ({counts} cells); the first {show}: "
            + "; ".join(map(str, bad[:show])) + ". Every one, with its reading: ordering.md.\n")


class Violation(NamedTuple):
    """One broken nesting: in cell ``(seed, sigma_y)`` the ``larger`` family did worse than the
    ``smaller`` one it contains, by ``measure`` (``"elbo"``: ``larger_value < smaller_value``;
    ``"exact_kl"``: the closed-form KLs, ``larger_value > smaller_value``)."""

    seed: int | None
    sigma_y: float
    larger: str
    smaller: str
    measure: str
    larger_value: float
    smaller_value: float
    many_seeds: bool = False

    def __str__(self) -> str:
        where = f"seed={self.seed} sigma_y={self.sigma_y:.3g}" if self.many_seeds else f"sigma_y={self.sigma_y:.3g}"
        if self.measure == "exact_kl":
            return f"{where}: {self.larger} exact KL {self.larger_value:.4f} > {self.smaller} {self.smaller_value:.4f}"
        return f"{where}: {self.larger} ELBO {self.larger_value:.3f} < {self.smaller} {self.smaller_value:.3f}"


def ordering_violations(records: list[dict], z: float = 3.0, exact_tol: float = 0.01) -> list[Violation]:
    """Where the nested Gaussian families break ``gap(FCVI) <= gap(LCVI) <= gap(UCVI) <= gap(MFVI)``,
    i.e. a larger family's ELBO is below a smaller one's by more than ``z`` combined standard
    errors (the evidence is common to a dataset and ``sigma_y``, so gaps compare as ELBOs),
    per seed -> one :class:`Violation` each (``str`` describes it). Where both records carry
    the exact ``kl_closed_form`` (no hidden layer) that is compared instead, the larger
    family's KL above the smaller's by more than ``exact_tol`` nats: with exact KLs of ~1e-3,
    Monte-Carlo ELBOs would only test their noise."""
    by = {(r.get("seed"), r["sigma_y"], r["method"]): r for r in records}
    many = len(_seeds(records)) > 1
    out = []
    for seed, s in sorted({(r.get("seed"), r["sigma_y"]) for r in records}, key=lambda k: (str(k[0]), k[1])):
        present = [m for m in reversed(GAUSSIAN_VI) if (seed, s, m) in by]  # fcvi, lcvi, ucvi, mfvi
        for i, big in enumerate(present):
            for small in present[i + 1:]:
                a, b = by[(seed, s, big)], by[(seed, s, small)]
                if "kl_closed_form" in a and "kl_closed_form" in b:
                    if a["kl_closed_form"] > b["kl_closed_form"] + exact_tol:
                        out.append(Violation(seed, s, big, small, "exact_kl", a["kl_closed_form"],
                                             b["kl_closed_form"], many))
                    continue
                se = math.hypot(a.get("elbo_stderr", 0.0), b.get("elbo_stderr", 0.0))
                if a["elbo"] < b["elbo"] - z * se:
                    out.append(Violation(seed, s, big, small, "elbo", a["elbo"], b["elbo"], many))
    return out


def violations_table(records: list[dict], z: float = 3.0) -> str:
    """Every :func:`ordering_violations` cell in a markdown table with its reading: the larger
    family's fit still rising at the end (its ELBO is a bound on its optimum, not its value:
    not converged), still gaining but by under 3 standard errors, or flat. ``""`` when the
    nesting holds."""
    bad = [b for b in ordering_violations(records, z) if b.measure == "elbo"]
    if not bad:
        return ""
    by = {(r.get("seed"), r["sigma_y"], r["method"]): r for r in records}
    lines = ["| seed | sigma_y | larger | smaller | ELBO shortfall | larger's gain, last quarter | reading |",
             "|---|---|---|---|---|---|---|"]
    counts: dict[str, int] = {}
    for b in bad:
        a, c = by[(b.seed, b.sigma_y, b.larger)], by[(b.seed, b.sigma_y, b.smaller)]
        se = math.hypot(a.get("elbo_stderr", 0.0), c.get("elbo_stderr", 0.0))
        gain, gain_se = a.get("elbo_final_gain", float("nan")), a.get("elbo_final_gain_stderr", float("nan"))
        if a.get("elbo_rising"):
            reading = "still rising: not converged"
        elif gain > 0 and gain_se > 0:
            reading = "still gaining, under the flag's 3 standard errors"
        else:
            reading = "flat: stalled below the smaller family"
        counts[reading] = counts.get(reading, 0) + 1
        lines.append(f"| {b.seed} | {b.sigma_y:.3g} | {b.larger} | {b.smaller} "
                     f"| {c['elbo'] - a['elbo']:.2f} ± {se:.2f} | {gain:.2f} ± {gain_se:.2f} | {reading} |")
    summary = "; ".join(f"{v} {k}" for k, v in counts.items())
    return (f"Nested-family violations ({len(bad)}: {summary}). A larger family's ELBO is below a smaller one's "
            f"by more than {z:g} standard errors of the difference; the larger fit's gain is the rise of a "
            "least-squares line through the last quarter of its ELBO trajectory (flagged above 3 standard errors). "
            "At their optima the larger family cannot trail, so each row is the optimiser's shortfall at the step "
            "budget, not the family's.\n\n"
            + "\n".join(lines) + "\n")


def plot_elbo_gaps(records: list[dict], methods, path: Path, reference: str = "fcvi") -> bool:
    """``ELBO(reference) - ELBO(m)`` against ``sigma_y`` for every other Gaussian family ``m``:
    with a common ``log p(D)`` per cell this is ``KL(m) - KL(reference)``, so the nested
    ordering reads off without the evidence. Mean over seeds with a band from the lowest to
    the highest seed; symmetric-log y axis. Returns whether anything was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r.get("seed"), r["sigma_y"], r["method"]): r["elbo"] for r in records}
    seeds = _seeds(records)
    sigmas = np.array(sorted({r["sigma_y"] for r in records}))
    others = [m for m in GAUSSIAN_VI if m in methods and m != reference]
    if reference not in methods or not others:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for m in others:
        gaps = np.array([[by.get((k, v, reference), np.nan) - by.get((k, v, m), np.nan) for v in sigmas]
                         for k in seeds])  # [seeds, sigma_y]
        ok = np.isfinite(gaps).all(0)
        if not ok.any():
            continue
        drawn = True
        line, = ax.plot(sigmas[ok], gaps[:, ok].mean(0), marker="o", ms=3, label=f"{m} (mean of {len(seeds)} seeds)")
        ax.fill_between(sigmas[ok], gaps[:, ok].min(0), gaps[:, ok].max(0), color=line.get_color(), alpha=0.2)
    if not drawn:  # the reference family's fits are not in yet
        plt.close(fig)
        return False
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="model sigma_y", ylabel=f"ELBO({reference}) - ELBO(method) [nats]")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=8)
    ax.set_title("above 0: the larger family is better, as nesting implies", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot(records: list[dict], methods, path: Path) -> None:
    """The paper's figure: KL against ``sigma_y`` on log-log axes, one line per method (the
    mean over seeds of each seed's KL interval middle) in a band from the lowest seed's lower
    end to the highest seed's upper end; one seed: the band is its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-3  # log axes: gaps below this (Monte-Carlo noise around 0) are drawn at it
    by = _groups(records)
    many = len(_seeds(records)) > 1  # then each line says how many seeds it averages
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m in methods:
        s = np.array(sorted({k[0] for k in by if k[1] == m}))
        if not s.size:
            continue
        mid, lo, hi = (np.full(s.size, np.nan) for _ in range(3))
        n = 0
        for j, v in enumerate(s):
            have = _with_evidence(by[(v, m)])
            if not have:  # NaN until the evidence for that cell is in
                continue
            a, b = np.array([_ends(r) for r in have], float).T
            b = np.where(np.isnan(b), a, b)
            # the stochastic bounds can cross by Monte-Carlo error: the band covers both ends
            mid[j], n = np.mean(0.5 * (a + b)), max(n, len(have))
            lo[j], hi[j] = np.min(np.minimum(a, b)), np.max(np.maximum(a, b))
        ok = np.isfinite(mid)
        if ok.any():
            line, = ax.plot(s[ok], np.maximum(mid[ok], floor), marker="o", ms=2.5, lw=1.2,
                            label=f"{m} ({n} seed{'s' if n != 1 else ''})" if many else m)
            ax.fill_between(s[ok], np.maximum(lo[ok], floor), np.maximum(hi[ok], floor), color=line.get_color(),
                            alpha=0.2, lw=0)
    if ax.lines:
        ax.set(xscale="log", yscale="log")
        ax.legend(fontsize=7)
    ax.set(xlabel="model sigma_y", ylabel="KL(q || p(W|D)) [nats]")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out: Path, cfg: KLTableConfig, records: list[dict]) -> None:
    """Everything ``bnnp compare`` writes from the records: ``results.json``, ``kl_table.md``
    (the paper's rows first in its design), ``ordering.md`` (removed when the nesting holds)
    and the two figures."""
    (out / "results.json").write_text(json.dumps({"config": to_dict(cfg), "records": records}, indent=1))
    table = markdown_table(records, cfg.methods)
    if cfg.paper_design:
        table = paper_rows_table(records, cfg.methods) + "\nEvery sigma_y of the grid:\n\n" + table
    (out / "kl_table.md").write_text(table)
    bad = violations_table(records)
    if bad:
        (out / "ordering.md").write_text(bad)
    else:
        (out / "ordering.md").unlink(missing_ok=True)
    plot(records, cfg.methods, out / "kl_vs_sigma.png")
    plot_elbo_gaps(records, cfg.methods, out / "elbo_gaps.png")

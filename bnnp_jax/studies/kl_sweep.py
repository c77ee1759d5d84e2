"""Validation sweeps of the Gaussian families' fit settings (``vi.*`` of a KL-table config) on
validation datasets: seeds that are not the table's (SPEC section 11 uses 21, 42, 69, 420).

    python -m bnnp_jax.studies.kl_sweep --setting step_rule --values entry row \\
        --base init_log_scale=-1 --out docs/results/kl_step_rule

Each value fits every method at every ``sigma_y`` of every seed (or only at the ``--cells``
``SEED:SIGMA`` given) as one batched program
(:func:`bnnp_jax.studies.kl_table.run_method`, as the table does) and records the final ELBO (``elbo_samples``
draws), the starting ELBO and whether the ELBO was still rising. Writes ``sweep.json`` (one
record per fit, written as they come) and ``sweep.md`` (mean final ELBO over the seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

__all__ = ["sweep", "table", "main"]

SEEDS = (1, 2)
SIGMAS = (0.024, 0.1, 0.2, 1.0, 3.0)
METHODS = ("ucvi", "lcvi", "fcvi")


def _parse(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def sweep(setting: str, values, out: Path, *, base: dict | None = None, seeds=SEEDS, sigmas=SIGMAS,
          methods=METHODS, num_steps: int = 1000, lr=(5e-3, 5e-5), num_particles: int = 8,
          elbo_samples: int = 2000, cells=None) -> list[dict]:
    """Fit ``methods`` on the paper-mode grid ``seeds x sigmas`` once per value of the
    :class:`~bnnp_jax.studies.kl_table_config.VISettings` field ``setting`` (the other fields
    from ``base``, else their defaults) -> records, also written to ``out/sweep.json``.

    ``cells``: ``(seed, sigma_y)`` pairs to fit instead of the whole product (``seeds`` and
    ``sigmas`` are then theirs); each keeps the key it has in the grid of their seeds x sigmas."""
    from bnnp_jax.studies import kl_table
    from bnnp_jax.studies.kl_table_config import KLTableConfig, TrainSettings, VISettings

    fields = {f.name for f in dataclasses.fields(VISettings)}
    unknown = sorted(({setting} | set(base or {})) - fields)
    if unknown:
        raise ValueError(f"unknown vi setting(s) {unknown}; valid: {sorted(fields)}")
    if cells is not None:
        cells = {(int(a), float(b)) for a, b in cells}
        if not cells:
            raise ValueError("cells: expected at least one (seed, sigma_y) pair")
        seeds, sigmas = tuple(sorted({a for a, _ in cells})), tuple(sorted({b for _, b in cells}))
    out.mkdir(parents=True, exist_ok=True)
    train = TrainSettings(num_steps=num_steps, lr_start=lr[0], lr_end=lr[1], num_particles=num_particles)
    cfg = KLTableConfig(seeds=tuple(seeds), sigma_y_values=tuple(sigmas), mode="paper", methods=tuple(methods),
                        train=train, elbo_samples=elbo_samples)
    g = kl_table.grid(cfg)
    if cells is not None:
        g = g.subset([i for i in range(len(g.seeds)) if g.key(i) in cells])
    records = []
    for value in values:
        vi = {**dataclasses.asdict(VISettings()), **(base or {}), setting: value}
        run = dataclasses.replace(cfg, vi=VISettings(**vi))
        for method in methods:
            fits = kl_table.run_method(method, g, run, progress=False)
            for r in fits:
                records.append({setting: value, "method": method, "seed": r["seed"], "sigma_y": r["sigma_y"],
                                "elbo": r["elbo"], "elbo_stderr": r["elbo_stderr"], "rising": r["elbo_rising"],
                                "start_elbo": r["start_elbo"], "seconds": r["seconds"], "vi": vi,
                                "num_steps": num_steps})
            print(f"{setting} {value} {method}: {fits[0]['batch_seconds']:.0f} s", flush=True)
            (out / "sweep.json").write_text(json.dumps(records, indent=1))
    return records


def table(records: list[dict], setting: str) -> str:
    """Markdown: mean final ELBO over the seeds per (value, method, sigma_y), and the count of
    fits still rising."""
    values = list(dict.fromkeys(r[setting] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    sigmas = sorted({r["sigma_y"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    steps = sorted({r.get("num_steps", 1000) for r in records})
    lines = [f"Mean final ELBO over seeds {tuple(seeds)} ({', '.join(map(str, steps))} steps).", "",
             f"| {setting} | method | " + " | ".join(f"sigma_y {s}" for s in sigmas) + " | rising |",
             "|---|---|" + "---|" * (len(sigmas) + 1)]
    for v in values:
        for m in methods:
            rs = [r for r in records if r[setting] == v and r["method"] == m]
            cells = [[r["elbo"] for r in rs if r["sigma_y"] == s] for s in sigmas]
            lines.append(f"| {v} | {m} | " + " | ".join(f"{np.mean(c):.1f}" if c else "–" for c in cells)
                         + f" | {sum(r['rising'] for r in rs)}/{len(rs)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", required=True, help="a VISettings field, e.g. init_log_scale or step_rule")
    ap.add_argument("--values", nargs="+", required=True)
    ap.add_argument("--base", nargs="*", default=[], metavar="FIELD=VALUE", help="other vi settings")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, help=f"default {' '.join(map(str, SEEDS))}")
    ap.add_argument("--sigmas", nargs="+", type=float, help=f"default {' '.join(map(str, SIGMAS))}")
    ap.add_argument("--cells", nargs="+", metavar="SEED:SIGMA", help="fit only these (seed, sigma_y) cells "
                    "(instead of --seeds x --sigmas), each with its key in the grid of their seeds x sigmas")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--elbo-samples", type=int, default=2000, help="draws per final ELBO (the table uses 10000)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    bad = [b for b in args.base if "=" not in b]
    if bad:
        ap.error(f"--base takes FIELD=VALUE, got {bad}")
    base = {k: _parse(v) for k, v in (b.split("=", 1) for b in args.base)}
    cells = None
    if args.cells is not None:
        if args.seeds or args.sigmas:
            ap.error("--cells names the seeds and sigmas itself; drop --seeds and --sigmas")
        try:
            cells = [(int(a), float(b)) for a, b in (c.split(":") for c in args.cells)]
        except ValueError:
            ap.error(f"--cells takes SEED:SIGMA pairs, e.g. 21:0.084, got {args.cells}")

    import jax

    jax.config.update("jax_enable_x64", True)
    records = sweep(args.setting, [_parse(v) for v in args.values], args.out, base=base,
                    seeds=args.seeds or SEEDS, sigmas=args.sigmas or SIGMAS, methods=args.methods,
                    num_steps=args.steps, elbo_samples=args.elbo_samples, cells=cells)
    text = table(records, args.setting)
    (args.out / "sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

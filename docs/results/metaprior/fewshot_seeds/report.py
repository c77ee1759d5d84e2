"""Tables of the 5-seed few-shot records from ``full/seed_S/results.json`` and
``reduced/seed_S/results.json``.

    python docs/results/metaprior/fewshot_seeds/report.py

writes ``results.md``: for each record, task and shot count, every method's accuracy on the
permuted validation images, on the permuted test images and on the clean test images
(mean ± sample s.d. over the seeds that finished), and the method that validation picks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _ms(values) -> str:
    v = np.asarray(values, float)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.3f} ± {sd:.3f}"


RUNS = {  # folder: (heading, how the wall time was measured)
    "full": ("FULL settings (`configs/metaprior_fewshot.yaml`)", "no other job running"),
    "reduced": ("REDUCED settings (`configs/metaprior_fewshot_reduced.yaml`)", "CPU shared, load average 8-10"),
}


def section(folder: str, heading: str, timing: str) -> list[str]:
    runs = [json.loads(p.read_text()) for p in sorted((HERE / folder).glob("seed_*/results.json"))]
    seeds = [r["seed"] for r in runs]
    first = runs[0]
    lines = [f"## Few-shot, {heading}, seeds {seeds}", "",
             f"{first['n_fit']} fitting and {first['n_val']} validation images. Mean ± s.d. over the seeds.", "",
             f"Clean test accuracy before adaptation: MetaPrior {_ms([r['clean_accuracy']['metaprior'] for r in runs])}, "
             f"MF-VI {_ms([r['clean_accuracy']['mfvi'] for r in runs])}.", ""]
    for kind in first["tasks"]:
        no = [r["tasks"][kind]["no_adaptation"] for r in runs]
        lines += [f"**Permuted {kind}** (no adaptation: MetaPrior {_ms([n['metaprior'] for n in no])}, "
                  f"MF-VI {_ms([n['mfvi'] for n in no])})", "",
                  "| method | shots | val accuracy | test accuracy | clean test accuracy |", "|---|---|---|---|---|"]
        picks = []
        for i, n in enumerate(first["shots"]):
            best, best_val = None, -1.0
            for method in first["tasks"][kind]["accuracy"]:
                val = [r["tasks"][kind]["val_accuracy"][method][i] for r in runs]
                test = [r["tasks"][kind]["accuracy"][method][i] for r in runs]
                clean = [r["tasks"][kind]["clean_accuracy"][method][i] for r in runs]
                lines.append(f"| {method} | {n} | {_ms(val)} | {_ms(test)} | {_ms(clean)} |")
                if np.mean(val) > best_val:
                    best, best_val = method, float(np.mean(val))
            test = [r["tasks"][kind]["accuracy"][best][i] for r in runs]
            picks.append(f"{n} shots: `{best}` (val {best_val:.3f}, test {_ms(test)})")
        lines += ["", "Chosen by mean validation accuracy: " + "; ".join(picks) + ".", ""]
    walls = [r["wall_seconds"] for r in runs]
    lines += [f"Wall time per seed (training both models, every adaptation; {timing}): "
              f"{', '.join(f'{w:.0f}' for w in walls)} s.", ""]
    return lines


def main() -> int:
    lines = []
    for folder, (heading, timing) in RUNS.items():
        if any((HERE / folder).glob("seed_*/results.json")):
            lines += section(folder, heading, timing)
    (HERE / "results.md").write_text("\n".join(lines))
    print((HERE / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

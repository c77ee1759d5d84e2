"""Tables and a figure of the few-shot illation diagnosis from ``fits/seed_S/illation.json``.

    python docs/results/metaprior/fewshot_diagnosis/report.py

writes ``summary.md`` and ``illation_vs_steps.png`` in this folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def table(result: dict) -> str:
    lines = [f"Seed {result['seed']}: trained on {result['n_train']} images, clean test accuracy "
             f"{result['clean_accuracy_trained']:.3f}, code KL to N(0, I) {result['trained']['code_kl']:.0f} nats over "
             f"{result['code_dims']} code dimensions. Illation of all codes (g fixed), "
             f"{json.dumps(result['illate_fit'])}; accuracy on the task's 360 test images after 0 / 10 / 30 / 100 / 300 "
             f"steps, then the clean test accuracy and the code KL after 300 steps.", "",
             "| task | shots | objective | task accuracy after 0 / 10 / 30 / 100 / 300 steps | clean accuracy after 300 "
             "| code KL after 0 / 300 steps (nats) |", "|---|---|---|---|---|---|"]
    for r in result["runs"]:
        acc = " / ".join(f"{a:.2f}" for a in r["task_accuracy"])
        lines.append(f"| {r['task']} | {r['shots']} | {r['method']} | {acc} | {r['clean_accuracy'][-1]:.2f} | "
                     f"{r['code_kl'][0]:.0f} / {r['code_kl'][-1]:.0f} |")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    cells = sorted({(r["task"], r["shots"]) for r in result["runs"]}, key=lambda c: (["clean", "input", "classes",
                                                                                    "both"].index(c[0]), c[1]))
    fig, axes = plt.subplots(2, len(cells), figsize=(3.3 * len(cells), 6.5), squeeze=False, sharex=True)
    for col, cell in enumerate(cells):
        for i, r in enumerate(r for r in result["runs"] if (r["task"], r["shots"]) == cell):
            steps = [max(s, 1) for s in r["steps"]]
            axes[0, col].plot(steps, r["task_accuracy"], "o-", color=f"C{i}", label=r["method"])
            axes[1, col].plot(steps, r["code_kl"], "o-", color=f"C{i}", label=r["method"])
        axes[0, col].set(title=f"{cell[0]}, {cell[1]} shots", ylim=(0, 1), xscale="log")
        axes[1, col].set(xscale="log", yscale="log", xlabel="illation steps (0 plotted at 1)")
    axes[0, 0].set_ylabel("accuracy on the task")
    axes[1, 0].set_ylabel("code KL to N(0, I) (nats)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parts = []
    for run in sorted((HERE / "fits").glob("seed_*")):
        result = json.loads((run / "illation.json").read_text())
        parts.append(table(result))
        if run.name == "seed_0":
            figure(result, HERE / "illation_vs_steps.png")
    (HERE / "summary.md").write_text("Few-shot illation diagnosis (`python docs/results/metaprior/fewshot_diagnosis/"
                                     "diagnose.py`, then `report.py`).\n\n" + "\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

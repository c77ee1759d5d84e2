"""Plumbing shared by the resumable studies (:mod:`goldilocks`, :mod:`large_meta`):
their command-line arguments, and a ``results.json`` that gains one record per
finished run, so an interrupted study resumes where it stopped."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_arguments", "Results"]


def add_arguments(parser: argparse.ArgumentParser, example_config: str, outputs: str) -> None:
    """``CONFIG --out DIR [--seeds ...] [--report-only] [--no-progress]``."""
    parser.add_argument("config", help=f"YAML config, e.g. {example_config}")
    parser.add_argument("--out", required=True, help=f"output directory ({outputs})")
    parser.add_argument("--seeds", type=int, nargs="+", help="override study.seeds")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and plot from results.json")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


class Results:
    """The records in ``out/results.json`` (created with ``out``), keyed by run name."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.json"
        self.records: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, key: str, record: dict) -> None:
        """Store one finished run at once (the file is the resume point) and report it."""
        self.records[key] = record
        self.path.write_text(json.dumps(self.records, indent=1))
        print(f"{key}: lpd {record['log_predictive_density']:.3f}  mae {record['mae']:.3f}  "
              f"({record['seconds']:.0f} s)", flush=True)

    def require(self) -> dict:
        """The records; an error if there are none (``--report-only`` before any run)."""
        if not self.records:
            raise ValueError(f"no results in {self.path}: run without --report-only first")
        return self.records

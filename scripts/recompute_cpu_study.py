"""Recompute the CPU study's comparison and report from its committed predictions, with the current
analysis (docs/statistics.md), keeping the comparison the run itself wrote.

    .venv/bin/python scripts/recompute_cpu_study.py [DEST]     # docs/results/cpu-study

Reads DEST/baseline and DEST/eval (the committed evaluations) and the analysis settings of
configs/cpu-study.yaml; writes DEST/comparison.json, DEST/report/ and DEST/report-screenshot.png.
The first time, the comparison it replaces is kept as DEST/comparison-original.json.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from zhtune.analysis.forgetting import compare_runs
from zhtune.analysis.report import build_report, check_in_browser
from zhtune.config import resolve_config
from zhtune.io import read_json

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "docs" / "results" / "cpu-study"


def main(dest: Path = DEST) -> None:
    cfg = resolve_config("cpu-study")
    original = dest / "comparison-original.json"
    if not original.exists():
        shutil.copy2(dest / "comparison.json", original)
    rel = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
    compare_runs(rel / "baseline", rel / "eval", cfg.analysis, output_dir=dest)
    report = dest / "report"
    shutil.rmtree(report, ignore_errors=True)
    paths = build_report(comparisons=[read_json(dest / "comparison.json")], train_dir=dest / "train",
                         output_dir=report, title=cfg.name, analysis=cfg.analysis)
    check = check_in_browser(paths["html"], dest / "report-screenshot.png")
    print(f"recomputed {dest / 'comparison.json'}; report images {check.images}, broken {check.broken}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEST)

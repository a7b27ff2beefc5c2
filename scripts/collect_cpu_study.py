"""Copy what the CPU study (configs/cpu-study.yaml) produced into docs/results/cpu-study/.

    .venv/bin/python scripts/collect_cpu_study.py [RUN_DIR [DEST]]   # runs/cpu-study, docs/results/cpu-study

Copies the evaluations (summaries and predictions, so `zhtune compare` can be rerun on the committed
files), comparison.json, the report with a headless-Chromium screenshot, the training log, probes
and adapter metadata (not the weights), the resolved config, and every stage's wall time
(timings.json, from the stage markers). Nothing is recomputed here.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from zhtune.artifacts import STAGE_FINISHED, provenance, read_eval_index
from zhtune.io import atomic_write_json, read_json

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "docs" / "results" / "cpu-study"


def copy_eval(src: Path, dest: Path) -> None:
    """A multi-run evaluation folder: index.json and each run's summary and predictions."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "index.json", dest / "index.json")
    for run in read_eval_index(src):
        (dest / run["dir"]).mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "predictions.jsonl"):
            shutil.copy2(src / run["dir"] / name, dest / run["dir"] / name)


def main(run_dir: Path, dest: Path = DEST) -> None:
    from zhtune.analysis.report import check_in_browser

    experiment = read_json(run_dir / "experiment.json")
    stages = {name: Path(folder) for name, folder in experiment["stages"].items()}
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    copy_eval(stages["baseline"], dest / "baseline")
    copy_eval(stages["evaluate"], dest / "eval")
    shutil.copy2(stages["compare"] / "comparison.json", dest / "comparison.json")
    shutil.copytree(stages["report"], dest / "report", ignore=shutil.ignore_patterns("stage-*.json"))
    train = dest / "train"
    train.mkdir()
    for src in (stages["train"] / "train_log.jsonl", stages["train"] / "probes.jsonl",
                stages["train"] / "adapter" / "zhtune_adapter.json", stages["prepare"] / "data_report.json"):
        if src.is_file():
            shutil.copy2(src, train / src.name)
    shutil.copy2(stages["prepare"] / "manifest.json", train / "data-manifest.json")
    shutil.copy2(run_dir / "config.resolved.yaml", dest / "config.resolved.yaml")
    markers = {name: read_json(folder / STAGE_FINISHED) for name, folder in stages.items()
               if (folder / STAGE_FINISHED).is_file()}
    timings = {name: m.get("seconds") for name, m in markers.items()}
    # when each stage finished and with which code (zhtune.artifacts.provenance), and the run's
    # launch time and registration check (experiment.json): the record of what came first
    atomic_write_json(dest / "timings.json", {
        "seconds_by_stage": timings, "total_seconds": sum(v for v in timings.values() if v),
        "finished_by_stage": {name: m.get("finished") for name, m in markers.items()},
        "provenance_by_stage": {name: m.get("provenance") for name, m in markers.items()},
        "launched": experiment.get("launched"), "registration": experiment.get("registration"),
        "provenance": provenance()})
    check = check_in_browser(dest / "report" / "report.html", dest / "report-screenshot.png")
    print(f"collected into {dest}; report images {check.images}, broken {check.broken}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "cpu-study",
         Path(sys.argv[2]) if len(sys.argv) > 2 else DEST)

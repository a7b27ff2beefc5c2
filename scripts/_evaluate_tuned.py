"""Shared by evaluate_model.py and evaluate_qwen_model.py: evaluate the adapter, then compare."""
from __future__ import annotations

from pathlib import Path

from _original import flag_value, run, with_data_dir


def _without(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def evaluate_tuned(argv: list[str]) -> None:
    results = Path(flag_value(argv, "--results_dir", "--output-dir") or "evaluation_results/lora")
    baseline = flag_value(argv, "--baseline_dir")
    baseline = Path(baseline) if baseline else results.parent / "baseline"
    try:
        run(["eval"], with_data_dir(_without(argv, "--baseline_dir")))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    if (baseline / "index.json").exists() or (baseline / "summary.json").exists():
        try:
            run(["compare", str(baseline), str(results), "--output-dir", str(results / "forgetting")], [])
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
        run(["report", "--base", str(baseline), "--tuned", str(results),
             "--output-dir", str(results / "forgetting")], [])
    else:
        print(f"no baseline results at {baseline}: run evaluate_baseline.py first to analyse forgetting")

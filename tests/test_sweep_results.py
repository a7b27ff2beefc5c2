"""results.md / results.csv / sweep.json of a sweep from known answers: the best is named only with
evidence, otherwise the settings that cannot be told apart are listed (no model needed)."""
from __future__ import annotations

import csv
import json

import numpy as np

from zhtune.analysis.grid import Answers, compare_settings, factor_effects
from zhtune.sweep.results import write_results
from test_grid import simulate_grid

VALUES = [{"lora.rank": r, "lora.dropout": d} for r in (4, 8) for d in (0.05, 0.1)]
NAMES = ["rank4-dropout0.05", "rank4-dropout0.1", "rank8-dropout0.05", "rank8-dropout0.1"]


def _write(tmp_path, better: int | None, delta: float = 0.05):
    correct, base, subject, bench = simulate_grid(np.random.default_rng(1), 1, 4, better=better, delta=delta)
    bench = np.where(bench == "ceval", "ceval", "mmlu")  # one Chinese, one English benchmark
    answers = Answers(NAMES, correct[0], subject, bench, base[0])
    verdict = compare_settings(answers.only(["ceval"]), "chinese_gain", 2.0)
    rows = []
    for i, (name, values) in enumerate(zip(NAMES, VALUES)):
        zh, en = bench == "ceval", bench == "mmlu"
        gain = 100 * (correct[0, i, zh].mean() - base[0, zh].mean())
        forgetting = 100 * (base[0, en].mean() - correct[0, i, en].mean())
        rows.append({"run": name, **values, "status": "done", "chinese_gain": gain,
                     "chinese_gain_ci": [gain - 3, gain + 3], "english_forgetting": forgetting,
                     "english_forgetting_ci": [forgetting - 3, forgetting + 3]})
    evidence = {"verdict": verdict, "effects": factor_effects(answers, VALUES, ["ceval"], ["mmlu"]),
                "balanced": True, "chinese_benchmarks": ["ceval"], "english_benchmarks": ["mmlu"],
                "rank_axis": "lora.rank", "by_rank": [], "probes": {}}
    return write_results(tmp_path, rows, {}, evidence)


def test_equal_settings_are_reported_as_not_distinguishable(tmp_path):
    summary = _write(tmp_path, better=None)
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# Sweep results: 4 settings\n\n**No setting is distinguishable at this number of questions")
    assert summary["best"] is None and len(summary["best_set"]) >= 2
    assert "questions to separate" in md and "Every pair" in md and "What each factor does" in md
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows if r["in_best_set"] == "True"} == set(summary["best_set"])
    assert all(r["named_best"] == "False" for r in rows)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["grid"]["best"] is None and len(saved["grid"]["pairs"]) == 6
    for name in ("pareto.png", "learning_forgetting.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_a_clearly_better_setting_is_named(tmp_path):
    summary = _write(tmp_path, better=2, delta=0.10)
    md = (tmp_path / "results.md").read_text()
    assert summary["best"] == "rank8-dropout0.05" and summary["best_set"] == ["rank8-dropout0.05"]
    assert "**Best setting: rank8-dropout0.05." in md

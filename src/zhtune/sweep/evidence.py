"""The grid's evidence: every finished point's answers, question by question, handed to
``zhtune.analysis.grid`` (which setting is best, what each factor does) and the probes' paths.

Reads what the points' ordinary runs wrote: ``runs/<name>/eval/<label>/predictions.jsonl`` (the
adapter at scale 1), the shared baseline's ``base/predictions.jsonl``, ``compare/comparison.json``
(which benchmarks make the headline figures) and ``train/probes.jsonl``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zhtune.analysis.grid import (Answers, balanced, compare_settings, factor_effects, factor_levels,
                                  probe_interval)
from zhtune.data.benchmarks import CHINESE_BENCHMARKS, ENGLISH_BENCHMARKS
from zhtune.errors import UserError
from zhtune.io import iter_jsonl, read_json
from zhtune.sweep.grid import SweepPoint
from zhtune.sweep.results import headline_figure


def read_answers(path: Path) -> dict[str, tuple[str, str, bool]]:
    """question key -> (benchmark, subject, correct) from a predictions.jsonl."""
    if not path.is_file():
        raise UserError(f"sweep: {path} is missing; the grid comparison needs every point's predictions")
    out = {}
    for lineno, rec in iter_jsonl(path):
        try:
            out[rec["key"]] = (rec["benchmark"], rec["subject"], bool(rec["correct"]))
        except (KeyError, TypeError):
            raise UserError(f"{path}:{lineno}: a prediction needs key, benchmark, subject and correct") from None
    return out


def load_answers(points: list[SweepPoint], base_dir: Path) -> Answers:
    """The finished points' and the base model's answers on the same questions."""
    from zhtune.experiment import tuned_eval_dir

    base = read_answers(base_dir / "predictions.jsonl")
    keys = list(base)
    correct = []
    for point in points:
        path = tuned_eval_dir(point.out_dir / "eval") / "predictions.jsonl"
        answers = read_answers(path)
        if set(answers) != set(base):
            missing = sorted(set(base) ^ set(answers))
            raise UserError(f"sweep: {path} answers other questions than the baseline "
                            f"({len(missing)} differ, e.g. {missing[0]}); evaluate every point alike")
        correct.append([answers[k][2] for k in keys])
    return Answers(settings=[p.name for p in points], correct=np.array(correct, dtype=bool).reshape(len(points), -1),
                   subject=np.array([base[k][1] for k in keys]), benchmark=np.array([base[k][0] for k in keys]),
                   base=np.array([base[k][2] for k in keys], dtype=bool))


def headline_benchmarks(point: SweepPoint) -> tuple[list[str], list[str]]:
    """The benchmarks of the Chinese and English headline figures, as the point's comparison chose."""
    cmp = read_json(point.out_dir / "compare" / "comparison.json")
    return (list(headline_figure(cmp, "chinese_gain")["benchmarks"]),
            list(headline_figure(cmp, "english_forgetting")["benchmarks"]))


def probe_path(point: SweepPoint) -> list[dict]:
    """The point's forgetting probes as a path of (step, Chinese gain, English forgetting) with
    conservative 95% intervals; empty when it ran none."""
    path = point.out_dir / "train" / "probes.jsonl"
    if not path.is_file():
        return []
    rows = [rec for _, rec in iter_jsonl(path)]
    base = next((r for r in rows if r.get("baseline")), None)
    if base is None:
        return []
    probes = point.config.train.probes
    sizes = probes.benchmarks or {"ceval": probes.ceval_questions, "mmlu": probes.mmlu_questions}
    zh = [b for b in sizes if b in CHINESE_BENCHMARKS and f"probe/{b}_acc" in base and sizes[b]]
    en = [b for b in sizes if b in ENGLISH_BENCHMARKS and f"probe/{b}_acc" in base and sizes[b]]
    if not zh or not en:
        return []
    out = []
    for r in sorted((r for r in rows if "step" in r), key=lambda r: (r["step"], not r.get("baseline"))):
        gain, gain_ci = _pooled(base, r, zh, sizes, sign=1.0)
        forgetting, forgetting_ci = _pooled(base, r, en, sizes, sign=-1.0)
        if r.get("baseline"):  # the untrained model against itself: no change, by definition
            gain_ci = forgetting_ci = None
        out.append({"label": r["step"], "chinese_gain": gain, "chinese_gain_ci": gain_ci,
                    "english_forgetting": forgetting, "english_forgetting_ci": forgetting_ci})
    return out


def _pooled(base: dict, row: dict, benchmarks: list[str], sizes: dict[str, int], sign: float):
    """Question-weighted change over ``benchmarks`` (points, in the figure's direction) and its
    conservative interval from the pooled accuracies."""
    n = sum(sizes[b] for b in benchmarks)
    acc0 = sum(sizes[b] * base[f"probe/{b}_acc"] for b in benchmarks) / n
    acc1 = sum(sizes[b] * row[f"probe/{b}_acc"] for b in benchmarks) / n
    low, high = probe_interval(acc0, acc1, n)
    lo, hi = sorted((sign * low, sign * high))
    return sign * 100 * (acc1 - acc0) + 0.0, [lo + 0.0, hi + 0.0]


def grid_evidence(points: list[SweepPoint], rows: list[dict], base_dir: Path, *, criterion: str,
                  margin: float) -> dict[str, Any] | None:
    """Everything the results say about the grid as a whole (None before any point finished)."""
    done_names = {r["run"] for r in rows if r.get("status") == "done"}
    done = [p for p in points if p.name in done_names]
    if not done:
        return None
    chinese, english = headline_benchmarks(done[0])
    answers = load_answers(done, base_dir)
    wanted = chinese if criterion == "chinese_gain" else english
    verdict = compare_settings(answers.only(wanted), criterion, margin)
    values = [p.values for p in done]
    if len(done) < len(points):
        verdict.notes.append(f"{len(points) - len(done)} of {len(points)} settings did not finish and are "
                             "not compared")
    effects = factor_effects(answers, values, chinese, english)
    rank_axis = next((k for k in factor_levels(values) if k.rsplit(".", 1)[-1] == "rank"), None)
    by_rank = _by_level(effects, rank_axis) if rank_axis else []
    return {"verdict": verdict, "effects": effects, "balanced": balanced(values),
            "chinese_benchmarks": chinese, "english_benchmarks": english, "rank_axis": rank_axis,
            "by_rank": by_rank, "probes": {p.name: path for p in done if (path := probe_path(p))}}


def _by_level(effects: dict[str, list[dict]], factor: str) -> list[dict]:
    """Per level of ``factor``: its average gain and forgetting with intervals (for the curve)."""
    gain = [r for r in effects.get("chinese_gain", []) if r["factor"] == factor]
    forgetting = {r["level"]: r for r in effects.get("english_forgetting", []) if r["factor"] == factor}
    out = []
    for g in gain:
        f = forgetting.get(g["level"])
        if f is None or g["change"] is None or f["change"] is None:
            continue
        out.append({"label": g["level"], "chinese_gain": g["change"], "chinese_gain_ci": [g["low"], g["high"]],
                    "english_forgetting": f["change"], "english_forgetting_ci": [f["low"], f["high"]]})
    return out

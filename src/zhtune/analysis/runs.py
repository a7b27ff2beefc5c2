"""Evaluation runs and whether two of them can be compared: loading an evaluation folder (single-run,
multi-run with index.json, or ``MULTI/<label>``), refusing pairs whose settings or question sets differ,
and counting each question's pair of outcomes per (benchmark, subject)."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from zhtune.analysis.catalog import order
from zhtune.artifacts import read_eval_index
from zhtune.errors import UserError
from zhtune.io import iter_jsonl, read_json

# Keys every prediction line must have for a paired comparison.
_REQUIRED = ("key", "benchmark", "subject", "correct")


# ----------------------------------------------------------------------------------- loading runs
@dataclass
class EvalRun:
    """One evaluated (model, adapter, scale): its summary.json and predictions keyed by question."""

    path: Path
    label: str
    summary: dict
    predictions: dict[str, dict]  # question key -> prediction record, in file order

    @property
    def settings(self) -> dict:
        return self.summary.get("settings") or {}

    def describe(self) -> dict:
        s = self.summary
        return {"label": self.label, "dir": str(self.path), "model": s.get("model"),
                "adapter": s.get("adapter"), "adapter_scale": s.get("adapter_scale"),
                "family": s.get("family")}


_EVALUATE_AGAIN = ("evaluate again into a fresh folder (delete this one; in `zhtune run`: --force "
                   "evaluate, or --force baseline for the baseline)")


def _read_predictions(path: Path) -> dict[str, dict]:
    if not path.is_file():
        raise UserError(f"{path}: missing; an evaluation folder needs summary.json and predictions.jsonl")
    preds: dict[str, dict] = {}
    try:
        rows = list(iter_jsonl(path))
    except UserError as err:  # cut short or damaged after it was written
        raise UserError(f"{err}; {_EVALUATE_AGAIN}") from None
    for lineno, rec in rows:
        missing = [k for k in _REQUIRED if k not in rec] if isinstance(rec, dict) else list(_REQUIRED)
        if missing:
            raise UserError(f"{path}:{lineno}: prediction lacks {', '.join(missing)}")
        if not isinstance(rec["correct"], bool):
            raise UserError(f"{path}:{lineno}: 'correct' must be true or false, got {rec['correct']!r}")
        if rec["key"] in preds:
            raise UserError(f"{path}:{lineno}: question {rec['key']!r} appears twice")
        preds[rec["key"]] = rec
    if not preds:
        raise UserError(f"{path}: no predictions")
    return preds


def index_entries(folder: Path) -> list[tuple[str, Path]]:
    """(label, run folder) pairs listed by a multi-run folder's index.json (zhtune.artifacts)."""
    return [(r["label"], folder / r["dir"]) for r in read_eval_index(folder)]


def _load_single(path: Path, label: str) -> EvalRun:
    summary = read_json(path / "summary.json")
    if not isinstance(summary, dict):
        raise UserError(f"{path / 'summary.json'}: expected a JSON object")
    predictions = _read_predictions(path / "predictions.jsonl")
    counted = (summary.get("throughput") or {}).get("questions")
    if isinstance(counted, int) and counted != len(predictions):
        raise UserError(f"{path / 'predictions.jsonl'}: {len(predictions)} predictions, summary.json "
                        f"counts {counted} (truncated); {_EVALUATE_AGAIN}")
    return EvalRun(path=path, label=label, summary=summary, predictions=predictions)


def _label_in_parent(path: Path) -> str | None:
    parent = path.parent
    if (parent / "index.json").is_file():
        for label, sub in index_entries(parent):
            if sub.resolve() == path.resolve():
                return label
    return None


def load_runs(path: str | Path) -> list[EvalRun]:
    """Every run in an evaluation folder: a single-run folder (summary.json), a multi-run folder
    (index.json + one subfolder per label), or ``MULTI/<label>``."""
    path = Path(path)
    if (path / "summary.json").is_file():
        return [_load_single(path, _label_in_parent(path) or path.name)]
    if (path / "index.json").is_file():
        runs = []
        for label, sub in index_entries(path):
            if not (sub / "summary.json").is_file():
                raise UserError(f"{path / 'index.json'} lists {label!r} but {sub / 'summary.json'} is missing")
            runs.append(_load_single(sub, label))
        return runs
    if (path.parent / "index.json").is_file():  # MULTI/<label> where the label is not the folder name
        for label, sub in index_entries(path.parent):
            if label == path.name:
                return [_load_single(sub, label)]
    raise UserError(f"{path}: not an evaluation output folder (no summary.json or index.json)")


def load_run(path: str | Path, *, prefer: str | None = None) -> EvalRun:
    """Exactly one run. In a multi-run folder the label ``prefer`` is taken (e.g. ``"base"``)."""
    runs = load_runs(path)
    if len(runs) == 1:
        return runs[0]
    if prefer is not None:
        for run in runs:
            if run.label == prefer:
                return run
    labels = ", ".join(r.label for r in runs)
    raise UserError(f"{path} holds several runs ({labels}); name one as {Path(path) / runs[0].label}")


# ----------------------------------------------------------------------------------- comparability
def _fmt_value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else str(v)


def check_comparable(base: EvalRun, tuned: EvalRun) -> None:
    """Raise a UserError naming every difference in settings or question sets."""
    problems = []
    bs, ts = base.settings, tuned.settings
    for key in sorted(set(bs) | set(ts)):
        if bs.get(key, "<unset>") != ts.get(key, "<unset>"):
            problems.append(f"{key}: {_fmt_value(bs.get(key, '<unset>'))} vs {_fmt_value(ts.get(key, '<unset>'))}")
    bkeys, tkeys = set(base.predictions), set(tuned.predictions)
    if bkeys != tkeys:
        by_bench: dict[str, list[list[str]]] = defaultdict(lambda: [[], []])
        for k in bkeys - tkeys:
            by_bench[base.predictions[k]["benchmark"]][0].append(k)
        for k in tkeys - bkeys:
            by_bench[tuned.predictions[k]["benchmark"]][1].append(k)
        for bench in sorted(by_bench):
            for side, keys in zip(("base", "tuned"), by_bench[bench], strict=True):
                if keys:
                    keys.sort()
                    problems.append(f"{bench}: {len(keys)} questions only in {side}, e.g. {', '.join(keys[:3])}")
    if problems:
        raise UserError(f"cannot compare {base.path} (base) with {tuned.path} (tuned): the evaluations differ: "
                        + "; ".join(problems))


# ----------------------------------------------------------------------------------- paired counts
@dataclass
class Counts:
    """Paired outcome counts of one set of questions: n, b right->wrong, c wrong->right."""

    n: int = 0
    base_correct: int = 0
    tuned_correct: int = 0
    b: int = 0
    c: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.n + other.n, self.base_correct + other.base_correct,
                      self.tuned_correct + other.tuned_correct, self.b + other.b, self.c + other.c)


def total(counts: Sequence[Counts]) -> Counts:
    return sum(counts, Counts())


def paired_cells(base: EvalRun, tuned: EvalRun) -> tuple[dict[tuple[str, str], Counts], dict[str, dict[str, str]]]:
    """Paired counts per (benchmark, subject), in benchmark then subject order, and each subject's category."""
    raw: dict[tuple[str, str], Counts] = defaultdict(Counts)
    subject_categories: dict[str, dict[str, str]] = defaultdict(dict)
    for key, bp in base.predictions.items():
        tp = tuned.predictions[key]
        b_ok, t_ok = bp["correct"], tp["correct"]
        raw[(bp["benchmark"], bp["subject"])] += Counts(1, int(b_ok), int(t_ok), int(b_ok and not t_ok),
                                                         int(t_ok and not b_ok))
        subject_categories[bp["benchmark"]][bp["subject"]] = bp.get("category") or "Other"
    cells = {k: raw[k] for k in sorted(raw, key=lambda k: (order(k[0]), k[1]))}
    return cells, dict(subject_categories)

"""Constructed evaluation output folders (the format of docs/ARCHITECTURE.md) with known answers.

A ``Cell`` says, for one (benchmark, subject), how many questions both runs got right, how many
only the base got right (b), only the tuned run (c), and neither. ``paired_predictions`` turns cells
into two prediction lists over the same question keys, and ``write_eval_folder`` writes a folder
whose summary.json is computed from its predictions, exactly as the evaluator would.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from zhtune.artifacts import fingerprint
from zhtune.io import atomic_write_json, atomic_write_jsonl

SETTINGS = {"benchmarks": ["ceval", "cmmlu", "mmlu", "gsm8k"],
            "splits": {"ceval": "val", "cmmlu": "test", "mmlu": "test", "gsm8k": "test"},
            "shots": 5, "generation_shots": 5, "generation_cot": False, "chat": False, "limit": None,
            "subjects": None, "max_new_tokens": 256}
SPLITS = SETTINGS["splits"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Cell:
    benchmark: str
    subject: str
    category: str
    both: int = 0  # right in both runs
    b: int = 0  # right in base only (forgotten)
    c: int = 0  # right in tuned only (learned)
    neither: int = 0

    @property
    def n(self) -> int:
        return self.both + self.b + self.c + self.neither


def _record(cell: Cell, i: int, correct: bool) -> dict:
    split = SPLITS.get(cell.benchmark, "test")
    rec = {"key": f"{cell.benchmark}/{cell.subject}/{split}/{i}", "benchmark": cell.benchmark,
           "subject": cell.subject, "category": cell.category, "split": split, "id": str(i)}
    if cell.benchmark == "gsm8k":
        rec.update(gold="42", pred="42" if correct else "7", generation="... #### 42",
                   extracted_strict="42" if correct else "7", extracted_flexible="42" if correct else "7",
                   correct_strict=correct, correct=correct)
    else:
        pred = "A" if correct else "B"
        rec.update(gold="A", pred=pred, probs={x: (0.7 if x == pred else 0.1) for x in "ABCD"}, correct=correct)
    return rec


def paired_predictions(cells: list[Cell]) -> tuple[list[dict], list[dict]]:
    """Base and tuned predictions over the same keys with the cells' outcome counts."""
    base, tuned = [], []
    for cell in cells:
        outcomes = ([(True, True)] * cell.both + [(True, False)] * cell.b
                    + [(False, True)] * cell.c + [(False, False)] * cell.neither)
        for i, (b_ok, t_ok) in enumerate(outcomes):
            base.append(_record(cell, i, b_ok))
            tuned.append(_record(cell, i, t_ok))
    return base, tuned


def _acc(rows: list[dict]) -> dict:
    n = len(rows)
    acc = sum(r["correct"] for r in rows) / n
    return {"accuracy": acc, "n": n, "stderr": math.sqrt(acc * (1 - acc) / max(n - 1, 1))}


def summarize(predictions: list[dict]) -> dict:
    """The ``benchmarks`` section of summary.json, computed from predictions."""
    by_bench = defaultdict(list)
    for r in predictions:
        by_bench[r["benchmark"]].append(r)
    out = {}
    for bench, rows in by_bench.items():
        entry = {**_acc(rows), "metric": "accuracy"}
        if bench == "gsm8k":
            strict = sum(r["correct_strict"] for r in rows) / len(rows)
            entry.update(accuracy_flexible=entry["accuracy"], accuracy_strict=strict)
        else:
            cats, subs = defaultdict(list), defaultdict(list)
            for r in rows:
                cats[r["category"]].append(r)
                subs[r["subject"]].append(r)
            entry["categories"] = {c: _acc(v) for c, v in cats.items()}
            entry["subjects"] = {s: {**_acc(v), "category": v[0]["category"]} for s, v in subs.items()}
        out[bench] = entry
    return out


def write_eval_folder(path: Path, predictions: list[dict], *, settings: dict | None = None,
                      model: str = "tiny-llama", adapter: str | None = None,
                      adapter_scale: float | None = None, perplexity: dict | None = None) -> Path:
    settings = dict(SETTINGS if settings is None else settings)
    path.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": model, "adapter": adapter, "adapter_scale": adapter_scale, "family": "llama",
        "settings": settings,
        "settings_fingerprint": fingerprint(settings, sorted(r["key"] for r in predictions)),
        "benchmarks": summarize(predictions),
        "perplexity": perplexity if perplexity is not None else {
            "zh": {"bits_per_char": 3.2, "chars": 20000, "tokens": 9000},
            "en": {"bits_per_char": 1.1, "chars": 20000, "tokens": 5000}},
        "throughput": {"questions": len(predictions), "seconds": 1.0, "questions_per_second": len(predictions)},
        "created": "2026-11-29T08:00:00Z", "zhtune_version": "0.1.0",
    }
    atomic_write_jsonl(path / "predictions.jsonl", predictions)
    atomic_write_json(path / "summary.json", summary)
    return path


def write_multi_run(path: Path, runs: dict[str, dict]) -> Path:
    """A multi-run folder: ``runs`` maps label -> keyword arguments of write_eval_folder."""
    entries = []
    for label, kwargs in runs.items():
        write_eval_folder(path / label, **kwargs)
        entries.append({"label": label, "dir": label, "adapter": kwargs.get("adapter"),
                        "adapter_scale": kwargs.get("adapter_scale")})
    atomic_write_json(path / "index.json", {"runs": entries})
    return path


def standard_cells() -> list[Cell]:
    """A realistic small case: Chinese gains clearly, MMLU forgets clearly, GSM8K is noise."""
    return [
        Cell("ceval", "computer_network", "STEM", both=20, b=3, c=15, neither=22),
        Cell("ceval", "modern_chinese_history", "Humanities", both=25, b=2, c=12, neither=21),
        Cell("ceval", "law", "Social Sciences", both=18, b=4, c=10, neither=28),
        Cell("cmmlu", "chinese_literature", "Humanities", both=30, b=3, c=14, neither=33),
        Cell("cmmlu", "college_mathematics", "STEM", both=15, b=5, c=7, neither=53),
        Cell("mmlu", "high_school_physics", "STEM", both=60, b=25, c=4, neither=61),
        Cell("mmlu", "world_religions", "Humanities", both=70, b=15, c=3, neither=62),
        Cell("mmlu", "marketing", "Other", both=80, b=12, c=5, neither=53),
        Cell("gsm8k", "main", "Math", both=10, b=4, c=4, neither=82),
    ]


def write_standard_pair(root: Path, cells: list[Cell] | None = None, **tuned_kwargs) -> tuple[Path, Path]:
    """``root/base`` and ``root/tuned`` single-run folders built from ``cells``."""
    base, tuned = paired_predictions(cells or standard_cells())
    b = write_eval_folder(root / "base", base)
    t = write_eval_folder(root / "tuned", tuned, adapter="runs/demo/adapter", adapter_scale=1.0,
                          perplexity={"zh": {"bits_per_char": 2.9, "chars": 20000, "tokens": 9000},
                                      "en": {"bits_per_char": 1.15, "chars": 20000, "tokens": 5000}},
                          **tuned_kwargs)
    return b, t


def scale_folder(tmp_path: Path, forgetting_b=(5, 6, 11), gains=(2, 4, 6), scales=(0.25, 0.5, 1.0)) -> Path:
    """Base + one adapter at three scales. MMLU (200 questions, 100 right in base): b right->wrong
    and 5 wrong->right, so forgetting = (b - 5) / 2 points; C-Eval (100 questions, 40 right in base):
    gain g points from g + 3 learned and 3 forgotten."""
    def cells(b_en, gain):
        return [Cell("ceval", "law", "Social Sciences", both=37, b=3, c=gain + 3, neither=57 - gain),
                Cell("mmlu", "marketing", "Other", both=100 - b_en, b=b_en, c=5, neither=95)]
    runs = {"base": {"predictions": paired_predictions(cells(0, 0))[0]}}
    for scale, b_en, gain in zip(scales, forgetting_b, gains, strict=True):
        runs[f"demo@scale-{scale:g}"] = {"predictions": paired_predictions(cells(b_en, gain))[1],
                                         "adapter": "runs/demo/adapter", "adapter_scale": scale}
    return write_multi_run(tmp_path / "scales", runs)


def write_train_dir(path: Path, probes_in: str = "both") -> Path:
    """A training folder's logs: loss every 10 steps to 100, an eval loss, three probe rows in
    train_log.jsonl ("log"), probes.jsonl ("probes") or both, as zhtune train writes them ("both")."""
    path.mkdir(parents=True, exist_ok=True)
    log = [{"step": s, "loss": 2.5 - 0.1 * s / 10, "learning_rate": 1e-4} for s in range(10, 110, 10)]
    log.append({"step": 100, "eval_loss": 2.0})
    probes = [{"step": s, "probe/ceval_acc": 0.3 + s / 1000, "probe/mmlu_acc": 0.4 - s / 2000,
               "probe/zh_bpc": 3.0 - s / 500, "probe/en_bpc": 1.1 + s / 5000} for s in (0, 50, 100)]
    if probes_in in ("probes", "both"):
        (path / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    if probes_in in ("log", "both"):
        log += probes
    (path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return path

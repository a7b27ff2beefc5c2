"""Paired comparison of two evaluation runs: what fine-tuning gained in Chinese and what it forgot.

Both runs answered the same questions, so every statistic here is paired by question key:

- **McNemar's exact test.** Of the questions where the runs disagree, ``b`` were right before and
  wrong after, ``c`` wrong before and right after. With no real change each discordant question is
  equally likely to go either way, so p is the two-sided binomial test of ``c`` in ``b + c`` trials
  at 1/2 (``scipy.stats.binomtest``). Agreeing questions carry no information about the change.
- **Paired bootstrap 95% interval** for the change in accuracy (percentile method). A replicate
  resamples questions with replacement, each keeping its (base, tuned) outcome pair. Aggregates
  of several benchmarks (Chinese, English) use a *stratified* bootstrap: questions are resampled
  within each benchmark, so every replicate keeps the real benchmarks' sizes, and the replicate's
  change is the pooled (question-weighted) change. A subject, a category or one benchmark is
  resampled as one set of questions (the plain paired bootstrap). Strata are not subjects: quick
  runs take one question per subject, and resampling within one-question strata would give every
  replicate the observed change, i.e. an interval of zero width. All draws come from one seeded
  ``numpy.random.Generator`` in a fixed order, so intervals are reproducible.

The **Chinese gain** is tuned - base over the C-Eval and CMMLU questions pooled; the **English
forgetting** is base - tuned over MMLU and GSM8K pooled (positive = forgot). A benchmark is flagged
"significant forgetting" only when its whole interval for the change lies below zero *and* McNemar's
p < 0.05: with a handful of questions the percentile bootstrap is too narrow (3 questions all
flipped give the interval [100, 100] but p = 0.25), so the two must agree.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.stats import binomtest

from zhtune.data.benchmarks import BENCHMARKS, CHINESE_BENCHMARKS, ENGLISH_BENCHMARKS
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, iter_jsonl

CONFIDENCE = 0.95
ALPHA = 0.05  # a change is called significant only when the interval excludes 0 AND McNemar p < ALPHA
# Keys every prediction line must have for a paired comparison.
_REQUIRED = ("key", "benchmark", "subject", "correct")
STATISTICS_METHOD = (
    "Paired by question key. p: McNemar's exact test (two-sided binomial test on the discordant "
    "questions, b = right before and wrong after, c = wrong before and right after). Intervals: "
    "95% paired bootstrap percentile intervals for the change in accuracy; a subject, category or "
    "benchmark is resampled as one set of questions, and the pooled Chinese and English figures "
    "resample within each benchmark (stratified) so every replicate keeps the benchmark sizes. "
    "A change is called significant only when its interval excludes zero and McNemar's p < 0.05: with "
    "few questions the percentile bootstrap interval is too narrow, so both tests must agree. "
    "Significant forgetting: the whole interval of the change lies below zero (and p < 0.05)."
)


def significance(ci_low: float, ci_high: float, p_value: float) -> int:
    """+1 significant gain, -1 significant loss, 0 neither (see ALPHA)."""
    if p_value >= ALPHA:
        return 0
    return 1 if ci_low > 0 else -1 if ci_high < 0 else 0


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


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from None


def _read_predictions(path: Path) -> dict[str, dict]:
    if not path.is_file():
        raise UserError(f"{path}: missing; an evaluation folder needs summary.json and predictions.jsonl")
    preds: dict[str, dict] = {}
    for lineno, rec in iter_jsonl(path):
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
    """(label, run folder) pairs listed by a multi-run folder's index.json.

    Accepts ``{"runs": [{"label": .., "dir": ..}, ..]}``, ``{"runs": ["base", ..]}`` or
    ``{"labels": [..]}``; a run's folder defaults to its label.
    """
    index = _read_json_file(folder / "index.json")
    entries = index.get("runs", index.get("labels")) if isinstance(index, dict) else index
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{folder / 'index.json'}: expected a non-empty 'runs' list")
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            label, sub = entry, entry
        elif isinstance(entry, dict) and "label" in entry:
            label = entry["label"]
            sub = entry.get("dir") or entry.get("folder") or entry.get("path") or label
        else:
            raise UserError(f"{folder / 'index.json'}: run #{i + 1} has no label: {entry!r}")
        out.append((str(label), folder / sub))
    return out


def _load_single(path: Path, label: str) -> EvalRun:
    summary = _read_json_file(path / "summary.json")
    if not isinstance(summary, dict):
        raise UserError(f"{path / 'summary.json'}: expected a JSON object")
    return EvalRun(path=path, label=label, summary=summary,
                   predictions=_read_predictions(path / "predictions.jsonl"))


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


# ----------------------------------------------------------------------------------- statistics
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of c successes in b + c trials at 1/2."""
    if b + c == 0:
        return 1.0
    return float(binomtest(c, b + c, 0.5, alternative="two-sided").pvalue)


@dataclass
class Stratum:
    """Paired outcome counts of one (benchmark, subject): n questions, b right->wrong, c wrong->right."""

    n: int
    b: int
    c: int


def bootstrap_sums(stratum: Stratum, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Per replicate, the summed change (tuned - base, in questions) of ``n`` questions resampled
    with replacement. Each question's change is -1 (right->wrong), +1 (wrong->right) or 0, so the
    counts drawn of each kind are exactly Multinomial(n, (b/n, c/n, rest)): drawing them directly
    is the same bootstrap as drawing question indices, without materialising n x samples indices."""
    if stratum.n == 0:
        return np.zeros(samples)
    p = np.array([stratum.b, stratum.c, stratum.n - stratum.b - stratum.c], dtype=float) / stratum.n
    counts = rng.multinomial(stratum.n, p, size=samples)
    return (counts[:, 1] - counts[:, 0]).astype(float)


@dataclass
class GroupStats:
    """Base vs tuned on one set of questions (a subject, category, benchmark or pooled group)."""

    n: int
    base_correct: int
    tuned_correct: int
    b: int  # right in base, wrong in tuned
    c: int  # wrong in base, right in tuned
    ci_low: float  # points, change tuned - base
    ci_high: float
    p_value: float

    @property
    def base_accuracy(self) -> float:
        return self.base_correct / self.n

    @property
    def tuned_accuracy(self) -> float:
        return self.tuned_correct / self.n

    @property
    def change_points(self) -> float:
        return 100.0 * (self.tuned_correct - self.base_correct) / self.n

    @property
    def direction(self) -> int:
        return significance(self.ci_low, self.ci_high, self.p_value)

    def to_dict(self) -> dict:
        base, tuned = self.base_accuracy, self.tuned_accuracy
        return {
            "n": self.n, "base_accuracy": base, "tuned_accuracy": tuned,
            "change_points": self.change_points,
            "relative_change": (tuned - base) / base if base else None,
            "retention": tuned / base if base else None,
            "ci_low": self.ci_low, "ci_high": self.ci_high, "p_value": self.p_value,
            "base_right_tuned_wrong": self.b, "base_wrong_tuned_right": self.c,
            "significant_forgetting": self.direction < 0, "significant_gain": self.direction > 0,
        }


def _group_stats(strata: Sequence[Stratum], sums: Sequence[np.ndarray], base_correct: int,
                 tuned_correct: int) -> GroupStats:
    n = sum(s.n for s in strata)
    b, c = sum(s.b for s in strata), sum(s.c for s in strata)
    changes = 100.0 * np.sum(sums, axis=0) / n
    lo, hi = np.percentile(changes, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    # Rounded to drop float noise (-1e-14 is zero, not a loss).
    return GroupStats(n=n, base_correct=base_correct, tuned_correct=tuned_correct, b=b, c=c,
                      ci_low=round(float(lo), 9) + 0.0, ci_high=round(float(hi), 9) + 0.0,
                      p_value=mcnemar_exact(b, c))


def _merged(cells: dict[tuple[str, str], dict], members: list[tuple[str, str]]) -> Stratum:
    return Stratum(n=sum(cells[m]["n"] for m in members), b=sum(cells[m]["b"] for m in members),
                   c=sum(cells[m]["c"] for m in members))


def _aggregate(cells: dict[tuple[str, str], dict], members: Iterable[tuple[str, str]],
               samples: int, rng: np.random.Generator) -> tuple[GroupStats, np.ndarray]:
    """One set of questions (a subject, a category or a benchmark), resampled as a whole."""
    members = list(members)
    stratum = _merged(cells, members)
    sums = bootstrap_sums(stratum, samples, rng)
    return _group_stats([stratum], [sums], sum(cells[m]["base_correct"] for m in members),
                        sum(cells[m]["tuned_correct"] for m in members)), sums


def _bench_order(name: str) -> tuple[int, str]:
    return (BENCHMARKS.index(name) if name in BENCHMARKS else len(BENCHMARKS), name)


# ----------------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    """Everything comparison.json holds; ``to_dict()`` is that file's content."""

    base: EvalRun
    tuned: EvalRun
    benchmarks: dict[str, GroupStats]
    categories: dict[str, dict[str, GroupStats]]
    subjects: dict[str, dict[str, GroupStats]]
    subject_categories: dict[str, dict[str, str]]
    chinese: GroupStats | None
    english: GroupStats | None
    perplexity: dict[str, dict]
    bootstrap_samples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.tuned.label

    @property
    def significant_forgetting(self) -> list[str]:
        return [name for name, g in self.benchmarks.items() if g.direction < 0]

    def headline(self) -> dict:
        """Chinese gain and English forgetting (points, interval, p), as in comparison.json."""
        return {"chinese_gain": _figure(self.chinese, CHINESE_BENCHMARKS, self.benchmarks, forgetting=False),
                "english_forgetting": _figure(self.english, ENGLISH_BENCHMARKS, self.benchmarks, forgetting=True)}

    def to_dict(self) -> dict:
        return {
            "base": self.base.describe(), "tuned": self.tuned.describe(),
            "settings": self.base.settings,
            "settings_fingerprint": self.base.summary.get("settings_fingerprint"),
            "n_questions": len(self.base.predictions),
            **self.headline(),
            "significant_forgetting": self.significant_forgetting,
            "benchmarks": {k: g.to_dict() for k, g in self.benchmarks.items()},
            "categories": {b: {k: g.to_dict() for k, g in cats.items()} for b, cats in self.categories.items()},
            "subjects": {b: {k: {**g.to_dict(), "category": self.subject_categories[b].get(k)}
                             for k, g in subs.items()} for b, subs in self.subjects.items()},
            "perplexity": self.perplexity,
            "statistics": {"bootstrap_samples": self.bootstrap_samples, "seed": self.seed,
                           "confidence": CONFIDENCE, "method": STATISTICS_METHOD},
            "notes": self.notes,
        }


def _figure(g: GroupStats | None, names: Sequence[str], benchmarks: dict[str, GroupStats],
            *, forgetting: bool) -> dict | None:
    """The Chinese-gain (tuned - base) or English-forgetting (base - tuned) headline figure.

    ``change_points``, ``ci_low`` and ``ci_high`` are the figure itself in its own direction, so a
    positive English figure means forgetting; ``tuned_minus_base_points`` is always tuned - base."""
    if g is None:
        return None
    sign = -1.0 if forgetting else 1.0
    lo, hi = sorted((sign * g.ci_low, sign * g.ci_high))
    return {
        "definition": ("base - tuned accuracy, points (positive = forgot)" if forgetting
                       else "tuned - base accuracy, points (positive = gained)"),
        "benchmarks": [b for b in names if b in benchmarks],
        "n_by_benchmark": {b: benchmarks[b].n for b in names if b in benchmarks},
        "n": g.n, "base_accuracy": g.base_accuracy, "tuned_accuracy": g.tuned_accuracy,
        "change_points": sign * g.change_points, "ci_low": lo, "ci_high": hi, "p_value": g.p_value,
        "tuned_minus_base_points": g.change_points,
        "retention": g.tuned_accuracy / g.base_accuracy if g.base_accuracy else None,
        "significant": g.direction == (-1 if forgetting else 1),
        "significant_opposite": g.direction == (1 if forgetting else -1),
    }


def _perplexity(base: EvalRun, tuned: EvalRun) -> dict[str, dict]:
    """Bits per character on the zh / en probes: lower is better; ratio = tuned / base."""
    out = {}
    bp, tp = base.summary.get("perplexity") or {}, tuned.summary.get("perplexity") or {}
    for lang in sorted(set(bp) & set(tp), key=lambda x: (x != "zh", x)):  # zh first
        # Entries that are not measurements (e.g. {"skipped": "no local data folder"}) are ignored.
        if not isinstance(bp[lang], dict) or not isinstance(tp[lang], dict):
            continue
        b, t = bp[lang].get("bits_per_char"), tp[lang].get("bits_per_char")
        if b is None or t is None:
            continue
        out[lang] = {"base_bits_per_char": b, "tuned_bits_per_char": t, "change": t - b,
                     "ratio": t / b if b else None, "chars": bp[lang].get("chars")}
    return out


def compare_loaded(base: EvalRun, tuned: EvalRun, *, bootstrap_samples: int = 2000,
                   seed: int = 0) -> Comparison:
    """Compare two loaded runs (see the module docstring for the statistics)."""
    if bootstrap_samples < 1:
        raise UserError(f"bootstrap_samples must be at least 1, got {bootstrap_samples}")
    check_comparable(base, tuned)
    rng = np.random.default_rng(seed)
    # One cell per (benchmark, subject), in a fixed order so the seeded draws are reproducible.
    raw: dict[tuple[str, str], dict] = {}
    subject_categories: dict[str, dict[str, str]] = defaultdict(dict)
    for key in sorted(base.predictions):
        bp, tp = base.predictions[key], tuned.predictions[key]
        cell_key = (bp["benchmark"], bp["subject"])
        cell = raw.setdefault(cell_key, {"n": 0, "b": 0, "c": 0, "base_correct": 0, "tuned_correct": 0})
        cell["n"] += 1
        cell["base_correct"] += bp["correct"]
        cell["tuned_correct"] += tp["correct"]
        cell["b"] += bp["correct"] and not tp["correct"]
        cell["c"] += tp["correct"] and not bp["correct"]
        subject_categories[bp["benchmark"]][bp["subject"]] = bp.get("category") or "Other"
    cells = {ck: raw[ck] for ck in sorted(raw, key=lambda k: (_bench_order(k[0]), k[1]))}

    def draw(members):
        return _aggregate(cells, members, bootstrap_samples, rng)

    benchmarks, categories, subjects, bench_sums = {}, {}, {}, {}
    for bench in sorted({b for b, _ in cells}, key=_bench_order):
        keys = [k for k in cells if k[0] == bench]
        benchmarks[bench], bench_sums[bench] = draw(keys)
        subjects[bench] = {s: draw([(bench, s)])[0] for _, s in keys}
        cats = defaultdict(list)
        for k in keys:
            cats[subject_categories[bench][k[1]]].append(k)
        categories[bench] = {cat: draw(members)[0] for cat, members in sorted(cats.items())}

    def pooled(names):  # stratified by benchmark: the replicates drawn for each benchmark, summed
        names = [b for b in benchmarks if b in names]
        if not names:
            return None
        members = [k for k in cells if k[0] in names]
        return _group_stats([_merged(cells, [k for k in members if k[0] == b]) for b in names],
                            [bench_sums[b] for b in names],
                            sum(cells[m]["base_correct"] for m in members),
                            sum(cells[m]["tuned_correct"] for m in members))

    notes = _consistency_notes(base, benchmarks, "base") + _consistency_notes(tuned, benchmarks, "tuned")
    if base.summary.get("model") != tuned.summary.get("model"):
        notes.append(f"the runs evaluated different models: {base.summary.get('model')} (base) and "
                     f"{tuned.summary.get('model')} (tuned)")
    return Comparison(base=base, tuned=tuned, benchmarks=benchmarks, categories=categories,
                      subjects=subjects, subject_categories=dict(subject_categories),
                      chinese=pooled(CHINESE_BENCHMARKS), english=pooled(ENGLISH_BENCHMARKS),
                      perplexity=_perplexity(base, tuned), bootstrap_samples=bootstrap_samples,
                      seed=seed, notes=notes)


def _consistency_notes(run: EvalRun, benchmarks: dict[str, GroupStats], side: str) -> list[str]:
    """Flag a summary.json whose accuracy disagrees with its own predictions (a broken folder)."""
    notes = []
    for bench, g in benchmarks.items():
        reported = ((run.summary.get("benchmarks") or {}).get(bench) or {}).get("accuracy")
        acc = g.base_accuracy if side == "base" else g.tuned_accuracy
        if reported is not None and abs(reported - acc) > 1e-6:
            notes.append(f"{run.path}: summary.json says {bench} accuracy {reported:.4f} but its "
                         f"predictions give {acc:.4f}; the predictions were used")
    return notes


def compare_runs(base_dir: str | Path, tuned_dir: str | Path, *, bootstrap_samples: int = 2000,
                 seed: int = 0, output_dir: str | Path | None = None) -> Comparison:
    """Compare a base evaluation with one tuned evaluation; write ``output_dir/comparison.json``.

    ``base_dir`` may be a multi-run folder, whose ``base`` run is used; ``tuned_dir`` must hold
    exactly one run besides a ``base`` one (or name it as ``DIR/<label>``)."""
    tuned = [r for r in load_runs(tuned_dir) if r.label != "base"] or load_runs(tuned_dir)
    if len(tuned) > 1:
        raise UserError(f"{tuned_dir} holds several tuned runs ({', '.join(r.label for r in tuned)}); name one as "
                        f"{Path(tuned_dir) / tuned[0].label}, or use compare_many / several TUNED_DIRs")
    comparison = compare_loaded(load_run(base_dir, prefer="base"), tuned[0],
                                bootstrap_samples=bootstrap_samples, seed=seed)
    if output_dir is not None:
        write_comparison(comparison, Path(output_dir) / "comparison.json")
    return comparison


def compare_many(base_dir: str | Path, tuned_dirs: Sequence[str | Path], *,
                 bootstrap_samples: int = 2000, seed: int = 0) -> list[Comparison]:
    """One comparison per tuned run against one base. A multi-run tuned folder contributes every
    run in it except one labelled ``base``; labels are made unique."""
    base = load_run(base_dir, prefer="base")
    tuned_runs: list[EvalRun] = []
    for d in tuned_dirs:
        runs = load_runs(d)
        tuned_runs += [r for r in runs if r.label != "base" or len(runs) == 1]
    if not tuned_runs:
        raise UserError("no tuned runs to compare: the tuned folders hold only a 'base' run")
    seen: dict[str, int] = {}
    for run in tuned_runs:
        if run.label in seen:
            seen[run.label] += 1
            run.label = f"{run.label}-{seen[run.label]}"
        else:
            seen[run.label] = 1
    return [compare_loaded(base, t, bootstrap_samples=bootstrap_samples, seed=seed) for t in tuned_runs]


def write_comparison(comparison: Comparison, path: str | Path) -> Path:
    return atomic_write_json(path, comparison.to_dict())


def safe_name(label: str) -> str:
    """A label as a folder name (labels may hold '@' and '.', which are fine, but not '/')."""
    name = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in label).strip(".")
    return name or "run"


def signed(x: float, digits: int = 1) -> str:
    """``+3.1`` / ``−0.8`` with a true minus sign; ``0.0`` for anything that rounds to zero."""
    text = f"{x:+.{digits}f}"
    return text[1:] if float(text) == 0 else text.replace("-", "−")


def num(x: float, digits: int = 1) -> str:
    """``3.1`` / ``−0.8``; never ``−0.0``."""
    text = f"{x:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text.replace("-", "−")


def format_p(p: float) -> str:
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3f}" if p < 0.01 else f"= {p:.2f}"

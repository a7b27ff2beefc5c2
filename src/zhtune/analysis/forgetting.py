"""Paired comparison of two evaluation runs: what fine-tuning gained in Chinese and what it forgot.

This module is the orchestrator: it loads two evaluation folders, refuses incomparable ones, counts
each question's pair of outcomes per (benchmark, subject) and hands the counts to the pure
statistics of ``zhtune.analysis.stats`` (see its docstring for why each method). Per figure:

- **Change** tuned - base in points, with a **95% interval**: Tango's score interval for paired
  proportions for a benchmark, a category or a subject; for the pooled **Chinese gain** (C-Eval +
  CMMLU, tuned - base) and **English forgetting** (MMLU + GSM8K, base - tuned) the same interval
  widened by a cluster-robust design effect (questions clustered by subject, stratified by
  benchmark). An interval has zero width only when it has no question.
- **p**: McNemar's exact test on the discordant questions. Pooled figures: the score test their
  interval inverts, on the effective sample size (McNemar's exact p on the pooled questions, which
  treats a subject's questions as independent, is kept as ``mcnemar_exact_p``).
  **q**: Benjamini-Hochberg within each benchmark, separately for its subjects and its categories.
- **Verdict** against a margin (``analysis.forgetting_margin`` for English, ``analysis.gain_margin``
  for Chinese, in points). English: *forgot* (95% interval below 0), *improved* (above 0), *no
  forgetting beyond the margin* (the one-sided 95% upper bound of forgetting, i.e. the bound of the
  90% two-sided interval, is below the margin: Schuirmann's TOST at alpha = 0.05 for the side that
  matters), else *inconclusive*. Chinese mirrors it: *improved*, *declined*, *no gain beyond the
  margin*, *inconclusive*. Subjects and categories are called *forgot* / *improved* / *declined*
  only when q < 0.05, and within the margin only when the q of the one-sided margin test is < 0.05.
- **Minimum detectable change** (80% power, two-sided alpha = 0.05) at the figure's n and observed
  discordance, and the questions needed to detect the margin.

Everything is deterministic: the same folders give the same comparison.json.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from zhtune.analysis.stats import (FORGETTING, GAIN, LOSS_VERDICTS, bh_qvalues, clustered_interval,
                                   clustered_score_p, mcnemar_exact, min_detectable_change, noninferiority_p,
                                   paired_ratio_interval, questions_needed, tango_interval, verdict)
from zhtune.artifacts import read_eval_index
from zhtune.data.benchmarks import BENCHMARKS, CHINESE_BENCHMARKS, ENGLISH_BENCHMARKS
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, iter_jsonl

CONFIDENCE = 0.95
ALPHA = 0.05  # subjects and categories are flagged at BH q < ALPHA
POWER = 0.80
HEADLINE_FORMULATIONS = ("auto", "letter", "cloze")  # analysis.headline_formulation
FORGETTING_MARGIN = 2.0  # points; the defaults of analysis.forgetting_margin / analysis.gain_margin
GAIN_MARGIN = 2.0
# Keys every prediction line must have for a paired comparison.
_REQUIRED = ("key", "benchmark", "subject", "correct")
METHOD_SCORE = "Tango score interval for paired proportions"
METHOD_CLUSTERED = ("Tango score interval on the effective sample size: cluster-robust design effect "
                    "(questions clustered by subject, stratified by benchmark, t with subjects - benchmarks df)")
STATISTICS_METHOD = (
    "Paired by question key. Intervals: 95% Tango score intervals for the change in accuracy of a "
    "benchmark, category or subject (never of zero width; 95-96% coverage once about five questions are "
    "expected to change, conservative with fewer); the pooled Chinese and English figures use the same interval with a "
    "cluster-robust design effect (questions clustered by subject, stratified by benchmark; Miller 2024). "
    "p: McNemar's exact test (two-sided binomial test on the discordant questions); for the pooled figures "
    "the score test on the effective sample size, which agrees with their interval. q: Benjamini-Hochberg "
    "adjusted p within each benchmark, separately for subjects and for categories; a subject or category "
    "is flagged only when q < 0.05. Verdicts: forgot / improved / declined when the 95% interval excludes "
    "0 (subjects and categories: q < 0.05); 'no forgetting beyond the margin' when the one-sided 95% upper "
    "bound of forgetting (the 90% two-sided interval's bound) is below the margin: a TOST "
    "(Schuirmann 1987) at alpha = 0.05 for the side that matters ('no gain beyond the margin' likewise for "
    "Chinese); otherwise inconclusive. Minimum detectable change: 80% power, two-sided alpha = 0.05, "
    "McNemar's test at the figure's observed discordance and n (Connor 1987); pooled figures use n divided by "
    "their design effect."
)


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
    """(label, run folder) pairs listed by a multi-run folder's index.json (zhtune.artifacts)."""
    return [(r["label"], folder / r["dir"]) for r in read_eval_index(folder)]


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
def _kind(benchmark: str) -> str:
    """Chinese benchmarks are judged on what they gained, English ones on what they forgot."""
    return GAIN if benchmark.removesuffix("_cloze") in CHINESE_BENCHMARKS else FORGETTING  # ceval_cloze: zh


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


def _total(counts: Sequence[Counts]) -> Counts:
    return sum(counts, Counts())


@dataclass
class GroupStats:
    """Base vs tuned on one set of questions (a subject, category, benchmark or pooled group)."""

    counts: Counts
    kind: str  # FORGETTING or GAIN: which side of the change the verdict is about
    margin: float  # points
    ci_low: float  # points, change tuned - base, 95% interval
    ci_high: float
    bound_low: float  # points, one-sided 95% bounds (the 90% two-sided interval)
    bound_high: float
    p_value: float
    method: str
    design_effect: float = 1.0  # > 1 for pooled figures whose subjects change together
    mcnemar_p: float | None = None  # pooled figures: McNemar's exact p ignoring clustering (p_value allows for it)
    q_value: float | None = None  # BH-adjusted p, for subjects and categories
    equivalence_q: float | None = None  # BH-adjusted p of the one-sided margin test, likewise

    n = property(lambda self: self.counts.n)
    b = property(lambda self: self.counts.b)
    c = property(lambda self: self.counts.c)

    @property
    def base_accuracy(self) -> float:
        return self.counts.base_correct / self.n

    @property
    def tuned_accuracy(self) -> float:
        return self.counts.tuned_correct / self.n

    @property
    def change_points(self) -> float:
        return 100.0 * (self.counts.tuned_correct - self.counts.base_correct) / self.n

    @property
    def discordance(self) -> float:
        return (self.b + self.c) / self.n

    @property
    def verdict(self) -> str:
        adjusted = self.q_value is not None
        return verdict(self.change_points, self.ci_low, self.ci_high, self.bound_low, self.bound_high, self.margin,
                       kind=self.kind, significant=self.q_value < ALPHA if adjusted else None,
                       equivalent=self.equivalence_q < ALPHA if adjusted else None)

    @property
    def min_detectable_change(self) -> float | None:
        """Points; at the effective number of questions for pooled figures."""
        mdc = min_detectable_change(self.n / self.design_effect, self.discordance, alpha=ALPHA, power=POWER)
        return None if mdc is None else 100.0 * mdc

    @property
    def questions_for_margin(self) -> int | None:
        needed = questions_needed(self.margin / 100.0, self.discordance, alpha=ALPHA, power=POWER)
        return None if needed is None else math.ceil(needed * self.design_effect)

    def to_dict(self) -> dict:
        base, tuned, v = self.base_accuracy, self.tuned_accuracy, self.verdict
        out = {
            "n": self.n, "base_accuracy": base, "tuned_accuracy": tuned,
            "change_points": self.change_points, "estimate": self.change_points,
            "relative_change": (tuned - base) / base if base else None,
            "retention": tuned / base if base else None,
            "ci_low": self.ci_low, "ci_high": self.ci_high, "interval": [self.ci_low, self.ci_high],
            "confidence": CONFIDENCE, "one_sided_bounds": [self.bound_low, self.bound_high],
            "method": self.method, "p_value": self.p_value,
        }
        if self.q_value is not None:
            out.update(q_value=self.q_value, equivalence_q=self.equivalence_q)
        out.update({
            "verdict": v, "verdict_about": self.kind, "margin": self.margin,
            "min_detectable_change": self.min_detectable_change, "discordance": self.discordance,
            "questions_for_margin": self.questions_for_margin,
            "base_right_tuned_wrong": self.b, "base_wrong_tuned_right": self.c,
            "significant_forgetting": v in LOSS_VERDICTS, "significant_gain": v == "improved",
        })
        if self.method == METHOD_CLUSTERED:
            out.update(design_effect=self.design_effect, mcnemar_exact_p=self.mcnemar_p)
        return out


def _points(fraction: Any) -> float:
    """A fraction as points, rounded to drop float noise (-1e-14 is zero, not a loss)."""
    return round(100.0 * float(fraction), 9) + 0.0


def paired_stats(counts: Counts, kind: str, margin: float) -> GroupStats:
    """One subject, category or benchmark: Tango's interval on its questions."""
    low, high = tango_interval(counts.b, counts.c, counts.n, CONFIDENCE)
    low90, high90 = tango_interval(counts.b, counts.c, counts.n, 1 - 2 * ALPHA)
    return GroupStats(counts=counts, kind=kind, margin=margin, ci_low=_points(low), ci_high=_points(high),
                      bound_low=_points(low90), bound_high=_points(high90),
                      p_value=mcnemar_exact(counts.b, counts.c), method=METHOD_SCORE)


def pooled_stats(cells: dict[tuple[str, str], Counts], kind: str, margin: float) -> GroupStats:
    """Several benchmarks pooled, questions clustered by subject and stratified by benchmark."""
    keys = list(cells)
    stratum = np.array([bench for bench, _ in keys])
    n, b, c = (np.array([getattr(cells[k], f) for k in keys], dtype=float) for f in ("n", "b", "c"))
    low, high, deff = clustered_interval(stratum, n, b, c, CONFIDENCE)
    low90, high90, _ = clustered_interval(stratum, n, b, c, 1 - 2 * ALPHA)
    total = _total(list(cells.values()))
    return GroupStats(counts=total, kind=kind, margin=margin, ci_low=_points(low), ci_high=_points(high),
                      bound_low=_points(low90), bound_high=_points(high90),
                      p_value=float(clustered_score_p(total.b, total.c, deff)), method=METHOD_CLUSTERED,
                      design_effect=float(deff), mcnemar_p=mcnemar_exact(total.b, total.c))


def adjust_family(groups: Sequence[GroupStats]) -> None:
    """Benjamini-Hochberg within one family (a benchmark's subjects, or its categories): the q of
    McNemar's p for the forgot / improved flags, and the q of the one-sided margin test for the
    within-the-margin verdict, so neither kind of claim is made by chance among many subjects."""
    if not groups:
        return
    q = bh_qvalues(np.array([g.p_value for g in groups]))
    eq_p = [float(noninferiority_p(g.b, g.c, g.n, g.margin / 100.0, kind=g.kind)) for g in groups]
    eq_q = bh_qvalues(np.array(eq_p))
    for g, qv, eqv in zip(groups, q, eq_q, strict=True):
        g.q_value, g.equivalence_q = float(qv), float(eqv)


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
    forgetting_margin: float = FORGETTING_MARGIN
    gain_margin: float = GAIN_MARGIN
    notes: list[str] = field(default_factory=list)
    formulation: str = "letter"  # of the headline figures: "letter" or "cloze"
    # The other formulation's pooled figures where the runs have both (a secondary analysis).
    secondary: dict | None = None

    @property
    def label(self) -> str:
        return self.tuned.label

    @property
    def significant_forgetting(self) -> list[str]:
        """Benchmarks whose accuracy fell (verdict forgot, or declined for a Chinese one)."""
        return [name for name, g in self.benchmarks.items() if g.verdict in LOSS_VERDICTS]

    def headline(self) -> dict:
        """Chinese gain and English forgetting (points, interval, p, verdict), as in comparison.json."""
        chinese_names, english_names = headline_benchmarks(self.benchmarks, self.formulation)
        return {"chinese_gain": _figure(self.chinese, chinese_names, self.benchmarks, forgetting=False),
                "english_forgetting": _figure(self.english, english_names, self.benchmarks, forgetting=True)}

    def to_dict(self) -> dict:
        return {
            "base": self.base.describe(), "tuned": self.tuned.describe(),
            "settings": self.base.settings,
            "settings_fingerprint": self.base.summary.get("settings_fingerprint"),
            "n_questions": len(self.base.predictions),
            "headline_formulation": self.formulation,
            **self.headline(),
            "secondary": self.secondary,
            "significant_forgetting": self.significant_forgetting,
            "benchmarks": {k: g.to_dict() for k, g in self.benchmarks.items()},
            "categories": {b: {k: g.to_dict() for k, g in cats.items()} for b, cats in self.categories.items()},
            "subjects": {b: {k: {**g.to_dict(), "category": self.subject_categories[b].get(k)}
                             for k, g in subs.items()} for b, subs in self.subjects.items()},
            "perplexity": self.perplexity,
            "statistics": {"confidence": CONFIDENCE, "equivalence_confidence": "one-sided 95% (90% two-sided)",
                           "alpha": ALPHA, "power": POWER, "forgetting_margin": self.forgetting_margin,
                           "gain_margin": self.gain_margin, "method": STATISTICS_METHOD},
            "notes": self.notes,
        }


def headline_benchmarks(benchmarks: Iterable[str], formulation: str = "auto") -> tuple[list[str], list[str]]:
    """The benchmarks pooled into the Chinese and English headlines. ``formulation`` "letter" or
    "cloze" (``analysis.headline_formulation``) picks that formulation's; "auto" the letter one where
    the runs have it (the published one), else the cloze one (``--formulation cloze``, for small
    models at chance on letters). GSM8K has one formulation and is English either way; the two
    formulations of one question are never pooled together (they are not independent)."""
    if formulation not in HEADLINE_FORMULATIONS:
        raise UserError(f"headline formulation must be one of {', '.join(HEADLINE_FORMULATIONS)}, got {formulation!r}")
    present = list(benchmarks)
    letter = [b for b in present if not b.endswith("_cloze")]
    has_letter = any(b in CHINESE_BENCHMARKS + ENGLISH_BENCHMARKS and b != "gsm8k" for b in letter)
    use_cloze = formulation == "cloze" or (formulation == "auto" and not has_letter)
    chosen = [b for b in present if b.endswith("_cloze") or b == "gsm8k"] if use_cloze else letter
    chosen.sort(key=lambda b: BENCHMARKS.index(b.removesuffix("_cloze")))  # the specs' order
    chinese = [b for b in chosen if b.removesuffix("_cloze") in CHINESE_BENCHMARKS]
    english = [b for b in chosen if b.removesuffix("_cloze") in ENGLISH_BENCHMARKS]
    return chinese, english


def _figure(g: GroupStats | None, names: Sequence[str], benchmarks: dict[str, GroupStats],
            *, forgetting: bool) -> dict | None:
    """The Chinese-gain (tuned - base) or English-forgetting (base - tuned) headline figure.

    ``change_points``/``estimate``, ``ci_low``/``ci_high``/``interval`` and ``one_sided_bounds`` are
    the figure itself in its own direction, so a positive English figure means forgetting;
    ``tuned_minus_base_points`` is always tuned - base."""
    if g is None:
        return None
    d = g.to_dict()
    sign = -1.0 if forgetting else 1.0
    lo, hi = sorted((sign * g.ci_low + 0.0, sign * g.ci_high + 0.0))
    bounds = sorted((sign * g.bound_low + 0.0, sign * g.bound_high + 0.0))
    loss, gain = d["verdict"] in LOSS_VERDICTS, d["verdict"] == "improved"
    return {
        "definition": ("base - tuned accuracy, points (positive = forgot)" if forgetting
                       else "tuned - base accuracy, points (positive = gained)"),
        "benchmarks": [b for b in names if b in benchmarks],
        "n_by_benchmark": {b: benchmarks[b].n for b in names if b in benchmarks},
        "n": g.n, "base_accuracy": g.base_accuracy, "tuned_accuracy": g.tuned_accuracy,
        "change_points": sign * g.change_points + 0.0, "estimate": sign * g.change_points + 0.0,
        "ci_low": lo, "ci_high": hi, "interval": [lo, hi], "confidence": CONFIDENCE, "one_sided_bounds": bounds,
        "method": g.method, "design_effect": g.design_effect, "p_value": g.p_value,
        "p_method": "score test on the effective sample size (what the interval inverts)",
        "mcnemar_exact_p": g.mcnemar_p,
        "verdict": d["verdict"], "verdict_about": g.kind, "margin": g.margin,
        "min_detectable_change": d["min_detectable_change"], "discordance": g.discordance,
        "questions_for_margin": d["questions_for_margin"],
        "tuned_minus_base_points": g.change_points,
        "retention": g.tuned_accuracy / g.base_accuracy if g.base_accuracy else None,
        "significant": loss if forgetting else gain,
        "significant_opposite": gain if forgetting else loss,
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
        out[lang].update(_bits_interval(bp[lang].get("texts"), tp[lang].get("texts")))
    return out


def _bits_interval(base_texts: list | None, tuned_texts: list | None) -> dict:
    """The paired 95% interval of the change in bits per character over the probe texts (each text
    one unit), where both runs recorded per-text bits of the same texts; else nothing (older runs)."""
    if not base_texts or not tuned_texts or [c for c, _ in base_texts] != [c for c, _ in tuned_texts]:
        return {}
    r = paired_ratio_interval([b for _, b in base_texts], [t for _, t in tuned_texts],
                              [c for c, _ in base_texts])
    if r["change"] is None:
        return {}
    verdict = "lower" if r["high"] < 0 else "higher" if r["low"] > 0 else "no significant change"
    return {"change_low": r["low"], "change_high": r["high"], "p": r["p"], "texts": r["units"],
            "verdict": verdict}


def _check_margin(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 100):
        raise UserError(f"{name} must be between 0 and 100 points, got {value!r}")


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
    cells = {k: raw[k] for k in sorted(raw, key=lambda k: (_bench_order(k[0]), k[1]))}
    return cells, dict(subject_categories)


def compare_loaded(base: EvalRun, tuned: EvalRun, *, forgetting_margin: float = FORGETTING_MARGIN,
                   gain_margin: float = GAIN_MARGIN, headline_formulation: str = "auto") -> Comparison:
    """Compare two loaded runs (see the module docstring for the statistics)."""
    _check_margin("forgetting_margin", forgetting_margin)
    _check_margin("gain_margin", gain_margin)
    check_comparable(base, tuned)
    cells, subject_categories = paired_cells(base, tuned)

    def margin(kind: str) -> float:
        return gain_margin if kind == GAIN else forgetting_margin

    benchmarks, categories, subjects = {}, {}, {}
    for bench in dict.fromkeys(b for b, _ in cells):
        kind = _kind(bench)
        keys = [k for k in cells if k[0] == bench]
        benchmarks[bench] = paired_stats(_total([cells[k] for k in keys]), kind, margin(kind))
        subjects[bench] = {s: paired_stats(cells[(bench, s)], kind, margin(kind)) for _, s in keys}
        by_category: dict[str, list[Counts]] = defaultdict(list)
        for _, s in keys:
            by_category[subject_categories[bench][s]].append(cells[(bench, s)])
        categories[bench] = {cat: paired_stats(_total(members), kind, margin(kind))
                             for cat, members in sorted(by_category.items())}
        adjust_family(list(subjects[bench].values()))
        adjust_family(list(categories[bench].values()))

    def pooled(names: Sequence[str], kind: str) -> GroupStats | None:
        members = {k: v for k, v in cells.items() if k[0] in names}
        return pooled_stats(members, kind, margin(kind)) if members else None

    chinese_names, english_names = headline_benchmarks(benchmarks, headline_formulation)
    used = "cloze" if any(b.endswith("_cloze") for b in chinese_names + english_names) else "letter"
    other = "letter" if used == "cloze" else "cloze"
    other_zh, other_en = headline_benchmarks(benchmarks, other)
    secondary = None
    if any(b.endswith("_cloze") == (other == "cloze") and b != "gsm8k" for b in other_zh + other_en):
        secondary = {"formulation": other,
                     "chinese_gain": _figure(pooled(other_zh, GAIN), other_zh, benchmarks, forgetting=False),
                     "english_forgetting": _figure(pooled(other_en, FORGETTING), other_en, benchmarks,
                                                   forgetting=True)}

    notes = _consistency_notes(base, benchmarks, "base") + _consistency_notes(tuned, benchmarks, "tuned")
    if base.summary.get("model") != tuned.summary.get("model"):
        notes.append(f"the runs evaluated different models: {base.summary.get('model')} (base) and "
                     f"{tuned.summary.get('model')} (tuned)")
    return Comparison(base=base, tuned=tuned, benchmarks=benchmarks, categories=categories,
                      subjects=subjects, subject_categories=subject_categories,
                      chinese=pooled(chinese_names, GAIN), english=pooled(english_names, FORGETTING),
                      perplexity=_perplexity(base, tuned), forgetting_margin=forgetting_margin,
                      gain_margin=gain_margin, notes=notes, formulation=used, secondary=secondary)


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


def compare_runs(base_dir: str | Path, tuned_dir: str | Path, *, forgetting_margin: float = FORGETTING_MARGIN,
                 gain_margin: float = GAIN_MARGIN, headline_formulation: str = "auto",
                 output_dir: str | Path | None = None) -> Comparison:
    """Compare a base evaluation with one tuned evaluation; write ``output_dir/comparison.json``.

    ``base_dir`` may be a multi-run folder, whose ``base`` run is used; ``tuned_dir`` must hold
    exactly one run besides a ``base`` one (or name it as ``DIR/<label>``)."""
    tuned = [r for r in load_runs(tuned_dir) if r.label != "base"] or load_runs(tuned_dir)
    if len(tuned) > 1:
        raise UserError(f"{tuned_dir} holds several tuned runs ({', '.join(r.label for r in tuned)}); name one as "
                        f"{Path(tuned_dir) / tuned[0].label}, or use compare_many / several TUNED_DIRs")
    comparison = compare_loaded(load_run(base_dir, prefer="base"), tuned[0],
                                forgetting_margin=forgetting_margin, gain_margin=gain_margin,
                                headline_formulation=headline_formulation)
    if output_dir is not None:
        write_comparison(comparison, Path(output_dir) / "comparison.json")
    return comparison


def compare_many(base_dir: str | Path, tuned_dirs: Sequence[str | Path], *,
                 forgetting_margin: float = FORGETTING_MARGIN, gain_margin: float = GAIN_MARGIN,
                 headline_formulation: str = "auto") -> list[Comparison]:
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
    return [compare_loaded(base, t, forgetting_margin=forgetting_margin, gain_margin=gain_margin,
                           headline_formulation=headline_formulation) for t in tuned_runs]


def write_comparison(comparison: Comparison, path: str | Path) -> Path:
    from zhtune.artifacts import provenance

    return atomic_write_json(path, {**comparison.to_dict(), "provenance": provenance()})


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


# ----------------------------------------------------------------------------------- planning
def _assumed_discordance(accuracy: float) -> float:
    """A single run has no discordance to measure. If the tuned model's right answers were
    independent of the base's at the same accuracy p, a share 2p(1 - p) of questions would differ:
    more than fine-tuning usually changes (it keeps most answers), so the questions planned from it
    are on the safe side."""
    return 2 * accuracy * (1 - accuracy)


def plan_questions(pilot_dir: str | Path, *, tuned_dir: str | Path | None = None, change: float = 2.0,
                   discordance: float | None = None) -> dict:
    """Per benchmark of a pilot evaluation: the questions needed to detect ``change`` points with 80%
    power at two-sided alpha = 0.05 (McNemar's test, Connor 1987), and the minimum detectable change
    at the pilot's own size.

    The discordance (share of questions whose outcome differs between the runs) comes from, in order:
    a pilot comparison (``tuned_dir``, the same questions evaluated after tuning), a given
    ``discordance`` for every benchmark, or the assumption of :func:`_assumed_discordance`."""
    if not 0 < change <= 100:
        raise UserError(f"--change must be in (0, 100] points, got {change}")
    if discordance is not None and not 0 < discordance <= 1:
        raise UserError(f"--discordance must be a share in (0, 1], e.g. 0.15, got {discordance}")
    if discordance is not None and tuned_dir is not None:
        raise UserError("give --tuned (a measured discordance) or --discordance (an assumed one), not both")
    base = load_run(pilot_dir, prefer="base")
    tuned = None
    if tuned_dir is not None:
        candidates = [r for r in load_runs(tuned_dir) if r.label != "base"] or load_runs(tuned_dir)
        if len(candidates) > 1:
            raise UserError(f"{tuned_dir} holds several tuned runs ({', '.join(r.label for r in candidates)}); "
                            f"name one as {Path(tuned_dir) / candidates[0].label}")
        tuned = candidates[0]
        check_comparable(base, tuned)  # a pilot comparison needs the same questions, like compare
    cells, _ = paired_cells(base, tuned or base)
    source = ("observed between the pilot runs" if tuned is not None
              else "given (--discordance)" if discordance is not None
              else "assumed 2p(1 − p): answers after tuning independent of the base's at the base accuracy p")
    rows = []
    for bench in dict.fromkeys(b for b, _ in cells):
        total = _total([v for k, v in cells.items() if k[0] == bench])
        accuracy = total.base_correct / total.n
        psi = ((total.b + total.c) / total.n if tuned is not None
               else discordance if discordance is not None else _assumed_discordance(accuracy))
        mdc = min_detectable_change(total.n, psi, alpha=ALPHA, power=POWER)
        rows.append({"benchmark": bench, "pilot_n": total.n, "base_accuracy": accuracy, "discordance": psi,
                     "min_detectable_change_at_pilot_n": None if mdc is None else 100 * mdc,
                     "questions_needed": questions_needed(change / 100, psi, alpha=ALPHA, power=POWER)})
    return {"pilot": str(base.path), "tuned": str(tuned.path) if tuned else None, "change_points": change,
            "alpha": ALPHA, "power": POWER, "discordance_source": source, "benchmarks": rows,
            "method": "McNemar's test, normal approximation (Connor 1987): n = (z_a sqrt(psi) + z_b sqrt(psi - "
                      "d^2))^2 / d^2 with psi = max(discordance, d); pooled figures need more questions when "
                      "a subject's questions change together."}

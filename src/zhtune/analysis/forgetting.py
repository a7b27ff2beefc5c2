"""The comparison of two evaluation runs: what fine-tuning changed in Chinese and what it forgot.

``compare_loaded`` loads nothing itself: it takes two runs (``zhtune.analysis.runs``), counts each
question's pair of outcomes per (benchmark, subject), computes every figure with the paired
statistics of ``zhtune.analysis.paired`` (benchmarks, categories and subjects, Benjamini-Hochberg
within each benchmark), pools the headline figures of ``zhtune.analysis.figures`` and returns a
:class:`Comparison`, whose ``to_dict()`` is ``comparison.json``: the one file the report, the charts,
the scale trade-off and the sweep read. The methods are in ``docs/statistics.md``. Everything is
deterministic: the same folders give the same comparison.json.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from zhtune.analysis.catalog import floor_accuracy, is_cloze, is_generation, language
from zhtune.analysis.figures import floor_reason, headline_benchmarks, headline_figure
from zhtune.analysis.formatting import format_p, num, signed  # noqa: F401  (kept importable here)
from zhtune.analysis.paired import (ALPHA, CONFIDENCE, POWER, GroupStats, adjust_family, bits_per_character,
                                    largest_changes, paired_stats, pooled_stats)
from zhtune.analysis.planning import plan_questions  # noqa: F401  (kept importable here)
from zhtune.analysis.runs import Counts, EvalRun, check_comparable, load_run, load_runs, paired_cells, total
from zhtune.analysis.stats import FORGETTING, GAIN, LOSS_VERDICTS, mcnemar_exact  # noqa: F401
from zhtune.config import AnalysisConfig
from zhtune.errors import UserError
from zhtune.io import atomic_write_json

STATISTICS_METHOD = (
    "Paired by question key. p: McNemar's exact test (two-sided binomial test of the discordant questions); "
    "for the pooled figures the same test on the effective counts (every count divided by the cluster-robust "
    "design effect: questions clustered by subject, stratified by benchmark; Miller 2024). Intervals: 95% Tango "
    "score intervals for the change in accuracy, on the effective counts for pooled figures, made to agree with "
    "p at 0 (extended to 0 where the exact test does not reject no change), so an interval excludes 0 exactly "
    "when p < 0.05. q: Benjamini-Hochberg adjusted p within each benchmark, separately for subjects and for "
    "categories; a subject or category is called changed only when q < 0.05 (a family of one has q = p, so a "
    "benchmark and its only category agree). Verdicts: forgot / improved / declined when p (q) < 0.05. English "
    "(one-sided non-inferiority test): 'no forgetting beyond the margin' when forgetting of the margin or more is "
    "rejected at one-sided alpha = 0.05 (the 90% interval's lower bound is above minus the margin). Chinese "
    "(two-sided equivalence: the non-inferiority and the non-superiority test, Schuirmann's TOST): 'equivalent "
    "within the margin' when both a gain and a loss of the margin or more are rejected. Otherwise inconclusive. "
    "A benchmark whose base accuracy is within one standard error of chance (or of 0 for generation) is "
    "reported but not pooled into a headline. Minimum detectable change: 80% power, two-sided alpha = 0.05, "
    "McNemar's test at the figure's observed discordance and n (Connor 1987), n divided by the design effect for "
    "pooled figures. Largest subject changes: Benjamini-Yekutieli false-coverage-rate adjusted intervals."
)


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
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    notes: list[str] = field(default_factory=list)
    formulation: str = "letter"  # of the headline figures: "letter" or "cloze"
    headline_names: tuple[list[str], list[str]] = ([], [])  # the benchmarks the two headlines pool
    excluded: dict[str, str] = field(default_factory=dict)  # benchmark -> why it carries no headline
    # The other formulation's pooled figures where the runs have both (a secondary analysis).
    secondary: dict | None = None
    # With benchmarks at their floor: the pooled figures including them, to rank runs (never reported).
    with_floors: dict | None = None

    @property
    def label(self) -> str:
        return self.tuned.label

    @property
    def significant_forgetting(self) -> list[str]:
        """Benchmarks whose accuracy fell (verdict forgot, or declined for a Chinese one)."""
        return [name for name, g in self.benchmarks.items() if g.verdict in LOSS_VERDICTS]

    def headline(self) -> dict:
        """The Chinese and English pooled figures (points, interval, p, verdict), as in comparison.json."""
        zh, en = self.headline_names
        return {"chinese_gain": headline_figure(self.chinese, "chinese_gain", zh, self.benchmarks),
                "english_forgetting": headline_figure(self.english, "english_forgetting", en, self.benchmarks)}

    def to_dict(self) -> dict:
        a = self.analysis
        return {
            "base": self.base.describe(), "tuned": self.tuned.describe(),
            "settings": self.base.settings,
            "settings_fingerprint": self.base.summary.get("settings_fingerprint"),
            "n_questions": len(self.base.predictions),
            "headline_formulation": self.formulation,
            **self.headline(),
            "headline_excluded": self.excluded,
            "pooled_including_floors": self.with_floors,
            "secondary": self.secondary,
            "significant_forgetting": self.significant_forgetting,
            "benchmarks": {k: g.to_dict() for k, g in self.benchmarks.items()},
            "categories": {b: {k: g.to_dict() for k, g in cats.items()} for b, cats in self.categories.items()},
            "subjects": {b: {k: {**g.to_dict(), "category": self.subject_categories[b].get(k)}
                             for k, g in subs.items()} for b, subs in self.subjects.items()},
            "largest_subject_changes": largest_changes(self.subjects),
            "perplexity": self.perplexity,
            "statistics": {"confidence": CONFIDENCE, "equivalence_confidence": "one-sided 95% (90% two-sided)",
                           "alpha": ALPHA, "power": POWER, "forgetting_margin": a.forgetting_margin,
                           "gain_margin": a.gain_margin, "method": STATISTICS_METHOD},
            "notes": self.notes,
        }


def _kind(benchmark: str) -> str:
    """Chinese benchmarks are judged two-sided (did it gain, or lose?), English ones on what they forgot."""
    return GAIN if language(benchmark) == "zh" else FORGETTING


def _pooled_figures(cells: dict[tuple[str, str], Counts], benchmarks: dict[str, GroupStats], formulation: str,
                    analysis: AnalysisConfig) -> tuple[GroupStats | None, GroupStats | None, list[str], list[str],
                                                      dict[str, str]]:
    """The two pooled figures of one formulation, leaving out benchmarks at their floor."""
    zh, en = headline_benchmarks(benchmarks, formulation)
    excluded = {b: reason for b in zh + en if (reason := floor_reason(benchmarks[b]))}
    zh, en = [b for b in zh if b not in excluded], [b for b in en if b not in excluded]

    return _pool(cells, zh, GAIN, analysis), _pool(cells, en, FORGETTING, analysis), zh, en, excluded


def _pool(cells: dict[tuple[str, str], Counts], names: Sequence[str], kind: str,
          analysis: AnalysisConfig) -> GroupStats | None:
    members = {k: v for k, v in cells.items() if k[0] in names}
    margin = analysis.gain_margin if kind == GAIN else analysis.forgetting_margin
    return pooled_stats(members, kind, margin) if members else None


def compare_loaded(base: EvalRun, tuned: EvalRun, analysis: AnalysisConfig | None = None) -> Comparison:
    """Compare two loaded runs (the methods: docs/statistics.md)."""
    analysis = analysis or AnalysisConfig()
    check_comparable(base, tuned)
    cells, subject_categories = paired_cells(base, tuned)
    benchmarks, categories, subjects = {}, {}, {}
    for bench in dict.fromkeys(b for b, _ in cells):
        kind = _kind(bench)
        margin = analysis.gain_margin if kind == GAIN else analysis.forgetting_margin
        keys = [k for k in cells if k[0] == bench]
        benchmarks[bench] = paired_stats(total([cells[k] for k in keys]), kind, margin, floor=floor_accuracy(bench))
        subjects[bench] = {s: paired_stats(cells[(bench, s)], kind, margin) for _, s in keys}
        by_category: dict[str, list[Counts]] = defaultdict(list)
        for _, s in keys:
            by_category[subject_categories[bench][s]].append(cells[(bench, s)])
        categories[bench] = {cat: paired_stats(total(members), kind, margin)
                             for cat, members in sorted(by_category.items())}
        adjust_family(list(subjects[bench].values()))
        adjust_family(list(categories[bench].values()))

    chinese, english, zh, en, excluded = _pooled_figures(cells, benchmarks, analysis.headline_formulation, analysis)
    with_floors = None
    if excluded:  # for ranking runs against each other (the sweep), never a headline: floors included
        all_zh, all_en = headline_benchmarks(benchmarks, analysis.headline_formulation)
        with_floors = {key: headline_figure(_pool(cells, names, kind, analysis), key, names, benchmarks)
                       for key, names, kind in (("chinese_gain", all_zh, GAIN), ("english_forgetting", all_en, FORGETTING))}
    used = "cloze" if any(is_cloze(b) for b in sum(headline_benchmarks(benchmarks, analysis.headline_formulation),
                                                   [])) else "letter"
    other = "letter" if used == "cloze" else "cloze"
    secondary = None
    if any(is_cloze(b) == (other == "cloze") and not is_generation(b) for b in benchmarks):
        s_zh, s_en, s_zh_names, s_en_names, s_excluded = _pooled_figures(cells, benchmarks, other, analysis)
        excluded.update(s_excluded)
        secondary = {"formulation": other,
                     "chinese_gain": headline_figure(s_zh, "chinese_gain", s_zh_names, benchmarks),
                     "english_forgetting": headline_figure(s_en, "english_forgetting", s_en_names, benchmarks)}

    notes = _consistency_notes(base, benchmarks, "base") + _consistency_notes(tuned, benchmarks, "tuned")
    if base.summary.get("model") != tuned.summary.get("model"):
        notes.append(f"the runs evaluated different models: {base.summary.get('model')} (base) and "
                     f"{tuned.summary.get('model')} (tuned)")
    return Comparison(base=base, tuned=tuned, benchmarks=benchmarks, categories=categories, subjects=subjects,
                      subject_categories=subject_categories, chinese=chinese, english=english,
                      perplexity=bits_per_character(base.summary, tuned.summary), analysis=analysis, notes=notes,
                      formulation=used, headline_names=(zh, en), excluded=excluded, secondary=secondary,
                      with_floors=with_floors)


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


def compare_runs(base_dir: str | Path, tuned_dir: str | Path, analysis: AnalysisConfig | None = None, *,
                 output_dir: str | Path | None = None) -> Comparison:
    """Compare a base evaluation with one tuned evaluation; write ``output_dir/comparison.json``.

    ``base_dir`` may be a multi-run folder, whose ``base`` run is used; ``tuned_dir`` must hold
    exactly one run besides a ``base`` one (or name it as ``DIR/<label>``)."""
    tuned = [r for r in load_runs(tuned_dir) if r.label != "base"] or load_runs(tuned_dir)
    if len(tuned) > 1:
        raise UserError(f"{tuned_dir} holds several tuned runs ({', '.join(r.label for r in tuned)}); name one as "
                        f"{Path(tuned_dir) / tuned[0].label}, or use compare_many / several TUNED_DIRs")
    comparison = compare_loaded(load_run(base_dir, prefer="base"), tuned[0], analysis)
    if output_dir is not None:
        write_comparison(comparison, Path(output_dir) / "comparison.json")
    return comparison


def compare_many(base_dir: str | Path, tuned_dirs: Sequence[str | Path],
                 analysis: AnalysisConfig | None = None) -> list[Comparison]:
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
    return [compare_loaded(base, t, analysis) for t in tuned_runs]


def write_comparison(comparison: Comparison, path: str | Path) -> Path:
    from zhtune.artifacts import provenance

    return atomic_write_json(path, {**comparison.to_dict(), "provenance": provenance()})


def safe_name(label: str) -> str:
    """A label as a folder name (labels may hold '@' and '.', which are fine, but not '/')."""
    name = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in label).strip(".")
    return name or "run"

"""Paired statistics of one set of questions (a subject, category, benchmark or pooled group).

Every figure comes from one procedure (see ``docs/statistics.md``): its p is McNemar's exact test of
no change (for pooled figures on the effective counts, divided by the cluster design effect), its
95% interval is :func:`zhtune.analysis.stats.paired_interval` (Tango's score interval, agreeing with
that p at 0), and its verdict is decided by that p (or its Benjamini-Hochberg q within a family)
and by the p of the margin test (non-inferiority for English, TOST for Chinese), whose bound is the
one-sided 95% bound the figure prints. A benchmark and a category holding the same questions
therefore get the same verdict (a family of one has q = p).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from zhtune.analysis.runs import Counts, total
from zhtune.analysis.stats import (FORGETTING, LOSS_VERDICTS, bh_qvalues, cluster_design_effect, equivalence_p,
                                   fcr_confidence, fewest_changes_for_significance, mcnemar_exact,
                                   min_detectable_change, paired_interval, paired_ratio_interval, questions_needed,
                                   verdict)

CONFIDENCE = 0.95
ALPHA = 0.05  # p (or BH q) below it: a change; margin p below it: within the margin
POWER = 0.80
METHOD_SCORE = "Tango score interval for paired proportions, agreeing with McNemar's exact test at 0"
METHOD_CLUSTERED = ("Tango score interval on the effective sample size: cluster-robust design effect "
                    "(questions clustered by subject, stratified by benchmark, t with subjects - benchmarks df), "
                    "agreeing with the exact test of the effective counts at 0")
P_METHOD = "McNemar's exact test (two-sided binomial test of the discordant questions)"
P_METHOD_CLUSTERED = "McNemar's exact test on the effective counts (counts divided by the design effect)"


def _points(fraction: Any) -> float:
    """A fraction as points, rounded to drop float noise (-1e-14 is zero, not a loss)."""
    return round(100.0 * float(fraction), 9) + 0.0


@dataclass
class GroupStats:
    """Base vs tuned on one set of questions."""

    counts: Counts
    kind: str  # FORGETTING (English: one-sided margin test) or GAIN (Chinese: two-sided)
    margin: float  # points
    ci_low: float  # points, change tuned - base, 95% interval
    ci_high: float
    bound_low: float  # points, one-sided 95% bounds (the 90% two-sided interval)
    bound_high: float
    p_value: float  # McNemar's exact p (effective counts for pooled figures)
    margin_p: float  # p of the margin test: non-inferiority (English) or TOST (Chinese)
    method: str
    design_effect: float = 1.0  # > 1 for pooled figures whose subjects change together
    mcnemar_p: float | None = None  # pooled figures: the exact p ignoring clustering (reference only)
    q_value: float | None = None  # BH-adjusted p, for subjects and categories
    equivalence_q: float | None = None  # BH-adjusted margin p, likewise
    family_size: int = 1  # subjects (or categories) of the benchmark the q-values adjust over
    floor: float | None = None  # benchmarks: the accuracy of no ability (chance, or 0 for generation)

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
    def significant(self) -> bool:
        """The test of no change rejects: p < ALPHA, or q < ALPHA within a family."""
        return (self.q_value if self.q_value is not None else self.p_value) < ALPHA

    @property
    def verdict(self) -> str:
        eq = self.equivalence_q if self.equivalence_q is not None else self.margin_p
        return verdict(self.change_points, self.ci_low, self.ci_high, self.bound_low, self.bound_high, self.margin,
                       kind=self.kind, significant=self.significant, equivalent=eq < ALPHA)

    @property
    def min_detectable_change(self) -> float | None:
        """Points; at the effective number of questions for pooled figures."""
        mdc = min_detectable_change(self.n / self.design_effect, self.discordance, alpha=ALPHA, power=POWER)
        return None if mdc is None else 100.0 * mdc

    @property
    def questions_for_margin(self) -> int | None:
        needed = questions_needed(self.margin / 100.0, self.discordance, alpha=ALPHA, power=POWER)
        return None if needed is None else math.ceil(needed * self.design_effect)

    @property
    def fewest_changes_to_flag(self) -> int:
        """Questions that must change, all one way, before this figure can be called changed; in a family
        of m, a lone flag needs BH's strictest threshold alpha / m."""
        return fewest_changes_for_significance(ALPHA / self.family_size)

    def to_dict(self) -> dict:
        """The figure as comparison.json holds it (headline figures add their own orientation)."""
        base, tuned, v = self.base_accuracy, self.tuned_accuracy, self.verdict
        fewest = self.fewest_changes_to_flag
        out = {
            "n": self.n, "base_accuracy": base, "tuned_accuracy": tuned,
            "change_points": self.change_points, "estimate": self.change_points,
            "relative_change": (tuned - base) / base if base else None,
            "retention": tuned / base if base else None,
            "ci_low": self.ci_low, "ci_high": self.ci_high, "interval": [self.ci_low, self.ci_high],
            "confidence": CONFIDENCE, "one_sided_bounds": [self.bound_low, self.bound_high],
            "method": self.method, "p_value": self.p_value,
            "p_method": P_METHOD_CLUSTERED if self.method == METHOD_CLUSTERED else P_METHOD,
            "margin_p": self.margin_p,
            "margin_test": "non-inferiority (one-sided)" if self.kind == FORGETTING else
                           "equivalence (TOST: non-inferiority and non-superiority)",
        }
        if self.q_value is not None:
            out.update(q_value=self.q_value, equivalence_q=self.equivalence_q, family_size=self.family_size)
        out.update({
            "verdict": v, "verdict_about": self.kind, "margin": self.margin,
            "min_detectable_change": self.min_detectable_change, "discordance": self.discordance,
            "questions_for_margin": self.questions_for_margin,
            "fewest_changes_to_flag": fewest, "can_reach_significance": self.n * 1.0 / self.design_effect >= fewest,
            "base_right_tuned_wrong": self.b, "base_wrong_tuned_right": self.c,
            "significant_forgetting": v in LOSS_VERDICTS, "significant_gain": v == "improved",
        })
        if self.method == METHOD_CLUSTERED:
            out.update(design_effect=self.design_effect, mcnemar_exact_p=self.mcnemar_p)
        if self.floor is not None:
            # The sample standard error (n - 1, as lm-eval reports it): one right answer of n is then
            # exactly one standard error above 0, so a generative benchmark needs two to carry a headline.
            se = math.sqrt(base * (1 - base) / max(self.n - 1, 1))
            out.update(floor_accuracy=self.floor, headroom_points=_points(base - self.floor),
                       headroom_se_points=_points(se), at_floor=base - self.floor <= se + 1e-12)
        return out


def _group(counts: Counts, kind: str, margin: float, *, deff: float = 1.0, method: str = METHOD_SCORE,
           mcnemar_p: float | None = None) -> GroupStats:
    """The statistics of (possibly effective) counts: interval, bounds, exact p and margin p."""
    b, c, n = counts.b / deff, counts.c / deff, counts.n / deff
    low, high = paired_interval(b, c, n, CONFIDENCE)
    low90, high90 = paired_interval(b, c, n, 1 - 2 * ALPHA)
    return GroupStats(counts=counts, kind=kind, margin=margin, ci_low=_points(low), ci_high=_points(high),
                      bound_low=_points(low90), bound_high=_points(high90), p_value=float(mcnemar_exact(b, c)),
                      margin_p=float(equivalence_p(b, c, n, margin / 100.0, kind=kind)), method=method,
                      design_effect=deff, mcnemar_p=mcnemar_p)


def paired_stats(counts: Counts, kind: str, margin: float, *, floor: float | None = None) -> GroupStats:
    """One subject, category or benchmark (``floor``: a benchmark's accuracy of no ability)."""
    g = _group(counts, kind, margin)
    g.floor = floor
    return g


def pooled_stats(cells: dict[tuple[str, str], Counts], kind: str, margin: float) -> GroupStats:
    """Several benchmarks pooled, questions clustered by subject and stratified by benchmark."""
    keys = list(cells)
    stratum = np.array([bench for bench, _ in keys])
    n, b, c = (np.array([getattr(cells[k], f) for k in keys], dtype=float) for f in ("n", "b", "c"))
    deff = float(cluster_design_effect(stratum, n, b, c, CONFIDENCE))
    counts = total(list(cells.values()))
    return _group(counts, kind, margin, deff=deff, method=METHOD_CLUSTERED,
                  mcnemar_p=float(mcnemar_exact(counts.b, counts.c)))


def adjust_family(groups: Sequence[GroupStats]) -> None:
    """Benjamini-Hochberg within one family (a benchmark's subjects, or its categories): the q of the
    exact p for the forgot / improved / declined flags, and the q of the margin p for the within-the-
    margin verdict, so neither kind of claim is made by chance among many subjects."""
    if not groups:
        return
    q = bh_qvalues(np.array([g.p_value for g in groups]))
    eq_q = bh_qvalues(np.array([g.margin_p for g in groups]))
    for g, qv, eqv in zip(groups, q, eq_q, strict=True):
        g.q_value, g.equivalence_q, g.family_size = float(qv), float(eqv), len(groups)


def largest_changes(subjects: dict[str, dict[str, GroupStats]], top: int = 10) -> dict:
    """The ``top`` largest subject gains and losses over every benchmark, with false-coverage-rate
    adjusted intervals (Benjamini & Yekutieli 2005): choosing the largest of many changes to show
    selects the ones noise pushed furthest, and intervals at 1 - shown * alpha / subjects keep the
    expected share of shown intervals that miss at most alpha. "Changed" is that interval excluding 0
    (the exact p below its level)."""
    every = [(bench, s, g) for bench, subs in subjects.items() for s, g in subs.items()]
    moved = sorted((r for r in every if r[2].change_points != 0), key=lambda r: (r[2].change_points, r[0], r[1]))
    shown = moved[::-1] if len(moved) <= 2 * top else moved[:-top - 1:-1] + moved[:top]
    level = fcr_confidence(len(shown), len(every), ALPHA)
    rows = []
    for bench, s, g in shown:
        low, high = paired_interval(g.b, g.c, g.n, level)
        rows.append({"benchmark": bench, "subject": s, "n": g.n, "base_accuracy": g.base_accuracy,
                     "tuned_accuracy": g.tuned_accuracy, "change_points": g.change_points,
                     "ci_low": _points(low), "ci_high": _points(high), "p_value": g.p_value,
                     "changed": g.p_value < 1 - level})
    return {"confidence": level, "shown": len(shown), "subjects": len(every), "changed_subjects": len(moved),
            "method": "Benjamini-Yekutieli false-coverage-rate adjusted intervals (level 1 - shown x 0.05 / "
                      "subjects), the selection being the largest gains and losses", "rows": rows}


def bits_per_character(base_summary: dict, tuned_summary: dict) -> dict[str, dict]:
    """Bits per character on each held-out text probe (zh, en, and any other the runs recorded): lower
    is better; ratio = tuned / base. Where both runs recorded per-text bits of the same texts, the
    paired 95% intervals over texts of the change and of the relative change (ratio estimators)."""
    out = {}
    bp, tp = base_summary.get("perplexity") or {}, tuned_summary.get("perplexity") or {}
    for lang in sorted(set(bp) & set(tp), key=lambda x: (x not in ("zh", "en"), x != "zh", x)):  # zh, en first
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
    if not base_texts or not tuned_texts or [c for c, _ in base_texts] != [c for c, _ in tuned_texts]:
        return {}
    r = paired_ratio_interval([b for _, b in base_texts], [t for _, t in tuned_texts], [c for c, _ in base_texts])
    if r["change"] is None:
        return {}
    word = "lower" if r["high"] < 0 else "higher" if r["low"] > 0 else "no significant change"
    return {"change_low": r["low"], "change_high": r["high"], "p": r["p"], "texts": r["units"],
            "relative_change": r["relative"], "relative_low": r["relative_low"],
            "relative_high": r["relative_high"], "verdict": word}

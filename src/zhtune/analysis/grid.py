"""Which setting of a LoRA grid is best, with evidence: settings compared with each other, paired.

Every adapter of a sweep answers the same questions, so two settings are compared question by
question, like a base model with its tuned one: the paired 2x2 table of (setting A right?, setting
B right?) per subject, the change A - B with Tango's score interval widened by the cluster-robust
design effect (questions clustered by subject, stratified by benchmark: ``stats.clustered_interval``).

**Which is best** (Hsu 1984, multiple comparisons with the best, with Bonferroni's critical value,
which needs no assumption about how the comparisons correlate). With k settings, every ordered pair
(s, t) gets the one-sided lower bound L_st of "s better than t" at level alpha / (k - 1) (the
two-sided interval at 1 - 2 alpha / (k - 1)). Then, family-wise at alpha:

- **the best** is named only when one setting s beats every other: L_st > 0 for every t (better,
  with the multiplicity over the grid controlled) and its estimated advantage is at least the margin
  (better by an amount that matters). At most one setting can pass, and the wrong one passes with
  probability at most alpha.
- **the confidence set for the best**: the settings no other setting beats (no t with L_ts > 0). It
  holds the truly best setting with probability at least 1 - alpha. When no best is named, these are
  the settings that cannot be told apart at this number of questions; each comes with the questions
  that would separate it from the strongest other member (McNemar's power, as ``zhtune plan``).

Nothing is decided by order: settings with the same estimate are listed together, and the decision
does not change when the settings are listed in another order.

**What each factor does** (a grid axis such as lora.rank): per level, the Chinese gain and English
forgetting averaged over the settings at that level (each question's correctness averaged over them,
so the other factors are averaged out on a full grid), and the change against the first level, each
with the clustered Tango interval on fractional paired counts (never of zero width) and BH q-values
over the contrasts of one figure.

Functions take per-question arrays and broadcast over leading axes, so the simulation tests run
hundreds of grids at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from zhtune.analysis.stats import (bh_qvalues, clustered_interval, clustered_score_p, questions_needed,
                                   tango_interval)
from zhtune.errors import UserError

ALPHA = 0.05  # family-wise error of the grid's decision
POWER = 0.80  # of the questions that would separate two settings
CRITERIA = {  # criterion -> (language of its questions, what it is called, the direction of "better")
    "chinese_gain": ("zh", "Chinese gain", "more Chinese gain"),
    "english_forgetting": ("en", "English forgetting", "less English forgetting"),
}
METHOD = ("Settings compared pairwise on the same questions: paired change in accuracy, Tango score "
          "interval widened by the cluster-robust design effect (questions clustered by subject, "
          "stratified by benchmark). Multiplicity: Hsu's multiple comparisons with the best with "
          "Bonferroni's critical value (one-sided alpha / (k - 1) per comparison, family-wise alpha = "
          f"{ALPHA}). A best setting is named only when it beats every other (simultaneous lower bound "
          "> 0) by at least the margin in estimate; the confidence set holds the settings no other one "
          "beats. Questions to separate: McNemar's test at the same alpha, 80% power, at the pair's "
          "discordance, times its design effect.")


# ----------------------------------------------------------------------------------- answers
@dataclass
class Answers:
    """Per-question correctness of every setting (and the base model) on the same questions."""

    settings: list[str]
    correct: np.ndarray  # (k, n) bool: setting s answered question i right
    subject: np.ndarray  # (n,) the cluster of each question, unique across benchmarks ("ceval/law")
    benchmark: np.ndarray  # (n,) the stratum of each question
    base: np.ndarray | None = None  # (n,) bool: the base model answered question i right

    def __post_init__(self):
        self.correct = np.asarray(self.correct, dtype=bool)
        self.subject, self.benchmark = np.asarray(self.subject), np.asarray(self.benchmark)
        k, n = self.correct.shape
        if k != len(self.settings) or len(set(self.settings)) != k:
            raise UserError(f"grid: {k} rows of answers for settings {self.settings} (names must be unique)")
        if self.subject.shape != (n,) or self.benchmark.shape != (n,) or (
                self.base is not None and np.shape(self.base) != (n,)):
            raise UserError("grid: subject, benchmark and base need one entry per question")

    def only(self, benchmarks: Sequence[str]) -> "Answers":
        """The questions of ``benchmarks``."""
        keep = np.isin(self.benchmark, list(benchmarks))
        return Answers(self.settings, self.correct[:, keep], self.subject[keep], self.benchmark[keep],
                       None if self.base is None else np.asarray(self.base, dtype=bool)[keep])


def clusters(subject: np.ndarray, benchmark: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each question's cluster index and each cluster's stratum (its benchmark)."""
    keys = np.array([f"{b}\x00{s}" for b, s in zip(benchmark, subject)])
    names, index = np.unique(keys, return_inverse=True)
    return index, np.array([name.split("\x00", 1)[0] for name in names])


# ----------------------------------------------------------------------------------- pairwise
def pairwise(correct: np.ndarray, cluster: np.ndarray, strata: np.ndarray, confidence: float) -> dict:
    """Every ordered pair (s, t) of settings compared on the same questions.

    ``correct``: (..., k, n) bool; ``cluster``: (n,) cluster index; ``strata``: (G,) each cluster's
    benchmark. Returns arrays of shape (..., k, k), in points where a change: ``advantage`` (accuracy
    of s minus t), ``low``/``high`` (the two-sided interval at ``confidence``), ``p`` (two-sided score
    test on the effective counts), ``design_effect``, ``discordance`` (share of questions on which s
    and t differ), and ``n`` (questions)."""
    y = np.asarray(correct, dtype=float)
    groups = len(strata)
    members = [y[..., cluster == g] for g in range(groups)]  # (..., k, questions of cluster g)
    right = np.stack([yg.sum(axis=-1) for yg in members], axis=-1)  # (..., k, G)
    both = np.stack([yg @ np.swapaxes(yg, -1, -2) for yg in members], axis=-1)  # (..., k, k, G): both right
    only_s = right[..., :, None, :] - both  # s right, t wrong
    only_t = np.swapaxes(only_s, -2, -3)  # t right, s wrong
    size = np.bincount(cluster, minlength=groups).astype(float)
    n = np.broadcast_to(size, only_s.shape)
    low, high, deff = clustered_interval(strata, n, only_t, only_s, confidence)
    b, c, total = only_t.sum(axis=-1), only_s.sum(axis=-1), float(size.sum())
    return {"advantage": 100 * (c - b) / total, "low": 100 * low, "high": 100 * high,
            "p": clustered_score_p(b, c, deff), "design_effect": deff, "discordance": (b + c) / total,
            "n": total}


def decide(advantage: np.ndarray, low: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """From the pairwise advantages and simultaneous lower bounds (..., k, k), in points: which setting
    is named best (a (..., k) one-hot, or all False) and the confidence set for the best (..., k)."""
    k = advantage.shape[-1]
    other = ~np.eye(k, dtype=bool)
    beats = (low > 0) & other  # s beats t, multiplicity controlled
    named = np.all(~other | (beats & (advantage >= margin - 1e-9)), axis=-1)
    beaten = np.any(np.swapaxes(beats, -1, -2), axis=-1)  # some t beats s
    return named & (k > 1), ~beaten


def simultaneous_confidence(k: int, alpha: float = ALPHA) -> float:
    """The two-sided confidence of each pairwise interval whose lower bound is one-sided alpha/(k-1)."""
    return 1 - 2 * alpha / max(k - 1, 1)


def best_decisions(correct: np.ndarray, subject: np.ndarray, benchmark: np.ndarray, margin: float,
                   alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The decision alone, vectorised over simulated grids: ``correct`` (..., k, n) -> (named best
    one-hot (..., k), confidence set (..., k)). ``margin`` in points."""
    cluster, strata = clusters(subject, benchmark)
    pw = pairwise(correct, cluster, strata, simultaneous_confidence(np.shape(correct)[-2], alpha))
    return decide(pw["advantage"], pw["low"], margin)


# ----------------------------------------------------------------------------------- the verdict
@dataclass
class GridVerdict:
    """The grid's answer on one criterion: everything results.md says and sweep.json records."""

    criterion: str
    margin: float  # points
    settings: list[str]
    n_questions: int
    score: dict[str, float]  # accuracy on the criterion's questions, points (the ranking quantity)
    best: str | None
    confidence_set: list[str]  # highest estimate first; equal estimates share a place (see leaders)
    leaders: list[str]  # the settings with the highest estimate (several when tied)
    separation: list[dict]  # per confidence-set member: its strongest rival and questions to separate
    pairs: list[dict]  # every unordered pair once
    simultaneous_confidence: float
    alpha: float = ALPHA
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return CRITERIA[self.criterion][1]

    def sentence(self) -> str:
        """The conclusion in one sentence."""
        better = CRITERIA[self.criterion][2]
        if len(self.settings) < 2:
            return "One setting finished: there is nothing to compare it with."
        if self.best is not None:
            rival = self.separation[0]
            return (f"Best setting: {self.best}. It has {better} than every other setting, beyond the "
                    f"margin of {self.margin:g} points (closest: {rival['rival']}, "
                    f"{_signed(rival['advantage'])} points, simultaneous interval "
                    f"[{_signed(rival['low'])}, {_signed(rival['high'])}]), family-wise alpha {self.alpha:g} "
                    f"over {len(self.settings)} settings.")
        tied = "" if len(self.leaders) == 1 else f" ({len(self.leaders)} share the highest estimate)"
        return (f"No setting is distinguishable at this number of questions ({self.n_questions}): "
                f"{len(self.confidence_set)} of {len(self.settings)} settings cannot be told apart from the "
                f"best{tied} on {self.label} (family-wise alpha {self.alpha:g}, margin "
                f"{self.margin:g} points).")

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "margin_points": self.margin, "alpha": self.alpha,
                "simultaneous_confidence": self.simultaneous_confidence, "n_questions": self.n_questions,
                "conclusion": self.sentence(), "best": self.best, "confidence_set": self.confidence_set,
                "leaders": self.leaders, "accuracy_points": self.score, "separation": self.separation,
                "pairs": self.pairs, "method": METHOD, "notes": self.notes}


def compare_settings(answers: Answers, criterion: str, margin: float, alpha: float = ALPHA) -> GridVerdict:
    """The grid's verdict on ``criterion`` from the answers to the criterion's questions only (see
    the module docstring). ``margin`` in points."""
    if criterion not in CRITERIA:
        raise UserError(f"sweep criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    names, k = list(answers.settings), len(answers.settings)
    n = answers.correct.shape[1]
    if n == 0:
        raise UserError(f"grid: no questions for {CRITERIA[criterion][1]}")
    score = {s: 100 * float(answers.correct[i].mean()) for i, s in enumerate(names)}
    conf = simultaneous_confidence(k, alpha)
    if k < 2:
        return GridVerdict(criterion, margin, names, n, score, None, names, names, [], [], conf, alpha)
    cluster, strata = clusters(answers.subject, answers.benchmark)
    pw = pairwise(answers.correct, cluster, strata, conf)
    named, in_set = decide(pw["advantage"], pw["low"], margin)
    top = max(score.values())
    leaders = sorted(s for s in names if score[s] == top)
    members = sorted((s for i, s in enumerate(names) if in_set[i]), key=lambda s: (-score[s], s))
    pairs = [_pair(pw, i, j, names) for i in range(k) for j in range(i + 1, k)]
    separation = []
    for s in members:
        i = names.index(s)
        # The strongest other setting; among equals, each is reported (none is preferred by order).
        rival_score = max(score[t] for t in names if t != s)
        rivals = [_separation(pw, i, names.index(t), names, margin, alpha, k)
                  for t in sorted(t for t in names if t != s and score[t] == rival_score)]
        # Among rivals with the same estimate, the one needing the most questions (the answer for all
        # of them); the name only orders equal rows for display.
        hardest = max(rivals, key=lambda r: (r["questions_to_separate"] or 0, -r["low"]))
        separation.append({**hardest, "rivals_tied": len(rivals) - 1})
    best = names[int(np.argmax(named))] if named.any() else None
    if best is not None:  # its closest rival first
        separation = [r for r in separation if r["setting"] == best]
    return GridVerdict(criterion, margin, names, n, score, best, members, leaders, separation, pairs, conf, alpha)


def _pair(pw: dict, i: int, j: int, names: list[str]) -> dict:
    return {"a": names[i], "b": names[j], "advantage_a_minus_b": float(pw["advantage"][i, j]),
            "low": float(pw["low"][i, j]), "high": float(pw["high"][i, j]), "p": float(pw["p"][i, j]),
            "discordance": float(pw["discordance"][i, j]), "design_effect": float(pw["design_effect"][i, j])}


def _separation(pw: dict, i: int, j: int, names: list[str], margin: float, alpha: float, k: int) -> dict:
    """How many questions (of the criterion's benchmarks) would separate setting i from j: the
    difference to detect is the larger of the observed one and the margin, at the per-comparison
    alpha of the decision (one-sided alpha / (k - 1), i.e. two-sided 2 alpha / (k - 1))."""
    advantage = float(pw["advantage"][i, j])
    target = max(abs(advantage), margin)
    deff, psi = float(pw["design_effect"][i, j]), float(pw["discordance"][i, j])
    effective = questions_needed(target / 100, psi, alpha=2 * alpha / (k - 1), power=POWER) if target > 0 else None
    return {"setting": names[i], "rival": names[j], "advantage": advantage, "low": float(pw["low"][i, j]),
            "high": float(pw["high"][i, j]), "discordance": psi, "design_effect": deff,
            "difference_to_detect": target,
            "questions_to_separate": None if effective is None else int(np.ceil(effective * deff))}


# ----------------------------------------------------------------------------------- factors
def factor_levels(values: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Grid axes with at least two levels, each level in the order of first appearance."""
    axes: dict[str, list[Any]] = {}
    for point in values:
        for key, value in point.items():
            levels = axes.setdefault(key, [])
            if value not in levels:
                levels.append(value)
    return {k: v for k, v in axes.items() if len(v) > 1}


def _paired_figure(before: np.ndarray, after: np.ndarray, cluster: np.ndarray, strata: np.ndarray,
                   sign: float) -> dict:
    """The change after - before (per-question shares of right answers, each in [0, 1]) in points in
    the figure's direction, with the clustered 95% Tango interval on fractional paired counts:
    b = sum before (1 - after), c = sum after (1 - before), so that c - b is the change exactly and
    b + c the discordance of one setting drawn from each side (at least the variance of the averaged
    change: conservative). Like every interval of the project it never has zero width."""
    groups = len(strata)
    n = np.bincount(cluster, minlength=groups).astype(float)
    b = np.bincount(cluster, weights=before * (1 - after), minlength=groups)
    c = np.bincount(cluster, weights=after * (1 - before), minlength=groups)
    low, high, deff = clustered_interval(strata, n, b, c, 0.95)
    change = (c.sum() - b.sum()) / n.sum()
    lo, hi = sorted((sign * 100 * float(low), sign * 100 * float(high)))
    return {"change": sign * 100 * float(change) + 0.0, "low": lo + 0.0, "high": hi + 0.0,
            "p": float(clustered_score_p(b.sum(), c.sum(), deff)), "design_effect": float(deff)}


def level_effects(answers: Answers, values: Sequence[dict[str, Any]], *, sign: float) -> list[dict]:
    """Per factor and level: the figure (``sign`` +1 for a gain tuned - base, -1 for forgetting
    base - tuned) averaged over the settings at that level, and its change against the first level,
    in points with 95% intervals (clustered by subject) and BH q over the figure's contrasts."""
    if answers.base is None:
        raise UserError("grid: the factor effects need the base model's answers")
    cluster, strata = clusters(answers.subject, answers.benchmark)
    base = np.asarray(answers.base, dtype=float)
    rows = []
    for factor, levels in factor_levels(values).items():
        share = {}
        for level in levels:
            members = [i for i, v in enumerate(values) if v.get(factor) == level]
            share[level] = answers.correct[members].mean(axis=0)  # each question's share of right answers
        for level in levels:
            vs_ref = (None if level == levels[0]
                      else _paired_figure(share[levels[0]], share[level], cluster, strata, sign))
            rows.append({"factor": factor, "level": level,
                         "settings": sum(v.get(factor) == level for v in values),
                         **_paired_figure(base, share[level], cluster, strata, sign),
                         "reference": levels[0], "vs_reference": vs_ref})
    contrasts = [r["vs_reference"] for r in rows if r["vs_reference"]]
    for r, q in zip(contrasts, bh_qvalues(np.array([c["p"] for c in contrasts], dtype=float))):
        r["q"] = float(q)
    return rows


def factor_effects(answers: Answers, values: Sequence[dict[str, Any]], chinese: Sequence[str],
                   english: Sequence[str]) -> dict[str, list[dict]]:
    """``{"chinese_gain": [...], "english_forgetting": [...]}`` from :func:`level_effects` on the
    Chinese and English benchmarks of the headline figures."""
    out = {}
    if chinese:
        out["chinese_gain"] = level_effects(answers.only(chinese), values, sign=1.0)
    if english:
        out["english_forgetting"] = level_effects(answers.only(english), values, sign=-1.0)
    return out


def balanced(values: Sequence[dict[str, Any]]) -> bool:
    """True for a full grid (every combination of the levels once): then a level's average
    averages the other factors out."""
    levels = factor_levels(values)
    combos = {tuple(v.get(f) for f in levels) for v in values}
    return len(combos) == len(values) == int(np.prod([len(x) for x in levels.values()] or [1]))


# ----------------------------------------------------------------------------------- probes
def probe_interval(base_accuracy: float, accuracy: float, n: int) -> tuple[float, float]:
    """A 95% interval (points) for a change in accuracy measured on the same ``n`` probe questions
    when only the two accuracies are known (probes record no per-question answers): Tango's interval
    at the largest discordance the accuracies allow, the widest one they are consistent with."""
    if n <= 0:
        return (float("nan"), float("nan"))
    diff = round((accuracy - base_accuracy) * n)
    discordant = round(n * min(base_accuracy + accuracy, 2 - base_accuracy - accuracy))
    discordant = max(discordant, abs(diff))
    low, high = tango_interval((discordant - diff) / 2, (discordant + diff) / 2, n)
    return 100 * float(low), 100 * float(high)


def _signed(x: float) -> str:
    text = f"{x:+.1f}"
    return text[1:] if float(text) == 0 else text.replace("-", "−")

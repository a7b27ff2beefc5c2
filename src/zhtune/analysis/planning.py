"""Planning: how many questions a margin needs, and what each level of a comparison can detect.

Power comes from McNemar's test in Connor's (1987) normal approximation, at the share of questions
whose outcome differs (the discordance). A pooled figure's questions are clustered by subject, so its
power is that of n / design effect questions: the design effect is measured on a pilot comparison
(``--tuned``) or assumed (``--design-effect``, 1 when not given, which is optimistic).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from zhtune.analysis.catalog import language
from zhtune.analysis.figures import headline_benchmarks
from zhtune.analysis.paired import ALPHA, POWER
from zhtune.analysis.runs import check_comparable, load_run, load_runs, paired_cells, total
from zhtune.analysis.stats import cluster_design_effect, min_detectable_change, questions_needed
from zhtune.errors import UserError


def _assumed_discordance(accuracy: float) -> float:
    """A single run has no discordance to measure. If the tuned model's right answers were
    independent of the base's at the same accuracy p, a share 2p(1 - p) of questions would differ:
    more than fine-tuning usually changes (it keeps most answers), so the questions planned from it
    are on the safe side."""
    return 2 * accuracy * (1 - accuracy)


def _row(name: str, n: int, accuracy: float, psi: float, change: float, deff: float) -> dict:
    mdc = min_detectable_change(n / deff, psi, alpha=ALPHA, power=POWER)
    needed = questions_needed(change / 100, psi, alpha=ALPHA, power=POWER)
    return {"benchmark": name, "pilot_n": n, "base_accuracy": accuracy, "discordance": psi, "design_effect": deff,
            "min_detectable_change_at_pilot_n": None if mdc is None else 100 * mdc,
            "questions_needed": None if needed is None else math.ceil(needed * deff)}


def plan_questions(pilot_dir: str | Path, *, tuned_dir: str | Path | None = None, change: float = 2.0,
                   discordance: float | None = None, design_effect: float | None = None,
                   headline_formulation: str = "auto") -> dict:
    """Per benchmark of a pilot evaluation, and for the pooled Chinese and English figures: the questions
    needed to detect ``change`` points with 80% power at two-sided alpha = 0.05, and the minimum
    detectable change at the pilot's own size.

    The discordance comes from, in order: a pilot comparison (``tuned_dir``, the same questions
    evaluated after tuning), a given ``discordance`` for every benchmark, or the assumption of
    :func:`_assumed_discordance`. The pooled figures' design effect: measured on the pilot comparison,
    else ``design_effect``, else 1."""
    if not 0 < change <= 100:
        raise UserError(f"--change must be in (0, 100] points, got {change}")
    if discordance is not None and not 0 < discordance <= 1:
        raise UserError(f"--discordance must be a share in (0, 1], e.g. 0.15, got {discordance}")
    if discordance is not None and tuned_dir is not None:
        raise UserError("give --tuned (a measured discordance) or --discordance (an assumed one), not both")
    if design_effect is not None and design_effect < 1:
        raise UserError(f"--design-effect must be 1 or more, got {design_effect}")
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

    def share(counts) -> float:
        if tuned is not None:
            return (counts.b + counts.c) / counts.n
        return discordance if discordance is not None else _assumed_discordance(counts.base_correct / counts.n)

    rows = []
    for bench in dict.fromkeys(b for b, _ in cells):
        t = total([v for k, v in cells.items() if k[0] == bench])
        rows.append(_row(bench, t.n, t.base_correct / t.n, share(t), change, 1.0))
    pooled = []
    for lang, names in zip(("zh", "en"), headline_benchmarks([b for b, _ in cells], headline_formulation),
                           strict=True):
        members = {k: v for k, v in cells.items() if k[0] in names}
        if not members:
            continue
        t = total(list(members.values()))
        if tuned is not None:
            keys = list(members)
            n, b, c = (np.array([getattr(members[k], f) for k in keys], dtype=float) for f in ("n", "b", "c"))
            deff, deff_source = float(cluster_design_effect(np.array([k[0] for k in keys]), n, b, c)), "measured"
        else:
            deff, deff_source = (design_effect, "given") if design_effect is not None else (1.0, "assumed 1")
        row = _row(" + ".join(names), t.n, t.base_correct / t.n, share(t), change, deff)
        pooled.append({**row, "language": lang, "design_effect_source": deff_source,
                       "benchmarks": [b for b in names if language(b) == lang]})
    return {"pilot": str(base.path), "tuned": str(tuned.path) if tuned else None, "change_points": change,
            "alpha": ALPHA, "power": POWER, "discordance_source": source, "benchmarks": rows, "pooled": pooled,
            "method": "McNemar's test, normal approximation (Connor 1987): n = (z_a sqrt(psi) + z_b sqrt(psi - "
                      "d^2))^2 / d^2 with psi = max(discordance, d); pooled figures need design effect times as many "
                      "questions, because a subject's questions change together."}

"""The pooled headline figures: which benchmarks they pool, what they are called, and their dict.

The Chinese figure pools the Chinese benchmarks of the headline formulation, the English one the
English benchmarks (a generative benchmark such as GSM8K has one formulation and joins either). A
benchmark whose base accuracy is not more than one standard error above its floor (chance for
multiple choice, 0 for generation) is compared and reported on its own but never pooled into a
headline: a model at its floor cannot lose, so it would make a pooled "no forgetting" look stronger
than the benchmarks that could show forgetting. Each figure is named for what it pools, from the
benchmark specs' titles.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from zhtune.analysis.formatting import signed
from zhtune.analysis.catalog import is_cloze, is_generation, language, spec_name, spec_of, spec_order, title
from zhtune.analysis.paired import GroupStats
from zhtune.analysis.stats import LOSS_VERDICTS
from zhtune.errors import UserError

HEADLINE_FORMULATIONS = ("auto", "letter", "cloze")  # analysis.headline_formulation


def headline_benchmarks(benchmarks: Iterable[str], formulation: str = "auto") -> tuple[list[str], list[str]]:
    """The Chinese and English benchmarks of one formulation. ``formulation`` "letter" or "cloze"
    (``analysis.headline_formulation``) picks that formulation's; "auto" the letter one where the runs
    have it (the published one), else the cloze one (``--formulation cloze``, for small models at
    chance on letters). Generative benchmarks (spec kind ``generation``) belong to both; the two
    formulations of one question are never pooled together (they are not independent)."""
    if formulation not in HEADLINE_FORMULATIONS:
        raise UserError(f"headline formulation must be one of {', '.join(HEADLINE_FORMULATIONS)}, got {formulation!r}")
    present = list(benchmarks)
    letter = [b for b in present if not is_cloze(b)]
    has_letter = any(not is_generation(b) for b in letter)
    use_cloze = formulation == "cloze" or (formulation == "auto" and not has_letter)
    chosen = [b for b in present if is_cloze(b) or is_generation(b)] if use_cloze else letter
    chosen.sort(key=spec_order)
    return [b for b in chosen if language(b) == "zh"], [b for b in chosen if language(b) == "en"]


def floor_reason(g: GroupStats) -> str | None:
    """Why a benchmark carries no pooled headline (base accuracy within one standard error of its
    floor), or None when it has headroom."""
    d = g.to_dict()
    if not d.get("at_floor"):
        return None
    what = "chance" if d["floor_accuracy"] > 0 else "floor"
    return (f"base accuracy {100 * d['base_accuracy']:.1f}% is within one standard error "
            f"({d['headroom_se_points']:.1f} points) of its {what} {100 * d['floor_accuracy']:.0f}% "
            f"(headroom {signed(d['headroom_points'])} points)")


def pooled_name(names: Sequence[str]) -> str:
    """``C-Eval + CMMLU (cloze)``: the spec titles of what a figure pools, and its formulation."""
    titles = [spec_of(b).title if spec_of(b) else spec_name(b) for b in names]
    cloze = [b for b in names if is_cloze(b)]
    text = " + ".join(titles)
    if cloze and len(cloze) < len(names):
        return " + ".join(title(b) for b in names)
    return f"{text} (cloze)" if cloze else text


def figure_label(key: str, names: Sequence[str]) -> str:
    """``Chinese change: C-Eval + CMMLU (cloze)`` / ``English forgetting: MMLU (cloze)``."""
    what = "Chinese change" if key == "chinese_gain" else "English forgetting"
    return f"{what}: {pooled_name(names)}"


def headline_figure(g: GroupStats | None, key: str, names: Sequence[str], benchmarks: dict[str, GroupStats]) -> dict | None:
    """The Chinese (tuned - base) or English-forgetting (base - tuned) figure: the group's own dict,
    re-oriented. ``change_points``/``estimate``, ``ci_low``/``ci_high``/``interval`` and
    ``one_sided_bounds`` are the figure in its own direction, so a positive English figure means
    forgetting; ``tuned_minus_base_points`` is always tuned - base."""
    if g is None:
        return None
    forgetting = key == "english_forgetting"
    d = g.to_dict()
    sign = -1.0 if forgetting else 1.0
    lo, hi = sorted((sign * g.ci_low + 0.0, sign * g.ci_high + 0.0))
    loss, gain = d["verdict"] in LOSS_VERDICTS, d["verdict"] == "improved"
    d.update({
        "name": figure_label(key, names),
        "definition": ("base - tuned accuracy, points (positive = forgot)" if forgetting
                       else "tuned - base accuracy, points (positive = gained)"),
        "benchmarks": [b for b in names if b in benchmarks],
        "n_by_benchmark": {b: benchmarks[b].n for b in names if b in benchmarks},
        "change_points": sign * g.change_points + 0.0, "estimate": sign * g.change_points + 0.0,
        "ci_low": lo, "ci_high": hi, "interval": [lo, hi],
        "one_sided_bounds": sorted((sign * g.bound_low + 0.0, sign * g.bound_high + 0.0)),
        "tuned_minus_base_points": g.change_points,
        "significant": loss if forgetting else gain, "significant_opposite": gain if forgetting else loss,
    })
    return d

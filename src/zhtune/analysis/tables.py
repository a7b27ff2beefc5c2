"""The report's tables, each built from comparison.json: headline figures, benchmarks (with their
headroom above chance), categories, the largest subject changes (false-coverage-rate adjusted), what
each level can detect, and bits per character."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from zhtune.analysis.formatting import benchmark_name, category_name, interval, mdc, num, p_cell, pct, signed


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


_STAT_HEADERS = ["n", "Base %", "Tuned %", "Change (pts)", "95% CI", "p"]
VERDICT_NOTE = ("p: McNemar's exact test; the 95% interval excludes 0 exactly when p < 0.05. Verdicts (margin "
                "in points): forgot / declined / improved when p < 0.05 (subjects and categories: Benjamini–"
                "Hochberg q < 0.05 within the benchmark). English: no forgetting beyond the margin when the "
                "one-sided 95% bound of forgetting is inside it (non-inferiority test); Chinese: equivalent within "
                "the margin when both one-sided 95% bounds are inside it (two one-sided tests); otherwise "
                "inconclusive. MDC: the minimum change detectable with 80% power at α = 0.05 (points).")


def _stat_cells(g: dict, *, q: bool = False) -> list[str]:
    return ([f"{g['n']:,}", pct(g["base_accuracy"]), pct(g["tuned_accuracy"]), signed(g["change_points"]),
             interval(g), p_cell(g["p_value"])] + ([p_cell(g.get("q_value"))] if q else []))


def _headroom(g: dict) -> str:
    if g.get("headroom_points") is None:
        return "–"
    text = f"{signed(g['headroom_points'])} ± {g['headroom_se_points']:.1f}"
    return text + " (at floor)" if g.get("at_floor") else text


def benchmark_table(comparisons: Sequence[dict]) -> Table:
    several = len(comparisons) > 1
    rows = []
    for cmp in comparisons:
        for bench, g in cmp["benchmarks"].items():
            retention = "–" if g["retention"] is None else f"{100 * g['retention']:.1f}%"
            floor = "–" if g.get("floor_accuracy") is None else pct(g["floor_accuracy"])
            rows.append(([cmp["tuned"]["label"]] if several else []) + [benchmark_name(bench)] + _stat_cells(g)
                        + [f"{g['verdict']} ({g['margin']:g})", mdc(g), floor, _headroom(g),
                           f"{g['base_right_tuned_wrong']} / {g['base_wrong_tuned_right']}", retention])
    return Table((["Run"] if several else []) + ["Benchmark"] + _STAT_HEADERS
                 + ["Verdict (margin)", "MDC", "Chance %", "Headroom (pts)", "Lost / gained", "Retention"], rows,
                 "Chance: the accuracy of answering at random (0 for generation). Headroom: base accuracy above "
                 "chance ± its standard error; a benchmark within one standard error of chance is marked at floor "
                 "and is not pooled into a headline figure. Lost / gained: questions right before and wrong after / "
                 "wrong before and right after. " + VERDICT_NOTE)


def headline_figures(cmp: dict) -> list[tuple[str, dict]]:
    """(name, figure) of the pooled figures; with both formulations, the headline formulation's first,
    then the other one's (secondary)."""
    sources = [(cmp, "")]
    if cmp.get("secondary"):
        sources.append((cmp["secondary"], " (secondary)"))
    return [(source[key].get("name", key) + tag, source[key]) for source, tag in sources
            for key in ("chinese_gain", "english_forgetting") if source.get(key)]


def headline_table(comparisons: Sequence[dict]) -> Table:
    rows = []
    for cmp in comparisons:
        for name, f in headline_figures(cmp):
            low, high = f["one_sided_bounds"]
            needed = f.get("questions_for_margin")
            rows.append([cmp["tuned"]["label"], name, f"{f['n']:,}", signed(f["change_points"]), interval(f),
                         f"{num(low)} to {num(high)}", p_cell(f["p_value"]), f"{f['verdict']} ({f['margin']:g})",
                         f"{f.get('design_effect', 1.0):.2f}", mdc(f), "–" if needed is None else f"{needed:,}"])
    return Table(["Run", "Figure", "n", "Points", "95% CI", "One-sided 95% bounds", "p", "Verdict (margin)",
                  "Design effect", "MDC", "Questions for margin"], rows,
                 "Chinese change = tuned − base; English forgetting = base − tuned (positive means forgotten). "
                 "Pooled figures allow for questions of one subject changing together (cluster-robust design "
                 "effect, stratified by benchmark): their interval and p use the effective counts. Questions for "
                 "margin: about how many questions (at the observed discordance and design effect) a change of the "
                 "margin needs to be detected with 80% power. " + VERDICT_NOTE)


def category_table(cmp: dict) -> Table:
    rows = [[benchmark_name(b), category_name(cat)] + _stat_cells(g, q=True) + [g["verdict"]]
            for b, cats in cmp["categories"].items() for cat, g in cats.items()]
    return Table(["Benchmark", "Category"] + _STAT_HEADERS + ["BH q", "Verdict"], rows,
                 "BH q: Benjamini–Hochberg adjusted p within the benchmark's categories.")


def subject_table(cmp: dict) -> Table | None:
    """The largest subject gains and losses with false-coverage-rate adjusted intervals; None when the
    comparison has none (no subject moved, or a comparison.json from an older zhtune)."""
    largest = cmp.get("largest_subject_changes")
    if not largest or not largest["rows"]:
        return None
    level = 100 * largest["confidence"]
    cells = [[f"{benchmark_name(r['benchmark'])}·{r['subject']}", f"{r['n']:,}", pct(r["base_accuracy"]),
              pct(r["tuned_accuracy"]), signed(r["change_points"]), interval(r), p_cell(r["p_value"]),
              "yes" if r["changed"] else "no"] for r in largest["rows"]]
    return Table(["Subject", "n", "Base %", "Tuned %", "Change (pts)", f"{level:.2f}% CI (FCR-adjusted)", "p",
                  "Excludes 0"], cells,
                 f"The {largest['shown']} largest changes of {largest['subjects']} subjects "
                 f"({largest['changed_subjects']} moved at all), largest gain first. Picking the largest of many "
                 f"changes favours those noise pushed furthest, so each interval is at {level:.2f}% "
                 f"(Benjamini–Yekutieli: 1 − shown × 0.05 / subjects), which keeps the expected share of shown "
                 f"intervals that miss their true change at 5%.")


def _range(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def level_rows(cmp: dict) -> list[dict]:
    """What each level of the comparison can detect: its sizes, minimum detectable change (80% power,
    design effect included for pooled figures) and the fewest answers that must change, all one way,
    before it can be called changed."""
    rows = []
    for name, f in headline_figures(cmp):
        rows.append({"level": name, "n": [f["n"]], "mdc": [f["min_detectable_change"]],
                     "fewest": [f.get("fewest_changes_to_flag")], "reachable": [f.get("can_reach_significance", True)],
                     "deff": f.get("design_effect", 1.0)})
    for level, groups in (("Benchmarks", [cmp["benchmarks"]]), ("Categories", list(cmp["categories"].values())),
                          ("Subjects", list(cmp["subjects"].values()))):
        members = [g for family in groups for g in family.values()]
        if members:
            rows.append({"level": level, "n": [g["n"] for g in members],
                         "mdc": [g["min_detectable_change"] for g in members],
                         "fewest": [g.get("fewest_changes_to_flag") for g in members],
                         "reachable": [g.get("can_reach_significance", True) for g in members], "deff": 1.0})
    return rows


def levels_table(cmp: dict) -> Table:
    out = []
    for r in level_rows(cmp):
        mdcs = [m for m in r["mdc"] if m is not None]
        fewest = [k for k in r["fewest"] if k is not None]
        blocked = sum(1 for ok in r["reachable"] if not ok)
        out.append([r["level"], _range(r["n"]), f"{r['deff']:.2f}",
                    ("–" if not mdcs else f"{min(mdcs):.1f}" if len(set(mdcs)) == 1 else
                     f"{min(mdcs):.1f}–{max(mdcs):.1f}") + (f" ({len(r['mdc']) - len(mdcs)} none)"
                                                           if len(mdcs) < len(r["mdc"]) else ""),
                    _range(fewest) if fewest else "–", f"{blocked} of {len(r['reachable'])}"])
    return Table(["Level", "Questions", "Design effect", "MDC (pts)", "Fewest changes to flag", "Cannot be flagged"],
                 out, "MDC: the change detectable with 80% power at the observed discordance (n divided by the "
                      "design effect for pooled figures); 'none': no change up to 100 points is. Fewest changes to "
                      "flag: answers that must change, all in one direction, for McNemar's exact p to fall below "
                      "0.05; a subject or category flagged alone in its benchmark must pass Benjamini–Hochberg's "
                      "strictest threshold, 0.05 / (subjects or categories of the benchmark). Cannot be flagged: "
                      "sets with fewer questions than that, which no outcome could call changed.")


def levels_sentence(cmp: dict) -> str | None:
    """Says which levels cannot reach significance at all (e.g. subjects of 11–16 questions)."""
    parts = []
    for r in level_rows(cmp):
        blocked = [n for n, ok in zip(r["n"], r["reachable"], strict=True) if not ok]
        if blocked:
            need = _range([k for k, ok in zip(r["fewest"], r["reachable"], strict=True) if not ok])
            parts.append(f"{len(blocked)} of {len(r['n'])} {r['level'].lower()} ({_range(blocked)} questions each) "
                         f"cannot be flagged on their own whatever their answers do: that takes at least {need} "
                         f"answers changed in one direction")
    if not parts:
        return None
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def perplexity_table(cmp: dict) -> Table | None:
    ppl = cmp.get("perplexity") or {}
    if not ppl:
        return None
    names = {"zh": "Chinese (zh)", "en": "English (en)"}

    def ci(p: dict) -> list[str]:
        if p.get("change_low") is None:
            return ["–", "–", "–", "–"]
        rel = (f"{signed(100 * p['relative_low'])}% to {signed(100 * p['relative_high'])}%"
               if p.get("relative_low") is not None else "–")
        return [f"{signed(p['change_low'], 3)} to {signed(p['change_high'], 3)}", rel, p_cell(p["p"]), p["verdict"]]

    rows = [[names.get(lang, lang), f"{p['base_bits_per_char']:.3f}", f"{p['tuned_bits_per_char']:.3f}",
             signed(p["change"], 3), "–" if p["ratio"] is None else f"{p['ratio']:.3f}", *ci(p)]
            for lang, p in ppl.items()]
    return Table(["Held-out text", "Base bits/char", "Tuned bits/char", "Change", "Ratio tuned/base", "95% CI",
                  "95% CI (%)", "p", "Verdict"], rows,
                 "Bits per character on text that training never sees; lower is better. The intervals are paired "
                 "over the probe texts (each text one unit; ratio estimators, the percent one allowing for the "
                 "variance of the base value; t with texts − 1 degrees of freedom).")

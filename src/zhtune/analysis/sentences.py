"""The report's opening sentences, written from comparison.json: did it learn Chinese, what did it forget.

Each pooled figure is named for what it pools, gives its change, 95% interval, p and verdict, and the
one-sided bound that backs the verdict; wording follows ``zhtune.analysis.formatting``.
"""
from __future__ import annotations

from zhtune.analysis.catalog import spec_name, spec_of
from zhtune.analysis.formatting import benchmark_name, changed_by, format_p, join_names, num, signed

LANGUAGES = {"zh": "Chinese", "en": "English",  # the probes' names in sentences (controls: exam questions)
             "zh_control": "the Chinese control texts", "en_control": "the English control texts"}
EXCLUDED = "excluded at one-sided 95%"


def _scale_note(cmp: dict) -> str:
    scale = cmp["tuned"].get("adapter_scale")
    return f" (adapter scale {scale:g})" if scale not in (None, 1, 1.0) else ""


def _questions(n_by_benchmark: dict[str, int]) -> str:
    return join_names([f"{n:,} {benchmark_name(b.removesuffix('_cloze'))}" for b, n in n_by_benchmark.items()]) \
        + " questions"


def _titles(f: dict) -> str:
    """``C-Eval and CMMLU``: the benchmarks a figure pools, without the formulation."""
    return join_names([spec_of(b).title if spec_of(b) else spec_name(b) for b in f["benchmarks"]])


def _accuracy(f: dict) -> str:
    """``cloze accuracy (acc_norm)`` when the figure pools cloze benchmarks, else ``accuracy``."""
    return "cloze accuracy (acc_norm)" if any(b.endswith("_cloze") for b in f["benchmarks"]) else "accuracy"


def _margin(f: dict) -> str:
    return f"{f['margin']:g}-point margin"


def chinese_verdict(f: dict) -> str:
    """The two-sided Chinese verdict with the one-sided 95% bounds of the change that back it."""
    low, high = f["one_sided_bounds"]
    v = f["verdict"]
    if v == "improved":
        return f"improved; a gain smaller than {num(low)} points is {EXCLUDED}"
    if v == "declined":
        return f"declined; a loss smaller than {num(-high)} points is {EXCLUDED}"
    if v == "equivalent within the margin":
        return (f"equivalent within the {_margin(f)}: changes below {signed(low)} and above {signed(high)} points "
                f"are each {EXCLUDED}")
    return (f"inconclusive: its one-sided 95% bounds, {signed(low)} and {signed(high)} points, do not both lie "
            f"within the {_margin(f)}")


def english_verdict(f: dict) -> str:
    """The English verdict with the one-sided 95% bounds of the forgetting (base − tuned) that back it."""
    low, high = f["one_sided_bounds"]
    v = f["verdict"]
    if v == "forgot":
        return f"forgot; forgetting below {num(low)} or above {num(high)} points is {EXCLUDED}"
    if v == "improved":
        return f"improved; an English gain smaller than {num(-high)} points is {EXCLUDED}"
    if v == "no forgetting beyond the margin":
        return f"no forgetting beyond the {_margin(f)}: forgetting larger than {num(high)} points is {EXCLUDED}"
    return (f"inconclusive: {f['n']:,} questions cannot exclude forgetting of up to {num(high)} points at "
            f"one-sided 95%")


def _needed(f: dict) -> str:
    """For an inconclusive figure: what more questions would settle (the power analysis)."""
    if f["verdict"] != "inconclusive" or not f.get("questions_for_margin"):
        return ""
    return f" (detecting {f['margin']:g} points would take about {f['questions_for_margin']:,} questions)"


def _missing(cmp: dict, lang: str) -> str:
    """Why there is no pooled figure for a language: nothing evaluated, or every benchmark at its floor."""
    excluded = {b: why for b, why in (cmp.get("headline_excluded") or {}).items()
                if (cmp["benchmarks"].get(b) or {}).get("verdict_about") == ("gain" if lang == "zh" else "forgetting")}
    name = LANGUAGES[lang]
    if not excluded:
        return f"No {name} benchmark was evaluated, so the {name} change is unknown."
    return (f"No {name} figure is pooled: " + "; ".join(f"{benchmark_name(b)}'s {why}" for b, why in excluded.items())
            + " (each is reported on its own below).")


def chinese_sentence(cmp: dict) -> str:
    zh = cmp.get("chinese_gain")
    if zh is None:
        return _missing(cmp, "zh")
    return (f"After LoRA fine-tuning{_scale_note(cmp)}, Chinese {_accuracy(zh)} on {_titles(zh)} "
            f"{changed_by(zh['change_points'], zh['significant'] or zh['significant_opposite'])} (95% CI "
            f"{num(zh['ci_low'])} to {num(zh['ci_high'])}, p {format_p(zh['p_value'])}) over "
            f"{_questions(zh['n_by_benchmark'])}: {chinese_verdict(zh)}{_needed(zh)}.")


def english_sentence(cmp: dict) -> str:
    en = cmp.get("english_forgetting")
    if en is None:
        return _missing(cmp, "en")
    d = en["tuned_minus_base_points"]  # shown as the change, like the Chinese figure
    flagged = [b for b in cmp.get("significant_forgetting", []) if b in en["benchmarks"]]
    flagged_txt = ", ".join(f"{benchmark_name(b)} {signed(cmp['benchmarks'][b]['change_points'])} points"
                            for b in flagged)
    verdict_text, extra = english_verdict(en), ""
    if flagged and en["verdict"] == "forgot":  # name the benchmarks that lost, right after the verdict
        verdict_text = verdict_text.replace("forgot", f"forgot ({flagged_txt})", 1)
    elif flagged:
        extra = f"; on its own, {flagged_txt}: forgot"
    return (f"English {_accuracy(en)} on {_titles(en)} "
            f"{changed_by(d, en['significant'] or en['significant_opposite'])} (95% CI {num(-en['ci_high'])} to "
            f"{num(-en['ci_low'])}, p {format_p(en['p_value'])}) over {_questions(en['n_by_benchmark'])}: "
            f"{verdict_text}{_needed(en)}{extra}.")


def _bits_ci(p: dict) -> str:
    """'; 95% CI −3.1% to −2.3% over 51 texts, p < 0.001: lower' where the paired interval over texts exists."""
    if p.get("relative_low") is None:
        return ""
    return (f", 95% CI {signed(100 * p['relative_low'])}% to {signed(100 * p['relative_high'])}% over "
            f"{p['texts']} texts, p {format_p(p['p'])}: {p['verdict']}")


def bits_sentence(ppl: dict) -> str:
    """Bits per character on every held-out probe (Chinese and English first, then any control probe)."""
    parts = []
    for lang, p in sorted(ppl.items(), key=lambda kv: (kv[0].endswith("_control"), not kv[0].startswith("zh"))):
        rel = p["relative_change"] if p.get("relative_change") is not None else (p["ratio"] or 1.0) - 1
        parts.append(f"from {p['base_bits_per_char']:.2f} to {p['tuned_bits_per_char']:.2f} in "
                     f"{LANGUAGES.get(lang, lang)} ({signed(100 * rel)}%{_bits_ci(p)})")
    parts[-1] = parts[-1][:-1] + "; lower is better)"
    return f"On held-out text the model's bits per character went {join_names(parts)}."


def largest_changes_sentence(cmp: dict) -> str:
    largest = cmp.get("largest_subject_changes") or {}
    rows = largest.get("rows") or []
    if not rows:
        return "No subject's accuracy moved in either direction."
    changed = [r for r in rows if r["changed"]]
    return (f"The largest subject changes were {benchmark_name(rows[0]['benchmark'])}·{rows[0]['subject']} "
            f"({signed(rows[0]['change_points'])} points) and {benchmark_name(rows[-1]['benchmark'])}·"
            f"{rows[-1]['subject']} ({signed(rows[-1]['change_points'])} points); "
            f"{len(changed)} of the {len(rows)} shown exclude 0 in false-coverage-rate adjusted intervals.")


def secondary_sentence(cmp: dict) -> list[str]:
    """With both formulations: one sentence on the other (secondary) formulation's pooled figures."""
    sec = cmp.get("secondary")
    if not sec:
        return []
    parts = []
    for key, lang in (("chinese_gain", "Chinese"), ("english_forgetting", "English")):
        f = sec.get(key)
        if f:
            d = f["tuned_minus_base_points"]
            low, high = (f["ci_low"], f["ci_high"]) if key == "chinese_gain" else (-f["ci_high"], -f["ci_low"])
            parts.append(f"{lang} ({' + '.join(benchmark_name(spec_name(b)) for b in f['benchmarks'])}) "
                         f"{signed(d)} points (95% CI {num(low)} to {num(high)}, p {format_p(f['p_value'])}): "
                         f"{f['verdict']}")
        else:
            parts.append(f"{lang}: no benchmark above its floor")
    what = "letter answers" if sec["formulation"] == "letter" else "cloze (acc_norm)"
    return [f"Secondary, {what}: " + "; ".join(parts) + "."]


def exclusion_sentence(cmp: dict) -> list[str]:
    """Benchmarks at their floor that a pooled figure of this comparison leaves out (those of a
    language with no pooled figure at all are named in its own sentence, ``_missing``)."""
    pooled = {about for name, about in (("chinese_gain", "gain"), ("english_forgetting", "forgetting"))
              if cmp.get(name)}
    excluded = {b: why for b, why in (cmp.get("headline_excluded") or {}).items()
                if (cmp["benchmarks"].get(b) or {}).get("verdict_about") in pooled}
    if not excluded:
        return []
    return ["Not pooled, reported on its own: " + "; ".join(f"{benchmark_name(b)}, whose {why}"
                                                            for b, why in excluded.items()) + "."]


def headline_sentences(cmp: dict) -> list[str]:
    """The Chinese sentence, the English sentence, bits per character (or the largest subject changes),
    then the secondary formulation and the benchmarks left out of the pooled figures."""
    ppl = cmp.get("perplexity") or {}
    third = bits_sentence(ppl) if ppl else largest_changes_sentence(cmp)
    en = cmp.get("english_forgetting")
    if en is not None and en.get("retention") and not ppl:
        third += f" English keeps {100 * en['retention']:.1f}% of its base accuracy."
    return [chinese_sentence(cmp), english_sentence(cmp), third] + secondary_sentence(cmp) + exclusion_sentence(cmp)

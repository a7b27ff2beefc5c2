"""The report: three plain sentences with the answer, then tables, charts, settings and method.

One document model (a list of blocks) is rendered three ways: ``report.html`` (self-contained:
charts embedded as base64 PNG, inline CSS, no external URL), ``report.md`` (charts referenced as
the PNG files next to it) and ``report.json`` (the headline, every number and the file names).
``check_in_browser`` opens the HTML in headless Chromium to prove it renders with no broken image.
"""
from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from zhtune import __version__
from zhtune.analysis.forgetting import FORGETTING_MARGIN, GAIN_MARGIN, compare_many, format_p, num, signed
from zhtune.analysis.plots import (benchmark_name, comparison_point, plot_pareto, plot_radar,
                                   plot_subject_changes, plot_training_curves, radar_series,
                                   read_training_log, subject_rows)
from zhtune.artifacts import provenance, read_adapter_meta, utc_timestamp
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_text, read_json
from zhtune.registration import provenance_note

CATEGORY_NAMES = {"Social Science": "Social Sciences"}


# ----------------------------------------------------------------------------------- formatting
def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _questions(n_by_benchmark: dict[str, int]) -> str:
    parts = [f"{n:,} {benchmark_name(b.removesuffix('_cloze'))}" for b, n in n_by_benchmark.items()]
    return (" and ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + " and " + parts[-1]) + " questions"


def _by(d: float) -> str:
    """``rose by 3.1 points`` / ``fell by 0.04 points``: two decimals where one would read 0.0."""
    digits = 2 if abs(d) < 0.1 else 1
    return (f"rose by {num(d, digits)} points" if d > 0 else f"fell by {num(-d, digits)} points" if d < 0
            else "did not change")


def _scale_note(cmp: dict) -> str:
    scale = cmp["tuned"].get("adapter_scale")
    return f" (adapter scale {scale:g})" if scale not in (None, 1, 1.0) else ""


# ----------------------------------------------------------------------------------- headline
def _margin(f: dict) -> str:
    return f"{f['margin']:g}-point margin"


def _gain_verdict(f: dict) -> str:
    """The Chinese verdict with the bound that backs it (one-sided 95% bounds of the gain)."""
    low, high = f["one_sided_bounds"]
    v = f["verdict"]
    if v == "improved":
        return f"improved; a gain smaller than {num(low)} points is ruled out"
    if v == "declined":
        return f"declined; a loss smaller than {num(-high)} points is ruled out"
    if v == "no gain beyond the margin":
        return f"no gain beyond the {_margin(f)}; a gain larger than {num(high)} points is ruled out"
    return f"inconclusive: {f['n']:,} questions cannot tell no gain from a gain of up to {num(high)} points"


def _forgetting_verdict(f: dict) -> str:
    """The English verdict with the bound that backs it (one-sided 95% bounds of the forgetting)."""
    low, high = f["one_sided_bounds"]
    v = f["verdict"]
    if v == "forgot":
        return f"forgot; forgetting of less than {num(low)} or more than {num(high)} points is ruled out"
    if v == "improved":
        return f"improved; an English gain smaller than {num(-high)} points is ruled out"
    if v == "no forgetting beyond the margin":
        return (f"no forgetting beyond the {_margin(f)}; English forgetting larger than {num(high)} points "
                f"is ruled out")
    return f"inconclusive: {f['n']:,} questions cannot rule out forgetting up to {num(high)} points"


def _needed(f: dict) -> str:
    """For an inconclusive figure: what more questions would settle (the power analysis)."""
    if f["verdict"] != "inconclusive" or not f.get("questions_for_margin"):
        return ""
    return f" (detecting {f['margin']:g} points would take about {f['questions_for_margin']:,} questions)"


def _largest_changes(cmp: dict) -> str:
    rows = [r for r in subject_rows(cmp) if r["change_points"] != 0]
    if not rows:
        return "No subject's accuracy changed."
    flagged = sum(1 for r in subject_rows(cmp) if r["q_value"] is not None and r["q_value"] < 0.05)
    tail = (f" {flagged} of {len(subject_rows(cmp))} subjects changed significantly (Benjamini–Hochberg q < 0.05 "
            f"within each benchmark)." if flagged else " No subject changed significantly after Benjamini–Hochberg "
            "adjustment within each benchmark.")

    def one(r: dict) -> str:
        return f"{r['label']} ({signed(r['change_points'])} points, q {_q(r['q_value'])})"

    if len(rows) == 1:
        return f"The only subject that changed was {one(rows[0])}." + tail
    return f"The largest subject changes were {one(rows[-1])} and {one(rows[0])}." + tail


def headline_sentences(cmp: dict) -> list[str]:
    """Three sentences that answer "did it learn Chinese, and what did it forget?" with numbers,
    a verdict against the margin, and the bound that backs the verdict."""
    zh, en = cmp.get("chinese_gain"), cmp.get("english_forgetting")
    # "accuracy" or, for a cloze headline, "cloze accuracy (acc_norm)"; the questions are the same either way
    acc = "cloze accuracy (acc_norm)" if cmp.get("headline_formulation") == "cloze" else "accuracy"
    if zh is None:
        s1 = "No Chinese benchmark (C-Eval or CMMLU) was evaluated, so the Chinese gain is unknown."
    else:
        s1 = (f"After LoRA fine-tuning{_scale_note(cmp)}, Chinese {acc} {_by(zh['change_points'])} (95% CI "
              f"{num(zh['ci_low'])} to {num(zh['ci_high'])}, p {format_p(zh['p_value'])}) over "
              f"{_questions(zh['n_by_benchmark'])}: {_gain_verdict(zh)}{_needed(zh)}.")
    if en is None:
        s2 = "No English benchmark (MMLU or GSM8K) was evaluated, so forgetting is unknown."
    else:
        d = en["tuned_minus_base_points"]  # shown as the change, like the Chinese figure
        flagged = [b for b in cmp.get("significant_forgetting", []) if b in en["benchmarks"]]
        flagged_txt = ", ".join(f"{benchmark_name(b)} {signed(cmp['benchmarks'][b]['change_points'])} points"
                                for b in flagged)
        verdict_text, extra = _forgetting_verdict(en), ""
        if flagged and en["verdict"] == "forgot":  # name the benchmarks that lost, right after the verdict
            verdict_text = verdict_text.replace("forgot", f"forgot ({flagged_txt})", 1)
        elif flagged:
            extra = f"; on its own, {flagged_txt}: forgot"
        s2 = (f"English {acc} {_by(d)} (95% CI {num(-en['ci_high'])} to {num(-en['ci_low'])}, "
              f"p {format_p(en['p_value'])}) over {_questions(en['n_by_benchmark'])}: "
              f"{verdict_text}{_needed(en)}{extra}.")
    ppl = cmp.get("perplexity") or {}
    if "zh" in ppl and "en" in ppl:
        z, e = ppl["zh"], ppl["en"]
        s3 = (f"On held-out text the model's bits per character went from {z['base_bits_per_char']:.2f} to "
              f"{z['tuned_bits_per_char']:.2f} in Chinese ({signed(100 * (z['ratio'] - 1))}%{_bits_ci(z)}) and "
              f"from {e['base_bits_per_char']:.2f} to {e['tuned_bits_per_char']:.2f} in English "
              f"({signed(100 * (e['ratio'] - 1))}%{_bits_ci(e)}; lower is better).")
    else:
        s3 = _largest_changes(cmp) if subject_rows(cmp) else "Perplexity was not measured."
    if en is not None and en.get("retention") and "zh" not in ppl:
        s3 += f" English keeps {100 * en['retention']:.1f}% of its base accuracy."
    return [s1, s2, s3] + _secondary_sentence(cmp)


def _secondary_sentence(cmp: dict) -> list[str]:
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
            parts.append(f"{lang} {signed(d)} points (95% CI {num(low)} to {num(high)}): {f['verdict']}")
    what = "letter answers" if sec["formulation"] == "letter" else "cloze (acc_norm)"
    return [f"Secondary, {what}: " + "; ".join(parts) + "."] if parts else []


def _bits_ci(p: dict) -> str:
    """'; 95% CI −3.1% to −2.3%, p < 0.001: lower' where the paired interval over texts exists."""
    if p.get("change_low") is None or not p.get("base_bits_per_char"):
        return ""
    b = p["base_bits_per_char"]
    return (f", 95% CI {signed(100 * p['change_low'] / b)}% to {signed(100 * p['change_high'] / b)}% over "
            f"{p['texts']} texts, p {format_p(p['p'])}: {p['verdict']}")


# ----------------------------------------------------------------------------------- blocks
@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Chart:
    name: str  # file stem in the report folder
    caption: str


Block = tuple  # ("h1"|"h2"|"h3"|"p"|"ul"|"pre", text or items) | Table | Chart


def _q(q: float | None) -> str:
    return "–" if q is None else format_p(q).replace("= ", "")


def _mdc(g: dict) -> str:
    return "–" if g.get("min_detectable_change") is None else f"{g['min_detectable_change']:.1f}"


def _stat_cells(g: dict, *, q: bool = False) -> list[str]:
    return ([f"{g['n']:,}", pct(g["base_accuracy"]), pct(g["tuned_accuracy"]), signed(g["change_points"]),
             f"{num(g['ci_low'])} to {num(g['ci_high'])}", format_p(g["p_value"]).replace("= ", "")]
            + ([_q(g.get("q_value"))] if q else []))


_STAT_HEADERS = ["n", "Base %", "Tuned %", "Change (pts)", "95% CI", "McNemar p"]
_VERDICT_NOTE = ("Verdicts (margin in points): forgot / declined / improved when the 95% interval excludes 0 "
                 "(subjects and categories: when Benjamini–Hochberg q < 0.05 within the benchmark); within the "
                 "margin when the one-sided 95% bound is inside it; otherwise inconclusive. MDC: the minimum "
                 "change detectable with 80% power at α = 0.05 (points).")


def benchmark_table(comparisons: Sequence[dict]) -> Table:
    several = len(comparisons) > 1
    rows = []
    for cmp in comparisons:
        for bench, g in cmp["benchmarks"].items():
            retention = "–" if g["retention"] is None else f"{100 * g['retention']:.1f}%"
            rows.append(([cmp["tuned"]["label"]] if several else []) + [benchmark_name(bench)] + _stat_cells(g)
                        + [f"{g['verdict']} ({g['margin']:g})", _mdc(g),
                           f"{g['base_right_tuned_wrong']} / {g['base_wrong_tuned_right']}", retention])
    return Table((["Run"] if several else []) + ["Benchmark"] + _STAT_HEADERS
                 + ["Verdict (margin)", "MDC", "Lost / gained", "Retention"], rows,
                 "Lost / gained: questions right before and wrong after / wrong before and right after. "
                 + _VERDICT_NOTE)


def _headline_figures(cmp: dict) -> list[tuple[str, dict]]:
    """(name, figure) of the pooled Chinese and English figures; with both formulations, the headline
    formulation's first, then the other one's (secondary), each named."""
    sources = [(cmp, "")]
    if cmp.get("secondary"):
        sources = [(cmp, f", {cmp['headline_formulation']}"),
                   (cmp["secondary"], f", {cmp['secondary']['formulation']}, secondary")]
    return [(name, source[key]) for source, tag in sources
            for key, name in (("chinese_gain", f"Chinese gain (C-Eval + CMMLU{tag})"),
                              ("english_forgetting", f"English forgetting (MMLU + GSM8K{tag})")) if source.get(key)]


def headline_table(comparisons: Sequence[dict]) -> Table:
    rows = []
    for cmp in comparisons:
        for name, f in _headline_figures(cmp):
            low, high = f["one_sided_bounds"]
            needed = f.get("questions_for_margin")
            rows.append([cmp["tuned"]["label"], name, f"{f['n']:,}", signed(f["change_points"]),
                         f"{num(f['ci_low'])} to {num(f['ci_high'])}", f"{num(low)} to {num(high)}",
                         format_p(f["p_value"]).replace("= ", ""), f"{f['verdict']} ({f['margin']:g})",
                         _mdc(f), "–" if needed is None else f"{needed:,}"])
    return Table(["Run", "Figure", "n", "Points", "95% CI", "One-sided 95% bounds", "p", "Verdict (margin)",
                  "MDC", "Questions for margin"], rows,
                 "Chinese gain = tuned − base; English forgetting = base − tuned (positive means forgotten). "
                 "Pooled intervals allow for questions of one subject changing together (cluster-robust, "
                 "stratified by benchmark), and so does their p (the score test the interval inverts). "
                 "Questions for margin: about how many questions (at the observed "
                 "discordance and clustering) a change of the margin needs to be detected with 80% power. "
                 + _VERDICT_NOTE)


def category_table(cmp: dict) -> Table:
    rows = [[benchmark_name(b), CATEGORY_NAMES.get(cat, cat)] + _stat_cells(g, q=True) + [g["verdict"]]
            for b, cats in cmp["categories"].items() for cat, g in cats.items()]
    return Table(["Benchmark", "Category"] + _STAT_HEADERS + ["BH q", "Verdict"], rows,
                 "BH q: Benjamini–Hochberg adjusted p within the benchmark's categories.")


def subject_table(cmp: dict, top: int = 10) -> Table | None:
    """The subjects that changed, largest gains and losses; None when no subject changed."""
    every = subject_rows(cmp)
    rows = [r for r in every if r["change_points"] != 0]
    if not rows:
        return None
    shown = rows[::-1] if len(rows) <= 2 * top else rows[:-top - 1:-1] + rows[:top]
    cells = [[r["label"], f"{r['n']:,}", pct(r["base_accuracy"]), pct(r["tuned_accuracy"]),
              signed(r["change_points"]), f"{num(r['ci_low'])} to {num(r['ci_high'])}",
              format_p(r["p_value"]).replace("= ", ""), _q(r["q_value"]), r["verdict"]] for r in shown]
    unchanged = len(every) - len(rows)
    caption = (f"The {top} largest gains and {top} largest losses of the {len(rows)} subjects that changed"
               if len(rows) > 2 * top else f"All {len(rows)} subjects that changed, largest gain first")
    caption += (f"; {unchanged} of {len(every)} subjects did not change. " if unchanged else ". ")
    caption += "BH q: Benjamini–Hochberg adjusted p within the benchmark's subjects."
    return Table(["Subject", "n", "Base %", "Tuned %", "Change (pts)", "95% CI", "McNemar p", "BH q", "Verdict"],
                 cells, caption)


def perplexity_table(cmp: dict) -> Table | None:
    ppl = cmp.get("perplexity") or {}
    if not ppl:
        return None
    names = {"zh": "Chinese (zh)", "en": "English (en)"}
    def ci(p: dict) -> list[str]:
        if p.get("change_low") is None:
            return ["–", "–", "–"]
        return [f"{signed(p['change_low'], 3)} to {signed(p['change_high'], 3)}", format_p(p["p"]).lstrip("= "),
                p["verdict"]]

    rows = [[names.get(lang, lang), f"{p['base_bits_per_char']:.3f}", f"{p['tuned_bits_per_char']:.3f}",
             signed(p["change"], 3), "–" if p["ratio"] is None else f"{p['ratio']:.3f}", *ci(p)]
            for lang, p in ppl.items()]
    return Table(["Held-out text", "Base bits/char", "Tuned bits/char", "Change", "Ratio tuned/base", "95% CI",
                  "p", "Verdict"], rows,
                 "Bits per character on text that training never sees; lower is better. The interval is paired "
                 "over the probe texts (each text one unit; ratio estimator, t with texts − 1 degrees of freedom).")


# ----------------------------------------------------------------------------------- settings
def _adapter_info(cmp: dict, train_dir: Path | None) -> dict:
    """LoRA settings from the adapter folder (zhtune_adapter.json, adapter_config.json) if it is here."""
    candidates = [train_dir / "adapter"] if train_dir else []
    if cmp["tuned"].get("adapter"):
        candidates.append(Path(cmp["tuned"]["adapter"]))
    for folder in candidates:
        info = dict(read_adapter_meta(folder))
        if (folder / "adapter_config.json").is_file():
            cfg = read_json(folder / "adapter_config.json")
            info.setdefault("peft", {k: cfg.get(k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules",
                                                              "use_rslora", "use_dora") if k in cfg})
        if info:
            return {"adapter_dir": str(folder), **info}
    return {}


def _kv_lines(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v and len(out) < 60:
            out += _kv_lines(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}: {v}")
    return out


# ----------------------------------------------------------------------------------- building
def _training_summary(train_dir: Path) -> str:
    rows = read_training_log(train_dir)
    losses = [r for r in rows if isinstance(r.get("loss"), (int, float))]
    if not losses:
        return f"Training log: {len(rows)} rows, no training loss."
    first, last = losses[0], losses[-1]
    return (f"Training loss went from {first['loss']:.3f} at step {first['step']} to {last['loss']:.3f} at step "
            f"{last['step']}.")


def _result_blocks(comparisons: Sequence[dict]) -> list:
    """Headline figures, benchmarks, categories, largest subject changes and perplexity."""
    main = comparisons[0]
    blocks: list = [("h2", "Results"), ("h3", "Headline figures"), headline_table(comparisons),
               ("h3", "Benchmarks"), benchmark_table(comparisons)]
    if len(comparisons) > 1:
        blocks.append(("p", f"Categories, subjects and perplexity below are for the first tuned run, "
                            f"{main['tuned']['label']}."))
    subjects = subject_table(main)
    blocks += [("h3", "Categories"), category_table(main), ("h3", "Largest subject changes"),
               subjects if subjects is not None else ("p", "No subject's accuracy changed.")]
    ppl = perplexity_table(main)
    if ppl:
        blocks += [("h3", "Perplexity probes"), ppl]

    return blocks


def _charts(comparisons: Sequence[dict], out: Path, train_dir: Path | None, tradeoff, top_subjects: int,
            notes: list[str]) -> list[Chart]:
    """Draw the report's charts into ``out``; a chart that cannot be drawn adds a note instead."""
    main = comparisons[0]
    figures: list[Chart] = []
    plot_radar(radar_series(comparisons), out / "radar")
    figures.append(Chart("radar", "Accuracy by benchmark category, base and tuned (中英文能力雷达图)."))
    plot_subject_changes(main, out / "subjects", top=top_subjects)
    figures.append(Chart("subjects", f"Change per subject for {main['tuned']['label']}, with 95% score "
                                      f"intervals; red: loss, green: gain, each with Benjamini–Hochberg q < 0.05."))
    points = [p for p in (comparison_point(c) for c in comparisons) if p]
    if len(points) > 1:
        plot_pareto(points, out / "pareto")
        figures.append(Chart("pareto", "Chinese gain against English forgetting for every run; the Pareto "
                                        "front (runs no other run beats on both) is marked."))
    if train_dir is not None:
        try:  # a training folder without usable logs costs the chart, not the report
            plot_training_curves(train_dir, out / "training")
            figures.append(Chart("training", f"Training curves from {train_dir}. {_training_summary(train_dir)}"))
        except UserError as err:
            notes.append(f"no training curves: {err}")
    if tradeoff is not None:
        figures.append(Chart("tradeoff", "Chinese gain against English forgetting along the adapter scale "
                                          f"(tolerance {tradeoff.tolerance:g} points)."))
    return figures


def _settings_blocks(comparisons: Sequence[dict], adapter: dict) -> list:
    """What was compared, the adapter, the evaluation settings and how the statistics were computed."""
    main = comparisons[0]
    blocks: list = []
    blocks.append(("h2", "Settings"))
    for cmp in comparisons[:1]:
        blocks.append(("ul", [f"Base: {cmp['base']['model']} ({cmp['base']['dir']})",
                              f"Tuned: {cmp['tuned']['label']}: model {cmp['tuned']['model']}, adapter "
                              f"{cmp['tuned'].get('adapter')}, scale {cmp['tuned'].get('adapter_scale')} "
                              f"({cmp['tuned']['dir']})"]
                       + [f"Tuned: {c['tuned']['label']}: adapter {c['tuned'].get('adapter')}, scale "
                          f"{c['tuned'].get('adapter_scale')} ({c['tuned']['dir']})" for c in comparisons[1:]]))
    if adapter:
        blocks += [("h3", "Adapter and LoRA settings"), ("pre", "\n".join(_kv_lines(adapter)))]
    blocks += [("h3", "Evaluation settings"),
               ("pre", "\n".join(_kv_lines(main.get("settings") or {})) or "(none recorded)")]
    stats = main["statistics"]
    blocks += [("h2", "How the statistics were computed"),
               ("p", f"{stats['method']} Margins: English forgetting {stats['forgetting_margin']:g} points, "
                     f"Chinese gain {stats['gain_margin']:g} points. Chinese gain pools C-Eval and CMMLU questions; "
                     f"English forgetting pools MMLU and GSM8K questions (GSM8K counts the flexible answer match).")]
    return blocks


def build_report(*, base: str | Path | None = None, tuned: Sequence[str | Path] = (),
                 comparisons: Sequence[dict] | None = None, output_dir: str | Path,
                 train_dir: str | Path | None = None, scale_dir: str | Path | None = None,
                 tolerance: float = 1.0, title: str = "zhtune report",
                 forgetting_margin: float = FORGETTING_MARGIN, gain_margin: float = GAIN_MARGIN,
                 headline_formulation: str = "auto", top_subjects: int = 15,
                 progress: Callable[[str], None] | None = None,
                 registration: dict | None = None) -> dict[str, Path]:
    """Write report.html, report.md, report.json and the chart files into ``output_dir``.

    Either ``base`` and ``tuned`` evaluation folders (compared here) or ready ``comparisons``
    (comparison.json contents). ``train_dir`` adds training curves; ``scale_dir`` the adapter-scale
    trade-off. Returns the paths written, by name."""
    step = progress or (lambda _msg: None)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if comparisons is None:
        if base is None or not tuned:
            raise UserError("report: give --base and at least one --tuned evaluation folder, or --comparison files")
        step("comparing runs")
        comparisons = [c.to_dict() for c in compare_many(base, tuned, forgetting_margin=forgetting_margin,
                                                         gain_margin=gain_margin,
                                                         headline_formulation=headline_formulation)]
    comparisons = list(comparisons)
    if not comparisons:
        raise UserError("report: no comparisons to report")
    for cmp in comparisons:
        figures_ = [f for f in (cmp.get("chinese_gain"), cmp.get("english_forgetting")) if f]
        if any("verdict" not in f for f in figures_):
            raise UserError(f"the comparison of {cmp.get('tuned', {}).get('dir')} was written by an older zhtune "
                            f"(no verdicts); run zhtune compare again")
    main = comparisons[0]
    train_dir = Path(train_dir) if train_dir else None
    if train_dir is not None and not train_dir.is_dir():
        raise UserError(f"--train-dir {train_dir}: no such folder")
    notes: list[str] = []
    tradeoff = None
    if scale_dir is not None:
        from zhtune.analysis.scale import analyze_tradeoff, write_tradeoff

        step("adapter-scale trade-off")
        tradeoff = analyze_tradeoff(scale_dir, tolerance=tolerance, base_dir=base or main["base"]["dir"],
                                    forgetting_margin=forgetting_margin, gain_margin=gain_margin)
        write_tradeoff(tradeoff, out)

    headline = headline_sentences(main)
    blocks: list = [("h1", title), ("lead", headline)] + _result_blocks(comparisons)
    step("charts")
    figures = _charts(comparisons, out, train_dir, tradeoff, top_subjects, notes)
    blocks += [("h2", "Charts")] + figures
    if tradeoff is not None:
        blocks += [("h2", "Adapter scale"), ("ul", tradeoff.reasoning)]

    adapter = _adapter_info(main, train_dir)
    blocks += _settings_blocks(comparisons, adapter)
    notes += [n for c in comparisons for n in c.get("notes", [])]
    if notes:
        blocks += [("h3", "Notes"), ("ul", notes)]

    step("writing report")
    created = utc_timestamp()
    footer = f"Made by zhtune {__version__} on {created}. " + provenance_note(provenance(), registration)
    paths = {
        "html": atomic_write_text(out / "report.html", render_html(blocks, out, title, footer)),
        "md": atomic_write_text(out / "report.md", render_markdown(blocks, footer)),
    }
    paths["json"] = atomic_write_json(out / "report.json", {
        "title": title, "headline": headline, "comparisons": comparisons,
        "tradeoff": tradeoff.to_dict() if tradeoff else None,
        "training_dir": str(train_dir) if train_dir else None, "adapter": adapter,
        "figures": {f.name: {"png": f"{f.name}.png", "svg": f"{f.name}.svg", "caption": f.caption} for f in figures},
        "created": created, "zhtune_version": __version__,
        "provenance": provenance(), "registration": registration,
    })
    for f in figures:
        paths[f.name] = out / f"{f.name}.png"
    return paths


# ----------------------------------------------------------------------------------- rendering
_CSS = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei","PingFang SC","Microsoft YaHei",system-ui,sans-serif;
max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.5}
h1{font-size:1.8em;margin-bottom:.3em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.lead{background:#f5f8fc;border-left:4px solid #4c72b0;padding:.8em 1.2em;font-size:1.08em}
.lead p{margin:.4em 0}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}caption{caption-side:bottom;text-align:left;color:#666;font-size:.85em}
figure{margin:1.2em 0}img{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}footer{color:#888;font-size:.8em;margin-top:3em}
"""


_NUMERIC = re.compile(r"^[<+−-]?\s?[\d.,]+")


def _td(cell: str) -> str:
    """A table cell; numbers are right-aligned, text left-aligned."""
    cls = ' class="num"' if _NUMERIC.match(str(cell)) else ""
    return f"<td{cls}>{html.escape(str(cell))}</td>"


def render_html(blocks: list, out: Path, title: str, footer: str) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"]
    for block in blocks:
        if isinstance(block, Table):
            parts.append("<table>" + (f"<caption>{e(block.caption)}</caption>" if block.caption else "")
                         + "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in block.headers) + "</tr></thead><tbody>"
                         + "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in block.rows)
                         + "</tbody></table>")
        elif isinstance(block, Chart):
            data = base64.b64encode((out / f"{block.name}.png").read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(block.caption)}">'
                         f"<figcaption>{e(block.caption)}</figcaption></figure>")
        else:
            kind, content = block
            if kind == "lead":
                parts.append('<div class="lead">' + "".join(f"<p>{e(s)}</p>" for s in content) + "</div>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{e(s)}</li>" for s in content) + "</ul>")
            elif kind == "pre":
                parts.append(f"<pre>{e(content)}</pre>")
            else:
                parts.append(f"<{kind}>{e(content)}</{kind}>")
    parts.append(f"<footer>{e(footer)}</footer></body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list, footer: str) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Table):
            lines += ["| " + " | ".join(map(_md_cell, block.headers)) + " |",
                      "|" + "|".join("---" if i == 0 else "---:" for i in range(len(block.headers))) + "|"]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            if block.caption:
                lines += ["", f"*{block.caption}*"]
        elif isinstance(block, Chart):
            lines += [f"![{block.caption}]({block.name}.png)", "", f"*{block.caption}*"]
        else:
            kind, content = block
            if kind == "lead":
                lines.append(" ".join(f"**{s}**" if i == 0 else s for i, s in enumerate(content)))
            elif kind == "ul":
                lines += [f"- {s}" for s in content]
            elif kind == "pre":
                lines += ["```", content, "```"]
            else:
                lines.append({"h1": "# ", "h2": "## ", "h3": "### "}.get(kind, "") + content)
        lines.append("")
    lines.append(f"*{footer}*")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- browser check
@dataclass
class BrowserCheck:
    images: int
    broken: int
    screenshot: Path | None


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise UserError("no Chromium found; install it with scripts/install_system_deps.sh "
                    "(Debian: apt-get install chromium)")


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="zhtune-chromium-") as profile:
        cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


_CHECK_SCRIPT = """<script>window.addEventListener('load',function(){var n=0,b=0;
for(var i=0;i<document.images.length;i++){n++;var im=document.images[i];if(!im.complete||im.naturalWidth===0)b++;}
document.body.setAttribute('data-zhtune-images',n);document.body.setAttribute('data-zhtune-broken',b);});</script>"""


def check_in_browser(html_path: str | Path, screenshot: str | Path | None = None, *, width: int = 1280,
                     height: int = 2000, timeout: float = 120) -> BrowserCheck:
    """Open the report in headless Chromium: count its images and the broken ones (naturalWidth 0),
    and optionally save a screenshot. A copy with a tiny counting script is what gets loaded for the
    count, so the report itself stays script-free."""
    html_path = Path(html_path).resolve()
    text = html_path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="zhtune-check-") as tmp:
        probe = Path(tmp) / html_path.name
        probe.write_text(text.replace("</body>", _CHECK_SCRIPT + "</body>", 1), encoding="utf-8")
        res = _chromium(["--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000", "--dump-dom",
                         probe.as_uri()], timeout)
    m = re.search(r'data-zhtune-images="(\d+)"[^>]*data-zhtune-broken="(\d+)"', res.stdout)
    if not m:
        raise RuntimeError(f"chromium did not render {html_path} (exit {res.returncode}): {res.stderr[-2000:]}")
    shot = None
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        res = _chromium([f"--screenshot={shot}", f"--window-size={width},{height}", html_path.as_uri()], timeout)
        if not shot.is_file():
            raise RuntimeError(f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-2000:]}")
    return BrowserCheck(images=int(m.group(1)), broken=int(m.group(2)), screenshot=shot)

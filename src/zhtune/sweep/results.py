"""A sweep's results: one row per grid point with its intervals, the Pareto front, which setting is best
and with what evidence (``zhtune.analysis.grid``), what each factor does, the charts."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from zhtune.artifacts import read_adapter_meta
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_text, read_json
from zhtune.sweep.grid import SweepPoint


def collect_results(points: list[SweepPoint], failed: dict[str, str]) -> list[dict]:
    """One row per point from its run folder: what finished, failed, or is not finished yet."""
    rows = []
    for point in points:
        out = point.out_dir
        row: dict[str, Any] = {"run": point.name, **point.values}
        cmp_file = out / "compare" / "comparison.json"
        if point.name in failed or not cmp_file.exists():
            row["status"] = "failed" if point.name in failed else "unfinished"
            rows.append(row)
            continue
        cmp = read_json(cmp_file)
        row.update(status="done", **headline_numbers(cmp))
        meta = read_adapter_meta(out / "train")
        if meta:
            row["train_seconds"] = meta.get("train_seconds") or meta.get("train_runtime")
            row["trainable_params"] = meta.get("trainable_params")
        rows.append(row)
    return rows


def headline_figure(cmp: dict, name: str) -> dict:
    """The comparison's ``chinese_gain`` or ``english_forgetting`` figure the sweep ranks by. When
    every benchmark of a language is at chance (tiny runs) the headline leaves them out, and the
    sweep falls back to the figure that includes them: the one rule, for the table and the grid."""
    fig = cmp.get(name) or (cmp.get("pooled_including_floors") or {}).get(name)
    if fig is None:  # the sweep evaluated no benchmark of that language
        raise UserError(f"sweep: the comparison has no {name.replace('_', ' ')}; evaluate at "
                        "least one Chinese (ceval, cmmlu) and one English (mmlu, gsm8k) benchmark")
    return fig


def headline_numbers(cmp: dict) -> dict:
    """Chinese gain and English forgetting (points, with 95% intervals) from a comparison.json."""
    out: dict[str, Any] = {}
    for name in ("chinese_gain", "english_forgetting"):
        fig = headline_figure(cmp, name)
        out[name] = fig["change_points"]
        out[f"{name}_ci"] = [fig["ci_low"], fig["ci_high"]]
    return out


def pareto_front(rows: list[dict]) -> list[str]:
    """Finished runs not dominated in (more Chinese gain, less English forgetting)."""
    from zhtune.analysis.plots import pareto_front as front_of

    return front_of([r for r in rows if r.get("status") == "done"], label="run")


def write_results(out_root: Path, rows: list[dict], failed: dict[str, str],
                  evidence: dict | None = None, registration: dict | None = None) -> dict:
    """results.csv, results.md (the settings with their intervals, which setting is best and with
    what evidence, what each factor does, failed points and why), pareto.png/.svg (the trade-off with
    intervals on both axes), learning_forgetting.png/.svg and sweep.json, each written atomically.
    ``evidence``: :func:`zhtune.sweep.evidence.grid_evidence` (None: no point finished);
    ``registration``: what zhtune.registration.check_registration found (cited, and kept in sweep.json)."""
    from zhtune.analysis.grid_plots import plot_grid_tradeoff, plot_learning_forgetting
    from zhtune.registration import registration_sentence

    front = pareto_front(rows)
    done = [r for r in rows if r.get("status") == "done"]
    verdict = evidence["verdict"] if evidence else None
    in_set = set(verdict.confidence_set) if verdict else set()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns + ["pareto", "in_best_set", "named_best"])
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "pareto": r["run"] in front, "in_best_set": r["run"] in in_set,
                         "named_best": bool(verdict and verdict.best == r["run"])})
    atomic_write_text(out_root / "results.csv", buf.getvalue())

    md = [f"# Sweep results: {len(rows)} settings", ""]
    if registration:
        md += [registration_sentence(registration), ""]
    if verdict:
        md += [f"**{verdict.sentence()}**", ""]
    md += ["## Settings", "", "Chinese gain = tuned - base accuracy on the Chinese benchmarks, English forgetting = "
           "base - tuned on the English ones, in points with 95% intervals (each setting against the base "
           "model, paired, clustered by subject). Pareto: not beaten on both point estimates by another "
           "setting (a description, not evidence). In the best set: cannot be told apart from the best.", ""]
    md += settings_table(rows, columns, front, in_set)
    if evidence:
        md += [""] + best_section(evidence) + [""] + factor_section(evidence)
        md += ["", "## Charts", "", "![gain vs forgetting](pareto.png)", "",
               "![learning-forgetting curve](learning_forgetting.png)"]
    if failed:
        md += ["", "## Failed runs", ""] + [f"- {name}: {why}" for name, why in failed.items()]
    atomic_write_text(out_root / "results.md", "\n".join(md) + "\n")
    if done:
        plot_grid_tradeoff([{"label": r["run"], **{k: r[k] for k in (
            "chinese_gain", "chinese_gain_ci", "english_forgetting", "english_forgetting_ci")}} for r in done],
            out_root / "pareto", confidence_set=sorted(in_set), best=verdict.best if verdict else None,
            criterion=verdict.label if verdict else "")
    if evidence:
        plot_learning_forgetting(evidence["by_rank"], evidence["probes"], out_root / "learning_forgetting",
                                 factor=evidence["rank_axis"] or "lora.rank")
    summary = {"runs": rows, "pareto": front, "best": verdict.best if verdict else None,
               "best_set": verdict.confidence_set if verdict else [], "failed": list(failed), "failures": failed,
               "registration": registration}
    if evidence:
        summary.update(grid=verdict.to_dict(), factor_effects=evidence["effects"], balanced=evidence["balanced"],
                       learning_by_rank=evidence["by_rank"], probes=evidence["probes"])
    atomic_write_json(out_root / "sweep.json", summary)
    return summary


def settings_table(rows: list[dict], columns: list[str], front: list[str], in_set: set[str]) -> list[str]:
    """One line per setting: its axes, status, the two figures with their intervals, the rest."""
    figures = ("chinese_gain", "chinese_gain_ci", "english_forgetting", "english_forgetting_ci")
    rest = [c for c in columns if c not in figures]
    head = rest[:rest.index("status") + 1] if "status" in rest else rest
    tail = [c for c in rest if c not in head]
    names = head + ["Chinese gain [95% CI]", "English forgetting [95% CI]"] + tail + ["pareto", "in best set"]
    out = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for r in rows:
        cells = [_fmt(r.get(c)) for c in head] + [_figure(r, "chinese_gain"), _figure(r, "english_forgetting")]
        cells += [_fmt(r.get(c)) for c in tail]
        cells += ["yes" if r["run"] in front else "", "yes" if r["run"] in in_set else ""]
        out.append("| " + " | ".join(cells) + " |")
    return out


def best_section(evidence: dict) -> list[str]:
    """Which setting is best: the criterion, the decision, the settings that cannot be told apart
    and the questions that would separate them, and every pair."""
    v = evidence["verdict"]
    bench = ", ".join(evidence["chinese_benchmarks" if v.criterion == "chinese_gain" else "english_benchmarks"])
    out = ["## Best settings (settings compared with each other, paired)", "",
           f"Criterion: {v.label} ({bench}, {v.n_questions} questions), margin {v.margin:g} points "
           f"(sweep.criterion; analysis.{'gain' if v.criterion == 'chinese_gain' else 'forgetting'}_margin). "
           f"Family-wise alpha {v.alpha:g} over {len(v.settings)} settings: every pair is compared on the same "
           f"questions, with simultaneous {100 * v.simultaneous_confidence:.1f}% intervals (one-sided "
           f"{100 * v.alpha / max(len(v.settings) - 1, 1):.2g}% per comparison). A best setting is named only "
           "when it beats every other beyond the margin; otherwise the settings no other one beats are "
           "listed. Nothing is decided by order.", "", v.sentence(), ""]
    if v.separation:
        title = "Its closest rival" if v.best else "Cannot be told apart from the best"
        out += [f"{title}:", "", "| setting | accuracy | strongest rival | advantage [simultaneous CI] | "
                "answers differ | design effect | questions to separate |", "|---|---|---|---|---|---|---|"]
        for s in v.separation:
            needed = s["questions_to_separate"]
            needed = (f"{needed} (a difference of {s['difference_to_detect']:.1f})" if needed
                      else "no number (identical answers, margin 0)")
            rival = s["rival"] + (f" (and {s['rivals_tied']} more with the same estimate)" if s["rivals_tied"] else "")
            out.append(f"| {s['setting']} | {v.score[s['setting']]:.1f} | {rival} | "
                       f"{_pts(s['advantage'])} [{_pts(s['low'])}, {_pts(s['high'])}] | "
                       f"{100 * s['discordance']:.1f}% | {s['design_effect']:.2f} | {needed} |")
        out += ["", f"Questions to separate: of the criterion's benchmarks (now {v.n_questions}), for McNemar's test "
                "at the same per-comparison alpha with 80% power, at the pair's observed discordance times its "
                "design effect; the difference to detect is the larger of the observed one and the margin."]
    if v.pairs:
        out += ["", "<details><summary>Every pair</summary>", "",
                "| a | b | a - b [simultaneous CI] | p (unadjusted) | answers differ |", "|---|---|---|---|---|"]
        for p in v.pairs:
            out.append(f"| {p['a']} | {p['b']} | {_pts(p['advantage_a_minus_b'])} [{_pts(p['low'])}, "
                       f"{_pts(p['high'])}] | {p['p']:.3g} | {100 * p['discordance']:.1f}% |")
        out += ["", "</details>"]
    out += [""] + [f"- {note}" for note in v.notes] if v.notes else []
    return out


def factor_section(evidence: dict) -> list[str]:
    """Per factor level: the figures averaged over the other factors, and the change against the
    first level, with intervals and BH q."""
    effects = evidence["effects"]
    if not any(effects.values()):
        return []
    out = ["## What each factor does", "",
           "Each level averaged over the settings at that level (each question's correctness averaged), "
           "against the base model and against the factor's first level; 95% intervals clustered by subject "
           "(Tango on the averaged answers), q = Benjamini-Hochberg over the contrasts of one figure."]
    if not evidence["balanced"]:
        out.append("The grid is incomplete (a point failed or the grid is not a full product): a level's "
                   "average does not average the other factors out evenly.")
    for figure, rows in effects.items():
        label = "Chinese gain" if figure == "chinese_gain" else "English forgetting"
        out += ["", f"**{label}** (points)", "", "| factor | level | settings | average [95% CI] | "
                "change vs first level [95% CI] | q |", "|---|---|---|---|---|---|"]
        for r in rows:
            ref = r["vs_reference"]
            change = ("reference" if ref is None else "n/a" if ref["change"] is None
                      else f"{_pts(ref['change'])} [{_pts(ref['low'])}, {_pts(ref['high'])}]")
            q = "" if ref is None or "q" not in ref else f"{ref['q']:.2g}"
            avg = "n/a" if r["change"] is None else f"{_pts(r['change'])} [{_pts(r['low'])}, {_pts(r['high'])}]"
            out.append(f"| {r['factor']} | {r['level']} | {r['settings']} | {avg} | {change} | {q} |")
    return out


def _figure(r: dict, name: str) -> str:
    if r.get(name) is None:
        return ""
    lo, hi = r[f"{name}_ci"]
    return f"{_pts(r[name])} [{_pts(lo)}, {_pts(hi)}]"


def _pts(x: float) -> str:
    text = f"{x:+.1f}"
    return text[1:] if float(text) == 0 else text


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "" if v is None else str(v)

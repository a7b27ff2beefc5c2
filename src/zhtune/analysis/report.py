"""The report: plain opening sentences with the answer, then tables, charts, settings and method.

It is written from comparison.json contents (the compare stage's output, never recomputed here): one
document model (a list of blocks) rendered three ways, ``report.html`` (self-contained), ``report.md``
and ``report.json`` (the headline, every number and the file names); see ``zhtune.analysis.render``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from zhtune import __version__
from zhtune.analysis.fonts import ENGLISH_LABELS_NOTE, chinese_labels
from zhtune.analysis.plots import (comparison_point, plot_pareto, plot_radar, plot_subject_changes,
                                   plot_training_curves, radar_series, read_training_log)
from zhtune.analysis.render import Chart, check_in_browser, render_html, render_markdown  # noqa: F401
from zhtune.analysis.sentences import headline_sentences
from zhtune.analysis.tables import (benchmark_table, category_table, headline_figures, headline_table, levels_sentence,
                                    levels_table, perplexity_table, subject_table)
from zhtune.artifacts import provenance, read_adapter_meta, utc_timestamp
from zhtune.config import AnalysisConfig
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_text, read_json
from zhtune.registration import provenance_note


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
               subjects if subjects is not None else ("p", "No subject's accuracy moved in either direction.")]
    blocks += [("h3", "What each level can detect"), levels_table(main)]
    blocked = levels_sentence(main)
    if blocked:
        blocks.append(("p", blocked))
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
    figures.append(Chart("subjects", f"Change per subject for {main['tuned']['label']}, with 95% intervals "
                                      f"(not adjusted for multiplicity); red: loss, green: gain, each with "
                                      f"Benjamini–Hochberg q < 0.05 within its benchmark."))
    points = [p for p in (comparison_point(c) for c in comparisons) if p]
    if len(points) > 1:
        plot_pareto(points, out / "pareto")
        figures.append(Chart("pareto", "Chinese change against English forgetting for every run; the Pareto "
                                        "front (runs no other run beats on both) is marked."))
    if train_dir is not None:
        try:  # a training folder without usable logs costs the chart, not the report
            plot_training_curves(train_dir, out / "training")
            figures.append(Chart("training", f"Training curves from {train_dir}. {_training_summary(train_dir)}"))
        except UserError as err:
            notes.append(f"no training curves: {err}")
    if tradeoff is not None:
        figures.append(Chart("tradeoff", "Chinese change against English forgetting along the adapter scale "
                                          f"(tolerance {tradeoff.tolerance:g} points)."))
    return figures


def _settings_blocks(comparisons: Sequence[dict], adapter: dict) -> list:
    """What was compared, the adapter, the evaluation settings and how the statistics were computed."""
    main = comparisons[0]
    blocks: list = [("h2", "Settings")]
    blocks.append(("ul", [f"Base: {main['base']['model']} ({main['base']['dir']})",
                          f"Tuned: {main['tuned']['label']}: model {main['tuned']['model']}, adapter "
                          f"{main['tuned'].get('adapter')}, scale {main['tuned'].get('adapter_scale')} "
                          f"({main['tuned']['dir']})"]
                   + [f"Tuned: {c['tuned']['label']}: adapter {c['tuned'].get('adapter')}, scale "
                      f"{c['tuned'].get('adapter_scale')} ({c['tuned']['dir']})" for c in comparisons[1:]]))
    if adapter:
        blocks += [("h3", "Adapter and LoRA settings"), ("pre", "\n".join(_kv_lines(adapter)))]
    blocks += [("h3", "Evaluation settings"),
               ("pre", "\n".join(_kv_lines(main.get("settings") or {})) or "(none recorded)")]
    stats = main["statistics"]
    pooled = "; ".join(f"{name} pools {', '.join(f['n_by_benchmark'])}" for name, f in headline_figures(main))
    blocks += [("h2", "How the statistics were computed"),
               ("p", f"{stats['method']} Margins: English forgetting {stats['forgetting_margin']:g} points, "
                     f"Chinese change {stats['gain_margin']:g} points. {pooled or 'No pooled figure'}. "
                     f"Details: docs/statistics.md.")]
    return blocks


def _check_comparisons(comparisons: Sequence[dict]) -> None:
    if not comparisons:
        raise UserError("report: no comparisons to report")
    for cmp in comparisons:
        figures = [f for f in (cmp.get("chinese_gain"), cmp.get("english_forgetting")) if f]
        if any("verdict" not in f for f in figures) or "headline_excluded" not in cmp:
            raise UserError(f"the comparison of {cmp.get('tuned', {}).get('dir')} was written by an older zhtune; "
                            f"run zhtune compare again")


def build_report(*, comparisons: Sequence[dict], output_dir: str | Path, train_dir: str | Path | None = None,
                 scale_dir: str | Path | None = None, tolerance: float | None = None, title: str = "zhtune report",
                 analysis: AnalysisConfig | None = None, top_subjects: int = 15,
                 progress: Callable[[str], None] | None = None,
                 registration: dict | None = None) -> dict[str, Path]:
    """Write report.html, report.md, report.json and the chart files into ``output_dir``.

    ``comparisons``: comparison.json contents (``zhtune compare``'s output, the first one leading).
    ``train_dir`` adds training curves; ``scale_dir`` the adapter-scale trade-off (``analysis``: its
    margins and tolerance). Returns the paths written, by name."""
    step = progress or (lambda _msg: None)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparisons = list(comparisons)
    _check_comparisons(comparisons)
    main = comparisons[0]
    train_dir = Path(train_dir) if train_dir else None
    if train_dir is not None and not train_dir.is_dir():
        raise UserError(f"--train-dir {train_dir}: no such folder")
    notes: list[str] = []
    tradeoff = None
    if scale_dir is not None:
        from zhtune.analysis.scale import analyze_tradeoff, write_tradeoff

        step("adapter-scale trade-off")
        try:  # e.g. no pooled figure (every benchmark at chance): the trade-off is left out, with the reason
            tradeoff = analyze_tradeoff(scale_dir, tolerance=tolerance, base_dir=main["base"]["dir"],
                                        analysis=analysis)
            write_tradeoff(tradeoff, out)
        except UserError as err:
            notes.append(f"no adapter-scale trade-off: {err}")

    headline = headline_sentences(main)
    blocks: list = [("h1", title), ("lead", headline)] + _result_blocks(comparisons)
    step("charts")
    figures = _charts(comparisons, out, train_dir, tradeoff, top_subjects, notes)
    blocks += [("h2", "Charts")] + ([] if chinese_labels() else [("p", ENGLISH_LABELS_NOTE)]) + figures
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


def report_from_evaluations(base: str | Path, tuned: Sequence[str | Path], *, analysis: AnalysisConfig | None = None,
                            **kwargs) -> dict[str, Path]:
    """Compare ``base`` with each ``tuned`` evaluation (as ``zhtune compare`` would) and report them."""
    from zhtune.analysis.forgetting import compare_many

    if not tuned:
        raise UserError("report: give --base and at least one --tuned evaluation folder, or --comparison files")
    comparisons = [c.to_dict() for c in compare_many(base, tuned, analysis)]
    return build_report(comparisons=comparisons, analysis=analysis, **kwargs)

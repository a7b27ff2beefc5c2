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
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from zhtune import __version__
from zhtune.analysis.forgetting import compare_many, format_p, num, signed
from zhtune.analysis.plots import (benchmark_name, comparison_point, plot_pareto, plot_radar,
                                   plot_subject_changes, plot_training_curves, radar_series,
                                   read_training_log, subject_rows)
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_text, read_json

CATEGORY_NAMES = {"Social Science": "Social Sciences"}


# ----------------------------------------------------------------------------------- formatting
def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _questions(n_by_benchmark: dict[str, int]) -> str:
    parts = [f"{n:,} {benchmark_name(b)}" for b, n in n_by_benchmark.items()]
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
def headline_sentences(cmp: dict) -> list[str]:
    """Three sentences that answer "did it learn Chinese, and what did it forget?" with numbers."""
    zh, en = cmp.get("chinese_gain"), cmp.get("english_forgetting")
    if zh is None:
        s1 = "No Chinese benchmark (C-Eval or CMMLU) was evaluated, so the Chinese gain is unknown."
    else:
        d = zh["change_points"]
        verb = _by(d)
        verdict = ("a significant gain" if zh["significant"] else "a significant loss" if zh["significant_opposite"]
                   else "not significant" + (", the interval includes zero" if zh["ci_low"] <= 0 <= zh["ci_high"]
                                             else f" (p {format_p(zh['p_value'])})"))
        s1 = (f"After LoRA fine-tuning{_scale_note(cmp)}, Chinese accuracy {verb} (95% CI {num(zh['ci_low'])} to "
              f"{num(zh['ci_high'])}, McNemar p {format_p(zh['p_value'])}) over "
              f"{_questions(zh['n_by_benchmark'])}: {verdict}.")
    if en is None:
        s2 = "No English benchmark (MMLU or GSM8K) was evaluated, so forgetting is unknown."
    else:
        d = en["tuned_minus_base_points"]  # shown as the change, like the Chinese figure
        verb = _by(d)
        flagged = [b for b in cmp.get("significant_forgetting", []) if b in en["benchmarks"]]
        flagged_txt = ", ".join(f"{benchmark_name(b)} {signed(cmp['benchmarks'][b]['change_points'])} points"
                                for b in flagged)
        if en["significant"]:
            verdict = "significant forgetting" + (f" ({flagged_txt})" if flagged else "")
        elif flagged:
            verdict = f"no significant forgetting overall, but significant in {flagged_txt}"
        elif en["significant_opposite"]:
            verdict = "English improved significantly"
        else:
            verdict = "no significant forgetting"
        s2 = (f"English accuracy {verb} (95% CI {num(-en['ci_high'])} to {num(-en['ci_low'])}, "
              f"p {format_p(en['p_value'])}) over {_questions(en['n_by_benchmark'])}: {verdict}.")
    ppl = cmp.get("perplexity") or {}
    if "zh" in ppl and "en" in ppl:
        z, e = ppl["zh"], ppl["en"]
        s3 = (f"On held-out text the model's bits per character went from {z['base_bits_per_char']:.2f} to "
              f"{z['tuned_bits_per_char']:.2f} in Chinese ({signed(100 * (z['ratio'] - 1))}%) and from "
              f"{e['base_bits_per_char']:.2f} to {e['tuned_bits_per_char']:.2f} in English "
              f"({signed(100 * (e['ratio'] - 1))}%; lower is better).")
    else:
        rows = subject_rows(cmp)
        s3 = (f"The largest subject changes were {rows[-1]['label']} ({signed(rows[-1]['change_points'])} points) "
              f"and {rows[0]['label']} ({signed(rows[0]['change_points'])} points)."
              if len(rows) > 1 else "Perplexity was not measured.")
    if en is not None and en.get("retention") and "zh" not in ppl:
        s3 += f" English keeps {100 * en['retention']:.1f}% of its base accuracy."
    return [s1, s2, s3]


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


def _stat_cells(g: dict) -> list[str]:
    return [f"{g['n']:,}", pct(g["base_accuracy"]), pct(g["tuned_accuracy"]), signed(g["change_points"]),
            f"{num(g['ci_low'])} to {num(g['ci_high'])}", format_p(g["p_value"]).replace("= ", "")]


_STAT_HEADERS = ["n", "Base %", "Tuned %", "Change (pts)", "95% CI", "McNemar p"]


def _flag(g: dict) -> str:
    if g["significant_forgetting"]:
        return "significant forgetting"
    return "significant gain" if g["significant_gain"] else ""


def benchmark_table(comparisons: Sequence[dict]) -> Table:
    several = len(comparisons) > 1
    rows = []
    for cmp in comparisons:
        for bench, g in cmp["benchmarks"].items():
            retention = "–" if g["retention"] is None else f"{100 * g['retention']:.1f}%"
            rows.append(([cmp["tuned"]["label"]] if several else []) + [benchmark_name(bench)] + _stat_cells(g)
                        + [f"{g['base_right_tuned_wrong']} / {g['base_wrong_tuned_right']}", retention, _flag(g)])
    return Table((["Run"] if several else []) + ["Benchmark"] + _STAT_HEADERS + ["Lost / gained", "Retention", "Flag"],
                 rows, "Lost / gained: questions right before and wrong after / wrong before and right after.")


def headline_table(comparisons: Sequence[dict]) -> Table:
    rows = []
    for cmp in comparisons:
        for key, name in (("chinese_gain", "Chinese gain (C-Eval + CMMLU)"),
                          ("english_forgetting", "English forgetting (MMLU + GSM8K)")):
            f = cmp.get(key)
            if f:
                rows.append([cmp["tuned"]["label"], name, f"{f['n']:,}", signed(f["change_points"]),
                             f"{num(f['ci_low'])} to {num(f['ci_high'])}", format_p(f["p_value"]).replace("= ", ""),
                             "yes" if f["significant"] else "no"])
    return Table(["Run", "Figure", "n", "Points", "95% CI", "McNemar p", "Significant"], rows,
                 "Chinese gain = tuned − base; English forgetting = base − tuned (positive means forgotten).")


def category_table(cmp: dict) -> Table:
    rows = [[benchmark_name(b), CATEGORY_NAMES.get(cat, cat)] + _stat_cells(g) + [_flag(g)]
            for b, cats in cmp["categories"].items() for cat, g in cats.items()]
    return Table(["Benchmark", "Category"] + _STAT_HEADERS + ["Flag"], rows)


def subject_table(cmp: dict, top: int = 10) -> Table:
    rows = subject_rows(cmp)
    shown = rows[::-1] if len(rows) <= 2 * top else rows[:-top - 1:-1] + rows[:top]
    cells = [[r["label"], f"{r['n']:,}", pct(r["base_accuracy"]), pct(r["tuned_accuracy"]),
              signed(r["change_points"]), f"{num(r['ci_low'])} to {num(r['ci_high'])}",
              format_p(r["p_value"]).replace("= ", "")] for r in shown]
    caption = (f"The {top} largest gains and {top} largest losses of {len(rows)} subjects."
               if len(rows) > 2 * top else f"All {len(rows)} subjects, largest gain first.")
    return Table(["Subject", "n", "Base %", "Tuned %", "Change (pts)", "95% CI", "McNemar p"], cells, caption)


def perplexity_table(cmp: dict) -> Table | None:
    ppl = cmp.get("perplexity") or {}
    if not ppl:
        return None
    names = {"zh": "Chinese (zh)", "en": "English (en)"}
    rows = [[names.get(lang, lang), f"{p['base_bits_per_char']:.3f}", f"{p['tuned_bits_per_char']:.3f}",
             signed(p["change"], 3), "–" if p["ratio"] is None else f"{p['ratio']:.3f}"] for lang, p in ppl.items()]
    return Table(["Held-out text", "Base bits/char", "Tuned bits/char", "Change", "Ratio tuned/base"], rows,
                 "Bits per character on text that training never sees; lower is better.")


# ----------------------------------------------------------------------------------- settings
def _adapter_info(cmp: dict, train_dir: Path | None) -> dict:
    """LoRA settings from the adapter folder (zhtune_adapter.json, adapter_config.json) if it is here."""
    candidates = [train_dir / "adapter"] if train_dir else []
    if cmp["tuned"].get("adapter"):
        candidates.append(Path(cmp["tuned"]["adapter"]))
    for folder in candidates:
        info = {}
        if (folder / "zhtune_adapter.json").is_file():
            info.update(read_json(folder / "zhtune_adapter.json"))
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


def build_report(*, base: str | Path | None = None, tuned: Sequence[str | Path] = (),
                 comparisons: Sequence[dict] | None = None, output_dir: str | Path,
                 train_dir: str | Path | None = None, scale_dir: str | Path | None = None,
                 tolerance: float = 1.0, title: str = "zhtune report", bootstrap_samples: int = 2000,
                 seed: int = 0, top_subjects: int = 15,
                 progress: Callable[[str], None] | None = None) -> dict[str, Path]:
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
        comparisons = [c.to_dict() for c in compare_many(base, tuned, bootstrap_samples=bootstrap_samples, seed=seed)]
    comparisons = list(comparisons)
    if not comparisons:
        raise UserError("report: no comparisons to report")
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
                                    bootstrap_samples=bootstrap_samples, seed=seed)
        write_tradeoff(tradeoff, out)

    headline = headline_sentences(main)
    blocks: list = [("h1", title), ("lead", headline)]
    blocks += [("h2", "Results"), ("h3", "Headline figures"), headline_table(comparisons),
               ("h3", "Benchmarks"), benchmark_table(comparisons)]
    if len(comparisons) > 1:
        blocks.append(("p", f"Categories, subjects and perplexity below are for the first tuned run, "
                            f"{main['tuned']['label']}."))
    blocks += [("h3", "Categories"), category_table(main), ("h3", "Largest subject changes"),
               subject_table(main)]
    ppl = perplexity_table(main)
    if ppl:
        blocks += [("h3", "Perplexity probes"), ppl]

    step("charts")
    figures: list[Chart] = []
    plot_radar(radar_series(comparisons), out / "radar")
    figures.append(Chart("radar", "Accuracy by benchmark category, base and tuned (中英文能力雷达图)."))
    plot_subject_changes(main, out / "subjects", top=top_subjects)
    figures.append(Chart("subjects", f"Change per subject for {main['tuned']['label']}, with 95% bootstrap "
                                      f"intervals; red: significant loss, green: significant gain."))
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
    blocks += [("h2", "Charts")] + figures
    if tradeoff is not None:
        blocks += [("h2", "Adapter scale"), ("ul", tradeoff.reasoning)]

    blocks.append(("h2", "Settings"))
    for cmp in comparisons[:1]:
        blocks.append(("ul", [f"Base: {cmp['base']['model']} ({cmp['base']['dir']})",
                              f"Tuned: {cmp['tuned']['label']}: model {cmp['tuned']['model']}, adapter "
                              f"{cmp['tuned'].get('adapter')}, scale {cmp['tuned'].get('adapter_scale')} "
                              f"({cmp['tuned']['dir']})"]
                       + [f"Tuned: {c['tuned']['label']}: adapter {c['tuned'].get('adapter')}, scale "
                          f"{c['tuned'].get('adapter_scale')} ({c['tuned']['dir']})" for c in comparisons[1:]]))
    adapter = _adapter_info(main, train_dir)
    if adapter:
        blocks += [("h3", "Adapter and LoRA settings"), ("pre", "\n".join(_kv_lines(adapter)))]
    blocks += [("h3", "Evaluation settings"),
               ("pre", "\n".join(_kv_lines(main.get("settings") or {})) or "(none recorded)")]
    stats = main["statistics"]
    blocks += [("h2", "How the statistics were computed"),
               ("p", f"{stats['method']} Bootstrap: {stats['bootstrap_samples']:,} replicates, seed "
                     f"{stats['seed']}. Chinese gain pools C-Eval and CMMLU questions; English forgetting pools "
                     f"MMLU and GSM8K questions (GSM8K counts the flexible answer match).")]
    notes += [n for c in comparisons for n in c.get("notes", [])]
    if notes:
        blocks += [("h3", "Notes"), ("ul", notes)]

    step("writing report")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    footer = f"Made by zhtune {__version__} on {created}."
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

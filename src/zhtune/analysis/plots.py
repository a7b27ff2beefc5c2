"""Charts of a comparison: ability radar, per-subject change, training curves, gain/forgetting scatter.

Everything draws on a bare ``matplotlib.figure.Figure`` (Agg, no pyplot state) inside an rc context
whose font chain starts with an installed CJK font, so Chinese labels render as glyphs and not as
empty boxes; Latin characters the CJK font lacks fall back to DejaVu Sans. Without a CJK font the
labels are written in English (``zhtune.analysis.fonts``). Each chart is saved as
PNG and SVG (text as paths, so the SVG looks the same everywhere), atomically.
"""
from __future__ import annotations

import io
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib
from matplotlib.figure import Figure  # a bare Figure renders with Agg; pyplot is never needed

from zhtune.analysis.fonts import chart_fonts, localize_figure
from zhtune.analysis.formatting import benchmark_name
from zhtune.errors import UserError
from zhtune.io import atomic_write_bytes, iter_jsonl

log = logging.getLogger(__name__)

CATEGORY_ZH = {"STEM": "理工", "Humanities": "人文", "Social Sciences": "社科", "Social Science": "社科",
               "Other": "其他", "China specific": "中国特色", "Math": "数学"}
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
GAIN, LOSS, NEUTRAL = "#2e8b57", "#c0392b", "#9e9e9e"


# ----------------------------------------------------------------------------------- style
@contextmanager
def chart_style() -> Iterator[None]:
    """rcParams for every chart: the CJK font first, DejaVu Sans as fallback, text as SVG paths."""
    with matplotlib.rc_context({
        "font.family": "sans-serif", "font.sans-serif": chart_fonts(),
        "svg.fonttype": "path", "axes.spines.top": False, "axes.spines.right": False,
        "axes.titlesize": 13, "figure.dpi": 100, "savefig.dpi": 110,
    }):
        yield


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` atomically; returns both paths."""
    stem = Path(stem)
    localize_figure(fig, {zh: en for en, zh in reversed(CATEGORY_ZH.items())})  # no CJK font: English
    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        paths.append(atomic_write_bytes(stem.with_suffix(f".{fmt}"), buf.getvalue()))
    return paths


# ----------------------------------------------------------------------------------- radar
def ability_axes(comparison: dict, side: str = "tuned") -> dict[str, float]:
    """Accuracy (0..1) per radar axis: a benchmark's categories, or the benchmark when it has one."""
    out = {}
    for bench, stats in comparison["benchmarks"].items():
        cats = comparison.get("categories", {}).get(bench) or {}
        if len(cats) > 1:
            for cat, c in cats.items():
                out[f"{benchmark_name(bench)}·{CATEGORY_ZH.get(cat, cat)}"] = c[f"{side}_accuracy"]
        else:
            out[benchmark_name(bench)] = stats[f"{side}_accuracy"]
    return out


def radar_series(comparisons: Sequence[dict]) -> list[tuple[str, dict[str, float]]]:
    """Base (from the first comparison) and every tuned run, as (label, {axis: accuracy})."""
    first = comparisons[0]
    series = [(first["base"].get("label") or "base", ability_axes(first, "base"))]
    series += [(c["tuned"].get("label") or f"tuned {i + 1}", ability_axes(c, "tuned"))
               for i, c in enumerate(comparisons)]
    return series


def plot_radar(series: Sequence[tuple[str, dict[str, float]]], stem: str | Path,
               title: str = "中英文能力 Abilities (accuracy %)") -> list[Path]:
    """One polygon per run over the union of axes (accuracies 0..1, drawn in %)."""
    axes = list(dict.fromkeys(a for _, values in series for a in values))
    if not axes:
        raise UserError("radar chart: no benchmark results to draw")
    angles = [2 * math.pi * i / len(axes) for i in range(len(axes))]
    top = max((v for _, values in series for v in values.values()), default=1.0) * 100
    with chart_style():
        fig = Figure(figsize=(8, 7.5))
        ax = fig.add_subplot(projection="polar")
        ax.set_theta_offset(math.pi / 2)
        ax.set_theta_direction(-1)
        for i, (label, values) in enumerate(series):
            vals = [100 * values.get(a, math.nan) for a in axes]
            color = COLORS[i % len(COLORS)]
            ax.plot(angles + angles[:1], vals + vals[:1], color=color, lw=2, marker="o", ms=4, label=label)
            ax.fill(angles + angles[:1], vals + vals[:1], color=color, alpha=0.10)
        ax.set_xticks(angles, axes, fontsize=10)
        ax.set_ylim(0, min(100, max(10, math.ceil(top * 1.15 / 10) * 10)))
        ax.tick_params(axis="y", labelsize=8, colors="#666666")
        ax.set_title(title, pad=24)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=min(4, len(series)), frameon=False)
        return save_figure(fig, stem)


# ----------------------------------------------------------------------------------- subjects
def subject_rows(comparison: dict) -> list[dict]:
    """Every subject's change with its interval, sorted from largest loss to largest gain."""
    rows = []
    for bench, subs in comparison.get("subjects", {}).items():
        for subject, s in subs.items():
            rows.append({"benchmark": bench, "subject": subject, "label": f"{benchmark_name(bench)}·{subject}",
                         **{k: s[k] for k in ("change_points", "ci_low", "ci_high", "p_value", "n",
                                              "base_accuracy", "tuned_accuracy", "significant_forgetting",
                                              "significant_gain")},
                         # comparison.json files written before q-values existed have none
                         "q_value": s.get("q_value"), "verdict": s.get("verdict", "")})
    return sorted(rows, key=lambda r: (r["change_points"], r["label"]))


def plot_subject_changes(comparison: dict, stem: str | Path, top: int = 15) -> list[Path]:
    """Horizontal bars of each subject's change (points) with its 95% interval; when there are more
    than ``2 * top`` subjects only the ``top`` largest losses and gains are shown."""
    rows = subject_rows(comparison)
    if not rows:
        raise UserError("subject chart: the comparison has no subjects")
    shown = rows if len(rows) <= 2 * top else rows[:top] + rows[-top:]
    with chart_style():
        fig = Figure(figsize=(9, 1.4 + 0.3 * len(shown)))
        ax = fig.add_subplot()
        ys = list(range(len(shown)))
        changes = [r["change_points"] for r in shown]
        err = [[max(0.0, r["change_points"] - r["ci_low"]) for r in shown],
               [max(0.0, r["ci_high"] - r["change_points"]) for r in shown]]
        colors = [LOSS if r["significant_forgetting"] else GAIN if r["significant_gain"] else NEUTRAL for r in shown]
        ax.barh(ys, changes, xerr=err, color=colors, height=0.7,
                error_kw={"ecolor": "#333333", "elinewidth": 0.8, "capsize": 2})
        ax.set_yticks(ys, [f"{r['label']} (n={r['n']})" for r in shown], fontsize=8)
        ax.axvline(0, color="#333333", lw=0.8)
        if len(shown) < len(rows):
            ax.axhline(top - 0.5, color="#999999", lw=0.8, ls="--")
            ax.text(1.0, top - 0.5, f"  {len(rows) - len(shown)} subjects not shown ", fontsize=8,
                    color="#666666", va="center", ha="right", transform=ax.get_yaxis_transform())
        ax.set_xlabel("各科变化 change per subject (points, 95% CI); red/green: loss/gain with BH q < 0.05")
        ax.set_title("各科目准确率变化 Change by subject")
        return save_figure(fig, stem)


# ----------------------------------------------------------------------------------- training
def _read_log(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float))]


def read_training_log(train_dir: str | Path) -> list[dict]:
    """Rows with a ``step`` from ``train_log.jsonl``, sorted by step. Probe metrics come from there
    too; ``probes.jsonl`` (the probe callback's own copy) is read only when the log has none."""
    train_dir = Path(train_dir)
    log_file, probe_file = train_dir / "train_log.jsonl", train_dir / "probes.jsonl"
    if not log_file.is_file() and not probe_file.is_file():
        raise UserError(f"{train_dir}: no train_log.jsonl or probes.jsonl (not a zhtune training folder?)")
    rows = _read_log(log_file) if log_file.is_file() else []
    if probe_file.is_file() and not any(k.startswith("probe/") for r in rows for k in r):
        rows += _read_log(probe_file)
    return sorted(rows, key=lambda r: r["step"])


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_training_curves(train_dir: str | Path, stem: str | Path) -> list[Path]:
    """Training (and eval) loss, probe accuracies and probe bits per char against the step."""
    rows = read_training_log(train_dir)
    panels = [
        ("损失 Loss", [("loss", "train loss"), ("eval_loss", "eval loss")], 1.0),
        ("探针准确率 Probe accuracy (%)", [("probe/ceval_acc", "C-Eval"), ("probe/cmmlu_acc", "CMMLU"),
                                        ("probe/mmlu_acc", "MMLU"), ("probe/gsm8k_acc", "GSM8K")], 100.0),
        ("每字符比特 Bits per char", [("probe/zh_bpc", "中文 zh"), ("probe/en_bpc", "英文 en")], 1.0),
    ]
    panels = [(t, [(k, lab) for k, lab in lines if _series(rows, k)[0]], scale) for t, lines, scale in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        raise UserError(f"{train_dir}: the training log has no loss or probe values to plot")
    with chart_style():
        fig = Figure(figsize=(5 * len(panels), 3.8))
        for i, (title, lines, scale) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for j, (key, label) in enumerate(lines):
                xs, ys = _series(rows, key)
                ax.plot(xs, [y * scale for y in ys], color=COLORS[j % len(COLORS)], lw=1.6,
                        marker="o" if len(xs) < 30 else None, ms=3, label=label)
            ax.set_title(title)
            ax.set_xlabel("步数 step")
            ax.legend(frameon=False, fontsize=9)
            ax.grid(alpha=0.3)
        fig.set_layout_engine("tight")  # laid out when saved, after the labels are final
        return save_figure(fig, stem)


# ----------------------------------------------------------------------------------- trade-off
def pareto_front(points: Sequence[dict], label: str = "label") -> list[str]:
    """The ``label`` of every point no other point beats on both more Chinese gain and less English
    forgetting (the sweep's rows use ``label="run"``)."""
    front = []
    for p in points:
        dominated = any(q is not p and q["chinese_gain"] >= p["chinese_gain"]
                        and q["english_forgetting"] <= p["english_forgetting"]
                        and (q["chinese_gain"] > p["chinese_gain"] or q["english_forgetting"] < p["english_forgetting"])
                        for q in points)
        if not dominated:
            front.append(p[label])
    return front


def plot_pareto(points: Sequence[dict], stem: str | Path, *, title: str = "中文提升与英文遗忘 Gain vs forgetting",
                connect: bool = False, tolerance: float | None = None, highlight: str | None = None,
                mark_front: bool = True) -> list[Path]:
    """Scatter of Chinese gain (y) against English forgetting (x), one labelled point per run.

    ``points``: dicts with label, chinese_gain, english_forgetting (points) and optionally
    chinese_gain_ci / english_forgetting_ci ([low, high]). ``connect`` draws a line through the
    points in the given order (e.g. along the adapter scale); ``tolerance`` a vertical line at the
    accepted forgetting; ``highlight`` rings one point (the recommendation)."""
    if not points:
        raise UserError("gain/forgetting chart: no runs to draw")
    front = set(pareto_front(points)) if mark_front else set()
    with chart_style():
        fig = Figure(figsize=(8, 6))
        ax = fig.add_subplot()
        ax.axhline(0, color="#999999", lw=0.8)
        ax.axvline(0, color="#999999", lw=0.8)
        if connect:
            ax.plot([p["english_forgetting"] for p in points], [p["chinese_gain"] for p in points],
                    color="#bbbbbb", lw=1.2, zorder=1)
        if tolerance is not None:
            ax.axvline(tolerance, color=LOSS, lw=1, ls="--")
            ax.text(tolerance, 1.0, f" 容忍 tolerance {tolerance:g}", color=LOSS, fontsize=9, va="top",
                    transform=ax.get_xaxis_transform())
        for p in points:
            x, y = p["english_forgetting"], p["chinese_gain"]
            xci, yci = p.get("english_forgetting_ci"), p.get("chinese_gain_ci")
            if xci or yci:
                ax.errorbar(x, y, xerr=[[x - xci[0]], [xci[1] - x]] if xci else None,
                            yerr=[[y - yci[0]], [yci[1] - y]] if yci else None,
                            color="#cccccc", lw=0.8, zorder=1)
            on_front = p["label"] in front
            ax.scatter([x], [y], s=60 if on_front else 36, zorder=3, color=COLORS[0] if on_front else NEUTRAL,
                       edgecolor="black" if on_front else "none")
        # One label per position, so runs with identical results do not print over each other.
        labels: dict[tuple[float, float], list[str]] = {}
        for p in points:
            labels.setdefault((p["english_forgetting"], p["chinese_gain"]), []).append(p["label"])
        for (x, y), names in labels.items():
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=9)
        if len(front) > 1:
            fp = sorted((p for p in points if p["label"] in front), key=lambda p: p["english_forgetting"])
            ax.step([p["english_forgetting"] for p in fp], [p["chinese_gain"] for p in fp], where="post",
                    color=COLORS[0], lw=1, ls=":", zorder=2, label="Pareto front 帕累托前沿")
            ax.legend(frameon=False, loc="lower right")
        if highlight is not None:
            for p in points:
                if p["label"] == highlight:
                    ax.scatter([p["english_forgetting"]], [p["chinese_gain"]], s=260, facecolor="none",
                               edgecolor=GAIN, lw=2, zorder=4)
        ax.set_xlabel("英文遗忘 English forgetting (points, base − tuned; lower is better)")
        ax.set_ylabel("中文提升 Chinese gain (points, tuned − base)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        return save_figure(fig, stem)


def comparison_point(comparison: dict, label: str | None = None) -> dict | None:
    """A comparison.json's (label, gain, forgetting, intervals) for plot_pareto; None without both."""
    zh, en = comparison.get("chinese_gain"), comparison.get("english_forgetting")
    if not zh or not en:
        return None
    return {"label": label or comparison["tuned"].get("label"),
            "chinese_gain": zh["change_points"], "chinese_gain_ci": [zh["ci_low"], zh["ci_high"]],
            "english_forgetting": en["change_points"], "english_forgetting_ci": [en["ci_low"], en["ci_high"]]}

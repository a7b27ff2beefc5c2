"""Charts of a LoRA grid: the trade-off with intervals on both axes, and the learning-forgetting curve.

The learning-forgetting curve is the figure Biderman et al. (2024, "LoRA Learns Less and Forgets
Less") made popular: what is learned (Chinese gain, up) against what is forgotten (English
forgetting, right), along a path: over LoRA rank (each rank averaged over the other factors of the
grid) and over training steps (the forgetting probes of each setting, ``train/probes.jsonl``).

Labels are ASCII (setting names, English axis titles), so no CJK font is needed. Figures are bare
``matplotlib.figure.Figure`` objects (Agg, no pyplot state), saved as PNG and SVG atomically.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure

from zhtune.io import atomic_write_bytes

IN_SET, OUT_OF_SET, BEST = "#4c72b0", "#9e9e9e", "#2e8b57"
X_LABEL = "English forgetting (points, base - tuned; lower is better)"
Y_LABEL = "Chinese gain (points, tuned - base)"


def save(fig: Figure, stem: str | Path) -> list[Path]:
    """``stem``.png and ``stem``.svg, each written atomically."""
    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        with matplotlib.rc_context({"svg.fonttype": "path"}):
            fig.savefig(buf, format=ext, dpi=110)
        paths.append(atomic_write_bytes(Path(f"{stem}.{ext}"), buf.getvalue()))
    return paths


def _errorbar(ax, x: float, y: float, xci: Sequence[float] | None, yci: Sequence[float] | None, **kw) -> None:
    ax.errorbar([x], [y], xerr=[[x - xci[0]], [xci[1] - x]] if xci else None,
                yerr=[[y - yci[0]], [yci[1] - y]] if yci else None, fmt="o", capsize=3, **kw)


def plot_grid_tradeoff(points: Sequence[dict], stem: str | Path, *, confidence_set: Sequence[str] = (),
                       best: str | None = None, criterion: str = "Chinese gain") -> list[Path]:
    """Chinese gain against English forgetting, one point per setting with its 95% intervals on both
    axes. Settings in the confidence set for the best are blue, the others grey; a named best is
    green. ``points``: dicts with label, chinese_gain, english_forgetting and their ``_ci``."""
    fig = Figure(figsize=(8, 6))
    ax = fig.add_subplot()
    ax.axhline(0, color="#999999", lw=0.8)
    ax.axvline(0, color="#999999", lw=0.8)
    labels: dict[tuple[float, float], list[str]] = {}
    for p in points:
        color = BEST if p["label"] == best else IN_SET if p["label"] in confidence_set else OUT_OF_SET
        _errorbar(ax, p["english_forgetting"], p["chinese_gain"], p.get("english_forgetting_ci"),
                  p.get("chinese_gain_ci"), color=color, ecolor=color, alpha=0.9, lw=1, ms=6)
        labels.setdefault((p["english_forgetting"], p["chinese_gain"]), []).append(p["label"])
    for (x, y), names in labels.items():  # one label per position: equal results do not overprint
        ax.annotate(", ".join(sorted(names)), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    handles = [matplotlib.lines.Line2D([], [], color=c, marker="o", ls="", label=t) for c, t in (
        (BEST, "named best"), (IN_SET, f"cannot be told apart from the best ({criterion})"),
        (OUT_OF_SET, "worse than some other setting")) if c != BEST or best]
    ax.legend(handles=handles, frameon=False, loc="best", fontsize=8)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL)
    ax.set_title("LoRA grid: gain vs forgetting, 95% intervals on both axes")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, stem)


def plot_learning_forgetting(by_level: Sequence[dict], by_step: dict[str, list[dict]], stem: str | Path,
                             *, factor: str = "lora.rank") -> list[Path]:
    """Two panels. Left, over ``factor``: per level (in grid order) the average Chinese gain and
    English forgetting with 95% intervals, joined in order. Right, over training steps: per setting
    its probe path (step 0 = before training) with conservative 95% intervals. Each entry has
    label, chinese_gain, english_forgetting and their ``_ci``; a missing side says why it is empty."""
    fig = Figure(figsize=(12, 5.5))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for ax in (left, right):
        ax.axhline(0, color="#999999", lw=0.8)
        ax.axvline(0, color="#999999", lw=0.8)
        ax.set_xlabel(X_LABEL, fontsize=9)
        ax.set_ylabel(Y_LABEL, fontsize=9)
        ax.grid(alpha=0.3)
    name = factor.rsplit(".", 1)[-1]
    if by_level:
        left.plot([p["english_forgetting"] for p in by_level], [p["chinese_gain"] for p in by_level],
                  color=IN_SET, lw=1.2, zorder=1)
        at: dict[tuple[float, float], list[str]] = {}
        for p in by_level:
            _errorbar(left, p["english_forgetting"], p["chinese_gain"], p.get("english_forgetting_ci"),
                      p.get("chinese_gain_ci"), color=IN_SET, capthick=1, lw=1)
            at.setdefault((p["english_forgetting"], p["chinese_gain"]), []).append(str(p["label"]))
        for (x, y), levels in at.items():  # levels with equal results share one label
            left.annotate(f"{name} {', '.join(levels)}", (x, y), textcoords="offset points", xytext=(6, 5),
                          fontsize=9)
        left.set_title(f"over {name} (each level averaged over the other factors)", fontsize=10)
    else:
        left.set_title(f"over {name}: the grid has no {factor} axis", fontsize=10)
    colors = matplotlib.colormaps["tab10"]
    for i, (setting, path) in enumerate(sorted(by_step.items())):
        color = colors(i % 10)
        right.plot([p["english_forgetting"] for p in path], [p["chinese_gain"] for p in path], color=color,
                   lw=1.2, label=setting)
        for p in path:
            _errorbar(right, p["english_forgetting"], p["chinese_gain"], p.get("english_forgetting_ci"),
                      p.get("chinese_gain_ci"), color=color, alpha=0.5, lw=0.8, ms=4)
        last = path[-1]
        right.annotate(f"step {last['label']}", (last["english_forgetting"], last["chinese_gain"]),
                       textcoords="offset points", xytext=(5, -10), fontsize=7, color=color)
    if by_step:
        right.legend(frameon=False, fontsize=7, loc="best")
        right.set_title("over training steps (forgetting probes; conservative intervals)", fontsize=10)
    else:
        right.set_title("over training steps: no probes (set train.probes.every_steps)", fontsize=10)
    fig.suptitle("Learning-forgetting curve (as in Biderman et al. 2024, LoRA Learns Less and Forgets Less)")
    fig.tight_layout()
    return save(fig, stem)

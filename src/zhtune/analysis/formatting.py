"""How numbers and changes are written, in one place for the report, the charts and the commands.

Wording rules (docs/statistics.md): a change whose interval includes 0 "changed by −0.3 points", only a
significant one "rose" or "fell"; a bound is "excluded at one-sided 95%", never "ruled out"; nothing is
said to have "not changed".
"""
from __future__ import annotations

from zhtune.analysis.catalog import title

CATEGORY_NAMES = {"Social Science": "Social Sciences"}


def signed(x: float, digits: int = 1) -> str:
    """``+3.1`` / ``−0.8`` with a true minus sign; ``0.0`` for anything that rounds to zero."""
    text = f"{x:+.{digits}f}"
    return text[1:] if float(text) == 0 else text.replace("-", "−")


def num(x: float, digits: int = 1) -> str:
    """``3.1`` / ``−0.8``; never ``−0.0``."""
    text = f"{x:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text.replace("-", "−")


def format_p(p: float) -> str:
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3f}" if p < 0.01 else f"= {p:.2f}"


def p_cell(p: float | None) -> str:
    """A p or q in a table cell: ``0.12``, ``< 0.001``, ``–``."""
    return "–" if p is None else format_p(p).replace("= ", "")


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def benchmark_name(bench: str) -> str:
    """Display name from the benchmark's spec: ``C-Eval``, ``MMLU (cloze)``."""
    return title(bench)


def category_name(category: str) -> str:
    return CATEGORY_NAMES.get(category, category)


def changed_by(d: float, significant: bool) -> str:
    """``rose by 3.1 points`` / ``fell by 3.1 points`` for a significant change, else ``changed by −0.3
    points``; two decimals where one would read 0.0."""
    digits = 2 if 0 < abs(d) < 0.1 else 1
    if significant and d > 0:
        return f"rose by {num(d, digits)} points"
    if significant and d < 0:
        return f"fell by {num(-d, digits)} points"
    return f"changed by {signed(d, digits)} points"


def mdc(g: dict) -> str:
    """The minimum detectable change of a figure, or ``–`` when nothing up to 100 points is detectable."""
    return "–" if g.get("min_detectable_change") is None else f"{g['min_detectable_change']:.1f}"


def interval(g: dict, low: str = "ci_low", high: str = "ci_high") -> str:
    return f"{num(g[low])} to {num(g[high])}"


def join_names(parts: list[str]) -> str:
    return " and ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + " and " + parts[-1]

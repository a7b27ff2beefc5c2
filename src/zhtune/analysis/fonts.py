"""Which font the charts use, and English chart labels where no CJK font is installed.

Charts label in Chinese and English ("中文提升 Chinese gain"). With a CJK font (installed, or a font
file named by ``ZHTUNE_CJK_FONT``) both render. Without one (a shared server where nobody can
install system packages) every chart still renders: ``localize_figure`` rewrites each label to its
English part just before the chart is saved, so no label turns into empty boxes, and the report
says in one line how to get the Chinese labels back. The choice is made once per process
(``cjk_font`` is cached), so every chart of a report is labelled the same way.
"""
from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import Mapping

import matplotlib
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import Formatter

log = logging.getLogger(__name__)

# Preferred CJK fonts, best first: Linux (Noto / Source Han / WenQuanYi / Droid), macOS, Windows.
CJK_FONT_NAMES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN",
                  "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN",
                  "PingFang SC", "Hiragino Sans GB", "Heiti SC", "STHeiti", "Microsoft YaHei", "SimHei")
_CJK_FILE_HINTS = ("notosanscjk", "notoserifcjk", "sourcehansans", "wqy", "droidsansfallback",
                   "uming", "ukai", "pingfang", "msyh", "simhei")
FONT_FILE_ENV = "ZHTUNE_CJK_FONT"  # a .ttf/.otf/.ttc file with Chinese glyphs, no install needed
FALLBACK_FONT = "DejaVu Sans"  # ships with matplotlib: Latin, Greek, the minus sign
FALLBACK_FILE = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
PROBE_TEXT = "中文能力提升英文遗忘理工人文社科其他数学·"  # characters every chart uses
ENGLISH_LABELS_NOTE = (
    "Chart labels are in English because no CJK font was found; for Chinese labels install one "
    "(apt-get install fonts-wqy-microhei, or without root set ZHTUNE_CJK_FONT to a font file such as "
    "NotoSansCJKsc-Regular.otf) and run zhtune report again.")


def _cmap(path: str, index: int = 0) -> set[int]:
    from fontTools.ttLib import TTFont  # ships with matplotlib

    with TTFont(path, fontNumber=index, lazy=True) as font:
        return set(font.getBestCmap() or {})


@functools.lru_cache(maxsize=1)
def _fallback_cmap() -> frozenset[int]:
    return frozenset(_cmap(str(FALLBACK_FILE)))


def missing_glyphs(text: str, font: font_manager.FontEntry) -> set[str]:
    """Characters of ``text`` (ignoring whitespace) that ``font`` has no glyph for."""
    cmap = _cmap(font.fname, getattr(font, "index", 0))
    return {ch for ch in text if not ch.isspace() and ord(ch) not in cmap}


def _font_from_env() -> font_manager.FontEntry | None:
    path = os.environ.get(FONT_FILE_ENV)
    if not path:
        return None
    try:
        font_manager.fontManager.addfont(path)
    except (OSError, RuntimeError, ValueError) as err:
        log.warning("%s=%s: not a readable font file (%s); looking for installed CJK fonts", FONT_FILE_ENV, path, err)
        return None
    font = next((f for f in font_manager.fontManager.ttflist
                 if os.path.realpath(f.fname) == os.path.realpath(path)), None)
    if font is None or missing_glyphs(PROBE_TEXT, font):
        log.warning("%s=%s: the font has no Chinese glyphs; looking for installed CJK fonts", FONT_FILE_ENV, path)
        return None
    return font


@functools.lru_cache(maxsize=1)
def cjk_font() -> font_manager.FontEntry | None:
    """The CJK font every chart uses (registered with matplotlib if needed), or None without one:
    then charts are labelled in English (``localize_figure``)."""
    def find():
        by_name = {f.name: f for f in font_manager.fontManager.ttflist}
        for name in CJK_FONT_NAMES:
            if name in by_name and not missing_glyphs(PROBE_TEXT, by_name[name]):
                return by_name[name]
        return None

    font = _font_from_env() or find()
    if font is None:
        # matplotlib's cached font list predates fonts installed since; register font files on disk.
        for path in font_manager.findSystemFonts():
            if any(h in Path(path).name.lower().replace("-", "").replace("_", "") for h in _CJK_FILE_HINTS):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError) as err:  # unreadable font file
                    log.debug("skipping font %s: %s", path, err)
        font = find()
    if font is None:
        log.warning("no CJK font found: charts are labelled in English. %s", ENGLISH_LABELS_NOTE)
    else:
        log.debug("CJK font: %s (%s)", font.name, font.fname)
    return font


def chinese_labels() -> bool:
    """True when charts carry their Chinese labels (a CJK font was found)."""
    return cjk_font() is not None


def chart_fonts() -> list[str]:
    """``font.sans-serif`` for every chart: the CJK font first when there is one, DejaVu Sans after."""
    font = cjk_font()
    return [font.name, FALLBACK_FONT] if font is not None else [FALLBACK_FONT]


# ----------------------------------------------------------------------------------- English labels
def english_label(text: str, glossary: Mapping[str, str] = {}) -> str:
    """``text`` with nothing the fallback font cannot draw: the glossary's Chinese terms replaced by
    their English ("理工" -> "STEM"), the Chinese half of a bilingual label dropped ("中文提升 Chinese
    gain" -> "Chinese gain"). Text with no English part at all (a run someone named in Chinese) is
    written as Unicode escapes, which stay unambiguous."""
    cmap = _fallback_cmap()
    if all(ord(ch) in cmap or ch.isspace() for ch in text):
        return text
    for zh in sorted(glossary, key=len, reverse=True):
        text = text.replace(zh, glossary[zh])
    missing = "".join(sorted({re.escape(ch) for ch in text if ord(ch) not in cmap and not ch.isspace()}))
    if not missing:
        return text
    stripped = re.sub(rf"\s*[{missing}]+\s*", " ", text)
    stripped = re.sub(r"\s{2,}", " ", stripped).strip()
    if not any(ch.isalnum() for ch in stripped):
        return text.encode("ascii", "backslashreplace").decode("ascii")
    return stripped


class _EnglishTicks(Formatter):
    """A tick formatter's labels passed through ``english_label`` (tick labels are formatted anew
    at every draw, so rewriting the tick texts once would not last)."""

    def __init__(self, inner: Formatter, glossary: Mapping[str, str]):
        self.inner, self.glossary = inner, glossary

    def __call__(self, x, pos=None):
        return english_label(self.inner(x, pos), self.glossary)

    def format_ticks(self, values):
        return [english_label(s, self.glossary) for s in self.inner.format_ticks(values)]

    def set_locs(self, locs):
        self.inner.set_locs(locs)

    def get_offset(self):
        return self.inner.get_offset()


def localize_figure(fig: Figure, glossary: Mapping[str, str] = {}) -> None:
    """Without a CJK font, rewrite every label of ``fig`` with ``english_label`` (titles, axis and
    tick labels, legends, annotations); with one, leave the figure as it is."""
    if chinese_labels():
        return
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for get, set_ in ((axis.get_major_formatter, axis.set_major_formatter),
                              (axis.get_minor_formatter, axis.set_minor_formatter)):
                if not isinstance(get(), _EnglishTicks):
                    set_(_EnglishTicks(get(), glossary))
    for text in fig.findobj(Text):
        label = text.get_text()
        if label:
            text.set_text(english_label(label, glossary))

"""No CJK font installed: `zhtune report` still writes every chart, labelled in English, and says how
to get Chinese labels; the report's own text is unchanged."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures_eval import PNG_MAGIC, scale_folder, write_train_dir
from zhtune.analysis import fonts, plots

CHARTS = ("radar", "subjects", "pareto", "tradeoff", "training")


def has_cjk(text: str) -> bool:
    return any("\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef" for ch in text)


@pytest.fixture
def no_cjk_font(monkeypatch):
    """Font discovery as on a machine without CJK fonts: no known name, no font file on disk."""
    monkeypatch.setattr(fonts, "CJK_FONT_NAMES", ("No Such Font SC",))
    monkeypatch.setattr(fonts, "_CJK_FILE_HINTS", ("no-such-font-file",))
    monkeypatch.delenv(fonts.FONT_FILE_ENV, raising=False)
    fonts.cjk_font.cache_clear()
    yield
    fonts.cjk_font.cache_clear()


def report_args(tmp_path: Path) -> list[str]:
    """Base, two tuned runs (adapter scales 0.5 and 1), the scale folder and training logs: all five charts."""
    folder = scale_folder(tmp_path)
    return ["report", "--base", str(folder), "--tuned", str(folder / "demo@scale-0.5"), "--tuned",
            str(folder / "demo@scale-1"), "--scale-dir", str(folder),
            "--train-dir", str(write_train_dir(tmp_path / "train")), "--output-dir", str(tmp_path / "rep")]


def test_english_label():
    glossary = {zh: en for en, zh in reversed(plots.CATEGORY_ZH.items())}
    assert fonts.english_label("中英文能力 Abilities (accuracy %)") == "Abilities (accuracy %)"
    assert fonts.english_label("C-Eval·理工", glossary) == "C-Eval·STEM"
    assert fonts.english_label("CMMLU·社科", glossary) == "CMMLU·Social Sciences"
    assert fonts.english_label("Pareto front 帕累托前沿") == "Pareto front"
    assert fonts.english_label(" 容忍 tolerance 1") == "tolerance 1"
    assert fonts.english_label("中文 zh") == "zh"
    assert fonts.english_label("  3 subjects not shown ") == "  3 subjects not shown "  # untouched: no CJK
    assert fonts.english_label("base − tuned, ×0.5") == "base − tuned, ×0.5"  # DejaVu has these
    assert fonts.english_label("微调") == "\\u5fae\\u8c03"  # no English part: escapes, not boxes


def test_report_without_a_cjk_font_has_english_charts(no_cjk_font, tmp_path, monkeypatch, caplog):
    from zhtune.cli import app

    figures = {}
    save = plots.save_figure

    def recording_save(fig, stem):  # every label as drawn into the saved files
        paths = save(fig, stem)
        figures[Path(stem).name] = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))
                                    if t.get_text()]
        return paths

    monkeypatch.setattr(plots, "save_figure", recording_save)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = CliRunner().invoke(app, report_args(tmp_path))
    assert res.exit_code == 0, res.output
    out = tmp_path / "rep"
    for name in CHARTS:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000, name
        assert (out / f"{name}.svg").exists()
    assert sorted(figures) == sorted(CHARTS)
    for name, labels in figures.items():
        assert labels and not [t for t in labels if has_cjk(t)], (name, labels)
    assert "Abilities (accuracy %)" in figures["radar"] and "demo@scale-0.5" in figures["radar"]
    assert "Change by subject" in figures["subjects"]
    assert "LoRA Adapter scale trade-off" in figures["tradeoff"] and "tolerance 1" in figures["tradeoff"]
    assert {"Loss", "zh", "en", "step"} <= set(figures["training"])
    problems = [str(w.message) for w in rec] + [r.getMessage() for r in caplog.records]
    assert not [m for m in problems if "Glyph" in m or "missing from" in m]
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert fonts.ENGLISH_LABELS_NOTE in md and "ZHTUNE_CJK_FONT" in html
    assert "中英文能力雷达图" in html  # the report's own text keeps its Chinese: the browser has fonts


def test_category_axes_in_english(no_cjk_font, tmp_path):
    """Radar axes name categories through the glossary (C-Eval·理工 -> C-Eval·STEM), as tick labels."""
    from fixtures_eval import write_standard_pair
    from zhtune.analysis.forgetting import compare_runs

    cmp = compare_runs(*write_standard_pair(tmp_path)).to_dict()
    fig_texts = []
    save = plots.save_figure
    plots_save = lambda fig, stem: (save(fig, stem), fig_texts.extend(  # noqa: E731
        t.get_text() for ax in fig.axes for t in ax.get_xticklabels()))[0]
    import unittest.mock

    with unittest.mock.patch.object(plots, "save_figure", plots_save):
        plots.plot_radar(plots.radar_series([cmp]), tmp_path / "radar")
    assert "C-Eval·STEM" in fig_texts and "C-Eval·Social Sciences" in fig_texts
    assert not [t for t in fig_texts if has_cjk(t)]


def test_report_with_a_cjk_font_keeps_chinese_labels(tmp_path, monkeypatch):
    """The same report with the installed CJK font: Chinese labels and no note."""
    if fonts.cjk_font() is None:
        pytest.fail("no CJK font installed: run scripts/install_system_deps.sh")
    from zhtune.cli import app

    figures = {}
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, stem: figures.setdefault(Path(stem).name, [
        t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]) and save(fig, stem))
    res = CliRunner().invoke(app, report_args(tmp_path))
    assert res.exit_code == 0, res.output
    assert "中英文能力 Abilities (accuracy %)" in figures["radar"] and "中文 zh" in figures["training"]
    assert fonts.ENGLISH_LABELS_NOTE not in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")


def test_font_file_from_the_environment(tmp_path, monkeypatch, no_cjk_font):
    """ZHTUNE_CJK_FONT names a font file (no install, no root): its Chinese glyphs are used."""
    from matplotlib import font_manager

    files = [f.fname for f in font_manager.fontManager.ttflist if "wqy" in f.fname.lower()
             or "notosanscjk" in Path(f.fname).name.lower()]
    if not files:
        pytest.fail("no CJK font file installed: run scripts/install_system_deps.sh")
    monkeypatch.setenv(fonts.FONT_FILE_ENV, files[0])
    font = fonts.cjk_font()
    assert font is not None and os.path.samefile(font.fname, files[0]) and fonts.chinese_labels()
    fonts.cjk_font.cache_clear()
    monkeypatch.setenv(fonts.FONT_FILE_ENV, str(fonts.FALLBACK_FILE))  # a font without Chinese
    assert fonts.cjk_font() is None


def test_report_in_a_process_whose_matplotlib_sees_no_system_font(tmp_path):
    """The real thing, not a patched discovery: matplotlib told to ignore every system font (only its
    own DejaVu remains) and a fresh font cache; the report is written, the note included."""
    env = {**os.environ, "MPL_IGNORE_SYSTEM_FONTS": "1", "MPLCONFIGDIR": str(tmp_path / "mpl"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop(fonts.FONT_FILE_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "zhtune.cli", *report_args(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "rep"
    assert all((out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC for name in CHARTS)
    assert fonts.ENGLISH_LABELS_NOTE in (out / "report.md").read_text(encoding="utf-8")
    assert "Glyph" not in proc.stderr and "missing from" not in proc.stderr

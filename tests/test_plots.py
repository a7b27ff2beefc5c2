"""Charts: a CJK font with the glyphs we need, no missing-glyph warnings, files written, bad logs refused."""
from __future__ import annotations

import logging
import warnings

import pytest
from matplotlib import font_manager
from matplotlib.figure import Figure

from fixtures_eval import PNG_MAGIC, write_standard_pair, write_train_dir
from zhtune.analysis import fonts, plots
from zhtune.analysis.forgetting import compare_runs
from zhtune.errors import UserError



@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    base, tuned = write_standard_pair(tmp_path_factory.mktemp("pair"))
    return compare_runs(base, tuned).to_dict()


def assert_chart(paths, min_png_bytes=5000):
    png, svg = paths
    assert png.suffix == ".png" and png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > min_png_bytes
    assert svg.suffix == ".svg" and "<svg" in svg.read_text(encoding="utf-8")[:2000]


def glyph_problems(record, caplog) -> list[str]:
    msgs = [str(w.message) for w in record] + [r.getMessage() for r in caplog.records]
    return [m for m in msgs if "Glyph" in m or "missing from" in m or "findfont" in m]


def test_cjk_font_has_glyphs_for_every_label(comparison):
    font = fonts.cjk_font()
    assert font is not None, "no CJK font: scripts/install_system_deps.sh installs one"
    labels = "".join(plots.ability_axes(comparison)) + "".join(plots.CATEGORY_ZH.values()) + fonts.PROBE_TEXT
    chinese = {ch for ch in labels if "\u4e00" <= ch <= "\u9fff"}
    assert len(chinese) > 10
    # fontTools' own reading of the font's character map, independent of matplotlib.
    from fontTools.ttLib import TTFont

    with TTFont(font.fname, fontNumber=font.index, lazy=True) as tt:
        cmap = tt.getBestCmap()
    assert {ch for ch in chinese if ord(ch) not in cmap} == set()
    assert fonts.missing_glyphs(labels, font) == set()


def test_glyph_check_and_warning_check_can_fail():
    """A Latin-only font lacks Chinese glyphs, and drawing Chinese with it warns: the checks above bite."""
    dejavu = next(f for f in font_manager.fontManager.ttflist if f.name == "DejaVu Sans")
    assert fonts.missing_glyphs("中文 ok", dejavu) == {"中", "文"}
    import io

    import matplotlib

    with matplotlib.rc_context({"font.family": "DejaVu Sans"}), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fig = Figure()
        fig.text(0.5, 0.5, "中文")
        fig.savefig(io.BytesIO(), format="png")
    assert any("Glyph" in str(w.message) and "missing" in str(w.message) for w in rec)


def test_missing_cjk_font_means_english_labels_not_an_error(monkeypatch, caplog):
    """Without a CJK font the charts are labelled in English (tests/test_fonts.py draws them)."""
    monkeypatch.setattr(fonts, "CJK_FONT_NAMES", ("No Such Font SC",))
    monkeypatch.setattr(fonts, "_CJK_FILE_HINTS", ("no-such-font-file",))
    monkeypatch.delenv(fonts.FONT_FILE_ENV, raising=False)
    fonts.cjk_font.cache_clear()
    try:
        assert fonts.cjk_font() is None and not fonts.chinese_labels()
        assert fonts.chart_fonts() == [fonts.FALLBACK_FONT]
        assert any("no CJK font found" in r.getMessage() and "ZHTUNE_CJK_FONT" in r.getMessage()
                   for r in caplog.records)
    finally:
        fonts.cjk_font.cache_clear()


def test_radar_subjects_and_pareto_render_without_glyph_warnings(comparison, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        series = plots.radar_series([comparison])
        assert [s[0] for s in series] == ["base", "tuned"]
        assert "C-Eval·理工" in series[0][1] and "GSM8K" in series[0][1]
        assert_chart(plots.plot_radar(series, tmp_path / "radar"))
        assert_chart(plots.plot_subject_changes(comparison, tmp_path / "subjects"))
        points = [plots.comparison_point(comparison, "a"),
                  {"label": "b", "chinese_gain": 1.0, "english_forgetting": 0.0}]
        assert_chart(plots.plot_pareto(points, tmp_path / "pareto"))
    assert glyph_problems(rec, caplog) == []


def test_subject_rows_sorted_and_top_n(comparison, tmp_path):
    rows = plots.subject_rows(comparison)
    changes = [r["change_points"] for r in rows]
    assert changes == sorted(changes) and len(rows) == 9
    assert rows[0]["label"] == "MMLU·high_school_physics" and rows[-1]["label"] == "C-Eval·computer_network"
    assert_chart(plots.plot_subject_changes(comparison, tmp_path / "top2", top=2))


def test_pareto_front():
    pts = [{"label": "a", "chinese_gain": 1, "english_forgetting": 0},
           {"label": "b", "chinese_gain": 3, "english_forgetting": 2},
           {"label": "c", "chinese_gain": 2, "english_forgetting": 2},  # beaten by b
           {"label": "d", "chinese_gain": 0, "english_forgetting": 1}]  # beaten by a
    assert plots.pareto_front(pts) == ["a", "b"]



@pytest.mark.parametrize("probes_in", ["log", "probes", "both"])
def test_training_curves(tmp_path, probes_in, caplog):
    train = write_train_dir(tmp_path / "train", probes_in)
    rows = plots.read_training_log(train)
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert sum("probe/zh_bpc" in r for r in rows) == 3
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert_chart(plots.plot_training_curves(train, tmp_path / "curves"))
    assert glyph_problems(rec, caplog) == []


def test_training_log_errors_name_file_and_line(tmp_path):
    with pytest.raises(UserError, match="no train_log.jsonl"):
        plots.read_training_log(tmp_path)
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss": 2}\n{"step": 2, loss}\n')
    with pytest.raises(UserError, match=r"train_log\.jsonl:2: not valid JSON"):
        plots.read_training_log(tmp_path)
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "learning_rate": 0.1}\n')
    with pytest.raises(UserError, match="no loss or probe values"):
        plots.plot_training_curves(tmp_path, tmp_path / "x")

"""The shipped CPU study (configs/cpu-study.yaml): its design holds together, its follow-up shares its
baseline, and the README's "What we found" numbers are the committed comparison's."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from zhtune.config import resolve_config
from zhtune.experiment import baseline_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def _followup_overrides() -> list[str]:
    """The follow-up command as the config's comments give it, parsed like a shell would."""
    text = (ROOT / "configs" / "cpu-study.yaml").read_text(encoding="utf-8")
    block = re.search(r"#\s+zhtune run cpu-study (.+?)\n#\s+(.+?--data-dir \S+)", text, re.S)
    assert block, "the follow-up command is missing from cpu-study.yaml's comments"
    words = shlex.split((block.group(1).rstrip("\\ ") + " " + block.group(2)))
    return [w for w in words if "=" in w and not w.startswith("--")]


def test_study_design_is_what_the_config_runs():
    cfg = resolve_config("cpu-study")
    assert cfg.eval.formulation == "both" and cfg.analysis.headline_formulation == "cloze"
    assert cfg.eval.benchmarks == ["ceval", "cmmlu", "mmlu", "gsm8k"] and cfg.eval.max_per_benchmark == 800
    assert cfg.data.train == ["belle/dev1K.json", "alpaca/alpaca_zh_demo.json"]
    assert cfg.analysis.gain_margin == cfg.analysis.forgetting_margin == 2.0
    assert cfg.train.probes.every_steps and cfg.model.name_or_path == "builtin:smollm2-135m-instruct"


def test_followup_reuses_the_study_baseline(tmp_path):
    study = resolve_config("cpu-study")
    overrides = _followup_overrides()
    followup = resolve_config("cpu-study", overrides=overrides)
    assert followup.data.replay.ratio > 0 and followup.eval.adapter_scales == [0.5, 1.0]
    assert followup.output.dir != study.output.dir
    assert baseline_fingerprint(followup, tmp_path) == baseline_fingerprint(study, tmp_path)


# ----------------------------------------------------------------------------- the committed results
RESULTS = ROOT / "docs" / "results" / "cpu-study"


def _found_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## What we found")
    end = text.index("\n## ", start + 3)
    return text[start:end]


def study_rows(cmp: dict) -> dict[str, list[str]]:
    """The README table's rows, formatted from comparison.json (scripts/collect_cpu_study.py prints
    the same table for pasting)."""
    from zhtune.analysis.forgetting import format_p, num, signed

    def figure(f: dict, english: bool) -> list[str]:
        low, high = (-f["ci_high"], -f["ci_low"]) if english else (f["ci_low"], f["ci_high"])
        return [f"{f['n']:,}", signed(f["tuned_minus_base_points"]), f"{num(low)} to {num(high)}",
                format_p(f["p_value"]).replace("= ", ""), f["verdict"]]

    sec = cmp["secondary"]
    rows = {"Chinese, cloze (primary)": figure(cmp["chinese_gain"], False),
            "English, cloze + GSM8K (primary)": figure(cmp["english_forgetting"], True),
            "Chinese, letters (secondary)": figure(sec["chinese_gain"], False),
            "English, letters + GSM8K (secondary)": figure(sec["english_forgetting"], True)}
    for lang, name in (("zh", "Chinese"), ("en", "English")):
        p = cmp["perplexity"][lang]
        b = p["base_bits_per_char"]
        rows[f"{name} bits per character"] = [
            f"{p['texts']} texts", f"{signed(100 * p['change'] / b)}%",
            f"{signed(100 * p['change_low'] / b)}% to {signed(100 * p['change_high'] / b)}%",
            format_p(p["p"]).replace("= ", ""), p["verdict"]]
    return rows


def test_readme_headline_numbers_are_the_committed_comparison():
    from zhtune.analysis.report import headline_sentences
    from zhtune.io import read_json

    cmp = read_json(RESULTS / "comparison.json")
    section = _found_section()
    quoted = " ".join(line[2:] for line in section.splitlines() if line.startswith("> "))
    for sentence in headline_sentences(cmp):
        assert sentence in quoted, sentence
    table = {cells[0]: cells[1:] for cells in
             ([c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
              if line.startswith("| ") and not line.startswith("| Figure"))}
    for label, cells in study_rows(cmp).items():
        assert table.get(label) == cells, (label, table.get(label), cells)
    assert "zhtune run cpu-study" in section and "report-screenshot.png" in section


def test_committed_comparison_is_reproducible_from_the_committed_predictions():
    """The comparison follows from the committed evaluations, with the config's analysis settings."""
    from zhtune.analysis.forgetting import compare_runs
    from zhtune.io import read_json

    cfg = resolve_config("cpu-study")
    committed = read_json(RESULTS / "comparison.json")
    again = compare_runs(RESULTS / "baseline", RESULTS / "eval", forgetting_margin=cfg.analysis.forgetting_margin,
                         gain_margin=cfg.analysis.gain_margin,
                         headline_formulation=cfg.analysis.headline_formulation).to_dict()
    for key in ("chinese_gain", "english_forgetting"):
        for field in ("n", "change_points", "ci_low", "ci_high", "p_value", "verdict"):
            assert again[key][field] == committed[key][field], (key, field)
    assert again["perplexity"] == committed["perplexity"]
    timings = read_json(RESULTS / "timings.json")
    assert timings["total_seconds"] == sum(timings["seconds_by_stage"].values())

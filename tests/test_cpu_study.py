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


def study_rows(cmp: dict) -> dict[str, list[str]]:
    """The study's summary table (figure: n, change, 95% CI, p, verdict), formatted from comparison.json,
    for pasting into the README; a figure without a pooled headline (every benchmark at chance) is left out."""
    from zhtune.analysis.formatting import format_p, num, signed

    def figure(f: dict, english: bool) -> list[str]:
        low, high = (-f["ci_high"], -f["ci_low"]) if english else (f["ci_low"], f["ci_high"])
        return [f"{f['n']:,}", signed(f["tuned_minus_base_points"]), f"{num(low)} to {num(high)}",
                format_p(f["p_value"]).replace("= ", ""), f["verdict"]]

    rows = {}
    for source, tag in ((cmp, "primary"), (cmp.get("secondary") or {}, "secondary")):
        for key in ("chinese_gain", "english_forgetting"):
            if source.get(key):
                rows[f"{source[key]['name']} ({tag})"] = figure(source[key], key == "english_forgetting")
    for lang, name in (("zh", "Chinese"), ("en", "English")):
        p = cmp["perplexity"][lang]
        rows[f"{name} bits per character"] = [
            f"{p['texts']} texts", f"{signed(100 * p['relative_change'])}%",
            f"{signed(100 * p['relative_low'])}% to {signed(100 * p['relative_high'])}%",
            format_p(p["p"]).replace("= ", ""), p["verdict"]]
    return rows


def test_committed_report_states_the_committed_comparison():
    """report.md opens with the sentences comparison.json gives, and report.json carries that very comparison
    (the report reads the compare stage's file, it does not recompute)."""
    from zhtune.analysis.sentences import headline_sentences
    from zhtune.io import read_json

    cmp = read_json(RESULTS / "comparison.json")
    report = read_json(RESULTS / "report" / "report.json")
    assert report["comparisons"] == [cmp] and report["headline"] == headline_sentences(cmp)
    lead = (RESULTS / "report" / "report.md").read_text(encoding="utf-8").split("\n\n")[1]
    for sentence in headline_sentences(cmp):
        assert sentence in lead, sentence
    table = (RESULTS / "report" / "report.md").read_text(encoding="utf-8")
    for label, cells in study_rows(cmp).items():
        if "bits" not in label:  # the headline table has n, change, interval, p and verdict of each figure
            assert label.rsplit(" (", 1)[0] in table and f"| {cells[3]} | {cells[4]} (2) |" in table, label
    assert (RESULTS / "report-screenshot.png").stat().st_size > 20_000


def test_committed_comparison_is_reproducible_from_the_committed_predictions():
    """The comparison follows from the committed evaluations, with the config's analysis settings."""
    from zhtune.analysis.forgetting import compare_runs
    from zhtune.io import read_json

    cfg = resolve_config("cpu-study")
    committed = read_json(RESULTS / "comparison.json")
    again = compare_runs(RESULTS.relative_to(ROOT) / "baseline", RESULTS.relative_to(ROOT) / "eval",
                         cfg.analysis).to_dict()
    for key in ("chinese_gain", "english_forgetting"):
        for field in ("n", "change_points", "ci_low", "ci_high", "p_value", "verdict", "benchmarks", "name"):
            assert again[key][field] == committed[key][field], (key, field)
    assert again["benchmarks"] == committed["benchmarks"] and again["perplexity"] == committed["perplexity"]
    assert again["headline_excluded"] == committed["headline_excluded"]
    timings = read_json(RESULTS / "timings.json")
    assert timings["total_seconds"] == sum(timings["seconds_by_stage"].values())


def test_the_runs_own_comparison_is_kept_beside_the_recomputed_one():
    """comparison-original.json is what the study's compare stage wrote (score-test p, one-sided Chinese
    verdict, GSM8K pooled); comparison.json is the same predictions under the current analysis."""
    from zhtune.io import read_json

    original = read_json(RESULTS / "comparison-original.json")
    current = read_json(RESULTS / "comparison.json")
    assert original["settings_fingerprint"] == current["settings_fingerprint"]
    assert original["english_forgetting"]["benchmarks"] == ["mmlu_cloze", "gsm8k"]
    assert current["english_forgetting"]["benchmarks"] == ["mmlu_cloze"] and "gsm8k" in current["headline_excluded"]
    assert original["chinese_gain"]["verdict"] == "no gain beyond the margin"
    assert current["chinese_gain"]["verdict"] in ("equivalent within the margin", "inconclusive", "improved", "declined")

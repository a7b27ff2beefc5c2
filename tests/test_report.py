"""The report: headline sentences with the right numbers, self-contained HTML, Markdown, JSON, and a
real headless-browser check that it renders with no broken image."""
from __future__ import annotations

import html
import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from fixtures_eval import (PNG_MAGIC, Cell, paired_predictions, scale_folder, standard_cells, write_eval_folder,
                           write_standard_pair, write_train_dir)
from zhtune.analysis.forgetting import compare_runs
from zhtune.analysis.report import build_report, check_in_browser, report_from_evaluations
from zhtune.analysis.sentences import headline_sentences
from zhtune.errors import UserError


def need_chromium():
    """The browser check is part of the acceptance criteria: a missing browser fails, with the fix."""
    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        pytest.fail("no chromium installed: run scripts/install_system_deps.sh (apt-get install chromium)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    base, tuned = write_standard_pair(root)
    paths = report_from_evaluations(base, [tuned], output_dir=root / "out", train_dir=write_train_dir(root / "train"),
                                    title="Demo report")
    return paths


def test_headline_states_gain_forgetting_verdicts_and_bounds(report):
    data = json.loads(report["json"].read_text(encoding="utf-8"))
    s1, s2, s3 = data["headline"]
    cells = standard_cells()
    zh = [c for c in cells if c.benchmark in ("ceval", "cmmlu")]
    gain = 100 * (sum(c.c for c in zh) - sum(c.b for c in zh)) / sum(c.n for c in zh)
    assert s1.startswith(f"After LoRA fine-tuning, Chinese accuracy on C-Eval and CMMLU rose by {gain:.1f} points "
                         "(95% CI ")
    assert re.search(r"over 180 C-Eval and 160 CMMLU questions: improved; a gain smaller than \d+\.\d points is "
                     r"excluded at one-sided 95%\.$", s1), s1
    # MMLU forgot clearly, but with 4 English subjects the pooled figure cannot be sure: honest, and said
    # (not significant pooled, so "changed by", not "fell by")
    assert re.search(r"English accuracy on MMLU and GSM8K changed by −7\.3 points \(95% CI −\d+\.\d to \d+\.\d, "
                     r"p = 0\.\d+\) over 450 MMLU and 100 GSM8K questions: inconclusive: 550 questions cannot exclude "
                     r"forgetting of up to \d+\.\d points at one-sided 95% \(detecting 2 points would take about "
                     r"[\d,]+ questions\); on its own, MMLU −8\.9 points: forgot\.", s2), s2
    assert "from 3.20 to 2.90 in Chinese (−9.4%)" in s3
    assert data["comparisons"][0]["significant_forgetting"] == ["mmlu"]


def test_headline_bounds_come_from_the_comparison(tmp_path):
    cells = [Cell("ceval", "law", "Social Sciences", both=40, b=5, c=25, neither=30),
             Cell("mmlu", "marketing", "Other", both=1600, b=20, c=20, neither=1600)]
    base, tuned = paired_predictions(cells)
    cmp = compare_runs(write_eval_folder(tmp_path / "b", base), write_eval_folder(tmp_path / "t", tuned)).to_dict()
    s1, s2, s3 = headline_sentences(cmp)
    zh_low = cmp["chinese_gain"]["one_sided_bounds"][0]
    assert "rose by 20.0 points" in s1 and s1.endswith(f": improved; a gain smaller than {zh_low:.1f} points is "
                                                       "excluded at one-sided 95%.")
    en_high = cmp["english_forgetting"]["one_sided_bounds"][1]
    assert 0 < en_high < 2
    assert "English accuracy on MMLU changed by 0.0 points" in s2 and s2.endswith(
        f": no forgetting beyond the 2-point margin: forgetting larger than {en_high:.1f} points is excluded at "
        "one-sided 95%.")
    assert "from 3.20 to 3.20 in Chinese (0.0%)" in s3


def test_perplexity_skipped_by_the_evaluator_is_left_out(tmp_path):
    base, tuned = paired_predictions(standard_cells())
    skipped = {"skipped": "no local data folder"}
    cmp = compare_runs(write_eval_folder(tmp_path / "b", base, perplexity=skipped),
                       write_eval_folder(tmp_path / "t", tuned, perplexity=skipped)).to_dict()
    assert cmp["perplexity"] == {}
    s3 = headline_sentences(cmp)[2]
    assert s3.startswith("The largest subject changes were C-Eval·computer_network (+20.0 points)")
    largest = cmp["largest_subject_changes"]
    assert f"of the {largest['shown']} shown exclude 0 in false-coverage-rate adjusted intervals" in s3


def test_largest_changes_says_when_no_subject_changed(tmp_path):
    base, _ = paired_predictions(standard_cells())
    folder = write_eval_folder(tmp_path / "a", base, perplexity={})
    cmp = compare_runs(folder, folder).to_dict()
    assert headline_sentences(cmp)[2].startswith("No subject's accuracy moved in either direction.")
    paths = build_report(comparisons=[cmp], output_dir=tmp_path / "r")
    md = paths["md"].read_text(encoding="utf-8")
    assert "### Largest subject changes\n\nNo subject's accuracy moved in either direction." in md


def test_html_is_self_contained_with_summary_tables_and_images(report):
    text = report["html"].read_text(encoding="utf-8")
    headline = json.loads(report["json"].read_text(encoding="utf-8"))["headline"]
    assert len(headline) == 3
    for sentence in headline:
        assert html.escape(sentence) in text
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) == 3  # radar, subjects, training curves
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in text and "https://" not in text
    for heading in ("Benchmarks", "Categories", "Largest subject changes", "What each level can detect",
                    "Perplexity probes", "Settings", "How the statistics were computed"):
        assert f">{heading}<" in text
    assert "forgot" in text and "McNemar" in text and "BH q" in text and "Benjamini" in text


def test_markdown_and_chart_files(report):
    out = report["md"].parent
    md = report["md"].read_text(encoding="utf-8")
    for name in ("radar", "subjects", "training"):
        assert f"]({name}.png)" in md
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC and (out / f"{name}.svg").exists()
    assert "| MMLU |" in md and "| forgot (2) |" in md


def test_report_from_comparison_files_with_runs_and_scales(tmp_path):
    folder = scale_folder(tmp_path)
    comparisons = [compare_runs(folder, folder / f"demo@scale-{s}").to_dict()
                   for s in ("0.5", "1")]
    paths = build_report(comparisons=comparisons, scale_dir=folder, tolerance=1.0, output_dir=tmp_path / "r")
    text = paths["html"].read_text(encoding="utf-8")
    assert "(adapter scale 0.5)" in json.loads(paths["json"].read_text())["headline"][0]
    assert text.count("<img ") == 4  # radar, subjects, pareto (two runs), trade-off
    assert "Recommended scale 0.5" in text
    assert json.loads(paths["json"].read_text())["tradeoff"]["recommended_scale"] == 0.5


def test_training_folder_without_logs_costs_the_chart_not_the_report(tmp_path):
    cmp = compare_runs(*write_standard_pair(tmp_path)).to_dict()
    (tmp_path / "train").mkdir()
    paths = build_report(comparisons=[cmp], train_dir=tmp_path / "train", output_dir=tmp_path / "r")
    text = paths["html"].read_text(encoding="utf-8")
    assert "no training curves" in text and text.count("<img ") == 2
    with pytest.raises(UserError, match="no such folder"):
        build_report(comparisons=[cmp], train_dir=tmp_path / "nope", output_dir=tmp_path / "r2")


def test_report_renders_in_headless_chromium(report, tmp_path):
    need_chromium()
    check = check_in_browser(report["html"], tmp_path / "screenshot.png")
    assert check.images == 3 and check.broken == 0
    shot = check.screenshot.read_bytes()
    assert shot[:8] == PNG_MAGIC and len(shot) > 20_000


def test_browser_check_detects_a_broken_image(tmp_path):
    need_chromium()
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><img src="missing.png"></body></html>')
    check = check_in_browser(page)
    assert (check.images, check.broken) == (1, 1)


def test_report_cli_with_screenshot(tmp_path):
    need_chromium()
    from zhtune.cli import app

    base, tuned = write_standard_pair(tmp_path)
    res = CliRunner().invoke(app, ["report", "--base", str(base), "--tuned", str(tuned), "--output_dir",
                                   str(tmp_path / "rep"), "--gain-margin", "1", "--screenshot",
                                   str(tmp_path / "shot.png")])
    assert res.exit_code == 0, res.output
    assert "none broken" in res.output and (tmp_path / "shot.png").stat().st_size > 20_000
    assert (tmp_path / "rep" / "report.resolved.json").exists()


def test_report_from_the_real_evaluator_output(tiny_llama_dir, shared_data, tmp_path):
    """The contract end to end: zhtune's own evaluator (tiny model, a random LoRA at two scales)
    writes the folder; compare, trade-off and report read it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from zhtune.config import EvalConfig, ModelConfig
    from zhtune.eval.suite import run_eval

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora).save_pretrained(tmp_path / "demo")
    ev = EvalConfig(limit=2, shots=1, generation_shots=1, max_new_tokens=8, perplexity_chars=200,
                    subjects=["computer_network", "chinese_literature", "marketing"])
    run_eval(ModelConfig(name_or_path=str(tiny_llama_dir)), ev, tmp_path / "eval", data_dir=shared_data,
             adapters=[str(tmp_path / "demo")], scales=[0.5, 1.0], progress=False)
    paths = report_from_evaluations(tmp_path / "eval", [tmp_path / "eval" / "demo"], scale_dir=tmp_path / "eval",
                                    output_dir=tmp_path / "report")
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    cmp = data["comparisons"][0]
    assert set(cmp["benchmarks"]) == {"ceval", "cmmlu", "mmlu", "gsm8k"}
    assert cmp["n_questions"] == sum(g["n"] for g in cmp["benchmarks"].values()) >= 8
    assert set(cmp["perplexity"]) == {"zh", "en", "zh_control", "en_control"}  # control probes on by default
    if cmp["chinese_gain"] and cmp["english_forgetting"]:
        assert [s["scale"] for s in data["tradeoff"]["scales"]] == [0.5, 1.0]
    else:  # a random tiny model at chance everywhere: no pooled figure, so no trade-off, and the report says why
        assert data["tradeoff"] is None and "no adapter-scale trade-off" in paths["md"].read_text(encoding="utf-8")
        assert cmp["headline_excluded"]
    assert len(data["headline"]) >= 3 and paths["html"].stat().st_size > 20_000

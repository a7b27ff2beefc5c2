"""Paired statistics, refusals and the adapter-scale recommendation on constructed evaluation folders."""
from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from fixtures_eval import (SETTINGS, Cell, paired_predictions, scale_folder, standard_cells,
                           write_eval_folder, write_multi_run, write_standard_pair)
from pydantic import ValidationError

from zhtune.analysis.forgetting import compare_many, compare_runs
from zhtune.analysis.runs import load_run
from zhtune.analysis.sentences import headline_sentences
from zhtune.analysis.stats import mcnemar_exact
from zhtune.config import AnalysisConfig
from zhtune.analysis.scale import analyze_tradeoff, write_tradeoff
from zhtune.errors import UserError


def hand_mcnemar(b: int, c: int) -> float:
    """2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def pair(tmp_path, cells, **tuned_kwargs):
    base, tuned = paired_predictions(cells)
    return (write_eval_folder(tmp_path / "base", base),
            write_eval_folder(tmp_path / "tuned", tuned, adapter="a", adapter_scale=1.0, **tuned_kwargs))


# ----------------------------------------------------------------------------------- McNemar
@pytest.mark.parametrize("b,c", [(10, 2), (2, 10), (0, 6), (5, 5), (40, 5), (1, 0)])
def test_mcnemar_matches_hand_computed_binomial(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(hand_mcnemar(b, c), rel=1e-9)


def test_mcnemar_example_value_and_no_discordance():
    assert mcnemar_exact(10, 2) == pytest.approx(0.0386, abs=5e-5)  # 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(0, 0) == 1.0


def test_comparison_counts_and_p_from_prediction_files(tmp_path):
    base, tuned = pair(tmp_path, [Cell("mmlu", "anatomy", "STEM", both=30, b=10, c=2, neither=58)])
    g = compare_runs(base, tuned).to_dict()["benchmarks"]["mmlu"]
    assert (g["n"], g["base_right_tuned_wrong"], g["base_wrong_tuned_right"]) == (100, 10, 2)
    assert g["base_accuracy"] == pytest.approx(0.40) and g["tuned_accuracy"] == pytest.approx(0.32)
    assert g["change_points"] == pytest.approx(-8.0)
    assert g["retention"] == pytest.approx(0.8) and g["relative_change"] == pytest.approx(-0.2)
    assert g["p_value"] == pytest.approx(hand_mcnemar(10, 2))


# ----------------------------------------------------------------------------------- intervals
def _mmlu(tmp_path, n_scale: int):
    cell = Cell("mmlu", "anatomy", "STEM", both=100 * n_scale, b=40 * n_scale, c=80 * n_scale, neither=180 * n_scale)
    base, tuned = pair(tmp_path / f"n{n_scale}", [cell])
    return compare_runs(base, tuned).to_dict()["benchmarks"]["mmlu"]


def test_interval_contains_change_with_normal_width(tmp_path):
    g = _mmlu(tmp_path, 1)  # n = 400, change = (80 - 40) / 400 = +10 points
    assert g["change_points"] == pytest.approx(10.0) and g["estimate"] == g["change_points"]
    assert g["ci_low"] < 10.0 < g["ci_high"] and g["interval"] == [g["ci_low"], g["ci_high"]]
    # The paired difference d in {-1, 0, 1}: var = (b + c)/n - ((c - b)/n)^2; 95% width ~ 2 * 1.96 * se.
    n, b, c = 400, 40, 80
    se = math.sqrt(((b + c) / n - ((c - b) / n) ** 2) / n) * 100
    assert g["ci_high"] - g["ci_low"] == pytest.approx(2 * 1.96 * se, rel=0.05)
    # the one-sided 95% bounds are the 90% interval: inside the 95% one
    assert g["ci_low"] < g["one_sided_bounds"][0] < 10.0 < g["one_sided_bounds"][1] < g["ci_high"]
    assert g["method"].startswith("Tango score interval")


def test_interval_width_shrinks_with_root_n(tmp_path):
    small, large = _mmlu(tmp_path, 1), _mmlu(tmp_path, 4)  # 4x the questions, same rates
    ratio = (large["ci_high"] - large["ci_low"]) / (small["ci_high"] - small["ci_low"])
    assert 0.45 < ratio < 0.55  # 1 / sqrt(4)


def test_comparison_is_deterministic(tmp_path):
    base, tuned = write_standard_pair(tmp_path)
    assert compare_runs(base, tuned).to_dict() == compare_runs(base, tuned).to_dict()


def test_subject_without_discordant_pairs_still_has_a_real_interval(tmp_path):
    cells = [Cell("ceval", "law", "Social Sciences", both=10, neither=10),
             Cell("ceval", "physics", "STEM", both=10, b=2, c=8, neither=10)]
    g = compare_runs(*pair(tmp_path, cells)).to_dict()
    law = g["subjects"]["ceval"]["law"]
    assert law["change_points"] == 0.0 and law["ci_low"] < -10 and law["ci_high"] > 10  # 20 questions: +-16
    assert law["verdict"] == "inconclusive" and law["q_value"] == 1.0


def test_one_question_per_subject_still_gives_a_real_interval(tmp_path):
    """Quick runs take one question per subject: every interval, pooled ones included, keeps its width."""
    cells = ([Cell("ceval", f"s{i}", "STEM", both=1) for i in range(10)]
             + [Cell("ceval", "lost", "STEM", b=1), Cell("ceval", "won", "STEM", c=1)]
             + [Cell("mmlu", f"m{i}", "STEM", both=1) for i in range(10)]
             + [Cell("mmlu", "lost", "STEM", b=1), Cell("mmlu", "lost2", "STEM", b=1)])
    g = compare_runs(*pair(tmp_path, cells)).to_dict()
    ceval = g["benchmarks"]["ceval"]
    assert ceval["change_points"] == 0.0 and ceval["ci_low"] < 0.0 < ceval["ci_high"]
    assert g["chinese_gain"]["ci_low"] < 0.0 < g["chinese_gain"]["ci_high"]
    en = g["benchmarks"]["mmlu"]
    assert en["ci_low"] < en["change_points"] < 0.0 < en["ci_high"]  # 2 of 12 lost: p = 0.5, not a loss
    for subject in g["subjects"]["ceval"].values():
        assert subject["ci_high"] - subject["ci_low"] > 50  # one question proves little


# ----------------------------------------------------------------------------------- verdicts
def test_flags_forgetting(tmp_path):
    cells = [Cell("mmlu", "marketing", "Other", both=80, b=40, c=5, neither=75),
             Cell("ceval", "law", "Social Sciences", both=40, b=5, c=5, neither=50)]
    cmp = compare_runs(*pair(tmp_path, cells)).to_dict()
    mmlu = cmp["benchmarks"]["mmlu"]
    assert mmlu["change_points"] == pytest.approx(-17.5) and mmlu["ci_high"] < 0
    assert mmlu["verdict"] == "forgot" and mmlu["significant_forgetting"] and mmlu["p_value"] < 1e-6
    assert cmp["significant_forgetting"] == ["mmlu"]
    en = cmp["english_forgetting"]
    assert en["change_points"] == pytest.approx(17.5) and en["significant"] and en["ci_low"] > 0
    assert en["verdict"] == "forgot" and en["tuned_minus_base_points"] == pytest.approx(-17.5)
    assert cmp["benchmarks"]["ceval"]["verdict"] == "inconclusive"  # 100 questions, 10 changed both ways


def test_noise_is_not_flagged(tmp_path):
    cells = [Cell("mmlu", "marketing", "Other", both=80, b=20, c=20, neither=80)]
    cmp = compare_runs(*pair(tmp_path, cells)).to_dict()
    mmlu = cmp["benchmarks"]["mmlu"]
    assert mmlu["change_points"] == 0 and mmlu["p_value"] == 1.0
    assert mmlu["ci_low"] < 0 < mmlu["ci_high"] and not mmlu["significant_forgetting"]
    assert cmp["significant_forgetting"] == [] and not cmp["english_forgetting"]["significant"]
    assert mmlu["verdict"] == "inconclusive"  # 200 questions cannot bound forgetting below 2 points
    assert cmp["chinese_gain"] is None  # no Chinese benchmark evaluated


def test_tiny_sample_interval_agrees_with_mcnemar(tmp_path):
    # 3 questions, all wrong -> right: p = 2 / 8 = 0.25, and the interval must not exclude 0 either.
    cmp = compare_runs(*pair(tmp_path, [Cell("ceval", "law", "Social Sciences", c=3)])).to_dict()
    g = cmp["benchmarks"]["ceval"]
    assert g["p_value"] == 0.25 and g["ci_low"] <= 0 < g["ci_high"] <= 100
    assert g["verdict"] == "inconclusive" and not g["significant_gain"]
    # a base at 0% cannot carry a pooled figure: reported on its own, not pooled
    assert cmp["chinese_gain"] is None and "ceval" in cmp["headline_excluded"] and g["at_floor"]
    assert g["min_detectable_change"] is None  # three questions cannot detect any change


def test_margin_decides_between_no_forgetting_and_inconclusive(tmp_path):
    cells = [Cell("mmlu", "marketing", "Other", both=2000, b=60, c=60, neither=1880)]
    base, tuned = pair(tmp_path, cells)
    en = compare_runs(base, tuned).to_dict()["english_forgetting"]
    assert en["verdict"] == "no forgetting beyond the margin" and en["one_sided_bounds"][1] < 2.0
    strict = compare_runs(base, tuned, AnalysisConfig(forgetting_margin=0.3)).to_dict()["english_forgetting"]
    assert strict["verdict"] == "inconclusive" and strict["margin"] == 0.3  # the bound is about 0.45
    with pytest.raises(ValidationError, match="forgetting_margin"):
        AnalysisConfig(forgetting_margin=-1)


@pytest.mark.parametrize("per_benchmark,expected", [(12, "inconclusive"), (1500, "no forgetting beyond the margin")])
def test_same_run_twice_is_only_called_equivalent_with_enough_questions(tmp_path, per_benchmark, expected):
    """zhtune compare A A: nothing changed, yet every interval has width, and the verdict needs n."""
    subjects = 12
    cells = [Cell(bench, f"{bench}-s{i}", "STEM", both=per_benchmark // subjects - per_benchmark // subjects // 3,
                  neither=per_benchmark // subjects // 3)
             for bench in ("ceval", "cmmlu", "mmlu", "gsm8k") for i in range(subjects)]
    base, _ = paired_predictions(cells)
    folder = write_eval_folder(tmp_path / "a", base)
    cmp = compare_runs(folder, folder).to_dict()
    for fig, verdict_word in ((cmp["english_forgetting"], expected),
                              (cmp["chinese_gain"], expected.replace("no forgetting beyond", "equivalent within"))):
        assert fig["change_points"] == 0 and fig["ci_high"] - fig["ci_low"] > 0 and fig["verdict"] == verdict_word
    for g in [*cmp["benchmarks"].values(), *(s for subs in cmp["subjects"].values() for s in subs.values())]:
        assert g["ci_low"] < 0 < g["ci_high"]
    if per_benchmark == 12:
        assert "cannot exclude forgetting of up to" in headline_sentences(cmp)[1]
    else:
        assert "forgetting larger than 0." in headline_sentences(cmp)[1]
    assert "did not change" not in " ".join(headline_sentences(cmp)) and "changed by 0.0 points" in headline_sentences(cmp)[1]
    from zhtune.cli import app

    res = CliRunner().invoke(app, ["compare", str(folder), str(folder), "--output-dir", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text(encoding="utf-8"))
    assert saved["english_forgetting"]["verdict"] == expected and saved["significant_forgetting"] == []


def test_subject_flags_control_false_discoveries(tmp_path):
    """Of 40 subjects one changed a lot; 39 wobble. Raw p flags some noise, BH q does not."""
    cells = [Cell("cmmlu", "real", "STEM", both=20, b=1, c=19, neither=20)]
    cells += [Cell("cmmlu", f"noise{i}", "STEM", both=20, b=b, c=c, neither=20)
              for i, (b, c) in enumerate([(0, 6), (6, 0), (1, 7)] + [(2, 2)] * 36)]
    cmp = compare_runs(*pair(tmp_path, cells)).to_dict()
    subjects = cmp["subjects"]["cmmlu"]
    raw = [s for s, g in subjects.items() if g["p_value"] < 0.05]
    flagged = [s for s, g in subjects.items() if g["verdict"] == "improved" or g["verdict"] == "declined"]
    assert len(raw) > 1 and flagged == ["real"]
    assert subjects["real"]["q_value"] < 0.05 < subjects["noise0"]["q_value"]
    assert all(g["q_value"] >= g["p_value"] for g in subjects.values())


def test_every_figure_carries_the_required_fields(tmp_path):
    cmp = compare_runs(*write_standard_pair(tmp_path)).to_dict()
    groups = [cmp["chinese_gain"], cmp["english_forgetting"], *cmp["benchmarks"].values(),
              *(g for cats in cmp["categories"].values() for g in cats.values()),
              *(g for subs in cmp["subjects"].values() for g in subs.values())]
    for g in groups:
        for key in ("estimate", "interval", "one_sided_bounds", "method", "p_value", "verdict", "margin",
                    "min_detectable_change", "questions_for_margin", "discordance"):
            assert key in g, key
    for g in (*cmp["subjects"]["ceval"].values(), *cmp["categories"]["mmlu"].values()):
        assert 0 <= g["p_value"] <= g["q_value"] <= 1
    assert "q_value" not in cmp["benchmarks"]["mmlu"]
    assert cmp["english_forgetting"]["design_effect"] >= 1 and "cluster-robust" in cmp["english_forgetting"]["method"]


def test_minimum_detectable_change_shrinks_with_questions(tmp_path):
    small = _mmlu(tmp_path, 1)
    large = _mmlu(tmp_path, 4)
    assert large["min_detectable_change"] == pytest.approx(small["min_detectable_change"] / 2, rel=0.05)
    assert small["questions_for_margin"] == large["questions_for_margin"]  # same discordance, same need


def test_chinese_gain_and_english_forgetting_pool_the_right_benchmarks(tmp_path):
    cells = standard_cells()
    cmp = compare_runs(*write_standard_pair(tmp_path, cells)).to_dict()
    for key, names, sign in (("chinese_gain", ("ceval", "cmmlu"), 1), ("english_forgetting", ("mmlu", "gsm8k"), -1)):
        sel = [c for c in cells if c.benchmark in names]
        n = sum(c.n for c in sel)
        expected = sign * 100 * (sum(c.c for c in sel) - sum(c.b for c in sel)) / n
        fig = cmp[key]
        assert fig["n"] == n and fig["benchmarks"] == list(names)
        assert fig["change_points"] == pytest.approx(expected)
        assert fig["ci_low"] < fig["change_points"] < fig["ci_high"]
        assert fig["mcnemar_exact_p"] == pytest.approx(hand_mcnemar(sum(c.b for c in sel), sum(c.c for c in sel)))
        assert fig["p_value"] >= fig["mcnemar_exact_p"]  # subjects change together: weaker evidence
    assert set(cmp["categories"]["ceval"]) == {"STEM", "Humanities", "Social Sciences"}
    assert cmp["perplexity"]["zh"]["ratio"] == pytest.approx(2.9 / 3.2)


# ----------------------------------------------------------------------------------- refusals
def test_refuses_mismatched_question_sets(tmp_path):
    base, tuned = paired_predictions(standard_cells())
    dropped = [r for r in tuned if r["key"] in {f"ceval/law/val/{i}" for i in range(12)}]
    write_eval_folder(tmp_path / "base", base)
    write_eval_folder(tmp_path / "tuned", [r for r in tuned if r not in dropped])
    with pytest.raises(UserError) as err:
        compare_runs(tmp_path / "base", tmp_path / "tuned")
    msg = str(err.value)
    assert "ceval: 12 questions only in base, e.g. ceval/law/val/0" in msg
    assert "shots" not in msg


def test_refuses_mismatched_shots(tmp_path):
    with pytest.raises(UserError, match=r"shots: 5 vs 0"):
        compare_runs(*pair(tmp_path, standard_cells(), settings={**SETTINGS, "shots": 0}))


def test_bad_prediction_line_names_file_and_line(tmp_path):
    base, tuned = pair(tmp_path, standard_cells())
    lines = (tuned / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = json.dumps({"key": "x", "benchmark": "mmlu", "subject": "s", "correct": "yes"})
    (tuned / "predictions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"predictions\.jsonl:3: 'correct' must be true or false"):
        compare_runs(base, tuned)


def test_multi_run_folder_as_dir_and_as_dir_label(tmp_path):
    base, tuned = paired_predictions(standard_cells())
    multi = write_multi_run(tmp_path / "eval", {
        "base": {"predictions": base},
        "demo": {"predictions": tuned, "adapter": "runs/demo/adapter", "adapter_scale": 1.0}})
    one = compare_runs(multi, multi / "demo")
    assert one.label == "demo" and one.base.label == "base"
    assert compare_runs(multi / "base", multi).label == "demo"  # the only tuned run
    many = compare_many(multi, [multi])
    assert [c.label for c in many] == ["demo"]
    with pytest.raises(UserError, match="holds several runs"):
        load_run(multi)
    with pytest.raises(UserError, match="not an evaluation output folder"):
        load_run(tmp_path / "nowhere")


def test_compare_cli_writes_comparison_and_refuses_with_message(tmp_path):
    from zhtune.cli import app

    base, tuned = write_standard_pair(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(base), str(tuned), "--output-dir", str(tmp_path / "cmp"),
                              "--forgetting-margin", "3"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text(encoding="utf-8"))
    assert saved["significant_forgetting"] == ["mmlu"] and saved["statistics"]["forgetting_margin"] == 3.0
    assert saved["benchmarks"]["mmlu"]["margin"] == 3.0 and saved["chinese_gain"]["margin"] == 2.0
    assert (tmp_path / "cmp" / "compare.resolved.json").exists()
    assert "MMLU" in res.output and "−8.9" in res.output  # the printed table's MMLU change
    assert "forgot" in res.output and "English accuracy on MMLU and GSM8K changed by −7.3 points" in " ".join(res.output.split())
    res = runner.invoke(app, ["compare", str(base), str(tuned), str(tuned), "--output_dir", str(tmp_path / "two")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "two" / "tuned" / "comparison.json").exists()
    assert (tmp_path / "two" / "tuned-2" / "comparison.json").exists()
    other, _ = pair(tmp_path / "other", standard_cells()[:2])
    res = runner.invoke(app, ["compare", str(other), str(tuned)])
    assert isinstance(res.exception, UserError) and "questions only in tuned" in str(res.exception)


# ----------------------------------------------------------------------------------- trade-off

def test_tradeoff_recommends_largest_gain_within_tolerance(tmp_path):
    folder = scale_folder(tmp_path)
    result = analyze_tradeoff(folder, tolerance=1.0)
    assert [p.scale for p in result.points] == [0.25, 0.5, 1.0]
    assert [p.forgetting["change_points"] for p in result.points] == pytest.approx([0.0, 0.5, 3.0])
    assert [p.gain["change_points"] for p in result.points] == pytest.approx([2.0, 4.0, 6.0])
    assert result.recommended.scale == 0.5
    assert any("Recommended scale 0.5" in line for line in result.reasoning)
    assert any("Scale 1 gains more Chinese" in line for line in result.reasoning)
    assert analyze_tradeoff(folder, tolerance=5.0).recommended.scale == 1.0
    assert analyze_tradeoff(folder, tolerance=0.0).recommended.scale == 0.25
    paths = write_tradeoff(result, tmp_path / "out")
    saved = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert saved["recommended_scale"] == 0.5 and saved["tolerance_points"] == 1.0
    assert paths["png"].stat().st_size > 5000


def test_tradeoff_recommends_nothing_when_every_scale_forgets_too_much(tmp_path):
    folder = scale_folder(tmp_path, forgetting_b=(9, 11, 15))  # 2, 3, 5 points
    result = analyze_tradeoff(folder, tolerance=1.0)
    assert result.recommended is None
    assert "No scale keeps English forgetting within 1 point " in result.reasoning[-1]


def test_tradeoff_cli(tmp_path):
    from zhtune.cli import app

    res = CliRunner().invoke(app, ["tradeoff", str(scale_folder(tmp_path)), "--tolerance", "1.0",
                                   "--output-dir", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert "Recommended scale 0.5" in res.output
    assert json.loads((tmp_path / "t" / "tradeoff.json").read_text())["recommended_label"] == "demo@scale-0.5"


# ----------------------------------------------------------------------------------- planning
def test_plan_from_a_single_run_states_its_assumption(tmp_path):
    from zhtune.analysis.planning import plan_questions
    from zhtune.analysis.stats import questions_needed

    base, tuned = write_standard_pair(tmp_path)
    plan = plan_questions(base, change=2.0)
    assert plan["discordance_source"].startswith("assumed 2p(1 − p)")
    mmlu = next(r for r in plan["benchmarks"] if r["benchmark"] == "mmlu")
    p = mmlu["base_accuracy"]
    assert mmlu["discordance"] == pytest.approx(2 * p * (1 - p))
    assert mmlu["questions_needed"] == questions_needed(0.02, 2 * p * (1 - p))
    measured = plan_questions(base, tuned_dir=tuned, change=2.0)
    mmlu_measured = next(r for r in measured["benchmarks"] if r["benchmark"] == "mmlu")
    assert mmlu_measured["discordance"] == pytest.approx(64 / 450)  # b + c of the MMLU cells
    assert mmlu_measured["questions_needed"] < mmlu["questions_needed"]  # fine-tuning kept most answers
    given = plan_questions(base, discordance=0.1, change=5.0)
    assert {r["discordance"] for r in given["benchmarks"]} == {0.1}
    assert all(r["questions_needed"] == questions_needed(0.05, 0.1) for r in given["benchmarks"])
    with pytest.raises(UserError, match="not both"):
        plan_questions(base, tuned_dir=tuned, discordance=0.1)


def test_plan_cli(tmp_path):
    from zhtune.cli import app

    base, tuned = write_standard_pair(tmp_path)
    res = CliRunner().invoke(app, ["plan", "--from", str(base), "--tuned", str(tuned), "--change", "3",
                                   "--output-dir", str(tmp_path / "plan")])
    assert res.exit_code == 0, res.output
    assert "Questions needed to detect a change of 3 points" in res.output and "observed between" in res.output
    saved = json.loads((tmp_path / "plan" / "plan.json").read_text(encoding="utf-8"))
    assert [r["benchmark"] for r in saved["benchmarks"]] == ["ceval", "cmmlu", "mmlu", "gsm8k"]
    other, _ = pair(tmp_path / "other", standard_cells()[:2])
    res = CliRunner().invoke(app, ["plan", "--from", str(other), "--tuned", str(tuned)])
    assert isinstance(res.exception, UserError) and "questions only in tuned" in str(res.exception)


def _as_cloze(cells):
    import dataclasses

    return [dataclasses.replace(c, benchmark=c.benchmark if c.benchmark == "gsm8k" else f"{c.benchmark}_cloze")
            for c in cells]


def test_cloze_only_runs_get_a_headline_from_the_cloze_benchmarks(tmp_path):
    """--formulation cloze: the pooled Chinese and English figures use the cloze benchmarks (GSM8K too)."""
    cells = _as_cloze(standard_cells())
    cmp = compare_runs(*write_standard_pair(tmp_path, cells)).to_dict()
    assert cmp["chinese_gain"]["benchmarks"] == ["ceval_cloze", "cmmlu_cloze"]
    assert cmp["english_forgetting"]["benchmarks"] == ["mmlu_cloze", "gsm8k"]
    zh = [c for c in cells if c.benchmark in ("ceval_cloze", "cmmlu_cloze")]
    assert cmp["chinese_gain"]["n"] == sum(c.n for c in zh)


def test_both_formulations_pool_the_letter_benchmarks_never_both(tmp_path):
    cells = standard_cells() + [c for c in _as_cloze(standard_cells()) if c.benchmark != "gsm8k"]
    cmp = compare_runs(*write_standard_pair(tmp_path, cells)).to_dict()
    assert cmp["chinese_gain"]["benchmarks"] == ["ceval", "cmmlu"]
    assert cmp["english_forgetting"]["benchmarks"] == ["mmlu", "gsm8k"]
    assert "mmlu_cloze" in cmp["benchmarks"]  # still compared on its own

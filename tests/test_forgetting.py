"""Paired statistics, refusals and the adapter-scale recommendation on constructed evaluation folders."""
from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from fixtures_eval import (SETTINGS, Cell, paired_predictions, scale_folder, standard_cells,
                           write_eval_folder, write_multi_run, write_standard_pair)
from zhtune.analysis.forgetting import (compare_many, compare_runs, load_run, mcnemar_exact)
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
    g = compare_runs(base, tuned, bootstrap_samples=500).to_dict()["benchmarks"]["mmlu"]
    assert (g["n"], g["base_right_tuned_wrong"], g["base_wrong_tuned_right"]) == (100, 10, 2)
    assert g["base_accuracy"] == pytest.approx(0.40) and g["tuned_accuracy"] == pytest.approx(0.32)
    assert g["change_points"] == pytest.approx(-8.0)
    assert g["retention"] == pytest.approx(0.8) and g["relative_change"] == pytest.approx(-0.2)
    assert g["p_value"] == pytest.approx(hand_mcnemar(10, 2))


# ----------------------------------------------------------------------------------- bootstrap
def _interval(tmp_path, n_scale: int, seed: int = 0, samples: int = 4000):
    cell = Cell("mmlu", "anatomy", "STEM", both=100 * n_scale, b=40 * n_scale, c=80 * n_scale, neither=180 * n_scale)
    base, tuned = pair(tmp_path / f"n{n_scale}-{seed}", [cell])
    return compare_runs(base, tuned, bootstrap_samples=samples, seed=seed).to_dict()["benchmarks"]["mmlu"]


def test_bootstrap_interval_contains_change_with_normal_width(tmp_path):
    g = _interval(tmp_path, 1)  # n = 400, change = (80 - 40) / 400 = +10 points
    assert g["change_points"] == pytest.approx(10.0)
    assert g["ci_low"] < 10.0 < g["ci_high"]
    # The paired difference d in {-1, 0, 1}: var = (b + c)/n - ((c - b)/n)^2; 95% width ~ 2 * 1.96 * se.
    n, b, c = 400, 40, 80
    se = math.sqrt(((b + c) / n - ((c - b) / n) ** 2) / n) * 100
    assert g["ci_high"] - g["ci_low"] == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_width_shrinks_with_root_n(tmp_path):
    small, large = _interval(tmp_path, 1), _interval(tmp_path, 4)  # 4x the questions, same rates
    ratio = (large["ci_high"] - large["ci_low"]) / (small["ci_high"] - small["ci_low"])
    assert 0.4 < ratio < 0.6  # 1 / sqrt(4)


def test_seeded_bootstrap_is_reproducible(tmp_path):
    base, tuned = write_standard_pair(tmp_path)
    a = compare_runs(base, tuned, bootstrap_samples=300, seed=7).to_dict()
    b = compare_runs(base, tuned, bootstrap_samples=300, seed=7).to_dict()
    c = compare_runs(base, tuned, bootstrap_samples=300, seed=8).to_dict()
    assert a == b
    assert a["chinese_gain"]["ci_low"] != c["chinese_gain"]["ci_low"] or a["subjects"] != c["subjects"]


def test_subject_without_discordant_pairs_has_a_zero_width_interval(tmp_path):
    cells = [Cell("ceval", "law", "Social Sciences", both=10, neither=10),
             Cell("ceval", "physics", "STEM", both=10, b=2, c=8, neither=10)]
    g = compare_runs(*pair(tmp_path, cells), bootstrap_samples=200).to_dict()
    assert (g["subjects"]["ceval"]["law"]["ci_low"], g["subjects"]["ceval"]["law"]["ci_high"]) == (0.0, 0.0)
    # Stratified: the benchmark's resampled change never exceeds what the physics stratum can give.
    assert g["benchmarks"]["ceval"]["ci_high"] <= 100 * 30 / 50


def test_one_question_per_subject_still_gives_a_real_interval(tmp_path):
    """Quick runs take one question per subject; strata of one question would make every
    replicate equal to the observed change (a zero-width interval that hides the noise)."""
    cells = ([Cell("ceval", f"s{i}", "STEM", neither=1) for i in range(10)]
             + [Cell("ceval", "lost", "STEM", b=1), Cell("ceval", "won", "STEM", c=1)]
             + [Cell("mmlu", f"m{i}", "STEM", both=1) for i in range(10)]
             + [Cell("mmlu", "lost", "STEM", b=1), Cell("mmlu", "lost2", "STEM", b=1)])
    g = compare_runs(*pair(tmp_path, cells), bootstrap_samples=500).to_dict()
    ceval = g["benchmarks"]["ceval"]
    assert ceval["change_points"] == 0.0 and ceval["ci_low"] < 0.0 < ceval["ci_high"]
    assert g["chinese_gain"]["ci_low"] < 0.0 < g["chinese_gain"]["ci_high"]
    en = g["benchmarks"]["mmlu"]
    assert en["ci_low"] < en["change_points"] < 0.0 and en["ci_high"] <= 0.0


# ----------------------------------------------------------------------------------- flags
def test_flags_significant_forgetting(tmp_path):
    cells = [Cell("mmlu", "marketing", "Other", both=80, b=40, c=5, neither=75),
             Cell("ceval", "law", "Social Sciences", both=40, b=5, c=5, neither=50)]
    cmp = compare_runs(*pair(tmp_path, cells), bootstrap_samples=1000).to_dict()
    mmlu = cmp["benchmarks"]["mmlu"]
    assert mmlu["change_points"] == pytest.approx(-17.5) and mmlu["ci_high"] < 0
    assert mmlu["significant_forgetting"] and mmlu["p_value"] < 1e-6
    assert cmp["significant_forgetting"] == ["mmlu"]
    en = cmp["english_forgetting"]
    assert en["change_points"] == pytest.approx(17.5) and en["significant"] and en["ci_low"] > 0
    assert en["tuned_minus_base_points"] == pytest.approx(-17.5)


def test_noise_is_not_flagged(tmp_path):
    cells = [Cell("mmlu", "marketing", "Other", both=80, b=20, c=20, neither=80)]
    cmp = compare_runs(*pair(tmp_path, cells), bootstrap_samples=1000).to_dict()
    mmlu = cmp["benchmarks"]["mmlu"]
    assert mmlu["change_points"] == 0 and mmlu["p_value"] == 1.0
    assert mmlu["ci_low"] < 0 < mmlu["ci_high"] and not mmlu["significant_forgetting"]
    assert cmp["significant_forgetting"] == [] and not cmp["english_forgetting"]["significant"]
    assert cmp["chinese_gain"] is None  # no Chinese benchmark evaluated


def test_tiny_sample_needs_mcnemar_to_agree_with_the_interval(tmp_path):
    # 3 questions, all wrong -> right: every bootstrap replicate is +100, yet p = 2 / 8 = 0.25.
    cmp = compare_runs(*pair(tmp_path, [Cell("ceval", "law", "Social Sciences", c=3)]),
                       bootstrap_samples=200).to_dict()
    g = cmp["benchmarks"]["ceval"]
    assert (g["ci_low"], g["ci_high"], g["p_value"]) == (100.0, 100.0, 0.25)
    assert not g["significant_gain"] and not cmp["chinese_gain"]["significant"]


def test_chinese_gain_and_english_forgetting_pool_the_right_benchmarks(tmp_path):
    cells = standard_cells()
    cmp = compare_runs(*write_standard_pair(tmp_path, cells), bootstrap_samples=300).to_dict()
    for key, names, sign in (("chinese_gain", ("ceval", "cmmlu"), 1), ("english_forgetting", ("mmlu", "gsm8k"), -1)):
        sel = [c for c in cells if c.benchmark in names]
        n = sum(c.n for c in sel)
        expected = sign * 100 * (sum(c.c for c in sel) - sum(c.b for c in sel)) / n
        fig = cmp[key]
        assert fig["n"] == n and fig["benchmarks"] == list(names)
        assert fig["change_points"] == pytest.approx(expected)
        assert fig["ci_low"] < fig["change_points"] < fig["ci_high"]
        assert fig["p_value"] == pytest.approx(hand_mcnemar(sum(c.b for c in sel), sum(c.c for c in sel)))
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
    one = compare_runs(multi, multi / "demo", bootstrap_samples=100)
    assert one.label == "demo" and one.base.label == "base"
    assert compare_runs(multi / "base", multi, bootstrap_samples=100).label == "demo"  # the only tuned run
    many = compare_many(multi, [multi], bootstrap_samples=100)
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
                              "--bootstrap-samples", "200"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text(encoding="utf-8"))
    assert saved["significant_forgetting"] == ["mmlu"] and saved["statistics"]["bootstrap_samples"] == 200
    assert (tmp_path / "cmp" / "compare.resolved.json").exists()
    assert "MMLU" in res.output and "−8.9" in res.output  # the printed table's MMLU change
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
    result = analyze_tradeoff(folder, tolerance=1.0, bootstrap_samples=300)
    assert [p.scale for p in result.points] == [0.25, 0.5, 1.0]
    assert [p.forgetting["change_points"] for p in result.points] == pytest.approx([0.0, 0.5, 3.0])
    assert [p.gain["change_points"] for p in result.points] == pytest.approx([2.0, 4.0, 6.0])
    assert result.recommended.scale == 0.5
    assert any("Recommended scale 0.5" in line for line in result.reasoning)
    assert any("Scale 1 gains more Chinese" in line for line in result.reasoning)
    assert analyze_tradeoff(folder, tolerance=5.0, bootstrap_samples=100).recommended.scale == 1.0
    assert analyze_tradeoff(folder, tolerance=0.0, bootstrap_samples=100).recommended.scale == 0.25
    paths = write_tradeoff(result, tmp_path / "out")
    saved = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert saved["recommended_scale"] == 0.5 and saved["tolerance_points"] == 1.0
    assert paths["png"].stat().st_size > 5000


def test_tradeoff_recommends_nothing_when_every_scale_forgets_too_much(tmp_path):
    folder = scale_folder(tmp_path, forgetting_b=(9, 11, 15))  # 2, 3, 5 points
    result = analyze_tradeoff(folder, tolerance=1.0, bootstrap_samples=100)
    assert result.recommended is None
    assert "No scale keeps English forgetting within 1 point " in result.reasoning[-1]


def test_tradeoff_cli(tmp_path):
    from zhtune.cli import app

    res = CliRunner().invoke(app, ["tradeoff", str(scale_folder(tmp_path)), "--tolerance", "1.0",
                                   "--output-dir", str(tmp_path / "t"), "--bootstrap-samples", "200"])
    assert res.exit_code == 0, res.output
    assert "Recommended scale 0.5" in res.output
    assert json.loads((tmp_path / "t" / "tradeoff.json").read_text())["recommended_label"] == "demo@scale-0.5"

"""What the CPU study's analysis adds: a paired interval on bits per character (texts as units) and
pooled headline figures in a chosen formulation, with the other one reported as secondary."""
from __future__ import annotations

import numpy as np
import pytest

from fixtures_eval import Cell, paired_predictions, write_eval_folder
from zhtune.analysis.figures import headline_benchmarks
from zhtune.analysis.forgetting import compare_runs
from zhtune.analysis.sentences import headline_sentences
from zhtune.analysis.tables import perplexity_table
from zhtune.config import AnalysisConfig
from zhtune.analysis.stats import paired_ratio_interval
from zhtune.errors import UserError


def test_ratio_interval_by_hand():
    base, tuned, chars = [10.0, 20.0, 30.0], [9.0, 17.0, 29.0], [5, 10, 15]
    r = paired_ratio_interval(base, tuned, chars)
    assert r["change"] == pytest.approx(-5 / 30)
    d = np.array(tuned) - np.array(base)
    resid = d - r["change"] * np.array(chars)
    se = np.sqrt(3 / 2 * np.sum(resid ** 2)) / 30
    assert r["high"] - r["change"] == pytest.approx(4.302653 * se, rel=1e-5)  # t(0.975, 2 df)
    assert r["units"] == 3 and 0 < r["p"] < 1
    assert paired_ratio_interval([1.0], [2.0], [3])["change"] is None  # one text: no interval


def test_ratio_interval_covers_the_true_change():
    """Texts of varied length whose bits change by a per-text amount around a true per-char change."""
    rng = np.random.default_rng(0)
    true, hits, trials = -0.1, 0, 2000
    for _ in range(trials):
        chars = rng.integers(20, 300, size=60).astype(float)
        base = chars * rng.normal(5.0, 0.5, size=60)
        tuned = base + chars * (true + rng.normal(0, 0.15, size=60))
        r = paired_ratio_interval(base, tuned, chars)
        hits += r["low"] <= true <= r["high"]
    assert 0.93 <= hits / trials <= 0.97


def test_relative_interval_allows_for_the_denominator():
    """sum(tuned) / sum(base) - 1 by hand (Cochran's ratio estimator), and its coverage where the base
    values vary a lot between texts (dividing the change's interval by the base value would ignore that)."""
    base, tuned, chars = np.array([10.0, 20.0, 30.0]), np.array([9.0, 17.0, 29.0]), [5, 10, 15]
    r = paired_ratio_interval(base, tuned, chars)
    ratio = 55 / 60
    se = np.sqrt(3 / 2 * np.sum((tuned - ratio * base) ** 2)) / 60
    assert r["relative"] == pytest.approx(ratio - 1)
    assert r["relative_high"] - r["relative"] == pytest.approx(4.302653 * se, rel=1e-5)
    rng = np.random.default_rng(1)
    hits, trials, true = 0, 2000, -0.1
    for _ in range(trials):
        chars = rng.integers(20, 300, size=40).astype(float)
        b = chars * rng.lognormal(1.5, 0.4, size=40)
        t = b * (1 + true + rng.normal(0, 0.1, size=40))
        r = paired_ratio_interval(b, t, chars)
        hits += r["relative_low"] <= true <= r["relative_high"]
    assert 0.93 <= hits / trials <= 0.97


def _both_formulations(tmp_path, *, with_texts=True):
    # every base accuracy well above chance (25%), so each benchmark may carry a pooled headline
    cells = [Cell("ceval", "law", "Social Sciences", both=60, b=20, c=20, neither=100),
             Cell("ceval_cloze", "law", "Social Sciences", both=80, b=2, c=40, neither=78),
             Cell("mmlu", "marketing", "Other", both=80, b=10, c=10, neither=100),
             Cell("mmlu_cloze", "marketing", "Other", both=60, b=3, c=3, neither=134)]
    base, tuned = paired_predictions(cells)
    texts_b = [[100, 500.0], [200, 1000.0], [50, 260.0], [80, 400.0]]
    texts_t = [[100, 450.0], [200, 930.0], [50, 240.0], [80, 370.0]]
    ppl = (lambda texts: {"zh": {"bits_per_char": sum(b for _, b in texts) / 430, "chars": 430, "tokens": 900,
                                 **({"texts": texts} if with_texts else {})},
                          "en": {"bits_per_char": 1.1, "chars": 400, "tokens": 100}})
    return (write_eval_folder(tmp_path / "b", base, perplexity=ppl(texts_b)),
            write_eval_folder(tmp_path / "t", tuned, perplexity=ppl(texts_t)))


def test_headline_formulation_and_secondary(tmp_path):
    base, tuned = _both_formulations(tmp_path)
    auto = compare_runs(base, tuned).to_dict()
    assert auto["headline_formulation"] == "letter" and auto["chinese_gain"]["benchmarks"] == ["ceval"]
    assert auto["secondary"]["formulation"] == "cloze"
    assert auto["secondary"]["chinese_gain"]["benchmarks"] == ["ceval_cloze"]
    assert auto["secondary"]["chinese_gain"]["verdict"] == "improved"  # 40 gained vs 2 lost of 200
    cloze = compare_runs(base, tuned, AnalysisConfig(headline_formulation="cloze")).to_dict()
    assert cloze["chinese_gain"]["benchmarks"] == ["ceval_cloze"] and cloze["chinese_gain"]["verdict"] == "improved"
    assert cloze["english_forgetting"]["benchmarks"] == ["mmlu_cloze"]
    assert cloze["secondary"]["chinese_gain"]["benchmarks"] == ["ceval"]
    s = headline_sentences(cloze)
    assert s[0].startswith("After LoRA fine-tuning, Chinese cloze accuracy (acc_norm) on C-Eval rose by 19.0 points")
    assert "over 200 C-Eval questions" in s[0]
    assert s[3].startswith("Secondary, letter answers: Chinese (C-Eval) 0.0 points (95% CI ")
    assert cloze["chinese_gain"]["name"] == "Chinese change: C-Eval (cloze)"
    with pytest.raises(UserError, match="headline formulation"):
        headline_benchmarks(["ceval"], "logits")


def test_bits_per_char_interval_in_comparison_and_report(tmp_path):
    base, tuned = _both_formulations(tmp_path)
    zh = compare_runs(base, tuned).to_dict()["perplexity"]["zh"]
    r = paired_ratio_interval([500, 1000, 260, 400], [450, 930, 240, 370], [100, 200, 50, 80])
    assert zh["change"] == pytest.approx(-170 / 430) == pytest.approx(r["change"])
    assert (zh["change_low"], zh["change_high"], zh["texts"]) == (pytest.approx(r["low"]), pytest.approx(r["high"]), 4)
    assert zh["verdict"] == ("lower" if r["high"] < 0 else "no significant change")
    cmp = compare_runs(base, tuned).to_dict()
    assert f"over 4 texts, p = {r['p']:.3f}: {zh['verdict']}" in headline_sentences(cmp)[2]
    # the percent interval is the ratio estimator's (sum tuned / sum base - 1), not the change over the base value
    assert zh["relative_change"] == pytest.approx(1990 / 2160 - 1) == pytest.approx(r["relative"])
    assert (zh["relative_low"], zh["relative_high"]) == (pytest.approx(r["relative_low"]), pytest.approx(r["relative_high"]))
    assert f"95% CI {100 * r['relative_low']:+.1f}%".replace("-", "−") in headline_sentences(cmp)[2]
    rows = perplexity_table(cmp).rows
    assert rows[0][-1] == zh["verdict"] and rows[1][-4:] == ["–", "–", "–", "–"]  # en: no per-text bits recorded
    # runs without per-text bits (older zhtune) keep the plain figures
    old = compare_runs(*_both_formulations(tmp_path / "old", with_texts=False)).to_dict()["perplexity"]["zh"]
    assert "change_low" not in old and old["change"] == pytest.approx(-170 / 430)

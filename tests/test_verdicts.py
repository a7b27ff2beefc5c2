"""Issue 24, item 1: a verdict never contradicts its own p, at any level.

Every (b, c) with b + c <= 40 is enumerated over a range of n: the printed 95% interval excludes 0
exactly when the printed p (McNemar's exact test) is below 0.05, the verdict calls a change exactly
then, the margin verdict follows the margin test's p and the one-sided bound it prints, and a
benchmark and a category holding the same questions (a Benjamini-Hochberg family of one) agree."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fixtures_eval import Cell, paired_predictions, write_eval_folder
from zhtune.analysis.forgetting import compare_runs
from zhtune.analysis.paired import adjust_family, paired_stats
from zhtune.analysis.runs import Counts
from zhtune.analysis.stats import (EQUIVALENT, FORGETTING, GAIN, NO_FORGETTING, equivalence_p, fcr_confidence,
                                   fewest_changes_for_significance, mcnemar_exact, paired_interval, tango_interval,
                                   verdict)

NS = (40, 41, 55, 80, 150, 400, 1500, 10000)
CHANGED = {"forgot", "improved", "declined"}


def every_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(b, c) for b in range(41) for c in range(41 - b) if b + c <= n]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


@pytest.mark.parametrize("confidence", [0.95, 0.90, fcr_confidence(20, 353), fcr_confidence(1, 353)])
def test_interval_excludes_zero_exactly_when_p_says_so(confidence):
    for n in NS:
        b, c = every_table(n)
        low, high = paired_interval(b, c, np.full(b.shape, n), confidence)
        excludes = (low > 0) | (high < 0)
        rejects = mcnemar_exact(b, c) < 1 - confidence
        assert np.array_equal(excludes, rejects), (n, confidence, b[excludes != rejects], c[excludes != rejects])
        assert np.all(low <= (c - b) / n + 1e-12) and np.all((c - b) / n - 1e-12 <= high)


def test_effective_counts_of_pooled_figures_agree_too():
    rng = np.random.default_rng(0)
    b, c = rng.uniform(0, 40, 20000), rng.uniform(0, 40, 20000)
    n = b + c + rng.uniform(0, 500, 20000)
    low, high = paired_interval(b, c, n)
    p = mcnemar_exact(b, c)
    assert np.array_equal((low > 0) | (high < 0), p < 0.05)


@pytest.mark.parametrize("kind", [FORGETTING, GAIN])
def test_no_verdict_contradicts_its_p(kind):
    """The verdict rule of every figure (zhtune.analysis.paired.GroupStats.verdict), vectorised over tables."""
    for n in NS:
        b, c = every_table(n)
        nn = np.full(b.shape, n)
        low, high = (100 * x for x in paired_interval(b, c, nn))
        low90, high90 = (100 * x for x in paired_interval(b, c, nn, 0.90))
        p, margin_p = mcnemar_exact(b, c), equivalence_p(b, c, nn, 0.02, kind=kind)
        for i in range(len(b)):
            change = 100 * (c[i] - b[i]) / n
            v = verdict(change, low[i], high[i], low90[i], high90[i], 2.0, kind=kind,
                        significant=p[i] < 0.05, equivalent=margin_p[i] < 0.05)
            where = (n, b[i], c[i], v, p[i])
            assert (v in CHANGED) == (p[i] < 0.05) == (low[i] > 0 or high[i] < 0), where
            if v in CHANGED:
                assert (v == "improved") == (c[i] > b[i]), where
            else:
                within = v in (NO_FORGETTING, EQUIVALENT)
                assert within == (margin_p[i] < 0.05), where
                assert within == (low90[i] > -2.0 and (kind == FORGETTING or high90[i] < 2.0)), where


@pytest.mark.parametrize("kind", [FORGETTING, GAIN])
def test_benchmark_and_its_only_category_agree(kind):
    """The figures themselves, on a sample of the tables: a benchmark and a category holding the same
    questions (a Benjamini-Hochberg family of one, q = p) give the same verdict, and it is the rule's."""
    rng = np.random.default_rng(1 if kind == GAIN else 2)
    for n in (40, 150, 1500):
        b, c = every_table(n)
        for i in rng.choice(len(b), 40, replace=False):
            a = (n - b[i] - c[i]) // 2
            bench = paired_stats(Counts(n, a + b[i], a + c[i], int(b[i]), int(c[i])), kind, 2.0)
            category = dataclasses.replace(bench)
            adjust_family([category])
            d = bench.to_dict()
            assert category.verdict == d["verdict"] and category.q_value == d["p_value"]
            assert (d["verdict"] in CHANGED) == (d["p_value"] < 0.05) == (d["ci_low"] > 0 or d["ci_high"] < 0)


def test_margin_p_is_the_bound_it_prints():
    rng = np.random.default_rng(3)
    b, c = rng.integers(0, 60, 400), rng.integers(0, 60, 400)
    n = b + c + rng.integers(0, 400, 400)
    low90, high90 = tango_interval(b, c, n, 0.90)
    tost = equivalence_p(b, c, n, 0.05, kind=GAIN) < 0.05
    assert np.array_equal(tost, (low90 > -0.05) & (high90 < 0.05))
    assert np.array_equal(equivalence_p(b, c, n, 0.05, kind=FORGETTING) < 0.05, low90 > -0.05)


def test_gsm8k_four_gained_none_lost_is_not_called_improved(tmp_path):
    """The CPU study's GSM8K: 0 lost, 4 gained of 150. Exact p = 0.125, so no verdict of change at the
    benchmark, and its one category (Math) says the same."""
    cells = [Cell("gsm8k", "main", "Math", both=1, b=0, c=4, neither=145),
             Cell("mmlu", "anatomy", "STEM", both=100, b=10, c=10, neither=280)]
    base, tuned = paired_predictions(cells)
    cmp = compare_runs(write_eval_folder(tmp_path / "b", base), write_eval_folder(tmp_path / "t", tuned)).to_dict()
    g = cmp["benchmarks"]["gsm8k"]
    assert g["p_value"] == pytest.approx(0.125) and g["ci_low"] == 0.0 < g["ci_high"]
    assert g["verdict"] != "improved" and g["verdict"] == cmp["categories"]["gsm8k"]["Math"]["verdict"]
    assert g["at_floor"]  # 1 of 150 right: one sample standard error above 0
    assert cmp["english_forgetting"]["benchmarks"] == ["mmlu"] and "gsm8k" in cmp["headline_excluded"]


def test_fewest_changes_for_significance():
    assert fewest_changes_for_significance(0.05) == 6  # 2 * 0.5^6 = 0.031; 2 * 0.5^5 = 0.0625
    k = fewest_changes_for_significance(0.05 / 67)  # a lone subject among 67 (BH's strictest threshold)
    assert k == 12 and mcnemar_exact(0, k) < 0.05 / 67 <= mcnemar_exact(0, k - 1)


def test_a_language_all_at_floor_is_explained_once(tmp_path):
    """English all at chance or floor: its sentence says why no English figure is pooled, and the
    closing 'not pooled' sentence names only the left-out benchmarks of a language that has one."""
    from zhtune.analysis.sentences import headline_sentences

    cells = [Cell("ceval", "law", "Humanities", both=5, b=0, c=0, neither=45),  # 10%: below chance
             Cell("cmmlu", "anatomy", "STEM", both=150, b=20, c=30, neither=200),
             Cell("gsm8k", "main", "Math", both=0, b=0, c=1, neither=149),
             Cell("mmlu", "anatomy", "STEM", both=10, b=3, c=2, neither=45)]
    base, tuned = paired_predictions(cells)
    cmp = compare_runs(write_eval_folder(tmp_path / "b", base), write_eval_folder(tmp_path / "t", tuned)).to_dict()
    assert cmp["english_forgetting"] is None and cmp["chinese_gain"]["benchmarks"] == ["cmmlu"]
    sentences = headline_sentences(cmp)
    assert sentences[1].startswith("No English figure is pooled: ") and "GSM8K" in sentences[1] and "MMLU" in sentences[1]
    last = sentences[-1]
    assert last.startswith("Not pooled, reported on its own: C-Eval") and "MMLU" not in last and "GSM8K" not in last


def test_bits_sentence_names_the_control_probes_after_the_languages():
    from zhtune.analysis.sentences import bits_sentence

    probe = {"base_bits_per_char": 2.0, "tuned_bits_per_char": 1.9, "relative_change": -0.05}
    text = bits_sentence({k: probe for k in ("en_control", "zh", "zh_control", "en")})
    order = [text.index(f"in {name}") for name in
             ("Chinese", "English", "the Chinese control texts", "the English control texts")]
    assert order == sorted(order) and "_control" not in text

"""The grid's verdict where the truth is known: simulated grids of settings answering the same
questions (subjects clustered), against the decision rule of zhtune.analysis.grid."""
from __future__ import annotations

import numpy as np
import pytest

from zhtune.analysis.grid import (Answers, best_decisions, clusters, compare_settings, factor_effects,
                                  pairwise, probe_interval, simultaneous_confidence)
from zhtune.analysis.grid_plots import plot_grid_tradeoff, plot_learning_forgetting
from zhtune.analysis.stats import clustered_interval, questions_needed

SUBJECTS, PER_SUBJECT = 40, 50  # 2,000 questions in 40 subjects of two benchmarks


def simulate_grid(rng, sims: int, k: int, *, better: int | None = None, delta: float = 0.05,
                  redraw: float = 0.5, subjects: int = SUBJECTS, per: int = PER_SUBJECT):
    """``sims`` grids of ``k`` settings on the same questions, with the base model's answers.

    Question i has a probability q_i of being answered right (Beta(0.5, 0.5) plus a subject shift:
    questions of a subject are alike); the base model draws its answer from it. Each setting keeps
    the base's answer except on a share of questions (``redraw``, varying by subject: fine-tuning
    changes some subjects more), where it draws afresh from q_i -- or, for the ``better`` setting,
    from a q_i raised so that its expected accuracy is ``delta`` above the others'. Two equal
    settings then differ on about 19% of the questions (``redraw`` 0.5), a setting and the base on
    about 13%. Returns (correct (sims, k, n), base (sims, n), subject, benchmark)."""
    n = subjects * per
    subject = np.repeat(np.arange(subjects), per)
    q = np.clip(rng.beta(0.5, 0.5, (sims, n)) + rng.normal(0, 0.1, (sims, subjects))[:, subject], 0, 1)
    base = rng.random((sims, n)) < q
    share = np.clip(redraw + rng.normal(0, 0.1, (sims, k, subjects)), 0.05, 0.95)[..., subject]
    q_setting = np.broadcast_to(q[:, None], (sims, k, n)).copy()
    if better is not None:  # E[correct] rises by delta: the redrawn share's accuracy rises by delta / share
        s = share[:, better]
        mean_q = (s * q).sum(-1, keepdims=True) / s.sum(-1, keepdims=True)
        lift = delta * n / s.sum(-1, keepdims=True)
        q_setting[:, better] = q + lift * (1 - q) / (1 - mean_q)
    fresh = rng.random((sims, k, n)) < q_setting
    correct = np.where(rng.random((sims, k, n)) < share, fresh, base[:, None])
    bench = np.where(subject < subjects // 2, "ceval", "cmmlu")
    return correct, base, subject.astype(str), bench


def test_names_the_setting_truly_better_by_5_points_at_2000_questions():
    rng = np.random.default_rng(2024)
    correct, _, subject, bench = simulate_grid(rng, 200, 4, better=2)
    true_gap = 100 * (correct[:, 2].mean(-1) - np.delete(correct, 2, axis=1).mean(-1).max(-1))
    assert 3.0 < np.median(true_gap) < 6.0  # the simulation is what it says (realised best-vs-runner-up gap)
    named, in_set = best_decisions(correct, subject, bench, margin=2.0)
    assert named[:, 2].mean() >= 0.95
    assert not np.delete(named, 2, axis=1).any()  # never a wrong one
    assert in_set[:, 2].mean() >= 0.95  # the truly best is in the confidence set


def test_says_not_distinguishable_when_all_settings_are_equal():
    rng = np.random.default_rng(7)
    correct, _, subject, bench = simulate_grid(rng, 200, 4)
    named, in_set = best_decisions(correct, subject, bench, margin=2.0)
    assert (~named.any(-1)).mean() >= 0.95
    # Every setting is (equally) best, so each belongs to the confidence set in >= 95% of grids.
    assert in_set.mean(axis=0).min() >= 0.95


def test_a_larger_grid_of_equal_settings_names_none():
    rng = np.random.default_rng(11)
    correct, _, subject, bench = simulate_grid(rng, 100, 9, subjects=20, per=50)
    named, _ = best_decisions(correct, subject, bench, margin=2.0)
    assert (~named.any(-1)).mean() >= 0.95


def test_ties_never_resolve_by_order():
    rng = np.random.default_rng(3)
    correct, base, subject, bench = simulate_grid(rng, 1, 3, better=0, delta=0.15)
    correct = correct[0]
    # Two settings with exactly the same answers, both clearly better than the third.
    answers = Answers(["b-first", "a-second", "worse"], np.stack([correct[0], correct[0], correct[2]]),
                      subject, bench, base[0])
    v = compare_settings(answers, "chinese_gain", margin=2.0)
    assert v.best is None and "No setting is distinguishable" in v.sentence()
    assert v.leaders == ["a-second", "b-first"]  # both, sorted by name for display only
    assert set(v.confidence_set) == {"a-second", "b-first"}  # the worse one is beaten by both
    assert {s["setting"] for s in v.separation} == {"a-second", "b-first"}
    # Listing the settings in another order changes nothing.
    order = [2, 1, 0]
    w = compare_settings(Answers([answers.settings[i] for i in order], answers.correct[order], subject, bench,
                                 base[0]), "chinese_gain", margin=2.0)
    assert (w.best, set(w.confidence_set), w.leaders) == (v.best, set(v.confidence_set), v.leaders)


def test_named_best_and_its_evidence():
    rng = np.random.default_rng(5)
    correct, base, subject, bench = simulate_grid(rng, 1, 3, better=1, delta=0.10)
    v = compare_settings(Answers(["r4", "r8", "r16"], correct[0], subject, bench, base[0]), "chinese_gain", 2.0)
    assert v.best == "r8" and v.confidence_set == ["r8"]
    assert v.sentence().startswith("Best setting: r8.")
    rival = v.separation[0]
    assert rival["setting"] == "r8" and rival["low"] > 0 and rival["advantage"] >= 2.0
    assert len(v.pairs) == 3


def test_pairwise_matches_the_clustered_interval_computed_by_hand():
    rng = np.random.default_rng(9)
    correct, _, subject, bench = simulate_grid(rng, 1, 3, better=0, subjects=6, per=30)
    y = correct[0]
    cluster, strata = clusters(subject, bench)
    pw = pairwise(y, cluster, strata, 0.95)
    s, t = 0, 2
    n = np.array([np.sum(cluster == g) for g in range(len(strata))], dtype=float)
    c = np.array([np.sum(y[s, cluster == g] & ~y[t, cluster == g]) for g in range(len(strata))], dtype=float)
    b = np.array([np.sum(y[t, cluster == g] & ~y[s, cluster == g]) for g in range(len(strata))], dtype=float)
    low, high, deff = clustered_interval(strata, n, b, c, 0.95)
    assert pw["advantage"][s, t] == pytest.approx(100 * (y[s].mean() - y[t].mean()))
    assert (pw["low"][s, t], pw["high"][s, t]) == pytest.approx((100 * low, 100 * high))
    assert pw["design_effect"][s, t] == pytest.approx(deff)
    # Mirror: t against s is the same interval with the sign flipped.
    assert (pw["low"][t, s], pw["high"][t, s]) == pytest.approx((-pw["high"][s, t], -pw["low"][s, t]))


def test_questions_to_separate_follow_the_plan_logic():
    rng = np.random.default_rng(13)
    correct, base, subject, bench = simulate_grid(rng, 1, 4, subjects=10, per=20)
    v = compare_settings(Answers(list("abcd"), correct[0], subject, bench, base[0]), "chinese_gain", margin=2.0)
    assert v.best is None
    for s in v.separation:
        expected = questions_needed(s["difference_to_detect"] / 100, s["discordance"],
                                    alpha=2 * 0.05 / 3, power=0.8)
        assert s["questions_to_separate"] == int(np.ceil(expected * s["design_effect"]))
        assert s["difference_to_detect"] >= 2.0
        assert s["questions_to_separate"] > v.n_questions  # they could not be separated at 200


def test_simultaneous_confidence_is_bonferroni_over_k_minus_1():
    assert simultaneous_confidence(2) == pytest.approx(0.90)  # one comparison: one-sided 5%
    assert simultaneous_confidence(5) == pytest.approx(1 - 0.1 / 4)


def test_factor_effects_recover_a_known_rank_effect():
    rng = np.random.default_rng(21)
    values = [{"lora.rank": r, "lora.dropout": d} for r in (4, 8) for d in (0.05, 0.1)]
    k, n, subjects = 4, 4000, 80
    subject = np.repeat(np.arange(subjects), n // subjects).astype(str)
    bench = np.where(np.repeat(np.arange(subjects), n // subjects) < 40, "ceval", "mmlu")
    base = rng.random(n) < 0.5
    # Rank 8 gains 8 points on Chinese (ceval) over base, rank 4 gains 2; dropout changes nothing;
    # English (mmlu): every setting forgets 3 points.
    correct = np.empty((k, n), dtype=bool)
    zh = bench == "ceval"
    for i, v in enumerate(values):
        gain = 0.08 if v["lora.rank"] == 8 else 0.02
        flip_up = rng.random(n) < np.where(zh, 2 * gain, 0.0)  # wrong -> right at twice the gain (half are wrong)
        flip_down = rng.random(n) < np.where(zh, 0.0, 0.06)  # right -> wrong: 3 points
        correct[i] = np.where(base, ~flip_down, flip_up)
    effects = factor_effects(Answers([f"s{i}" for i in range(k)], correct, subject, bench, base), values,
                             ["ceval"], ["mmlu"])
    gain = {(r["factor"], r["level"]): r for r in effects["chinese_gain"]}
    rank8 = gain[("lora.rank", 8)]
    assert rank8["low"] < 8 < rank8["high"] and gain[("lora.rank", 4)]["low"] < 2 < gain[("lora.rank", 4)]["high"]
    assert rank8["vs_reference"]["low"] > 0 and rank8["vs_reference"]["low"] < 6 < rank8["vs_reference"]["high"]
    assert rank8["vs_reference"]["q"] < 0.05
    drop = gain[("lora.dropout", 0.1)]["vs_reference"]
    assert drop["low"] < 0 < drop["high"]
    forgetting = {(r["factor"], r["level"]): r for r in effects["english_forgetting"]}
    f = forgetting[("lora.rank", 4)]
    assert f["change"] > 0 and f["low"] < 3 < f["high"]  # positive = forgot


def test_probe_interval_is_the_widest_the_accuracies_allow():
    low, high = probe_interval(0.5, 0.55, 40)
    assert low < 5 < high
    narrow = [100 * float(x) for x in __import__("zhtune.analysis.stats", fromlist=["x"]).tango_interval(2, 4, 40)]
    assert high - low > narrow[1] - narrow[0]


def test_grid_charts(tmp_path):
    points = [{"label": n, "chinese_gain": g, "chinese_gain_ci": [g - 4, g + 4], "english_forgetting": f,
               "english_forgetting_ci": [f - 3, f + 3]} for n, g, f in (("a", 1, 0), ("b", 2, 1), ("c", 2, 1))]
    paths = plot_grid_tradeoff(points, tmp_path / "pareto", confidence_set=["a", "b", "c"])
    assert all(p.stat().st_size > 1000 for p in paths)
    paths = plot_learning_forgetting(points[:2], {"a": points}, tmp_path / "lf")
    assert all(p.stat().st_size > 1000 for p in paths)

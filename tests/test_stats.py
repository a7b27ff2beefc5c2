"""The statistics of zhtune.analysis.stats, checked by seeded, vectorised simulation (a few seconds each):
interval coverage at every sample size, the clustered pooled interval on subject-clustered data, the
false discovery rate of Benjamini-Hochberg, and the power formulas against simulated McNemar tests."""
from __future__ import annotations

import numpy as np
import pytest

from zhtune.analysis.stats import (FORGETTING, GAIN, bh_qvalues, cluster_design_effect, clustered_interval,
                                   mcnemar_exact, min_detectable_change, noninferiority_p, questions_needed,
                                   tango_interval, verdict)

REPLICATES = 6000


def paired_counts(rng, n: int, accuracy: float, discordance: float, change: float, size: int):
    """(b, c) of ``size`` simulated paired tables: base accuracy, share of changed answers, true change."""
    p_b, p_c = (discordance - change) / 2, (discordance + change) / 2
    p_a = accuracy - p_b
    assert p_a >= 0 and p_a + p_b + p_c <= 1, "impossible scenario"
    counts = rng.multinomial(n, [p_a, p_b, p_c, max(0.0, 1 - p_a - p_b - p_c)], size=size)
    return counts[:, 1], counts[:, 2]


def possible(accuracy: float, discordance: float, change: float) -> bool:
    p_b, p_c = (discordance - change) / 2, (discordance + change) / 2
    return accuracy - p_b >= 0 and accuracy + p_c <= 1


# base accuracy x discordance x true change (as a share of the discordance), where such tables exist
SCENARIOS = [(acc, psi, frac) for acc in (0.25, 0.5, 0.8) for psi in (0.02, 0.05, 0.2, 0.4)
             for frac in (0.0, 0.5, -0.5) if possible(acc, psi, frac * psi)]


@pytest.mark.parametrize("n", [10, 30, 100, 1000])
def test_interval_coverage_at_every_sample_size(n):
    rng = np.random.default_rng(n)
    failures = []
    for accuracy, discordance, frac in SCENARIOS:
        change = frac * discordance
        b, c = paired_counts(rng, n, accuracy, discordance, change, REPLICATES)
        low, high = tango_interval(b, c, n)
        coverage = np.mean((low <= change + 1e-12) & (change - 1e-12 <= high))
        upper = 0.97 if n >= 100 and discordance >= 0.05 else 1.0
        if not 0.93 <= coverage <= upper:
            failures.append((accuracy, discordance, change, round(float(coverage), 4)))
    assert not failures, f"n = {n}: coverage outside [0.93, upper] for {failures}"


def test_interval_has_zero_width_only_without_questions():
    low, high = tango_interval([0, 0, 0, 5], [0, 0, 12, 0], [0, 24, 24, 5])
    assert (low[0], high[0]) == (0.0, 0.0)
    assert np.all(high[1:] - low[1:] > 0.05)
    # nothing changed among 24 questions: about +-z^2 / (n + z^2) = +-13.8 points, not [0, 0]
    assert low[1] == pytest.approx(-1.96 ** 2 / (24 + 1.96 ** 2), abs=2e-3) and high[1] == pytest.approx(-low[1])
    # all 12 discordant questions improved: the interval lies above 0, as McNemar's p says
    assert low[2] > 0 and mcnemar_exact(0, 12) < 0.001


def test_interval_matches_wald_at_large_n():
    n, b, c = 20000, 2000, 3000
    low, high = tango_interval(b, c, n)
    se = np.sqrt(((b + c) / n - ((c - b) / n) ** 2) / n)
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.01)
    assert (low + high) / 2 == pytest.approx((c - b) / n, abs=1e-3)


def test_noninferiority_p_agrees_with_the_90_percent_bound():
    rng = np.random.default_rng(3)
    b, c = rng.integers(0, 60, 400), rng.integers(0, 60, 400)
    n = b + c + rng.integers(0, 400, 400)
    low90, high90 = tango_interval(b, c, n, confidence=0.90)
    margin = 0.05
    assert np.array_equal(noninferiority_p(b, c, n, margin, kind=FORGETTING) < 0.05, low90 > -margin)
    assert np.array_equal(noninferiority_p(b, c, n, margin, kind=GAIN) < 0.05, high90 < margin)


# ----------------------------------------------------------------------------------- clustered
def simulate_clustered(rng, subjects, sizes, discordance, improve_share, concentration, replicates):
    """Subject-clustered paired outcomes: each subject draws its own discordance and direction."""
    stratum = np.repeat(np.arange(len(subjects)), subjects)
    psi, share = np.repeat(discordance, subjects), np.repeat(improve_share, subjects)
    psi_g = rng.beta(psi * concentration, (1 - psi) * concentration, size=(replicates, stratum.size))
    share_g = rng.beta(share * concentration, (1 - share) * concentration, size=(replicates, stratum.size))
    p_b, p_c = psi_g * (1 - share_g), psi_g * share_g
    b = rng.binomial(sizes, p_b)
    c = rng.binomial(sizes - b, p_c / (1 - p_b))
    per_stratum = np.array([sizes[stratum == k].sum() for k in range(len(subjects))])
    true = (per_stratum * np.asarray(discordance) * (2 * np.asarray(improve_share) - 1)).sum() / sizes.sum()
    return stratum, b, c, true


@pytest.mark.parametrize("subjects,size_range", [((20, 12), (5, 60)), ((6, 4), (10, 100)), ((57, 52), (20, 300))])
def test_clustered_pooled_interval_coverage(subjects, size_range):
    rng = np.random.default_rng(sum(subjects))
    for discordance, share, concentration in (((0.2, 0.3), (0.5, 0.3), 4.0), ((0.1, 0.1), (0.8, 0.2), 2.0)):
        sizes = rng.integers(size_range[0], size_range[1] + 1, size=sum(subjects))
        stratum, b, c, true = simulate_clustered(rng, subjects, sizes, discordance, share, concentration, 3000)
        low, high, deff = clustered_interval(stratum, sizes, b, c)
        coverage = np.mean((low <= true) & (true <= high))
        naive_low, naive_high = tango_interval(b.sum(-1), c.sum(-1), sizes.sum())
        naive = np.mean((naive_low <= true) & (true <= naive_high))
        assert coverage >= 0.92, (subjects, discordance, coverage)
        assert naive < 0.9 and np.median(deff) > 1.5  # the clustering is real, and ignoring it fails


def test_design_effect_is_one_for_independent_questions_and_never_below():
    stratum = np.repeat([0, 1], [30, 30])
    n = np.full(60, 20)
    rng = np.random.default_rng(5)
    b, c = rng.binomial(n, 0.1, size=(4000, 60)), rng.binomial(n, 0.1, size=(4000, 60))
    deff = cluster_design_effect(stratum, n, b, c)
    assert deff.min() >= 1.0
    assert np.median(deff) < 1.15  # t(58) allowance and floor only: no clustering in the data
    nothing = cluster_design_effect(stratum, n, np.zeros(60), np.zeros(60))
    assert float(nothing) == 1.0


# ----------------------------------------------------------------------------------- multiplicity
def test_bh_qvalues_by_hand():
    q = bh_qvalues(np.array([0.01, 0.04, 0.03, 0.5]))
    assert q == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert bh_qvalues(np.array([])).size == 0


def test_bh_controls_false_discovery_rate_under_the_null():
    """60 subjects per benchmark, McNemar's exact p on each: no subject changed, or 10 of 60 did."""
    rng = np.random.default_rng(11)
    reps, m = 2000, 60
    sizes = rng.integers(10, 200, size=m)
    for real in (0, 10):
        p_b = np.full(m, 0.1)
        p_c = p_b.copy()
        p_c[:real] = 0.3  # real changes: wrong -> right three times as often
        b = rng.binomial(sizes, p_b, size=(reps, m))
        c = rng.binomial(sizes - b, p_c / (1 - p_b))
        p = mcnemar_exact(b, c)
        flagged = bh_qvalues(p) < 0.05
        false = flagged[:, real:].sum(axis=1)
        fdr = np.mean(false / np.maximum(flagged.sum(axis=1), 1))
        assert fdr <= 0.05, (real, fdr)
        raw_false = np.mean((p[:, real:] < 0.05).any(axis=1))
        assert real or raw_false > 0.3  # without the adjustment most replicates flag some noise


# ----------------------------------------------------------------------------------- power
def test_min_detectable_change_has_80_percent_power():
    rng = np.random.default_rng(2)
    for n, discordance in ((200, 0.2), (1000, 0.1), (24, 0.0)):
        mdc = min_detectable_change(n, discordance)
        psi = max(discordance, mdc)
        b, c = paired_counts(rng, n, 0.5, psi, -mdc, 4000)  # a loss of exactly the MDC
        power = np.mean(mcnemar_exact(b, c) < 0.05)
        assert 0.72 <= power <= 0.88, (n, discordance, mdc, power)
    assert min_detectable_change(3, 0.5) is None
    assert min_detectable_change(1000, 0.2) < min_detectable_change(250, 0.2) < min_detectable_change(250, 0.4)


def test_questions_needed_inverts_the_detectable_change():
    for change, discordance in ((0.02, 0.15), (0.05, 0.3), (0.02, 0.0)):
        n = questions_needed(change, discordance)
        assert min_detectable_change(n, discordance) <= change < min_detectable_change(n - 5, discordance)
    assert questions_needed(0.0, 0.2) is None
    assert questions_needed(0.02, 0.2) == pytest.approx(3919, abs=5)  # (1.96*sqrt(.2)+0.84*sqrt(.1996))^2/.0004


# ----------------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("args,kind,expected", [
    ((-3.0, -5.0, -1.0, -4.6, -1.4), FORGETTING, "forgot"),
    ((1.0, 0.2, 1.8, 0.3, 1.7), FORGETTING, "improved"),
    ((0.0, -1.5, 1.5, -1.2, 1.2), FORGETTING, "no forgetting beyond the margin"),
    ((0.0, -14.0, 14.0, -12.0, 12.0), FORGETTING, "inconclusive"),
    ((0.0, -1.5, 1.5, -1.2, 1.2), GAIN, "equivalent within the margin"),
    # Chinese is two-sided: a possible 3.9-point decline is not "no gain beyond the margin" (CMMLU cloze)
    ((-2.0, -4.3, 0.2, -3.9, -0.2), GAIN, "inconclusive"),
    ((0.5, -0.5, 3.0, -0.2, 2.6), GAIN, "inconclusive"),
    ((-3.0, -5.0, -1.0, -4.6, -1.4), GAIN, "declined"),
    ((0.0, -14.0, 14.0, -12.0, 12.0), GAIN, "inconclusive"),
])
def test_verdicts(args, kind, expected):
    assert verdict(*args, 2.0, kind=kind) == expected


def test_subject_verdict_follows_the_adjusted_significance():
    # interval below 0, but not significant after BH: not called forgotten
    assert verdict(-10.0, -19.0, -1.0, -17.0, -2.5, 2.0, kind=FORGETTING, significant=False) == "inconclusive"
    assert verdict(-10.0, -19.0, -1.0, -17.0, -2.5, 2.0, kind=FORGETTING, significant=True) == "forgot"

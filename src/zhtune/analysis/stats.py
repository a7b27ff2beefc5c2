"""Pure statistics for paired comparisons of two evaluation runs on the same questions.

Every question has a pair of outcomes (base right?, tuned right?), summarised by a paired 2x2 table:
``a`` both right, ``b`` right before and wrong after (forgotten), ``c`` wrong before and right after
(learned), ``d`` both wrong. The change in accuracy is ``(c - b) / n``. Functions take numpy arrays
(or scalars) and broadcast, so the simulation tests can run thousands of tables at once.

Why these methods:

- **Tango's score interval for paired data** (Tango 1998; the score-type alternative Newcombe 1998
  compares his hybrid intervals with): every change the score test does not reject. The test at a
  change of 0 is McNemar's asymptotic test. Unlike a Wald or a percentile-bootstrap
  interval it never has zero width when nothing changed (24 questions that all kept their answers
  cannot prove a change of exactly 0), and in simulation (tests/test_stats.py) it covers the true
  change 95-96% of the time once about five questions are expected to change (100 questions at 5%
  discordance), and is conservative (up to 100%) with fewer. Newcombe's
  method 10 was tried first: at 100 questions and 5% discordance it covers 97.5-98%, too wide.
- **McNemar's exact test**: the two-sided binomial test of ``c`` in ``b + c`` trials at 1/2 (on the
  effective counts for pooled figures). It is the p every figure prints and decides its verdict;
  :func:`paired_interval` is Tango's interval made to agree with it at 0 (docs/statistics.md).
- **Cluster-robust pooled interval** (Miller 2024, "Adding Error Bars to Evals"): questions of one
  subject are not independent, so the standard error of a pooled change sums the residuals per
  subject, stratified by benchmark. It enters the score interval as a design effect (an effective
  number of questions, as Korn & Graubard 1998 do for score intervals of survey data), with the
  t distribution's degrees of freedom (subjects - benchmarks) for few subjects; the interval
  therefore never collapses to zero width and widens when answers change together within subjects.
- **Benjamini-Hochberg q-values** (1995): with dozens of subjects some raw p < 0.05 are chance;
  flagging q < 0.05 keeps the expected share of false flags at 5%.
- **Power** (Connor 1987): the normal approximation to McNemar's test, from the number of questions
  and the share of questions whose outcome differs (the discordance).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import betainc
from scipy.stats import norm
from scipy.stats import t as student_t

ArrayLike = np.ndarray | float | int
FORGETTING, GAIN = "forgetting", "gain"  # which side of a change matters: English forgetting, Chinese gain
LOSS_VERDICTS = ("forgot", "declined")
NO_FORGETTING = "no forgetting beyond the margin"  # English: non-inferiority within the margin
EQUIVALENT = "equivalent within the margin"  # Chinese: both a gain and a loss of the margin excluded


def z_value(confidence: float) -> float:
    """The two-sided normal critical value: 1.96 for 0.95, 1.645 for 0.90."""
    return float(norm.ppf(0.5 + confidence / 2))


def _score_z(b: np.ndarray, c: np.ndarray, n: np.ndarray, change: ArrayLike) -> np.ndarray:
    """Tango's score statistic for H0: change = ``change`` (tuned - base, as a fraction).

    (c - b - n * change) / sqrt(n * (2 q + change - change^2)), with q the probability of "right before,
    wrong after" maximising the likelihood under H0: the root of
    2n q^2 - q ((b + c) - change (2n + b - c)) - b change (1 - change) = 0.
    At change = 0 it is McNemar's statistic (c - b) / sqrt(b + c). Decreasing in ``change``."""
    change = np.asarray(change, dtype=float)
    quad_b = -(b + c) + change * (2 * n + b - c)
    quad_c = -b * change * (1 - change)
    q = (-quad_b + np.sqrt(np.maximum(quad_b ** 2 - 8 * n * quad_c, 0.0))) / (4 * n)
    variance = n * np.maximum(2 * q + change - change ** 2, 1e-300)
    return (c - b - n * change) / np.sqrt(variance)


def tango_interval(b: ArrayLike, c: ArrayLike, n: ArrayLike, confidence: float = 0.95,
                   iterations: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Tango's (1998) score interval for the paired change tuned - base = (c - b) / n, as fractions.

    ``b`` = right in base only, ``c`` = right in tuned only; counts may be fractional (effective
    sample sizes). The interval is every change the score test does not reject, found by bisection
    (the statistic is monotone), vectorised over the inputs. Its width is zero only when n = 0 (then
    it is [0, 0]: there is nothing to estimate); with nothing changed among n questions it is about
    +-z^2 / (n + z^2)."""
    b, c, n = (np.asarray(v, dtype=float) for v in (b, c, n))
    empty = n <= 0
    n_safe = np.where(empty, 1.0, n)
    z = z_value(confidence)
    estimate = (c - b) / n_safe

    def solve(target: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        for _ in range(iterations):
            mid = (lo + hi) / 2
            above = _score_z(b, c, n_safe, mid) > target
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return (lo + hi) / 2

    low = solve(z, np.full_like(estimate, -1.0), estimate.copy())
    high = solve(-z, estimate.copy(), np.full_like(estimate, 1.0))
    return np.where(empty, 0.0, low), np.where(empty, 0.0, high)


def noninferiority_p(b: ArrayLike, c: ArrayLike, n: ArrayLike, margin: float, *, kind: str) -> np.ndarray:
    """One-sided score-test p-value for the margin (a fraction).

    ``kind="forgetting"``: the non-inferiority test, H0 change <= -margin against change > -margin
    (forgetting smaller than the margin); ``kind="gain"``: the non-superiority test, H0 change >= margin
    against change < margin. p < 0.05 exactly when the 90% interval's bound on that side lies inside
    the margin. Both together are Schuirmann's TOST (:func:`equivalence_p`)."""
    b, c, n = (np.asarray(v, dtype=float) for v in (b, c, n))
    n_safe = np.where(n > 0, n, 1.0)
    if kind == FORGETTING:
        p = norm.sf(_score_z(b, c, n_safe, -margin))
    elif kind == GAIN:
        p = norm.cdf(_score_z(b, c, n_safe, margin))
    else:
        raise ValueError(f"kind must be {FORGETTING!r} or {GAIN!r}, got {kind!r}")
    return np.where(n > 0, p, 1.0)


def mcnemar_exact(b: ArrayLike, c: ArrayLike) -> float | np.ndarray:
    """Two-sided exact McNemar p-value: binomial test of c successes in b + c trials at 1/2.

    The binomial at 1/2 is symmetric, so the two-sided p is min(1, 2 P(X <= min(b, c))), the same
    as ``scipy.stats.binomtest``, but vectorised; 1 when no question changed. P(X <= k) is written as
    the regularised incomplete beta I_1/2(m - k, k + 1), which is the binomial probability for whole
    counts and extends it continuously to the effective (fractional) counts of pooled figures, whose
    counts are divided by a design effect. Scalars in, float out."""
    b_arr, c_arr = np.asarray(b, dtype=float), np.asarray(c, dtype=float)
    m, k = b_arr + c_arr, np.minimum(b_arr, c_arr)
    tied = m - k <= k  # b == c: P(X <= m/2) >= 1/2, so p = 1
    with np.errstate(invalid="ignore", divide="ignore"):
        tail = betainc(np.where(tied, 1.0, m - k), k + 1, 0.5)
    p = np.where((m <= 0) | tied, 1.0, np.minimum(1.0, 2 * tail))
    return float(p) if p.ndim == 0 else p


_PAST_ZERO = 1e-9  # a fraction: survives rounding to points (9 decimals), prints as 0.0


def paired_interval(b: ArrayLike, c: ArrayLike, n: ArrayLike,
                    confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The interval every paired figure prints: Tango's score interval, made to agree with McNemar's
    exact test at zero, so that the interval excludes 0 exactly when the exact p < 1 - confidence.

    It is the set of changes that a family of tests does not reject: the exact conditional test at a
    change of 0 (the test the verdict and the printed p come from), Tango's score test everywhere
    else. Where the exact test does not reject no change but the score test does (few discordant
    questions, e.g. 0 lost and 4 gained), the interval is extended to 0; where the exact test rejects
    and the score test does not (only at confidences above 99.99%), the end nearest 0 is moved just
    past 0 (1e-7 points). Counts may be effective (fractional)."""
    b, c, n = (np.asarray(v, dtype=float) for v in (b, c, n))
    low, high = tango_interval(b, c, n, confidence)
    rejects = np.asarray(mcnemar_exact(b, c)) < 1 - confidence
    positive = c > b
    low = np.where(~rejects, np.minimum(low, 0.0), np.where(positive, np.maximum(low, _PAST_ZERO), low))
    high = np.where(~rejects, np.maximum(high, 0.0), np.where(positive, high, np.minimum(high, -_PAST_ZERO)))
    return low, high


def cluster_design_effect(stratum: np.ndarray, n: ArrayLike, b: ArrayLike, c: ArrayLike,
                          confidence: float = 0.95) -> np.ndarray:
    """How many times the pooled change's variance exceeds that of independent questions.

    One cluster per element of the last axis (a subject), ``stratum`` labelling each cluster's
    benchmark. The variance is the cluster-robust one of the question-weighted change, stratified by
    benchmark: per benchmark, G/(G-1) times the sum over subjects of (c - b - n * change)^2
    (Miller 2024). It is divided by the variance the pooled 2x2 table implies for independent
    questions after multiplying by (t_df / z)^2 with df = subjects - benchmarks (the small-sample
    allowance for a variance estimated from few subjects), and floored at 1: clustering never makes
    the evidence stronger than independent questions would. A benchmark with one subject contributes
    its independent-question variance; with no discordant question at all the design effect is 1."""
    stratum = np.asarray(stratum)
    n, b, c = (np.asarray(v, dtype=float) for v in (n, b, c))
    total = n.sum(axis=-1)
    diff = c - b
    variance = np.zeros(np.shape(total))
    clusters_used = 0
    for label in np.unique(stratum):
        mask = stratum == label
        n_k, diff_k = n[..., mask], diff[..., mask]
        size_k = n_k.sum(axis=-1)
        change_k = diff_k.sum(axis=-1) / np.maximum(size_k, 1)
        groups = int(mask.sum())
        if groups > 1:
            resid = diff_k - n_k * change_k[..., None]
            variance = variance + groups / (groups - 1) * (resid ** 2).sum(axis=-1)
            clusters_used += groups - 1
        else:  # one subject: the independent-question variance of that benchmark's total
            discordant = (b[..., mask] + c[..., mask]).sum(axis=-1)
            variance = variance + discordant - size_k * change_k ** 2
    change = diff.sum(axis=-1) / np.maximum(total, 1)
    independent = (b + c).sum(axis=-1) - total * change ** 2  # same scale: n^2 * Var(change)
    # The t allowance is for the cluster-robust variance, estimated from few subjects; the floor (the
    # independent-question variance, estimated from many questions) needs none.
    allowance = ((float(student_t.ppf(0.5 + confidence / 2, clusters_used)) / z_value(confidence)) ** 2
                 if clusters_used >= 1 else 1.0)
    changed = independent > 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(changed, allowance * variance / np.where(changed, independent, 1.0), 1.0)
    return np.maximum(ratio, 1.0)


def clustered_interval(stratum: np.ndarray, n: ArrayLike, b: ArrayLike, c: ArrayLike,
                       confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interval for a pooled change (several benchmarks, questions clustered by subject).

    Per-subject counts on the last axis; returns (low, high, design effect). Tango's interval of the
    pooled counts, every count divided by the design effect (agreeing with the exact test of the
    effective counts at 0, as :func:`paired_interval`): at large n its half-width is the t value
    times the cluster-robust standard error, and it keeps the score interval's behaviour (never zero
    width) when few questions changed."""
    n, b, c = (np.asarray(v, dtype=float) for v in (n, b, c))
    deff = cluster_design_effect(stratum, n, b, c, confidence)
    low, high = paired_interval(b.sum(axis=-1) / deff, c.sum(axis=-1) / deff, n.sum(axis=-1) / deff, confidence)
    return low, high, deff


def clustered_score_p(b: ArrayLike, c: ArrayLike, design_effect: ArrayLike) -> np.ndarray:
    """Two-sided p of no change for a pooled figure: McNemar's score statistic (c - b) / sqrt(b + c) on
    the effective counts (divided by the design effect). It is the test the clustered interval
    inverts, so p < 0.05 exactly when the 95% interval excludes 0; McNemar's exact p on the pooled
    questions would treat questions of one subject as independent and overstate the evidence."""
    b, c, deff = (np.asarray(v, dtype=float) for v in (b, c, design_effect))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(c - b) / np.sqrt((b + c) * deff)
    return np.where(b + c > 0, 2 * norm.sf(z), 1.0)


def bh_qvalues(p_values: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) along the last axis.

    q_(i) = min over j >= i of p_(j) * m / j, capped at 1; flagging q < alpha controls the false
    discovery rate at alpha for independent (or positively dependent) tests."""
    p = np.asarray(p_values, dtype=float)
    if p.shape[-1] == 0:
        return p.copy()
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1) * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[..., ::-1], axis=-1)[..., ::-1]
    q = np.empty_like(p)
    np.put_along_axis(q, order, np.minimum(ranked, 1.0), axis=-1)
    return q


def _power_z(alpha: float, power: float) -> tuple[float, float]:
    return float(norm.ppf(1 - alpha / 2)), float(norm.ppf(power))


def min_detectable_change(n: float, discordance: float, *, alpha: float = 0.05,
                          power: float = 0.80) -> float | None:
    """The smallest change (fraction) McNemar's test detects with ``power`` at two-sided ``alpha``.

    Connor's (1987) approximation sqrt(n)|D| = z_a sqrt(psi) + z_b sqrt(psi - D^2), psi the
    discordance, solved for D. A change D needs at least |D| of the questions to change, so the
    discordance used is max(observed, D): when nothing changed (A compared with A) the answer is the
    change that one-directional flips alone would reveal, not zero. None when no change up to 100
    points is detectable (fewer than about four questions)."""
    if n <= 0:
        return None
    z_a, z_b = _power_z(alpha, power)

    def root(psi: float) -> float | None:  # the larger root of the squared equation, as a fraction
        disc = psi * (n + z_b ** 2 - z_a ** 2)
        if disc < 0:
            return None
        return (math.sqrt(n) * z_a * math.sqrt(psi) + z_b * math.sqrt(disc)) / (n + z_b ** 2)

    at_observed = root(discordance) if discordance > 0 else None
    if at_observed is not None and at_observed <= discordance:
        return at_observed
    s = root(1.0)  # psi = D: the equation in s = sqrt(D) has the same form with psi = 1
    if s is None or s * s > 1:
        return None
    return s * s


def questions_needed(change: float, discordance: float, *, alpha: float = 0.05,
                     power: float = 0.80) -> int | None:
    """Questions needed to detect a change (fraction) with McNemar's test (Connor 1987).

    n = (z_a sqrt(psi) + z_b sqrt(psi - D^2))^2 / D^2 with psi = max(discordance, |D|). None for a
    change of zero (no number of questions detects it)."""
    change = abs(change)
    if change <= 0 or change > 1:
        return None
    z_a, z_b = _power_z(alpha, power)
    psi = min(max(discordance, change), 1.0)
    n = (z_a * math.sqrt(psi) + z_b * math.sqrt(max(psi - change ** 2, 0.0))) ** 2 / change ** 2
    return math.ceil(n - 1e-9)


def verdict(change: float, low: float, high: float, bound_low: float, bound_high: float, margin: float, *,
            kind: str, significant: bool | None = None, equivalent: bool | None = None) -> str:
    """The verdict on a change tuned - base (all in points).

    ``change``: the estimate; ``low, high``: the 95% interval; ``bound_low, bound_high``: the
    one-sided 95% bounds (the limits of the 90% two-sided interval). ``significant``: the test of no
    change rejects (p < 0.05, or BH q < 0.05 within a family); without it, "the interval excludes 0",
    which :func:`paired_interval` makes the same thing. For ``kind="forgetting"`` (English):
    *forgot* / *improved*, else *no forgetting beyond the margin* when forgetting of ``margin`` or more
    is rejected by the one-sided (non-inferiority) test at alpha = 0.05 (bound_low > -margin), else
    *inconclusive*. For ``kind="gain"`` (Chinese, two-sided): *improved* / *declined*, else
    *equivalent within the margin* when both a gain and a loss of ``margin`` or more are rejected
    (the non-inferiority and the non-superiority test, i.e. Schuirmann's TOST: -margin < bound_low and
    bound_high < margin), else *inconclusive*. ``equivalent`` overrides the bound check (subjects and
    categories pass the BH q of the margin test's p)."""
    if significant is None:
        below, above = high < 0, low > 0
    else:
        below, above = significant and change < 0, significant and change > 0
    if kind not in (FORGETTING, GAIN):
        raise ValueError(f"kind must be {FORGETTING!r} or {GAIN!r}, got {kind!r}")
    if equivalent is None:
        equivalent = bound_low > -margin and (kind == FORGETTING or bound_high < margin)
    if below:
        return "forgot" if kind == FORGETTING else "declined"
    if above:
        return "improved"
    if equivalent:
        return NO_FORGETTING if kind == FORGETTING else EQUIVALENT
    return "inconclusive"


def equivalence_p(b: ArrayLike, c: ArrayLike, n: ArrayLike, margin: float, *, kind: str) -> np.ndarray:
    """p of the margin verdict: for forgetting the one-sided non-inferiority test (H0: change <=
    -margin); for a Chinese change the TOST p, the larger of the non-inferiority and the
    non-superiority (H0: change >= margin) p, so p < 0.05 exactly when the 90% interval lies inside
    (-margin, margin)."""
    low_side = noninferiority_p(b, c, n, margin, kind=FORGETTING)
    return low_side if kind == FORGETTING else np.maximum(low_side, noninferiority_p(b, c, n, margin, kind=GAIN))


def fcr_confidence(selected: int, total: int, alpha: float = 0.05) -> float:
    """Confidence of Benjamini & Yekutieli's (2005) false-coverage-rate intervals: when ``selected``
    of ``total`` parameters are chosen for display (e.g. the largest subject changes), intervals at
    1 - selected * alpha / total keep the expected share of shown intervals that miss their true
    value at most alpha (independent estimates, as subjects' question sets are)."""
    return 1 - max(selected, 1) * alpha / max(total, 1)


def fewest_changes_for_significance(alpha: float = 0.05) -> int:
    """The fewest discordant questions, all changed in one direction, with McNemar's exact p < alpha
    (2 * 0.5^k < alpha): 6 at 0.05. A set of fewer questions cannot reach significance at all."""
    return math.floor(1 + math.log2(1 / alpha) + 1e-12) + 1


def paired_ratio_interval(base: ArrayLike, tuned: ArrayLike, weight: ArrayLike,
                          confidence: float = 0.95) -> dict:
    """Change of a ratio of sums, sum(tuned - base) / sum(weight), paired by unit (bits per character:
    the units are texts, ``base``/``tuned`` their bits and ``weight`` their characters), and the
    relative change sum(tuned) / sum(base) - 1.

    Both are ratio estimators with the linearised standard error (Cochran 1977, 6.9): for the change,
    residuals r_i = d_i - change * w_i with d_i = tuned_i - base_i and se = sqrt(n / (n - 1) * sum
    r_i^2) / sum w; for the ratio R = sum tuned / sum base, r_i = tuned_i - R base_i and se = sqrt(n /
    (n - 1) * sum r_i^2) / sum base, so the relative interval allows for the variance of the
    denominator (dividing the change's interval by the base value would not). t intervals with n - 1
    degrees of freedom; p is the two-sided t test of no change. Texts, not tokens, are the units:
    tokens of one text do not vary independently. None with fewer than 2 units."""
    base, tuned, weight = (np.asarray(x, dtype=float) for x in (base, tuned, weight))
    n = len(weight)
    if n < 2 or not (len(base) == len(tuned) == n):
        return {"change": None, "low": None, "high": None, "p": None, "units": n,
                "relative": None, "relative_low": None, "relative_high": None}
    d = tuned - base
    total = weight.sum()
    change = d.sum() / total
    se = math.sqrt(n / (n - 1) * float(np.sum((d - change * weight) ** 2))) / total
    crit = float(student_t.ppf(0.5 + confidence / 2, n - 1))
    if se == 0:
        p = 1.0 if change == 0 else 0.0
    else:
        p = float(2 * student_t.sf(abs(change) / se, n - 1))
    ratio = tuned.sum() / base.sum()
    ratio_se = math.sqrt(n / (n - 1) * float(np.sum((tuned - ratio * base) ** 2))) / base.sum()
    return {"change": float(change), "low": float(change - crit * se), "high": float(change + crit * se),
            "p": p, "units": n, "relative": float(ratio - 1), "relative_low": float(ratio - 1 - crit * ratio_se),
            "relative_high": float(ratio - 1 + crit * ratio_se)}

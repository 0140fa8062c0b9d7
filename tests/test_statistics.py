"""Intervals and tests checked against values computed independently of the code under test."""

import math

import numpy as np
import pytest
from scipy import stats

from spatialmix.analysis.statistics import (
    decision_power,
    detectable_distance,
    hartung_knapp,
    mcnemar_exact,
    mean_interval,
    paired_t_interval,
    seed_slopes,
    seeds_needed,
    slope,
)
from spatialmix.errors import SpatialmixError

# Student's sleep data (Cushny & Peebles 1905), extra hours of sleep under two drugs, same 10 patients.
# The textbook paired t-test (R: t.test(extra ~ group, sleep, paired = TRUE)) gives a mean
# difference of 1.58 hours with the 95% confidence interval [0.7001142, 2.4598858].
SLEEP_DRUG_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_DRUG_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
SLEEP_CI = (0.7001142, 2.4598858)


def test_t_interval_matches_the_textbook_sleep_example():
    diffs = [b - a for a, b in zip(SLEEP_DRUG_1, SLEEP_DRUG_2)]
    est = mean_interval(diffs)
    assert est.value == pytest.approx(1.58)
    assert (est.low, est.high) == pytest.approx(SLEEP_CI, abs=1e-6)
    assert est.n_seeds == 10 and est.method == "t over 10 seeds"
    assert est.spread == pytest.approx(np.std(diffs, ddof=1))


def test_paired_t_interval_pairs_by_seed_not_by_position():
    first = {seed: v for seed, v in enumerate(SLEEP_DRUG_2)}
    second = {seed: v for seed, v in reversed(list(enumerate(SLEEP_DRUG_1)))}  # other order, same seeds
    second[99] = 100.0  # unpaired: ignored
    est = paired_t_interval(first, second)
    assert (est.low, est.high) == pytest.approx(SLEEP_CI, abs=1e-6) and est.n_seeds == 10
    assert est.method == "t over 10 seed-paired differences"


def test_t_interval_by_hand_for_three_seeds():
    # mean 7, sample sd 2, n 3: 7 ± t(0.975, 2) * 2 / sqrt(3), with the table value t = 4.303
    est = mean_interval([5.0, 7.0, 9.0])
    half = 4.303 * 2 / math.sqrt(3)
    assert est.value == 7.0
    assert est.low == pytest.approx(7 - half, abs=1e-3) and est.high == pytest.approx(7 + half, abs=1e-3)
    assert est.spread == pytest.approx(2.0)


def test_one_seed_has_no_interval():
    est = mean_interval([0.87])
    assert est.value == 0.87 and est.low is None and est.high is None and not est.defined
    assert est.method == "one seed: no interval" and est.spread is None
    assert not paired_t_interval({0: 0.9}, {0: 0.8}).defined


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")]])
def test_mean_interval_refuses_empty_or_non_finite(bad):
    with pytest.raises(SpatialmixError):
        mean_interval(bad)


def test_paired_t_interval_without_shared_seeds_is_an_error():
    with pytest.raises(SpatialmixError, match="share no seed"):
        paired_t_interval({0: 1.0}, {1: 1.0})


# --------------------------------------------------------------------------- random effects


def test_hartung_knapp_with_equal_within_variances_is_the_plain_t_interval():
    # Equal weights: the random-effects mean is the plain mean, and the Hartung-Knapp variance
    # sum((y - mean)^2) / ((k - 1) k) is s^2 / k, the t-interval's.
    effects = [0.012, -0.004, 0.031, 0.008]
    est = hartung_knapp(effects, [2e-4] * 4)
    plain = mean_interval(effects)
    assert (est.value, est.low, est.high) == pytest.approx((plain.value, plain.low, plain.high), rel=1e-12)
    assert est.n_seeds == 4 and "Hartung-Knapp" in est.method


def test_hartung_knapp_by_hand_without_heterogeneity():
    # y = (0, 2), v = (1, 3): weights 1 and 1/3, fixed mean 0.5, Q = 1 = k - 1 so no between-seed
    # variance; HK variance = Q / ((k - 1) * 4/3) = 0.75; half width t(0.975, 1) * sqrt(0.75).
    est = hartung_knapp([0.0, 2.0], [1.0, 3.0])
    half = stats.t.ppf(0.975, 1) * math.sqrt(0.75)
    assert est.value == pytest.approx(0.5)
    assert (est.low, est.high) == pytest.approx((0.5 - half, 0.5 + half))


def test_hartung_knapp_by_hand_with_heterogeneity():
    # y = (0, 4), v = (1, 1): Q = 8, between = (8 - 1) / (2 - 1) = 7, weights 1/8 each, mean 2,
    # HK variance = (4/8 + 4/8) / (1 * 2/8) = 4.
    est = hartung_knapp([0.0, 4.0], [1.0, 1.0])
    half = stats.t.ppf(0.975, 1) * 2
    assert est.value == pytest.approx(2.0) and (est.low, est.high) == pytest.approx((2 - half, 2 + half))


def test_hartung_knapp_of_one_seed_has_no_interval_and_refuses_bad_input():
    assert not hartung_knapp([0.1], [0.01]).defined
    with pytest.raises(SpatialmixError, match="2 effects but 3 variances"):
        hartung_knapp([0.1, 0.2], [0.01, 0.01, 0.01])
    with pytest.raises(SpatialmixError, match=">= 0"):
        hartung_knapp([0.1, 0.2], [0.01, -0.01])


# --------------------------------------------------------------------------- McNemar


def test_mcnemar_on_a_hand_made_table():
    # 2 examples only the first gets right, 8 only the second, 30 both, 10 neither.
    first = [1] * 2 + [0] * 8 + [1] * 30 + [0] * 10
    second = [0] * 2 + [1] * 8 + [1] * 30 + [0] * 10
    result = mcnemar_exact(first, second)
    assert (result.first_only, result.second_only, result.n_examples) == (2, 8, 50)
    # two-sided exact: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert result.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024, rel=1e-12)


def test_mcnemar_balanced_or_without_discordant_pairs_is_p_one():
    assert mcnemar_exact([1, 0, 1, 0], [0, 1, 0, 1]).p_value == pytest.approx(1.0)
    assert mcnemar_exact([1, 1, 0], [1, 1, 0]).p_value == 1.0


def test_mcnemar_refuses_different_examples():
    with pytest.raises(SpatialmixError, match="same examples"):
        mcnemar_exact([1, 0], [1, 0, 1])


# --------------------------------------------------------------------------- slope


def test_slope_of_an_exact_line():
    assert slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    x = [0, 0, 0.5, 0.5, 1, 1, 2, 2]
    y = [0.41, 0.39, 0.42, 0.40, 0.38, 0.37, 0.33, 0.32]
    assert slope(x, y) == pytest.approx(stats.linregress(x, y).slope)


def test_seed_slopes_are_one_slope_per_seed_then_a_t_interval():
    points = {
        0: ([0, 1, 2], [0.50, 0.48, 0.46]),  # slope -0.02
        1: ([0, 2], [0.40, 0.38]),  # slope -0.01
        2: ([2, 0], [0.40, 0.46]),  # slope -0.03, points in any order
        3: ([1, 1], [0.3, 0.9]),  # one sigma only: left out
    }
    est = seed_slopes(points)
    reference = mean_interval([-0.02, -0.01, -0.03])
    assert (est.value, est.low, est.high) == pytest.approx((reference.value, reference.low, reference.high))
    assert est.n_seeds == 3 and "per-seed slopes" in est.method


def test_slope_needs_two_distinct_x():
    with pytest.raises(SpatialmixError, match="two different x"):
        slope([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(SpatialmixError, match="no seed has two different x"):
        seed_slopes({0: ([1, 1], [0.1, 0.2])})
    assert not seed_slopes({0: ([0, 1], [0.4, 0.3])}).defined  # one seed: no interval


# --------------------------------------------------------------------------- power


def test_decision_power_matches_simulated_t_intervals():
    rng = np.random.default_rng(5)
    n, spread, distance = 5, 2.0, 2.5
    samples = rng.normal(distance, spread, size=(40_000, n))
    low = samples.mean(1) - stats.t.ppf(0.975, n - 1) * samples.std(1, ddof=1) / math.sqrt(n)
    assert decision_power(distance, spread, n) == pytest.approx((low > 0).mean(), abs=0.01)


def test_detectable_distance_is_where_power_reaches_80_percent():
    for n in (2, 3, 8, 30):
        d = detectable_distance(1.5, n)
        assert decision_power(d, 1.5, n) == pytest.approx(0.8, abs=1e-6)
    assert detectable_distance(1.0, 1) == math.inf
    # large n: the normal approximation (z_0.975 + z_0.8) * sd / sqrt(n)
    assert detectable_distance(1.0, 10_000) == pytest.approx((1.959964 + 0.841621) / 100, rel=1e-3)


def test_seeds_needed_is_the_fewest_with_80_percent_power():
    for distance, spread in ((0.5, 1.0), (3.0, 2.0), (0.02, 0.05)):
        n = seeds_needed(distance, spread)
        assert decision_power(distance, spread, n) >= 0.8 > decision_power(distance, spread, n - 1)
    # 0.5 SD: the normal approximation gives 31.4; the t-interval needs a few more
    assert seeds_needed(0.5, 1.0) == 34
    assert seeds_needed(0.0, 1.0) is None and seeds_needed(1e-4, 1.0) is None  # beyond MAX_SEEDS
    assert seeds_needed(0.01, 0.0) == 2


@pytest.mark.parametrize("first_only, second_only", [(0, 1), (3, 9), (20, 17), (0, 40), (55, 12)])
def test_mcnemar_p_value_is_scipys_two_sided_binomial_test(first_only, second_only):
    first = [1] * first_only + [0] * second_only
    second = [0] * first_only + [1] * second_only
    expected = stats.binomtest(first_only, first_only + second_only, 0.5).pvalue
    assert mcnemar_exact(first, second).p_value == pytest.approx(expected, rel=1e-12)

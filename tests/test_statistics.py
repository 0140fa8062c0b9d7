"""Intervals and tests checked against values computed independently of the code under test."""

import math

import numpy as np
import pytest
from scipy import stats

from spatialmix.analysis.crossed import (
    crossed_components,
    crossed_interval,
    crossed_ratio_interval,
    example_slopes,
)
from spatialmix.analysis.statistics import (
    decision_power,
    detectable_distance,
    examples_floor,
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


def test_hartung_knapp_never_goes_below_the_variances_it_was_given():
    # y = (0, 0.1), v = (1, 1): the seeds agree far better than their variances say (q = 0.005);
    # without the q >= 1 floor the interval would be t(0.975, 1) * sqrt(0.005 / 2) wide, 1/14 of this
    est = hartung_knapp([0.0, 0.1], [1.0, 1.0])
    half = stats.t.ppf(0.975, 1) * math.sqrt(1 / 2)
    assert (est.low, est.high) == pytest.approx((0.05 - half, 0.05 + half))
    assert "q >= 1" in est.method


# --------------------------------------------------------------------------- seeds x examples crossed


def test_crossed_interval_by_hand():
    # 2 seeds x 3 examples: seed means 1, 2 (variance 0.5); example means 2, 0.5, 2, so the
    # examples' mean square is 2 * 1.5 / 2 = 1.5; residuals +-0.5, 0: residual mean square 1 / 2.
    # var(b) = (1.5 - 0.5) / 2 = 0.5 (the test set adds 0.5 / 3), on Satterthwaite's
    # 1 / (1.5^2 / 2 + 0.5^2 / 2) = 0.8 df, held at 1
    est = crossed_interval([[1.0, 0.0, 2.0], [3.0, 1.0, 2.0]])
    t1 = stats.t.ppf(0.975, 1)
    half = math.sqrt(t1**2 * 0.5 / 2 + t1**2 * 0.5 / 3)
    assert est.value == pytest.approx(1.5) and (est.low, est.high) == pytest.approx((1.5 - half, 1.5 + half))
    assert est.spread == pytest.approx(math.sqrt(0.5)) and est.test_set_variance == pytest.approx(0.5 / 3)
    assert (est.n_seeds, est.n_examples) == (2, 3)
    assert est.method == "t over 2 seeds + test-set variance of 3 test examples (crossed)"
    components = crossed_components([[1.0, 0.0, 2.0], [3.0, 1.0, 2.0]])
    assert (components.example_variance, components.example_df) == pytest.approx((0.5, 1.0))


def test_crossed_interval_without_an_example_effect_is_the_t_interval_over_seeds():
    # every example has the same mean over the seeds: nothing for the test set to add
    table = [[0.0, 2.0], [4.0, 2.0], [2.0, 2.0]]
    est, seeds = crossed_interval(table), mean_interval([1.0, 3.0, 2.0])
    assert (est.value, est.low, est.high) == pytest.approx((seeds.value, seeds.low, seeds.high))
    assert est.test_set_variance == 0.0


def test_crossed_interval_on_nested_test_sets_of_different_sizes_by_hand():
    # seeds on 2 and 4 examples, the first 2 shared; both means 0, so the seeds add nothing.
    # var(b) from the shared block [[1, -1], [1, -1]]: examples' mean square 4, residual 0 -> 2 (1 df).
    # Overlap min(n_s, n_t) / (n_s n_t) = [[1/2, 1/4], [1/4, 1/4]]: var(mean of means) = 0.3125 var(b),
    # of which the spread of the two means holds 0.0625 var(b); the test set adds 0.25 * 2 = 0.5
    est = crossed_interval([[1.0, -1.0], [1.0, -1.0, 1.0, -1.0]])
    half = stats.t.ppf(0.975, 1) * math.sqrt(0.5)
    assert est.value == 0.0 and (est.low, est.high) == pytest.approx((-half, half))
    assert est.n_examples is None and "2-4 test examples" in est.method


def test_crossed_ratio_is_the_delta_method_on_the_linearized_table():
    top = np.array([[2.0, 4.0, 3.0], [4.0, 6.0, 5.5]])
    bottom = np.array([[2.0, 2.0, 3.0], [4.0, 4.0, 3.5]])
    est = crossed_ratio_interval(top, bottom)
    ratio = top.mean() / bottom.mean()
    linear = crossed_interval((top - ratio * bottom) / bottom.mean())  # mean 0
    assert est.value == pytest.approx(ratio)
    assert (est.low - ratio, est.high - ratio) == pytest.approx((linear.low, linear.high))
    with pytest.raises(SpatialmixError, match="denominator must be above 0"):
        crossed_ratio_interval(top, -bottom)


def test_crossed_interval_of_one_seed_has_none_and_bad_tables_are_refused():
    assert not crossed_interval([[0.0, 1.0, 1.0]]).defined
    with pytest.raises(SpatialmixError, match="at least 2 examples"):
        crossed_interval([[1.0], [0.0]])
    with pytest.raises(SpatialmixError, match="finite"):
        crossed_components([[1.0, float("nan")], [0.0, 1.0]])


def test_example_slopes_are_each_examples_least_squares_slope():
    rows = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # x = 0, 1, 2
    expected = [stats.linregress([0, 1, 2], rows[:, i]).slope for i in range(3)]
    assert example_slopes([0, 1, 2], rows) == pytest.approx(expected)
    with pytest.raises(SpatialmixError, match="two different x"):
        example_slopes([1, 1, 1], rows)


# --------------------------------------------------------------------------- power with a test set


def test_the_test_set_sets_a_floor_no_number_of_seeds_passes():
    floor = 0.01  # the test set's share of the variance: SE 0.1
    z = 1.959964 + 0.841621
    assert examples_floor(floor) == pytest.approx(z * 0.1, rel=1e-5)
    # many seeds: what is left to decide is the test set's floor
    assert detectable_distance(1.0, 1_000_000, test_set_variance=floor) == pytest.approx(z * 0.1, rel=1e-3)
    assert seeds_needed(0.9 * z * 0.1, 1.0, test_set_variance=floor) is None  # below the floor
    n = seeds_needed(1.5 * z * 0.1, 1.0, test_set_variance=floor)  # above it: seeds can
    assert decision_power(1.5 * z * 0.1, 1.0, n, test_set_variance=floor) >= 0.8
    assert decision_power(1.5 * z * 0.1, 1.0, n - 1, test_set_variance=floor) < 0.8
    # without the floor the same distance needs fewer seeds
    assert seeds_needed(1.5 * z * 0.1, 1.0) < n


def test_decision_power_with_a_test_set_matches_simulated_crossed_studies():
    # seeds' share spread^2 / n and the test set's share, each drawn as the crossed interval sees it
    rng = np.random.default_rng(6)
    n, spread, floor, distance, studies = 4, 0.5, 0.04, 0.8, 20_000
    seed_means = rng.normal(0.0, spread, size=(studies, n))
    test_set = rng.normal(0.0, math.sqrt(floor), size=(studies, 1))  # one test set per study, shared
    values = distance + seed_means + test_set
    half = np.sqrt(stats.t.ppf(0.975, n - 1) ** 2 * values.var(1, ddof=1) / n + 1.959964**2 * floor)
    simulated = (values.mean(1) - half > 0).mean()
    assert decision_power(distance, spread, n, test_set_variance=floor) == pytest.approx(simulated, abs=0.03)

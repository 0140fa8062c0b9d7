"""Intervals and tests checked against values computed independently of the code under test."""

import math

import numpy as np
import pytest
from scipy import stats

from spatialmix.analysis.statistics import (
    mcnemar_exact,
    mean_interval,
    ols_slope,
    paired_bootstrap,
    paired_t_interval,
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
    assert est.n_seeds == 10 and "t-interval" in est.method


def test_paired_t_interval_pairs_by_seed_not_by_position():
    first = {seed: v for seed, v in enumerate(SLEEP_DRUG_2)}
    second = {seed: v for seed, v in reversed(list(enumerate(SLEEP_DRUG_1)))}  # other order, same seeds
    second[99] = 100.0  # unpaired: ignored
    est = paired_t_interval(first, second)
    assert (est.low, est.high) == pytest.approx(SLEEP_CI, abs=1e-6) and est.n_seeds == 10
    assert "seed-paired t-interval" in est.method


def test_t_interval_by_hand_for_three_seeds():
    # mean 7, sample sd 2, n 3: 7 ± t(0.975, 2) * 2 / sqrt(3), with the table value t = 4.303
    est = mean_interval([5.0, 7.0, 9.0])
    half = 4.303 * 2 / math.sqrt(3)
    assert est.value == 7.0
    assert est.low == pytest.approx(7 - half, abs=1e-3) and est.high == pytest.approx(7 + half, abs=1e-3)
    assert "df=2" in est.method


def test_one_seed_has_no_interval():
    est = mean_interval([0.87])
    assert est.value == 0.87 and est.low is None and est.high is None and not est.defined
    assert "undefined" in est.method
    assert not paired_t_interval({0: 0.9}, {0: 0.8}).defined


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")]])
def test_mean_interval_refuses_empty_or_non_finite(bad):
    with pytest.raises(SpatialmixError):
        mean_interval(bad)


def test_paired_t_interval_without_shared_seeds_is_an_error():
    with pytest.raises(SpatialmixError, match="share no seed"):
        paired_t_interval({0: 1.0}, {1: 1.0})


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_of_identical_models_is_exactly_zero():
    rng = np.random.default_rng(1)
    correct = [rng.random(500) < 0.8 for _ in range(3)]
    est = paired_bootstrap([c.astype(int) - c.astype(int) for c in correct])
    assert (est.value, est.low, est.high) == (0.0, 0.0, 0.0)
    assert est.n_seeds == 3 and est.n_examples == 500


def test_bootstrap_of_a_constant_shift_is_that_shift():
    est = paired_bootstrap([np.full(500, 0.02), np.full(500, 0.02)])
    assert est.value == pytest.approx(0.02, abs=1e-15)
    assert est.low == pytest.approx(0.02, abs=1e-15) and est.high == pytest.approx(0.02, abs=1e-15)


def test_bootstrap_of_one_large_seed_matches_the_normal_approximation():
    rng = np.random.default_rng(2)
    n = 40_000
    diffs = rng.choice([-1.0, 0.0, 1.0], size=n, p=[0.1, 0.8, 0.1]) + (rng.random(n) < 0.03)
    est = paired_bootstrap([diffs])
    half = 1.959964 * diffs.std(ddof=1) / math.sqrt(n)
    assert est.value == pytest.approx(diffs.mean())
    assert est.low == pytest.approx(diffs.mean() - half, abs=0.05 * half)
    assert est.high == pytest.approx(diffs.mean() + half, abs=0.05 * half)
    assert "examples" in est.method and "seeds" not in est.method


def test_hierarchical_bootstrap_carries_the_spread_between_seeds():
    # Each seed has no spread of its own, so the interval comes only from resampling seeds: all three
    # draws are the lowest seed with probability 1/27 > 2.5%, so the 2.5th percentile is that seed.
    est = paired_bootstrap([np.zeros(200), np.full(200, 0.03), np.full(200, 0.06)])
    assert est.value == pytest.approx(0.03)
    assert est.low == pytest.approx(0.0, abs=1e-15) and est.high == pytest.approx(0.06, abs=1e-15)
    assert "3 seeds, then examples" in est.method


def test_bootstrap_is_reproducible_and_seeded():
    rng = np.random.default_rng(3)
    diffs = [rng.choice([-1, 0, 1], size=300) for _ in range(2)]
    assert paired_bootstrap(diffs) == paired_bootstrap(diffs)
    assert paired_bootstrap(diffs, seed=1) != paired_bootstrap(diffs, seed=2)


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


def test_slope_of_an_exact_line_has_a_zero_width_interval():
    est = ols_slope([0, 1, 2, 3], [1, 3, 5, 7])
    assert (
        est.value == pytest.approx(2.0) and est.low == pytest.approx(2.0) and est.high == pytest.approx(2.0)
    )


def test_slope_interval_matches_linregress_standard_error():
    x = [0, 0, 0.5, 0.5, 1, 1, 2, 2]
    y = [0.41, 0.39, 0.42, 0.40, 0.38, 0.37, 0.33, 0.32]
    reference = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * reference.stderr
    est = ols_slope(x, y, n_seeds=2, n_examples=500)
    assert est.value == pytest.approx(reference.slope)
    assert (est.low, est.high) == pytest.approx((reference.slope - half, reference.slope + half))
    assert est.n_seeds == 2 and est.n_examples == 500 and "df=6" in est.method


def test_slope_needs_two_distinct_x_and_three_points_for_an_interval():
    assert not ols_slope([0, 1], [0.4, 0.3]).defined
    with pytest.raises(SpatialmixError, match="two different x"):
        ols_slope([1, 1, 1], [0.1, 0.2, 0.3])

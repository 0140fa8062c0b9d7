"""Do the verdict intervals cover the truth as often as they say? Simulated studies, end to end.

Each simulated study has a few seeds whose true effects differ (seed-to-seed spread, the regime of
one-epoch models) and scores each seed on its own examples; the interval the verdicts use is
computed by the same code the verdicts run (:func:`claims.compare`, :func:`claims.smoothing_verdicts`).
Over N studies a 95% interval must cover the true mean effect in 95% of them, within a 99.9%
binomial band. The hierarchical percentile bootstrap these verdicts once used covered 89% (3 seeds),
93% (5 seeds) and 98% (no seed spread) here, and the OLS fit over every (sigma, seed) point 82%
for 2b; each fails these tests. Under optional stopping (``--until-decided``), the spent levels keep
the coverage where a 95% interval at every look does not.
"""

import math

import numpy as np
import pytest
from scipy import stats

from spatialmix.analysis.claims import CLAIMS, INCONCLUSIVE, compare, decide, smoothing_verdicts
from spatialmix.analysis.statistics import mean_interval, spending_levels
from spatialmix.studies.sequential import SeedRounds

STUDIES = 1500
LOW, HIGH = stats.binom.ppf([0.0005, 0.9995], STUDIES, 0.95) / STUDIES  # the 99.9% band around 95%


def simulated_pairs(rng, n_seeds: int, seed_sd: float, sizes, effect: float = 0.02, base: float = 0.7):
    """One study: ``{seed: (accuracy, bits)}`` of Full and Chans; Chans's true advantage on seed s is
    ``effect + seed_sd * z_s``, and each seed is scored on ``sizes[s]`` examples of its own."""
    full, chans = {}, {}
    for seed in range(n_seeds):
        shift = effect + seed_sd * rng.standard_normal()
        full_bits = rng.random(sizes[seed]) < base
        chans_bits = rng.random(sizes[seed]) < min(max(base + shift, 0.0), 1.0)
        full[seed] = (full_bits.mean(), full_bits.astype(np.int8))
        chans[seed] = (chans_bits.mean(), chans_bits.astype(np.int8))
    return chans, full


def coverage_of_compare(n_seeds: int, seed_sd: float, sizes, effect: float = 0.02) -> float:
    rng = np.random.default_rng(n_seeds * 1000 + len(set(sizes)))
    covered = 0
    for _ in range(STUDIES):
        estimate, _ = compare(*simulated_pairs(rng, n_seeds, seed_sd, sizes, effect))
        covered += estimate.low <= effect <= estimate.high
    return covered / STUDIES


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_paired_verdict_interval_covers_95_percent_when_seeds_differ(n_seeds):
    # 5 points of seed-to-seed SD, 500 examples per seed: the seeds dominate the noise
    coverage = coverage_of_compare(n_seeds, seed_sd=0.05, sizes=[500] * n_seeds)
    assert LOW <= coverage <= HIGH, f"{coverage:.3f} outside [{LOW:.3f}, {HIGH:.3f}]"


def test_paired_verdict_interval_covers_95_percent_without_seed_spread():
    coverage = coverage_of_compare(3, seed_sd=0.0, sizes=[500] * 3)
    assert LOW <= coverage <= HIGH, f"{coverage:.3f} outside [{LOW:.3f}, {HIGH:.3f}]"


def test_random_effects_interval_covers_95_percent_on_different_example_counts():
    coverage = coverage_of_compare(4, seed_sd=0.03, sizes=[200, 500, 1000, 300])
    assert LOW <= coverage <= HIGH, f"{coverage:.3f} outside [{LOW:.3f}, {HIGH:.3f}]"


def test_smoothing_slope_covers_95_percent_when_a_seeds_runs_are_paired():
    # A seed's sigma 0 and sigma 2 runs share their initial tensors and attacked images: here they
    # are negatively correlated (a seed whose sigma-0 run is lucky has an unlucky sigma-2 run).
    rng = np.random.default_rng(7)
    slope, n_seeds, covered = 0.01, 3, 0
    for _ in range(STUDIES):
        records = []
        for seed in range(n_seeds):
            shared = 0.05 * rng.standard_normal()
            for sigma, sign in ((0.0, 1), (2.0, -1)):
                accuracy = 0.4 + slope * sigma + sign * shared + 0.01 * rng.standard_normal()
                records.append(
                    {"mode": "chans", "seed": seed, "smooth_sigma": sigma, "robust_acc": {"8/255": accuracy}}
                )
        estimate = smoothing_verdicts(records)[0].estimate
        covered += estimate.low <= slope <= estimate.high
    coverage = covered / STUDIES
    assert LOW <= coverage <= HIGH, f"{coverage:.3f} outside [{LOW:.3f}, {HIGH:.3f}]"


def test_the_band_rejects_an_interval_that_is_too_narrow():
    # The check can fail: the same t-interval with the normal quantile instead of t (df = 2) covers
    # far less than 95% at 3 seeds.
    rng = np.random.default_rng(11)
    samples = rng.normal(0.0, 1.0, size=(STUDIES, 3))
    half = 1.959964 * samples.std(1, ddof=1) / math.sqrt(3)
    coverage = (np.abs(samples.mean(1)) <= half).mean()
    assert coverage < LOW


def _stopped_intervals(levels_by_look, schedule, rng, truth: float):
    """Optional stopping: look after every round and stop at the first interval that decides
    (against the threshold 0 of ``CLAIM_AT_ZERO``)."""
    values = rng.normal(truth, 1.0, size=schedule.max_seeds)
    for look, level in enumerate(levels_by_look, start=1):
        estimate = mean_interval(values[: schedule.seeds_at(look)], level)
        if decide(CLAIM_AT_ZERO, estimate) != INCONCLUSIVE:
            break
    return estimate


CLAIM_AT_ZERO = CLAIMS["2a"]  # supports above 0, contradicts below


@pytest.mark.parametrize("truth", [0.0, 0.5])
def test_until_decided_keeps_its_coverage_under_optional_stopping(truth):
    schedule = SeedRounds(start=3, step=2, max_seeds=13)  # 6 looks
    rng = np.random.default_rng(13)
    levels = spending_levels(schedule.looks)
    estimates = [_stopped_intervals(levels, schedule, rng, truth) for _ in range(STUDIES)]
    coverage = np.mean([e.low <= truth <= e.high for e in estimates])
    assert coverage >= LOW, f"coverage {coverage:.3f} below {LOW:.3f}"
    if truth == 0.0:  # the effect sits on the threshold: any decision is an error
        errors = np.mean([e.low > 0 or e.high < 0 for e in estimates])
        assert errors <= 1 - LOW


def test_looking_after_every_round_at_95_percent_inflates_the_error():
    # the check can fail: the same stopping rule with a 95% interval at every look
    schedule = SeedRounds(start=3, step=2, max_seeds=13)
    rng = np.random.default_rng(13)
    estimates = [_stopped_intervals([0.95] * schedule.looks, schedule, rng, 0.0) for _ in range(STUDIES)]
    errors = np.mean([e.low > 0 or e.high < 0 for e in estimates])
    assert errors > 1 - LOW

"""Do the verdict intervals cover the truth as often as they say? Simulated studies, end to end.

The truth a verdict is about is the difference over the population of seeds *and* test examples.
Every seed of a study is scored on the same test set, so the first tests simulate a **shared test
set** (a probit model in which examples differ in how hard they are and in how much the two modes
disagree on them, the same examples for every seed) and require the verdict's 95% interval to
cover the population difference in at least 92.5% of the studies, at 3 to 20 seeds: for paired
accuracies (:func:`claims.compare`), for 2b's slopes (:func:`claims.smoothing_verdicts`), for
seeds on test sets of different sizes (500 and 10,000 examples) and for 3a / 3b's PSNR difference
and ratio. The t-interval over the seeds alone, the interval these verdicts used, covers this test
set's mean instead and falls further below 95% the more seeds it has; each test shows it failing.

The later tests score each seed on examples of its own (seed-to-seed spread, the regime of
one-epoch models): there the crossed interval must still cover 95% within a 99.9% binomial band.
The hierarchical percentile bootstrap these verdicts once used covered 89% (3 seeds), 93% (5 seeds)
and 98% (no seed spread) there, and the OLS fit over every (sigma, seed) point 82% for 2b; each
fails these tests. Under optional stopping (``--until-decided``), the spent levels keep the coverage
where a 95% interval at every look does not.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from spatialmix.analysis.claims import CLAIMS, INCONCLUSIVE
from spatialmix.analysis.crossed import crossed_interval, crossed_ratio_interval
from spatialmix.analysis.decision import compare, decide, smoothing_verdicts
from spatialmix.analysis.statistics import mean_interval, seed_slopes, spending_levels
from spatialmix.studies.sequential import SeedRounds

STUDIES = 1500
LOW, HIGH = stats.binom.ppf([0.0005, 0.9995], STUDIES, 0.95) / STUDIES  # the 99.9% band around 95%
SHARED_STUDIES = 800  # per setting on a shared test set (each study draws a test set of its own)
ENOUGH = 0.925  # about 95%: at 800 studies a true 95% falls below 92.5% with probability 0.1%
CHUNK = 200  # studies simulated at once


def covers(estimate, truth: float) -> bool:
    return estimate.low <= truth <= estimate.high


def bits(correct: np.ndarray) -> str:
    return (correct.astype(np.uint8) + ord("0")).tobytes().decode()


# --------------------------------------------------------------------------- a shared test set


@dataclass(frozen=True)
class SharedTestSet:
    """Full and Chans on one test set that every seed is scored on. Full gets example ``i`` right
    when ``offset + z_i + noise > 0``, Chans when ``offset + effect + z_i + d_i + u_s + noise > 0``:
    ``z_i`` is how hard the example is (both modes), ``d_i`` how much Chans disagrees on it, ``u_s``
    what seed ``s`` shifts, and every run draws its own noise."""

    examples: int = 1000
    offset: float = 2.0
    effect: float = -0.05
    difficulty: float = 1.5
    disagreement: float = 0.5
    seed_sd: float = 0.03
    noise: float = 0.5

    @property
    def truth(self) -> float:
        """Chans - Full accuracy over the population of seeds and examples (a normal integral)."""
        full = self.noise**2 + self.difficulty**2
        chans = full + self.disagreement**2 + self.seed_sd**2
        return float(
            stats.norm.cdf((self.offset + self.effect) / math.sqrt(chans))
            - stats.norm.cdf(self.offset / math.sqrt(full))
        )

    def draw(self, rng, studies: int, seeds: int) -> tuple[np.ndarray, np.ndarray]:
        """Full's and Chans's correctness, studies x seeds x examples; one test set per study."""
        shape, per_example = (studies, seeds, self.examples), (studies, 1, self.examples)
        hard = self.offset + self.difficulty * rng.standard_normal(per_example, dtype=np.float32)
        disagree = self.disagreement * rng.standard_normal(per_example, dtype=np.float32)
        seed = self.seed_sd * rng.standard_normal((studies, seeds, 1), dtype=np.float32)
        full = hard + self.noise * rng.standard_normal(shape, dtype=np.float32) > 0
        chans = (
            hard + self.effect + disagree + seed + self.noise * rng.standard_normal(shape, dtype=np.float32)
        )
        return full, chans > 0


def shared_coverage(n_seeds: int, model: SharedTestSet = SharedTestSet()) -> tuple[float, float]:
    """(the verdict interval's coverage, the seed-only t-interval's) of the population difference."""
    rng = np.random.default_rng(100 + n_seeds)
    crossed = seeds_only = 0
    for _ in range(SHARED_STUDIES // CHUNK):
        full, chans = model.draw(rng, CHUNK, n_seeds)
        for f, c in zip(full, chans):
            first = {s: (c[s].mean(), c[s].astype(np.int8)) for s in range(n_seeds)}
            second = {s: (f[s].mean(), f[s].astype(np.int8)) for s in range(n_seeds)}
            crossed += covers(compare(first, second)[0], model.truth)
            seeds_only += covers(mean_interval(c.mean(1) - f.mean(1)), model.truth)
    return crossed / SHARED_STUDIES, seeds_only / SHARED_STUDIES


@pytest.mark.parametrize("n_seeds", [3, 5, 10, 20])
def test_paired_accuracy_interval_covers_the_population_on_a_shared_test_set(n_seeds):
    coverage, seeds_only = shared_coverage(n_seeds)
    assert ENOUGH <= coverage <= 0.99, f"{coverage:.3f} at {n_seeds} seeds (seeds only: {seeds_only:.3f})"
    if n_seeds >= 10:  # the check can fail: the t over seeds alone covers this test set's mean
        assert seeds_only < 0.85, f"the seed-only t-interval covers {seeds_only:.3f} at {n_seeds} seeds"


@dataclass(frozen=True)
class SharedSmoothing:
    """Chans's robust correctness at each smoothing sigma on one shared set of attacked examples:
    right when ``offset + z_i + (slope + g_i + v_s) sigma + noise > 0``, ``g_i`` how much smoothing
    helps example ``i``, ``v_s`` seed ``s``'s own slope."""

    examples: int = 500
    sigmas: tuple = (0.0, 1.0, 2.0)
    offset: float = -0.3
    slope: float = 0.02
    difficulty: float = 1.0
    example_slope_sd: float = 0.25
    seed_slope_sd: float = 0.01
    noise: float = 0.5

    @property
    def truth(self) -> float:
        """The least-squares slope of the population's robust accuracy on the sigmas."""
        x = np.array(self.sigmas)
        spread = (
            self.noise**2 + self.difficulty**2 + x**2 * (self.example_slope_sd**2 + self.seed_slope_sd**2)
        )
        accuracy = stats.norm.cdf((self.offset + self.slope * x) / np.sqrt(spread))
        dx = x - x.mean()
        return float(dx @ accuracy / (dx @ dx))

    def records(self, rng, studies: int, seeds: int) -> list[list[dict]]:
        """Per study, the robustness records of every seed and sigma (with ``robust_bits``)."""
        x = np.array(self.sigmas, dtype=np.float32)[None, None, :, None]
        per_example = (studies, 1, 1, self.examples)
        hard = self.offset + self.difficulty * rng.standard_normal(per_example, dtype=np.float32)
        helps = self.example_slope_sd * rng.standard_normal(per_example, dtype=np.float32)
        own = self.seed_slope_sd * rng.standard_normal((studies, seeds, 1, 1), dtype=np.float32)
        noise = self.noise * rng.standard_normal((studies, seeds, x.size, self.examples), dtype=np.float32)
        robust = hard + (self.slope + helps + own) * x + noise > 0
        return [
            [
                {
                    "mode": "chans",
                    "seed": seed,
                    "smooth_sigma": sigma,
                    "robust_acc": {"8/255": float(study[seed, k].mean())},
                    "robust_bits": {"8/255": bits(study[seed, k])},
                }
                for seed in range(seeds)
                for k, sigma in enumerate(self.sigmas)
            ]
            for study in robust
        ]


@pytest.mark.parametrize("n_seeds", [3, 6, 10])
def test_smoothing_slope_covers_the_population_on_shared_attacked_examples(n_seeds):
    model, rng = SharedSmoothing(), np.random.default_rng(200 + n_seeds)
    crossed = seeds_only = 0
    for _ in range(SHARED_STUDIES // CHUNK):
        for records in model.records(rng, CHUNK, n_seeds):
            # (a verdict states accuracy per sigma in points)
            crossed += covers(smoothing_verdicts(records)[0].estimate, 100 * model.truth)
            points = {s: ([], []) for s in range(n_seeds)}
            for r in records:
                points[r["seed"]][0].append(r["smooth_sigma"])
                points[r["seed"]][1].append(r["robust_acc"]["8/255"])
            seeds_only += covers(seed_slopes(points), model.truth)  # the seeds' slopes alone
    coverage, seeds_only = crossed / SHARED_STUDIES, seeds_only / SHARED_STUDIES
    assert ENOUGH <= coverage <= 0.99, f"{coverage:.3f} at {n_seeds} seeds (seeds only: {seeds_only:.3f})"
    if n_seeds == 10:
        assert seeds_only < 0.88, f"the seeds' slopes alone cover {seeds_only:.3f} at {n_seeds} seeds"


def untruncated_hartung_knapp(effects: np.ndarray, variances: np.ndarray) -> tuple[float, float]:
    """The Hartung-Knapp interval without the q >= 1 floor and without the test set: what these
    verdicts used for seeds on test sets of different sizes."""
    k, w = effects.size, 1 / variances
    fixed = w @ effects / w.sum()
    q = w @ (effects - fixed) ** 2
    w = 1 / (variances + max(0.0, (q - (k - 1)) / (w.sum() - (w @ w) / w.sum())))
    mean = w @ effects / w.sum()
    half = stats.t.ppf(0.975, k - 1) * math.sqrt(w @ (effects - mean) ** 2 / ((k - 1) * w.sum()))
    return mean - half, mean + half


def test_seeds_on_test_sets_of_different_sizes_cover_the_population():
    # seeds on 500 and on 10,000 examples of one test set (the 500 are its first), seed SD about 1 point
    model, sizes = SharedTestSet(examples=10_000, seed_sd=0.1), (500, 10_000, 500)
    rng = np.random.default_rng(300)
    crossed = untruncated = 0
    for _ in range(SHARED_STUDIES // CHUNK):
        full, chans = model.draw(rng, CHUNK, len(sizes))
        for f, c in zip(full, chans):
            differences = [c[s, :n].astype(float) - f[s, :n] for s, n in enumerate(sizes)]
            crossed += covers(crossed_interval(differences), model.truth)
            effects = np.array([d.mean() for d in differences])
            low, high = untruncated_hartung_knapp(
                effects, np.array([d.var(ddof=1) / d.size for d in differences])
            )
            untruncated += low <= model.truth <= high
    coverage, untruncated = crossed / SHARED_STUDIES, untruncated / SHARED_STUDIES
    assert ENOUGH <= coverage <= 0.995, (
        f"{coverage:.3f} (untruncated, without the test set: {untruncated:.3f})"
    )
    assert untruncated < 0.9, f"the untruncated Hartung-Knapp interval covers {untruncated:.3f}"


@dataclass(frozen=True)
class SharedImages:
    """Un-shuffling PSNR per image on one shared set of test images: the scrambled floor ``f_i``, Full
    ``f_i + g_i + a_s + noise``, Chans ``f_i + r_i g_i + c_s + noise``; ``g_i`` is what Full gains on
    image ``i``, ``r_i`` the fraction of it Chans recovers, ``a_s`` and ``c_s`` the seeds' shifts."""

    examples: int = 1000
    floor: tuple = (11.0, 1.0)
    gain: tuple = (10.0, 2.0)
    fraction: tuple = (0.92, 0.08)
    seed_sd: float = 0.05
    noise: float = 0.5

    @property
    def truth(self) -> tuple[float, float]:
        """(Chans - Full, (Chans - floor) / (Full - floor)) over the population."""
        return self.gain[0] * (self.fraction[0] - 1), self.fraction[0]

    def draw(self, rng, seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The floor, Full and Chans of one study, seeds x examples."""

        def normal(mean_sd, shape):
            return mean_sd[0] + mean_sd[1] * rng.standard_normal(shape)

        n = self.examples
        floor, gain, fraction = normal(self.floor, n), normal(self.gain, n), normal(self.fraction, n)
        shifts = self.seed_sd * rng.standard_normal((2, seeds, 1))
        full = floor + gain + shifts[0] + self.noise * rng.standard_normal((seeds, n))
        chans = floor + fraction * gain + shifts[1] + self.noise * rng.standard_normal((seeds, n))
        return np.broadcast_to(floor, (seeds, n)), full, chans


@pytest.mark.parametrize("n_seeds", [3, 10])
def test_psnr_difference_and_ratio_cover_the_population_on_shared_images(n_seeds):
    model, rng = SharedImages(), np.random.default_rng(400 + n_seeds)
    difference, ratio = model.truth
    counts = np.zeros(3)
    for _ in range(SHARED_STUDIES):
        floor, full, chans = model.draw(rng, n_seeds)
        per_seed = (chans.mean(1) - floor.mean(1)) / (full.mean(1) - floor.mean(1))
        counts += [
            covers(crossed_interval(chans - full), difference),
            covers(crossed_ratio_interval(chans - floor, full - floor), ratio),
            covers(mean_interval(per_seed), ratio),
        ]
    three_a, three_b, seeds_only = counts / SHARED_STUDIES
    assert ENOUGH <= three_a <= 0.99 and ENOUGH <= three_b <= 0.99, f"3a {three_a:.3f}, 3b {three_b:.3f}"
    if n_seeds == 10:
        assert seeds_only < 0.88, f"the seeds' ratios alone cover {seeds_only:.3f} at {n_seeds} seeds"


# --------------------------------------------------------------------------- examples of each seed's own


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


# Where the seeds share nothing but a few points of accuracy, the test-set term is noise around 0
# (the examples at one position differ from seed to seed), held at 0 when negative: it adds a
# little width, about 97% coverage here instead of 95%, never less than 95%.
SHARING_NOTHING = 0.98


def test_paired_verdict_interval_covers_95_percent_without_seed_spread():
    coverage = coverage_of_compare(3, seed_sd=0.0, sizes=[500] * 3)
    assert LOW <= coverage <= SHARING_NOTHING, f"{coverage:.3f} outside [{LOW:.3f}, {SHARING_NOTHING}]"


def test_crossed_interval_covers_95_percent_on_different_example_counts():
    coverage = coverage_of_compare(4, seed_sd=0.03, sizes=[200, 500, 1000, 300])
    assert LOW <= coverage <= SHARING_NOTHING, f"{coverage:.3f} outside [{LOW:.3f}, {SHARING_NOTHING}]"


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

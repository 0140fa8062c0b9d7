"""The uncertainty behind every number a verdict rests on.

Every seed of a study is scored on the **same test examples**, so a verdict's interval has two
sources of error to cover: how much the seeds differ, and which test examples happened to be
drawn. `spatialmix.analysis.crossed` combines both (a seeds x examples decomposition); this
module holds the intervals over seeds it builds on and falls back to, and the planning tools:

* `mean_interval`: the mean over seeds with a **Student t-interval**
  (``mean ± t(1 - alpha/2, n-1) · s / sqrt(n)``); one seed gives no interval, never an invented one.
  Over seeds scored on one shared test set it covers this test set's mean, not the population's;
* `paired_t_interval`: ``first - second`` per shared seed, then `mean_interval`;
* `hartung_knapp`: the **random-effects** mean of per-seed effects measured on different
  numbers of examples, each with its own within-seed variance: DerSimonian-Laird's
  between-seed variance, inverse-variance weights, and the modified Hartung-Knapp
  t-interval (df = seeds - 1, its variance factor q held at 1 or more: without that floor the
  interval is too narrow when the seeds happen to agree; Röver, Knapp, Friede 2015);
* `seed_slopes`: one least-squares slope per seed, e.g. robust accuracy against the
  smoothing sigma, then `mean_interval` over the seeds' slopes;
* `mcnemar_exact`: McNemar's exact test of one seed's paired correctness, a per-seed
  description, never a verdict;
* `detectable_distance` and `seeds_needed`: what an interval over this many seeds can decide at
  80% power, from the spread the seeds showed and the test set's own share of the variance, a
  floor that no number of seeds passes (`examples_floor`);
* `spending_levels` and `continued_levels`: the level of each look when seeds are added until a
  claim is decided (alpha spending over a fixed number of looks, valid under optional stopping),
  and how a later, longer schedule goes on spending what the looks already taken left.

A percentile bootstrap over 3-5 seeds, or a fit that treats a seed's runs as independent points,
covers far less than its nominal 95% when seeds differ; ``tests/test_coverage.py`` simulates it.
Everything returns plain dataclasses with the number of seeds and examples behind them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from spatialmix.errors import SpatialmixError

LEVEL = 0.95
POWER = 0.8
MAX_SEEDS = 100_000  # seeds_needed answers "more than this" beyond it


@dataclass(frozen=True)
class Estimate:
    """A number with its interval; ``low``/``high`` are None where the interval is undefined.

    ``spread`` is the standard deviation of the per-seed values the interval rests on, without
    the part the seeds share through their common test set (None for one seed): what
    `seeds_needed` plans with. ``test_set_variance`` is the test set's share of the variance of
    ``value`` (the between-example variance over the number of examples), which more seeds do not
    shrink; None where the interval rests on the seeds alone.
    """

    value: float
    low: float | None
    high: float | None
    method: str  # how the interval was made, in a few words
    n_seeds: int
    n_examples: int | None = None
    level: float = LEVEL
    spread: float | None = None
    test_set_variance: float | None = None

    @property
    def defined(self) -> bool:
        return self.low is not None and self.high is not None


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two classifiers on the same examples."""

    first_only: int  # examples only the first model gets right
    second_only: int  # examples only the second model gets right
    n_examples: int
    p_value: float  # two-sided exact binomial p of the discordant pairs


def _finite_array(values, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise SpatialmixError(f"{what}: no values to summarize")
    if not np.all(np.isfinite(array)):
        raise SpatialmixError(f"{what}: values must be finite numbers, got {array.tolist()}")
    return array


def check_level(level: float) -> None:
    if not 0 < level < 1:
        raise SpatialmixError(f"confidence level must be between 0 and 1, got {level}")


@functools.lru_cache(maxsize=4096)
def t_quantile(level: float, df: float) -> float:
    """The two-sided critical value of Student's t for a ``level`` interval."""
    return float(stats.t.ppf(0.5 + level / 2, df))


def mean_interval(values, level: float = LEVEL, what: str = "seeds") -> Estimate:
    """The mean of ``values`` (one per seed) and its Student t-interval; undefined for one value."""
    check_level(level)
    x = _finite_array(values, "mean over seeds")
    n = x.size
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, None, None, "one seed: no interval", 1, level=level)
    sd = float(x.std(ddof=1))
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, f"t over {n} {what}", n, level=level, spread=sd)


def paired_t_interval(first: dict, second: dict, level: float = LEVEL) -> Estimate:
    """``first - second`` for the seeds both have (``{seed: value}``), with the t-interval of the
    per-seed differences."""
    seeds = sorted(set(first) & set(second), key=str)
    if not seeds:
        raise SpatialmixError(
            "paired comparison: the two models share no seed; train both with the same seeds"
        )
    return mean_interval([first[s] - second[s] for s in seeds], level, "seed-paired differences")


def hartung_knapp(effects, variances, level: float = LEVEL) -> Estimate:
    """The random-effects mean of per-seed ``effects`` with within-seed ``variances`` (the squared
    standard error of each effect) and its modified Hartung-Knapp t-interval, df = seeds - 1.

    The between-seed variance is DerSimonian-Laird's moment estimate; each seed is weighted by
    ``1 / (variance + between)``. The variance of the mean is ``max(1, q) / sum(weights)``, where
    ``q`` is the weighted spread of the effects around the mean over ``k - 1``: never below what the
    within- and between-seed variances alone give. Seeds scored on one shared test set share its
    sampling error, which these variances leave out; `spatialmix.analysis.crossed` adds it.
    """
    check_level(level)
    y = _finite_array(effects, "random-effects mean")
    v = _finite_array(variances, "random-effects mean")
    if y.size != v.size:
        raise SpatialmixError(f"random-effects mean: {y.size} effects but {v.size} variances")
    if np.any(v < 0):
        raise SpatialmixError("random-effects mean: variances must be >= 0")
    k = y.size
    if k == 1:
        return Estimate(float(y[0]), None, None, "one seed: no interval", 1, level=level)
    v = np.maximum(v, 1e-12)  # a seed whose examples all agree has no within-seed variance
    w = 1 / v
    fixed = float(w @ y / w.sum())
    q = float(w @ (y - fixed) ** 2)
    between = max(0.0, (q - (k - 1)) / (w.sum() - (w @ w) / w.sum()))
    w = 1 / (v + between)
    mean = float(w @ y / w.sum())
    spread = float(w @ (y - mean) ** 2) / (k - 1)
    half = t_quantile(level, k - 1) * math.sqrt(max(1.0, spread) / float(w.sum()))
    return Estimate(
        mean,
        mean - half,
        mean + half,
        f"random effects, Hartung-Knapp t (q >= 1) over {k} seeds",
        k,
        level=level,
        spread=float(y.std(ddof=1)),
    )


def slope(x, y) -> float:
    """The least-squares slope of ``y`` on ``x`` (needs two different ``x``)."""
    x = _finite_array(x, "slope")
    y = _finite_array(y, "slope")
    if x.size != y.size:
        raise SpatialmixError(f"slope: {x.size} x values but {y.size} y values")
    if np.unique(x).size < 2:
        raise SpatialmixError("slope: needs at least two different x values")
    dx = x - x.mean()
    return float(dx @ (y - y.mean()) / (dx @ dx))


def seed_slopes(points_by_seed: dict, level: float = LEVEL) -> Estimate:
    """The mean over seeds of each seed's least-squares slope, with its t-interval (df = seeds - 1).

    ``points_by_seed``: ``{seed: (x values, y values)}``; a seed's runs share their initial
    tensors and examples, so a seed contributes one slope, not independent points. Seeds with
    fewer than two different ``x`` are left out.
    """
    slopes = [slope(x, y) for x, y in points_by_seed.values() if np.unique(np.asarray(x, float)).size >= 2]
    if not slopes:
        raise SpatialmixError("slope over seeds: no seed has two different x values")
    return mean_interval(slopes, level, "per-seed slopes")


def mcnemar_exact(first_correct, second_correct) -> McNemar:
    """McNemar's exact test: are the examples only one of two models gets right split evenly?"""
    a = np.asarray(first_correct, dtype=bool).ravel()
    b = np.asarray(second_correct, dtype=bool).ravel()
    if a.size != b.size:
        raise SpatialmixError(
            f"McNemar's test needs the same examples for both models, got {a.size} and {b.size}"
        )
    first_only, second_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = first_only + second_only
    # the two-sided exact binomial test against 1/2, symmetric: twice the smaller tail
    p = min(1.0, 2 * float(stats.binom.cdf(min(first_only, second_only), discordant, 0.5)))
    return McNemar(first_only, second_only, int(a.size), p)


# --------------------------------------------------------------------------- looking more than once

SPENDING_RHO = 2.0


def spending_levels(looks: int, level: float = LEVEL, rho: float = SPENDING_RHO) -> list[float]:
    """The confidence level of each of at most ``looks`` looks at data that grows between looks, such
    that the intervals of *every* look cover the truth together with probability ``level``.

    The error rate ``alpha = 1 - level`` is spent over the looks by the power family of Kim & DeMets
    (1987), ``alpha * (j / looks) ** rho`` spent by look ``j`` (rho = 2: little early, most late);
    look ``j`` gets the increment, and the union (Bonferroni) bound makes the levels valid whatever
    rule decides when to stop, with no assumption about how the looks' statistics are correlated
    (conservative where the Lan-DeMets boundaries would use that correlation).
    """
    check_level(level)
    if not isinstance(looks, int) or looks < 1:
        raise SpatialmixError(f"looks must be a whole number of at least 1, got {looks!r}")
    alpha = 1 - level
    spent = [alpha * (j / looks) ** rho for j in range(looks + 1)]
    return [1 - (spent[j] - spent[j - 1]) for j in range(1, looks + 1)]


def continued_levels(
    looks: int, taken: int, spent: float, level: float = LEVEL, rho: float = SPENDING_RHO
) -> list[float]:
    """The levels of looks ``taken + 1`` to ``looks`` of a schedule whose first ``taken`` looks
    already spent ``spent`` of the error rate (a study continued with a larger ``--max-seeds``).

    What is left, ``alpha - spent``, is spent in the shape of the power family over the whole
    schedule: look ``j`` reaches ``spent + (alpha - spent) * (f(j) - f(taken)) / (1 - f(taken))``
    with ``f(j) = (j / looks) ** rho``. When ``spent`` is what the same schedule spent by look
    ``taken``, these are the levels `spending_levels` gives; all looks together never spend more
    than ``alpha``, so the union bound still holds.
    """
    check_level(level)
    if not (isinstance(looks, int) and isinstance(taken, int) and 0 <= taken <= looks and looks >= 1):
        raise SpatialmixError(f"looks must be whole numbers with 0 <= taken <= looks, got {taken} of {looks}")
    alpha = 1 - level
    if not 0 <= spent <= alpha + 1e-12:
        raise SpatialmixError(f"the error rate spent must be between 0 and {alpha:g}, got {spent}")
    if taken == looks:
        return []
    left = max(0.0, alpha - spent)
    shape = [(j / looks) ** rho for j in range(looks + 1)]
    reached = [spent + left * (shape[j] - shape[taken]) / (1 - shape[taken]) for j in range(taken, looks + 1)]
    return [1 - (reached[i] - reached[i - 1]) for i in range(1, len(reached))]


# --------------------------------------------------------------------------- power

LARGEST_DF = 1e6  # beyond it a t quantile is the normal one
CHI2_POINTS = 256  # quantiles of the seeds' sample variance the power averages over


def mean_variance(spread: float, n_seeds: int, test_set_variance: float = 0.0) -> float:
    """The variance of a mean over ``n_seeds`` seeds that spread with SD ``spread`` around the
    test set's own mean, whose share ``test_set_variance`` more seeds do not shrink."""
    return spread**2 / n_seeds + test_set_variance


def decision_power(
    distance: float, spread: float, n_seeds: int, level: float = LEVEL, test_set_variance: float = 0.0
) -> float:
    """The chance that the interval over ``n_seeds`` seeds lies wholly on one side of the threshold
    when the true effect is ``distance`` away from it, seeds spread with SD ``spread`` and the test
    set adds ``test_set_variance`` (the tiny chance of deciding the wrong side is left out).

    Without a test-set share this is the noncentral t of the t-interval over seeds. With one it is
    the crossed interval's, ``sqrt(t(n-1)^2 s^2 / n + z^2 test_set_variance)`` wide, averaged over the
    seeds' sample variance ``s^2`` (the test set's share taken as known: it rests on thousands of
    examples)."""
    if n_seeds < 2:
        return 0.0
    variance = mean_variance(spread, n_seeds, test_set_variance)
    if variance <= 0:
        return 1.0 if distance != 0 else 0.0
    t = t_quantile(level, n_seeds - 1)
    if test_set_variance <= 0:
        return float(stats.nct.sf(t, n_seeds - 1, abs(distance) * math.sqrt(n_seeds) / spread))
    z = t_quantile(level, LARGEST_DF)
    half = np.sqrt(t**2 * spread**2 * _chi2_points(n_seeds - 1) / n_seeds + z**2 * test_set_variance)
    return float(stats.norm.cdf((abs(distance) - half) / math.sqrt(variance)).mean())


@functools.lru_cache(maxsize=256)
def _chi2_points(df: int) -> np.ndarray:
    """Evenly spaced quantiles of chi-square(df) / df: the sample variance over the true one."""
    return stats.chi2.ppf((np.arange(CHI2_POINTS) + 0.5) / CHI2_POINTS, df) / df


def detectable_distance(
    spread: float, n_seeds: int, level: float = LEVEL, power: float = POWER, test_set_variance: float = 0.0
) -> float:
    """The smallest distance from the threshold that ``n_seeds`` seeds decide with ``power``, for
    seeds that spread with SD ``spread`` on a test set that adds ``test_set_variance`` (infinite
    for fewer than two seeds)."""
    if n_seeds < 2 or not (math.isfinite(spread) and math.isfinite(test_set_variance)):
        return math.inf
    if mean_variance(spread, n_seeds, test_set_variance) <= 0:
        return 0.0
    if test_set_variance <= 0:
        return spread * _detectable_per_sd(n_seeds, level, power)

    def short(d: float) -> float:
        return decision_power(d, spread, n_seeds, level, test_set_variance) - power

    high = math.sqrt(mean_variance(spread, n_seeds, test_set_variance))
    while short(high) < 0:
        high *= 2
    return float(optimize.brentq(short, 0.0, high, xtol=1e-6 * high))


@functools.lru_cache(maxsize=4096)
def _detectable_per_sd(n_seeds: int, level: float, power: float) -> float:
    # the distance scales with the spread: solve once per (seeds, level, power) for a spread of 1
    high = 1.0
    while decision_power(high, 1.0, n_seeds, level) < power:
        high *= 2
    return float(optimize.brentq(lambda d: decision_power(d, 1.0, n_seeds, level) - power, 0.0, high))


def examples_floor(test_set_variance: float, level: float = LEVEL, power: float = POWER) -> float:
    """The smallest distance from the threshold that any number of seeds decides with ``power`` on
    a test set that adds ``test_set_variance``: only more test examples go below it."""
    return _normal_sum(level, power) * math.sqrt(max(0.0, test_set_variance))


@functools.lru_cache(maxsize=64)
def _normal_sum(level: float, power: float) -> float:
    """z(1 - alpha/2) + z(power): the distance, in standard errors, a normal interval decides."""
    return float(stats.norm.ppf(0.5 + level / 2) + stats.norm.ppf(power))


def seeds_needed(
    distance: float,
    spread: float,
    level: float = LEVEL,
    power: float = POWER,
    limit: int = MAX_SEEDS,
    test_set_variance: float = 0.0,
) -> int | None:
    """The fewest seeds whose interval decides an effect ``distance`` from the threshold with
    ``power``, for seeds that spread with SD ``spread`` on a test set that adds
    ``test_set_variance``; None when more than ``limit`` are needed, or when the test set alone
    keeps the interval from deciding (``abs(distance)`` at or below `examples_floor`)."""
    if not (math.isfinite(distance) and math.isfinite(spread)) or distance == 0:
        return None
    if abs(distance) <= examples_floor(test_set_variance, level, power):
        return None
    if spread <= 0:
        return 2
    # start from the normal approximation: (z + z_power)^2 (sd^2 / n + floor) = distance^2
    room = (distance / _normal_sum(level, power)) ** 2 - test_set_variance
    n = max(2, math.ceil(spread**2 / room))
    if n > limit:
        return None

    def decides(count: int) -> bool:
        return decision_power(distance, spread, count, level, test_set_variance) >= power

    # the power grows with the seeds: the normal approximation is usually right or close; otherwise
    # bracket the answer (doubling) and halve the bracket
    if decides(n):
        if n == 2 or not decides(n - 1):
            return n
        low, high = 1, n - 1  # one seed never decides
    else:
        low, high = n, n
        while not decides(high):
            if high >= limit:
                return None
            low, high = high, min(2 * high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if decides(middle) else (middle, high)
    return high

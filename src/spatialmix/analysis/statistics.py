"""The uncertainty behind every number a verdict rests on.

Every verdict rests on **one effect per seed** (the per-example pairing of two models stays
inside each seed's effect) and an interval whose width comes from how much the seeds disagree:

* :func:`mean_interval`: the mean over seeds with a **Student t-interval**
  (``mean ± t(1 - alpha/2, n-1) · s / sqrt(n)``); one seed gives no interval, never an invented one;
* :func:`paired_t_interval`: ``first - second`` per shared seed, then :func:`mean_interval`;
* :func:`hartung_knapp`: the **random-effects** mean of per-seed effects measured on different
  numbers of examples, each with its own within-seed variance: DerSimonian-Laird's
  between-seed variance, inverse-variance weights, and the Hartung-Knapp(-Sidik-Jonkman)
  t-interval (df = seeds - 1), which keeps its coverage at 3-5 seeds where the plain
  random-effects normal interval does not (IntHout, Ioannidis, Borm 2014);
* :func:`seed_slopes`: one least-squares slope per seed, e.g. robust accuracy against the
  smoothing sigma, then :func:`mean_interval` over the seeds' slopes;
* :func:`mcnemar_exact`: McNemar's exact test of one seed's paired correctness, a per-seed
  description, never a verdict;
* :func:`detectable_distance` and :func:`seeds_needed`: what a t-interval over seeds can decide
  at 80% power, from the spread the seeds showed;
* :func:`spending_levels`: the level of each look when seeds are added until a claim is decided
  (alpha spending over a fixed number of looks, valid under optional stopping).

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

    ``spread`` is the standard deviation of the per-seed values the interval rests on (None for
    one seed): what :func:`seeds_needed` plans with.
    """

    value: float
    low: float | None
    high: float | None
    method: str  # how the interval was made, in a few words
    n_seeds: int
    n_examples: int | None = None
    level: float = LEVEL
    spread: float | None = None

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


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise SpatialmixError(f"confidence level must be between 0 and 1, got {level}")


def t_quantile(level: float, df: int) -> float:
    """The two-sided critical value of Student's t for a ``level`` interval."""
    return float(stats.t.ppf(0.5 + level / 2, df))


def mean_interval(values, level: float = LEVEL, what: str = "seeds") -> Estimate:
    """The mean of ``values`` (one per seed) and its Student t-interval; undefined for one value."""
    _check_level(level)
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
    standard error of each effect) and its Hartung-Knapp t-interval, df = seeds - 1.

    The between-seed variance is DerSimonian-Laird's moment estimate; each seed is weighted by
    ``1 / (variance + between)``. The Hartung-Knapp variance of the mean is the weighted spread of the
    effects around it over ``(k - 1) · sum(weights)``.
    """
    _check_level(level)
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
    variance = float(w @ (y - mean) ** 2) / ((k - 1) * w.sum())
    half = t_quantile(level, k - 1) * math.sqrt(variance)
    return Estimate(
        mean,
        mean - half,
        mean + half,
        f"random effects, Hartung-Knapp t over {k} seeds",
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
    _check_level(level)
    if not isinstance(looks, int) or looks < 1:
        raise SpatialmixError(f"looks must be a whole number of at least 1, got {looks!r}")
    alpha = 1 - level
    spent = [alpha * (j / looks) ** rho for j in range(looks + 1)]
    return [1 - (spent[j] - spent[j - 1]) for j in range(1, looks + 1)]


# --------------------------------------------------------------------------- power


def decision_power(distance: float, spread: float, n_seeds: int, level: float = LEVEL) -> float:
    """The chance that a t-interval over ``n_seeds`` seeds lies wholly on one side of the threshold
    when the true effect is ``distance`` away from it and seeds spread with SD ``spread``
    (the noncentral t; the tiny chance of deciding the wrong side is left out)."""
    if n_seeds < 2:
        return 0.0
    if spread <= 0:
        return 1.0 if distance != 0 else 0.0
    df = n_seeds - 1
    noncentrality = abs(distance) * math.sqrt(n_seeds) / spread
    return float(stats.nct.sf(t_quantile(level, df), df, noncentrality))


def detectable_distance(spread: float, n_seeds: int, level: float = LEVEL, power: float = POWER) -> float:
    """The smallest distance from the threshold that ``n_seeds`` seeds decide with ``power``, for
    seeds that spread with SD ``spread`` (infinite for fewer than two seeds)."""
    if n_seeds < 2 or not math.isfinite(spread):
        return math.inf
    return spread * _detectable_per_sd(n_seeds, level, power) if spread > 0 else 0.0


@functools.lru_cache(maxsize=4096)
def _detectable_per_sd(n_seeds: int, level: float, power: float) -> float:
    # the distance scales with the spread: solve once per (seeds, level, power) for a spread of 1
    high = 1.0
    while decision_power(high, 1.0, n_seeds, level) < power:
        high *= 2
    return float(optimize.brentq(lambda d: decision_power(d, 1.0, n_seeds, level) - power, 0.0, high))


def seeds_needed(
    distance: float, spread: float, level: float = LEVEL, power: float = POWER, limit: int = MAX_SEEDS
) -> int | None:
    """The fewest seeds whose t-interval decides an effect ``distance`` from the threshold with
    ``power``, for seeds that spread with SD ``spread``; None when more than ``limit`` are needed."""
    if not (math.isfinite(distance) and math.isfinite(spread)) or distance == 0:
        return None
    if spread <= 0:
        return 2
    # start from the normal approximation ((z + z_power) * sd / distance)^2; t needs a few more
    z = stats.norm.ppf(0.5 + level / 2) + stats.norm.ppf(power)
    n = max(2, math.ceil((z * spread / abs(distance)) ** 2))
    if n > limit:
        return None
    while decision_power(distance, spread, n, level) < power:
        n += 1
        if n > limit:
            return None
    while n > 2 and decision_power(distance, spread, n - 1, level) >= power:
        n -= 1
    return n

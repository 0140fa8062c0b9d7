"""The uncertainty behind every number a verdict rests on.

Four tools, each stating how its interval is made:

* :func:`mean_interval`: the mean over seeds with a 95% **Student t-interval**
  (``mean ± t(0.975, n-1) · s / sqrt(n)``; with one seed the interval is undefined and is
  reported as such, never invented);
* :func:`paired_bootstrap`: two models that saw the same examples, compared by the
  per-example difference (e.g. 1 - 0 when only the first is correct), bootstrapped
  **hierarchically**: resample the seeds with replacement, then, within each drawn seed, its
  examples with replacement; the statistic is the mean over the drawn seeds of the mean
  difference; the 95% interval is the 2.5th and 97.5th percentile of the replicates
  (a percentile interval, from a ``numpy`` Generator with a fixed seed, so it is reproducible);
* :func:`mcnemar_exact`: McNemar's exact test of one seed's paired correctness: the
  two-sided binomial test of the discordant pairs against 1/2;
* :func:`ols_slope`: the least-squares slope of ``y`` on ``x`` with its t-interval
  (``df = n - 2``), e.g. robust accuracy against the smoothing sigma over all (sigma, seed)
  points.

Everything returns plain dataclasses with the number of seeds and examples behind them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from spatialmix.errors import SpatialmixError

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A number with its interval; ``low``/``high`` are None where the interval is undefined."""

    value: float
    low: float | None
    high: float | None
    method: str  # how the interval was made, in words
    n_seeds: int
    n_examples: int | None = None
    level: float = LEVEL

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


def mean_interval(values, level: float = LEVEL) -> Estimate:
    """The mean of ``values`` (one per seed) and its Student t-interval; undefined for one value."""
    _check_level(level)
    x = _finite_array(values, "mean over seeds")
    n = x.size
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, None, None, "one seed: interval undefined", 1, level=level)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Estimate(mean, mean - half, mean + half, f"t-interval over {n} seeds (df={n - 1})", n, level=level)


def paired_t_interval(first: dict, second: dict, level: float = LEVEL) -> Estimate:
    """``first - second`` for the seeds both have (``{seed: value}``), with the t-interval of the
    per-seed differences."""
    seeds = sorted(set(first) & set(second), key=str)
    if not seeds:
        raise SpatialmixError(
            "paired comparison: the two models share no seed; train both with the same seeds"
        )
    estimate = mean_interval([first[s] - second[s] for s in seeds], level)
    method = (
        "one seed: interval undefined"
        if len(seeds) == 1
        else f"seed-paired t-interval ({len(seeds)} seeds, df={len(seeds) - 1})"
    )
    return Estimate(estimate.value, estimate.low, estimate.high, method, len(seeds), level=level)


def _resampled_means(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` means of ``values`` resampled with replacement. A resample is a multinomial count of
    each distinct value, so 0/1 differences cost three categories whatever the number of examples."""
    distinct, counts = np.unique(values, return_counts=True)
    n = values.size
    draws = rng.multinomial(n, counts / n, size=size)
    return (draws / n) @ distinct


def paired_bootstrap(
    differences_by_seed,
    level: float = LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:
    """The mean per-example difference and its hierarchical percentile bootstrap interval.

    ``differences_by_seed``: one array per seed of per-example differences between two models
    evaluated on the same examples (e.g. ``correct_a - correct_b``). Each replicate draws the
    seeds with replacement (skipped for one seed), then each drawn seed's examples with
    replacement, and averages the drawn seeds' mean differences.
    """
    _check_level(level)
    if not isinstance(resamples, int) or resamples < 100:
        raise SpatialmixError(f"bootstrap resamples must be a whole number of at least 100, got {resamples}")
    groups = [_finite_array(d, "paired bootstrap") for d in differences_by_seed]
    if not groups:
        raise SpatialmixError("paired bootstrap: no seed with paired examples")
    rng = np.random.default_rng(seed)
    n_seeds = len(groups)
    chosen = (
        rng.integers(0, n_seeds, size=(resamples, n_seeds)) if n_seeds > 1 else np.zeros((resamples, 1), int)
    )
    replicate_means = np.empty(chosen.shape)
    for s, values in enumerate(groups):
        where = chosen == s
        replicate_means[where] = _resampled_means(values, int(where.sum()), rng)
    replicates = replicate_means.mean(axis=1)
    low, high = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    value = float(np.mean([g.mean() for g in groups]))
    n_examples = groups[0].size if len({g.size for g in groups}) == 1 else None  # per seed
    how = "examples" if n_seeds == 1 else f"{n_seeds} seeds, then examples"
    return Estimate(
        value,
        float(low),
        float(high),
        f"paired bootstrap over {how} ({resamples:,} resamples, percentile)",
        n_seeds,
        n_examples,
        level,
    )


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
    p = 1.0 if discordant == 0 else float(stats.binomtest(first_only, discordant, 0.5).pvalue)
    return McNemar(first_only, second_only, int(a.size), p)


def ols_slope(
    x, y, level: float = LEVEL, n_seeds: int | None = None, n_examples: int | None = None
) -> Estimate:
    """The least-squares slope of ``y`` on ``x`` with its t-interval (``df = n - 2``).

    Needs at least two distinct ``x``; with only two points the line fits exactly and the
    interval is undefined.
    """
    _check_level(level)
    x = _finite_array(x, "slope")
    y = _finite_array(y, "slope")
    if x.size != y.size:
        raise SpatialmixError(f"slope: {x.size} x values but {y.size} y values")
    if np.unique(x).size < 2:
        raise SpatialmixError("slope: needs at least two different x values")
    n = x.size
    dx = x - x.mean()
    sxx = float(dx @ dx)
    slope = float(dx @ (y - y.mean()) / sxx)
    seeds = n_seeds if n_seeds is not None else n
    if n < 3:
        return Estimate(slope, None, None, "two points: interval undefined", seeds, n_examples, level)
    residuals = y - y.mean() - slope * dx
    stderr = math.sqrt(float(residuals @ residuals) / (n - 2) / sxx)
    half = float(stats.t.ppf(0.5 + level / 2, n - 2)) * stderr
    return Estimate(
        slope,
        slope - half,
        slope + half,
        f"OLS slope over {n} points, t-interval (df={n - 2})",
        seeds,
        n_examples,
        level,
    )

"""Intervals for the population, not for one test set: seeds crossed with test examples.

Every seed of a study is scored on the same test examples, so its per-example outcomes form a
seeds x examples table ``d[s, i]`` (a paired difference of correctness, a per-example slope, a
PSNR difference). Read as a two-way random-effects model, ``d[s, i] = mu + a_s + b_i + e_si``:
``a_s`` is what seed ``s`` adds, ``b_i`` what example ``i`` adds to every seed alike, ``e_si`` the
rest. The mean of the table estimates ``mu``, the difference over the population of seeds *and*
examples, with variance

    var(a) / S + var(b) / N + var(e) / (S N)

The middle term is the test set's own sampling error. A t-interval over the seeds' means leaves
it out (it is common to every seed, so the seeds do not disagree about it) and covers less the
more seeds it has; with enough seeds it covers this test set's mean and nothing else.

`crossed_interval` estimates it from the two-way analysis of variance: the spread of the seeds'
means is the t-interval over seeds' own variance, ``var(a) / S + var(e) / (S N)``, on ``S - 1``
degrees of freedom; the examples' mean square less the residual's gives the test set's
``var(b) / N``, held at 0 when negative, on Satterthwaite's degrees of freedom. The half-width
scales each share by its own t quantile, ``sqrt(t(S-1)^2 seeds' share + t(df_b)^2 test set's
share)``: exactly the t-interval over seeds when the test set adds nothing, the test set's normal
interval when the seeds add nothing, and a little wider than either in between (one Satterthwaite
t for the sum is too narrow at 3 seeds). Seeds scored on different numbers of examples (a smaller
test set taken to be the start of a larger one) keep the mean of the seeds' means and its spread;
the test set adds ``var(b)`` (from the examples every seed has) times how much their examples
overlap, beyond what the spread of their means already holds. When the positions of two seeds'
arrays are *not* the same examples (a test subset drawn per seed), the example component comes out
near 0 and the interval is the seeds' own, which is then right. `crossed_ratio_interval` does the
same for a ratio of two means by the delta method. ``tests/test_coverage.py`` checks their
coverage on simulated shared test sets: 3-20 seeds, 2b's slopes, 500 beside 10,000 examples, PSNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spatialmix.analysis.statistics import (
    LARGEST_DF,
    LEVEL,
    Estimate,
    check_level,
    t_quantile,
)
from spatialmix.errors import SpatialmixError


@dataclass(frozen=True)
class Components:
    """The variance of a mean over seeds and examples, in its two shares.

    ``seed_variance`` is the variance of one seed's mean around the test set's mean,
    ``var(a) + var(e) / N`` (the spread of the seeds' means, on ``seeds - 1`` df: what the t-interval
    over seeds uses); ``example_variance`` is ``var(b)``, held at 0 or above, on ``example_df``
    (Satterthwaite's, for a difference of two mean squares); ``test_set_variance`` is the test
    set's share of the mean's variance, ``var(b) / N`` when every seed has the same ``N`` examples.
    """

    mean: float
    seeds: int
    seed_variance: float
    example_variance: float
    example_df: float
    test_set_variance: float

    @property
    def variance(self) -> float:
        return self.seed_variance / self.seeds + self.test_set_variance

    def half_width(self, level: float = LEVEL) -> float:
        """Each share of the variance scaled by its own t quantile: the t-interval over seeds when
        the test set adds nothing, the test set's normal interval when the seeds add nothing, a
        little wider than one Satterthwaite t in between (which is too narrow at 3 seeds)."""
        seeds = t_quantile(level, self.seeds - 1) ** 2 * self.seed_variance / self.seeds
        return math.sqrt(seeds + t_quantile(level, self.example_df) ** 2 * self.test_set_variance)


def crossed_components(table) -> Components:
    """The two-way random-effects decomposition of ``table`` (seeds x examples, at least 2 x 2)."""
    d = np.asarray(table, dtype=float)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2:
        raise SpatialmixError(f"crossed decomposition: needs at least 2 seeds x 2 examples, got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise SpatialmixError("crossed decomposition: values must be finite numbers")
    s, n = d.shape
    grand = d.mean()
    seed_means, example_means = d.mean(1), d.mean(0)
    residuals = d - seed_means[:, None] - example_means[None, :] + grand
    # the examples' and the residual mean squares: E = var(e) + S var(b) and var(e)
    ms_examples = s * float(((example_means - grand) ** 2).sum()) / (n - 1)
    ms_residual = float((residuals**2).sum()) / ((s - 1) * (n - 1))
    between = ms_examples - ms_residual  # S var(b), held at 0
    # Satterthwaite's df of that difference (few when it is small beside its noise)
    noise = ms_examples**2 / (n - 1) + ms_residual**2 / ((s - 1) * (n - 1))
    example_df = max(1.0, min(between**2 / noise, LARGEST_DF)) if between > 0 else LARGEST_DF
    example_variance = max(0.0, between) / s
    # the seeds' mean square over N is the variance of the seeds' means: var(a) + var(e) / N
    seed_variance = float(seed_means.var(ddof=1))
    return Components(float(grand), s, seed_variance, example_variance, example_df, example_variance / n)


def unequal_components(arrays: list[np.ndarray]) -> Components:
    """The same shares for seeds scored on different numbers of examples, the first ``n`` of each
    the same ``n`` examples: the mean of the seeds' means, the spread of those means, and the test
    set's share by the overlap of the seeds' examples (var(b) from the examples all seeds have)."""
    k = len(arrays)
    sizes = np.array([a.size for a in arrays], dtype=float)
    common = crossed_components(np.stack([a[: int(sizes.min())] for a in arrays]))
    # cov(mean_s, mean_t) = var(b) min(n_s, n_t) / (n_s n_t); the spread of the means already holds
    # the part in which the seeds' examples differ, so only the rest is added (var(b) / N when equal)
    overlap = np.minimum.outer(sizes, sizes) / np.outer(sizes, sizes)
    shared = overlap.sum() / k**2 - (np.trace(overlap) - overlap.sum() / k) / (k * (k - 1))
    means = np.array([a.mean() for a in arrays])
    return Components(
        float(means.mean()),
        k,
        float(means.var(ddof=1)),
        common.example_variance,
        common.example_df,
        common.example_variance * max(0.0, float(shared)),
    )


def crossed_interval(per_seed, level: float = LEVEL, what: str = "test examples") -> Estimate:
    """The mean of per-seed, per-example values and its interval for the population of seeds and
    examples. ``per_seed``: one array per seed (or a seeds x examples array), position ``i`` of
    each the same example (a shorter array: the first examples of a longer one). The mean is the
    mean of the seeds' means. One seed gives no interval."""
    check_level(level)
    arrays = [np.asarray(a, dtype=float).ravel() for a in per_seed]
    if not arrays or min(a.size for a in arrays) < 2:
        raise SpatialmixError("crossed interval: needs at least 2 examples for every seed")
    sizes = sorted({a.size for a in arrays})
    if len(arrays) == 1:
        mean = float(arrays[0].mean())
        return Estimate(mean, None, None, "one seed: no interval", 1, arrays[0].size, level)
    if len(sizes) > 1:
        parts = unequal_components(arrays)
        examples = f"{sizes[0]:,}-{sizes[-1]:,} {what}"
        return _estimate(parts.mean, parts, level, _method(parts, examples), None)
    parts = crossed_components(np.stack(arrays))
    return _estimate(parts.mean, parts, level, _method(parts, f"{sizes[0]:,} {what}"), sizes[0])


def crossed_ratio_interval(
    numerator, denominator, level: float = LEVEL, what: str = "test examples"
) -> Estimate:
    """``mean(numerator) / mean(denominator)`` of two seeds x examples tables (same shape) and
    its interval by the delta method: the crossed decomposition of the linearized table
    ``(numerator - ratio * denominator) / mean(denominator)``."""
    check_level(level)
    top, bottom = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if top.shape != bottom.shape or top.ndim != 2:
        raise SpatialmixError(
            f"ratio: numerator {top.shape} and denominator {bottom.shape} must be seeds x examples tables "
            "of one shape"
        )
    scale = float(bottom.mean())
    if not scale > 0:
        raise SpatialmixError("ratio: the mean of the denominator must be above 0")
    ratio = float(top.mean()) / scale
    if top.shape[0] == 1:
        return Estimate(ratio, None, None, "one seed: no interval", 1, top.shape[1], level)
    parts = crossed_components((top - ratio * bottom) / scale)
    method = "ratio of means, delta method: " + _method(parts, f"{top.shape[1]:,} {what}")
    return _estimate(ratio, parts, level, method, top.shape[1])


def _estimate(value: float, parts: Components, level: float, method: str, examples: int | None) -> Estimate:
    half = parts.half_width(level)
    return Estimate(
        value,
        value - half,
        value + half,
        method,
        parts.seeds,
        examples,
        level,
        spread=math.sqrt(parts.seed_variance),
        test_set_variance=parts.test_set_variance,
    )


def _method(parts: Components, examples: str) -> str:
    return f"t over {parts.seeds} seeds + test-set variance of {examples} (crossed)"


def example_slopes(x, rows) -> np.ndarray:
    """One least-squares slope per example: ``rows`` holds one array per ``x`` value (the same
    examples in each), e.g. a seed's robust correctness at each smoothing sigma."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(rows, dtype=float)
    if y.ndim != 2 or y.shape[0] != x.size:
        raise SpatialmixError(f"slopes: {x.size} x values but {y.shape[0] if y.ndim else 0} rows")
    dx = x - x.mean()
    if not np.any(dx):
        raise SpatialmixError("slopes: needs at least two different x values")
    return dx @ y / float(dx @ dx)

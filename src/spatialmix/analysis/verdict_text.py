"""Verdicts in words and tables: the rule of a claim, a number in the unit its table shows, what an
undecided line would need, and the verdict table."""

from __future__ import annotations

import math

from spatialmix.analysis.claims import AFFORDABLE, CLAIMS, INCONCLUSIVE, NOT_RUN, Claim, Verdict
from spatialmix.analysis.decision import zero_width
from spatialmix.analysis.statistics import LARGEST_DF, LEVEL, MAX_SEEDS, examples_floor, t_quantile
from spatialmix.ui.display import ResultTable


def rule_text(claim: Claim) -> str:
    """When the claim's verdict is "supports" (the mirror image gives "contradicts")."""
    scale, label = claim.shown
    value = "0" if claim.threshold == 0 else f"{scale * claim.threshold:g}" + (f" {label}" if label else "")
    return f"{'>' if claim.side > 0 else '<'} {value}"


def power_text(verdict: Verdict) -> str:
    """What deciding a line would take, in a few words ("" for a decided line): for a line not run,
    the command that runs it; for an inconclusive one, what its seeds can decide, or that more test
    images, not more seeds, are what it needs."""
    est = verdict.estimate
    if verdict.verdict == NOT_RUN:
        return verdict.details
    if verdict.verdict != INCONCLUSIVE or est is None or not math.isfinite(est.value):
        return ""
    if zero_width(est):
        return "no spread to judge by: more seeds or test images give the interval a width"
    if est.spread is None:
        return "one seed: train more seeds"
    images = _test_images_text(verdict)
    if images:
        return images
    detects = "" if verdict.detectable is None else format_value(verdict.detectable, verdict.unit).lstrip("+")
    if verdict.seeds_needed is None:
        needs = f"needs more than {MAX_SEEDS:,} seeds"
    elif verdict.seeds_needed <= est.n_seeds:
        needs = f"{est.n_seeds} seeds should decide it: a chance miss"
    else:
        needs = f"needs about {verdict.seeds_needed:,} seeds"
    if verdict.seeds_needed is None or verdict.seeds_needed > AFFORDABLE * est.n_seeds:
        return f"bound only (the interval), no verdict: detects ≥ {detects}; {needs}"
    return f"detects ≥ {detects} from the threshold; {needs}"


def _test_images_text(verdict: Verdict) -> str:
    """The line's advice when its distance from the threshold is within what the test set alone
    leaves open ("" otherwise)."""
    est, claim = verdict.estimate, CLAIMS[verdict.claim]
    floor = est.test_set_variance or 0.0
    distance = est.value - claim.threshold * claim.shown[0]
    if floor <= 0 or abs(distance) > examples_floor(floor, est.level):
        return ""
    alone = format_value(t_quantile(est.level, LARGEST_DF) * math.sqrt(floor), verdict.unit).lstrip("+")
    return f"needs more test images: the test set alone gives ±{alone}, whatever the number of seeds"


def format_value(value: float, unit: str) -> str:
    """A verdict's number as the table shows it (it is already in the shown unit): ``+0.81 pts``."""
    return f"{value:+.2f} {unit}" if unit else f"{value:+.3f}"


def _interval(v: Verdict) -> str:
    est = v.estimate
    if est is None:
        return "-"
    if not est.defined:
        return "undefined"
    low, high = format_value(est.low, v.unit), format_value(est.high, v.unit)
    suffix = low.partition(" ")[2]
    return f"[{low.partition(' ')[0]}, {high.partition(' ')[0]}]" + (f" {suffix}" if suffix else "")


def verdict_table(
    verdicts: list[Verdict], title: str = "Verdicts: each claim of the paper against the data"
) -> ResultTable:
    """One row per verdict: claim, what the paper says, the effect, its interval, seeds, examples,
    the word, what the seeds can decide at 80% power, and how the interval was made."""
    scoped = any(v.scope for v in verdicts)
    levels = {v.estimate.level for v in verdicts if v.estimate is not None}
    level = f"{100 * levels.pop():g}% interval" if len(levels) == 1 else "interval (level in how)"
    columns = (
        [("claim", "claim", "")]
        + ([("scope", "setting", "")] if scoped else [])
        + [
            ("paper", "the paper says", ""),
            ("effect", "effect measured", ""),
            ("estimate", "estimate", ""),
            ("interval", level, ""),
            ("seeds", "seeds", ""),
            ("examples", "examples", ""),
            ("rule", "supports if interval", ""),
            ("verdict", "verdict", ""),
            ("power", "80% power", ""),
            ("how", "how", ""),
        ]
    )
    table = ResultTable(title, columns)
    for v in verdicts:
        est = v.estimate
        known = est is not None and not math.isnan(est.value)
        method = est.method if est is not None else ""
        if est is not None and est.level != LEVEL:
            method += f", {100 * est.level:.3g}% level"
        how = "; ".join(x for x in (method, v.details) if x)
        table.add(
            claim=v.claim,
            scope=v.scope or "-",
            paper=v.paper,
            effect=v.effect,
            estimate=format_value(est.value, v.unit) if known else "-",
            interval=_interval(v),
            seeds=est.n_seeds if est is not None and est.n_seeds else "-",
            examples=f"{est.n_examples:,}" if est is not None and est.n_examples else "-",
            rule=rule_text(CLAIMS[v.claim]),
            verdict=v.verdict,
            power=power_text(v) or "-",
            how=how,
        )
    return table

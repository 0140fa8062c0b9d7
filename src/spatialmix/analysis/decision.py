"""The rule that turns plain data into a verdict for each claim of the paper, never written by hand.

Each line gives the effect, its 95% interval, the seeds and examples behind it, and one word:

* **supports**: the whole interval lies on the paper's side of the claim's threshold;
* **contradicts**: the whole interval lies on the other side;
* **inconclusive**: the interval covers the threshold, has zero width (the data show no spread at
  all), or cannot be computed (one seed);
* **not run**: no data for the claim; the line names the command that would test it.

| claim | the paper says | effect measured | supports when the interval is |
|---|---|---|---|
| 1a | Chans reaches nearly Full's accuracy | Chans - Full clean test accuracy | above -1 point (the margin
of "nearly the same") |
| 1b | Space is clearly worse than Full | Space - Full clean test accuracy | below 0 |
| 2a | Chans is more robust than Full (per eps > 0) | Chans - Full robust accuracy | above 0 |
| 2b | smoothing Chans's frozen filters adds robustness (per eps > 0) | slope of Chans robust accuracy
against the smoothing sigma | above 0 |
| 3a | Chans un-shuffles as well as Full | Chans - Full un-shuffling test PSNR | above -1 dB |
| 3b | Chans recovers nearly all Full recovers | (Chans - floor) / (Full - floor) PSNR, floor = the scrambled
input | above 0.9 |

"contradicts" is the mirror image: the whole interval below -1 point (1a), above 0 (1b), below 0
(2a, 2b), below -1 dB (3a), below 0.9 (3b).

The intervals cover the population of seeds and test examples, not one test set: every seed is
scored on the same test examples, so the per-example results (``test_correct_bits``,
``robust_bits``, ``test_psnr_per_example``) form a seeds x examples table, and
`spatialmix.analysis.crossed` adds the test set's own sampling variance (the between-example
variance over the number of examples, from a two-way analysis of variance) to the seeds' (the
spread of their means, t with df = seeds - 1). A comparison (1a, 1b, 2a, 3a) uses the table of
per-example differences; the slope (2b) one least-squares slope per seed and example (a seed's
runs share their initial tensors and examples); 3b the ratio of the mean gains over the floor, by
the delta method. Seeds on test sets of different sizes add the test set's share by how much their
examples overlap. Runs saved without per-example results get the t-interval over the seeds alone,
and their method says "test-set variance not included". An interval of zero width decides
nothing. McNemar's exact test per seed is listed beside a comparison as a description, never as
the verdict. Every line also says what its seeds can decide: the smallest distance from the
threshold this many seeds find at 80% power, how many seeds the observed effect needs ("needs
about 7 seeds"), or, when the test set alone keeps it open, that it needs more test images. Models
are paired by seed within one setting: runs that differ in anything but mode and seed (and the
smoothing sigma for 2b) are never compared with each other.

Everything here works on plain data (run summaries, per-run robustness records, an un-shuffling
study's numbers); `spatialmix.analysis.verdicts_from_folders` reads them from study and run folders.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from spatialmix.analysis.claims import (
    CLAIMS,
    CONTRADICTS,
    INCONCLUSIVE,
    NOT_RUN,
    SUPPORTS,
    TEST_EXAMPLES,
    Claim,
    Verdict,
)
from spatialmix.analysis.crossed import crossed_interval, crossed_ratio_interval, example_slopes
from spatialmix.analysis.statistics import (
    LEVEL,
    Estimate,
    McNemar,
    detectable_distance,
    mcnemar_exact,
    mean_interval,
    paired_t_interval,
    seed_slopes,
    seeds_needed,
)


def decide(claim: Claim, estimate: Estimate | None) -> str:
    """The word of the rule (stated in this module's docstring) for ``estimate``'s interval."""
    if estimate is None:
        return NOT_RUN
    if not estimate.defined or zero_width(estimate):
        return INCONCLUSIVE
    low, high = (estimate.low - claim.threshold) * claim.side, (estimate.high - claim.threshold) * claim.side
    low, high = min(low, high), max(low, high)
    return SUPPORTS if low > 0 else CONTRADICTS if high < 0 else INCONCLUSIVE


def zero_width(estimate: Estimate) -> bool:
    """An interval of no width: the data showed no spread at all (every seed, or every seed and
    example, gave the same difference), which says nothing about the seeds and examples not seen."""
    return estimate.defined and estimate.high <= estimate.low


# --------------------------------------------------------------------------- numbers from plain data


def finite_number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def parse_bits(value) -> np.ndarray | None:
    """A '0'/'1' string (one character per example) as 0/1 integers; None for anything else."""
    if not isinstance(value, str) or not value or set(value) - {"0", "1"}:
        return None
    return np.frombuffer(value.encode("ascii"), dtype=np.uint8).astype(np.int8) - ord("0")


def parse_values(value, mean: float, tolerance: float) -> np.ndarray | None:
    """A list of per-example numbers (e.g. PSNR rounded to 0.01 dB) whose mean is ``mean`` within
    ``tolerance``; None for anything else (a list of another evaluation is not paired)."""
    if not isinstance(value, list) or len(value) < 2 or finite_number(value[0]) is None:
        return None
    if not all(finite_number(v) is not None for v in value):
        return None
    array = np.asarray(value, dtype=float)
    return array if abs(float(array.mean()) - mean) <= tolerance else None


def _by_seed(items: list[dict], value_key: str, bits_key: str) -> dict:
    """``{seed: (value, bits)}`` of the items with a number at ``value_key`` (the first of a seed wins)."""
    out = {}
    for item in items:
        value, seed = finite_number(item.get(value_key)), item.get("seed")
        if value is not None and isinstance(seed, int) and seed not in out:
            out[seed] = (value, parse_bits(item.get(bits_key)))
    return out


SEEDS_ONLY = "t over {} seeds only: test-set variance not included"


def seeds_only(estimate: Estimate) -> Estimate:
    """A t-interval over the seeds' own numbers, labelled as leaving the test set's variance out
    (runs saved without their per-example results)."""
    return replace(estimate, method=SEEDS_ONLY.format(estimate.n_seeds)) if estimate.defined else estimate


def compare(first: dict, second: dict, level: float = LEVEL) -> tuple[Estimate, list[McNemar]] | None:
    """``first - second`` over the seeds both have (``{seed: (value, per-example values)}``).

    When every pair has its per-example values (the same examples for both models of a seed), the
    interval covers the population of seeds and test examples (`crossed_interval`: the seeds x
    examples table of differences); otherwise it is the t-interval over the seeds' differences,
    which leaves the test set's variance out and says so. McNemar's test describes each seed whose
    values are 0/1 bits."""
    seeds = sorted(set(first) & set(second))
    if not seeds:
        return None
    pairs = [(first[s][1], second[s][1]) for s in seeds]
    paired = all(a is not None and b is not None and a.size == b.size and a.size >= 2 for a, b in pairs)
    if not paired:
        values = paired_t_interval({s: first[s][0] for s in seeds}, {s: second[s][0] for s in seeds}, level)
        return seeds_only(values), []
    tests = [mcnemar_exact(a, b) for a, b in pairs if np.issubdtype(a.dtype, np.integer)]
    # the per-example values, exact (a saved accuracy may be a float32 mean)
    return crossed_interval([a.astype(float) - b for a, b in pairs], level), tests


def _mcnemar_text(seeds_tests: list[McNemar], names: tuple[str, str]) -> str:
    if not seeds_tests:
        return ""
    parts = [f"{t.first_only}/{t.second_only} p={t.p_value:.2g}" for t in seeds_tests]
    return f"exact McNemar per seed (only {names[0]} / only {names[1]} right): " + ", ".join(parts)


def eps_value(label: str) -> float | None:
    try:
        top, _, bottom = str(label).partition("/")
        return float(top) / (float(bottom) if bottom else 1.0)
    except (ValueError, ZeroDivisionError):
        return None


def _budget_labels(records: list[dict]) -> list[str]:
    labels = dict.fromkeys(k for r in records for k in (r.get("robust_acc") or {}))
    return sorted((k for k in labels if (eps_value(k) or 0) > 0), key=eps_value)


def mode_name(value) -> str:
    return str(value).lower()


# --------------------------------------------------------------------------- the claims


def classification_verdicts(
    summaries: dict[str, list[dict]], scope: str = "", level: float = LEVEL
) -> list[Verdict]:
    """1a and 1b from ``{mode: [summary, ...]}`` (``test_acc``, ``seed``, optional ``test_correct_bits``)."""
    summaries = {mode_name(m): rows for m, rows in summaries.items() if isinstance(rows, list)}
    by_mode = {m: _by_seed(rows, "test_acc", "test_correct_bits") for m, rows in summaries.items()}
    out = []
    for claim_id, mode in (("1a", "chans"), ("1b", "space")):
        if not by_mode.get(mode) or not by_mode.get("full"):
            continue
        compared = compare(by_mode[mode], by_mode["full"], level)
        if compared is None:
            out.append(_no_pairs(claim_id, scope, mode))
            continue
        estimate, tests = compared
        examples = _common_count(summaries.get(mode, []) + summaries.get("full", []), TEST_EXAMPLES)
        out.append(
            _verdict(
                claim_id,
                CLAIMS[claim_id].effect,
                _with_examples(estimate, examples),
                scope,
                _mcnemar_text(tests, (mode.capitalize(), "Full")),
            )
        )
    return out


def _common_count(items: list, key: str) -> int | None:
    """The one positive whole number every item has at ``key`` (None when they differ or lack it)."""
    values = {item.get(key) if isinstance(item, dict) else None for item in items}
    value = values.pop() if len(values) == 1 else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _with_examples(estimate: Estimate, n: int | None) -> Estimate:
    """A seed-level interval says how many examples each seed's number was measured on."""
    return estimate if estimate.n_examples is not None or n is None else replace(estimate, n_examples=n)


def attack_check_note(records: list[dict]) -> str:
    """A claim-2 line's flag when the attack checks of some of its runs failed (``failed_checks``)."""
    failed = [
        r["failed_checks"] for r in records if isinstance(r.get("failed_checks"), list) and r["failed_checks"]
    ]
    names = ", ".join(dict.fromkeys(str(name) for names in failed for name in names))
    return f"attack check failed ({names}) in {len(failed)} of {len(records)} runs" if failed else ""


def robustness_verdicts(records: list[dict], scope: str = "", level: float = LEVEL) -> list[Verdict]:
    """2a per budget from per-run records: ``mode``, ``seed``, ``robust_acc`` and optional ``robust_bits``
    (both ``{eps_label: ...}``), ``examples_sha256`` (which examples were attacked) and ``failed_checks``
    (flagged on the line). Examples are paired only when every record that names its examples names
    the same ones."""
    same_examples = len({r.get("examples_sha256") for r in records} - {None}) <= 1
    note = attack_check_note([r for r in records if mode_name(r.get("mode")) in ("chans", "full")])
    out = []
    for label in _budget_labels(records):
        side = {
            mode: _by_seed(
                [
                    {
                        "seed": r.get("seed"),
                        "acc": (r.get("robust_acc") or {}).get(label),
                        "bits": (r.get("robust_bits") or {}).get(label) if same_examples else None,
                    }
                    for r in records
                    if mode_name(r.get("mode")) == mode
                ],
                "acc",
                "bits",
            )
            for mode in ("chans", "full")
        }
        if not side["chans"] or not side["full"]:
            continue
        compared = compare(side["chans"], side["full"], level)
        if compared is None:
            out.append(_no_pairs("2a", scope, "chans", f" at eps {label}"))
            continue
        estimate, tests = compared
        out.append(
            _verdict(
                "2a",
                f"{CLAIMS['2a'].effect} at eps {label}",
                estimate,
                scope,
                "; ".join(x for x in (note, _mcnemar_text(tests, ("Chans", "Full"))) if x),
            )
        )
    return out


def smoothing_verdicts(
    records: list[dict], scope: str = "", n_examples: int | None = None, level: float = LEVEL
) -> list[Verdict]:
    """2b per budget: the slope of Chans robust accuracy on ``smooth_sigma``, one per seed (a seed's
    runs share their initial tensors and examples). With every run's ``robust_bits`` on the same
    examples (``examples_sha256``), one slope per seed and example and `crossed_interval` over
    them; otherwise the t-interval over the seeds' slopes, which leaves the test set's variance out."""
    chans = [
        r
        for r in records
        if mode_name(r.get("mode", "chans")) == "chans" and finite_number(r.get("smooth_sigma")) is not None
    ]
    note = attack_check_note(chans)
    same_examples = len({r.get("examples_sha256") for r in chans} - {None}) <= 1
    out = []
    for label in _budget_labels(chans):
        points = _slope_points(chans, label, same_examples)
        if not points:
            continue
        estimate = _slope_estimate(points, level, n_examples)
        sigmas = ", ".join(f"{s:g}" for s in sorted({x for xs in points.values() for x, _, _ in xs}))
        details = "; ".join(x for x in (note, f"sigmas {sigmas}") if x)
        out.append(_verdict("2b", f"{CLAIMS['2b'].effect} at eps {label}", estimate, scope, details))
    return out


def _slope_points(chans: list[dict], label: str, with_bits: bool) -> dict[int, list[tuple]]:
    """``{seed: [(sigma, robust accuracy, bits or None), ...]}`` at ``label``, for the seeds with two
    or more different sigmas."""
    by_seed: dict[int, list[tuple]] = {}
    for r in chans:
        accuracy = finite_number((r.get("robust_acc") or {}).get(label))
        if accuracy is not None and isinstance(r.get("seed"), int):
            bits = parse_bits((r.get("robust_bits") or {}).get(label)) if with_bits else None
            by_seed.setdefault(r["seed"], []).append((float(r["smooth_sigma"]), accuracy, bits))
    return {seed: points for seed, points in by_seed.items() if len({x for x, _, _ in points}) >= 2}


def _slope_estimate(points: dict[int, list[tuple]], level: float, n_examples: int | None) -> Estimate:
    """Per-example slopes crossed with seeds when every point has bits of one length; otherwise the
    seeds' slopes alone."""
    bits = [b for seed_points in points.values() for _, _, b in seed_points]
    if all(b is not None for b in bits) and len({b.size for b in bits}) == 1 and bits[0].size >= 2:
        slopes = [
            example_slopes([x for x, _, _ in seed_points], np.stack([b for _, _, b in seed_points]))
            for seed_points in points.values()
        ]
        return crossed_interval(slopes, level)
    by_seed = {seed: ([x for x, _, _ in p], [y for _, y, _ in p]) for seed, p in points.items()}
    return replace(seeds_only(seed_slopes(by_seed, level)), n_examples=n_examples)


def unshuffle_verdicts(payload: dict, scope: str = "", level: float = LEVEL) -> list[Verdict]:
    """3a and 3b from an un-shuffling study (``unshuffle.json``: ``runs`` = ``{label: [summary, ...]}``,
    ``floor`` = one ``{"psnr"}`` per seed of ``settings.seeds``). With each run's per-example PSNR
    (``test_psnr_per_example``, and the floor's ``psnr_per_example`` for 3b) the intervals cover the
    population of seeds and test images; otherwise the seeds' own numbers alone."""
    labelled = payload.get("runs") if isinstance(payload.get("runs"), dict) else {}
    psnr = {mode_name(k): _psnr_by_seed(v) for k, v in labelled.items() if isinstance(v, list)}
    chans, full = psnr.get("chans") or {}, psnr.get("full") or {}
    if not chans or not full:
        return []
    out = []
    examples = _common_count(payload.get("floor") if isinstance(payload.get("floor"), list) else [], "n")
    compared = compare(chans, full, level)
    out.append(
        _verdict("3a", CLAIMS["3a"].effect, _with_examples(compared[0], examples), scope)
        if compared
        else _no_pairs("3a", scope, "chans")
    )
    floors = _floors(payload)
    estimate = _ratio_estimate(chans, full, floors, level)
    if estimate is not None:
        floor = np.mean([v for v, _ in floors.values()])
        note = f"Chans {_mean(chans):.2f} dB, Full {_mean(full):.2f} dB, floor {floor:.2f} dB"
        out.append(_verdict("3b", CLAIMS["3b"].effect, _with_examples(estimate, examples), scope, note))
    elif floors:
        out.append(
            Verdict(
                "3b",
                CLAIMS["3b"].effect,
                Estimate(math.nan, None, None, "no seed where Full beats the floor", 0),
                INCONCLUSIVE,
                scope,
            )
        )
    return out


PSNR_ROUNDING_DB = 0.01  # per-example PSNR is saved rounded to 0.01 dB


def _psnr_by_seed(rows: list) -> dict:
    """``{seed: (test PSNR, per-example PSNR or None)}`` of un-shuffling summaries."""
    out = {}
    for row in rows:
        value = finite_number(row.get("test_psnr")) if isinstance(row, dict) else None
        if value is not None and isinstance(row.get("seed"), int) and row["seed"] not in out:
            per_example = parse_values(row.get("test_psnr_per_example"), value, PSNR_ROUNDING_DB)
            out[row["seed"]] = (value, per_example)
    return out


def _ratio_estimate(chans: dict, full: dict, floors: dict, level: float) -> Estimate | None:
    """3b: ``(Chans - floor) / (Full - floor)``. With per-example PSNR of all three on every seed (one
    test-set size), the ratio of the means with its crossed delta-method interval; otherwise the mean
    of the per-seed ratios with the t-interval over seeds (None when Full never beats the floor)."""
    seeds = sorted(set(chans) & set(full) & set(floors))
    arrays = [(chans[s][1], full[s][1], floors[s][1]) for s in seeds]
    complete = arrays and all(a is not None for three in arrays for a in three)
    if complete and len({a.size for three in arrays for a in three}) == 1:
        top = np.stack([c - f for c, _, f in arrays])
        bottom = np.stack([u - f for _, u, f in arrays])
        if bottom.mean() > 0:
            return crossed_ratio_interval(top, bottom, level)
    fractions = [
        (chans[s][0] - floors[s][0]) / (full[s][0] - floors[s][0]) for s in seeds if full[s][0] > floors[s][0]
    ]
    return seeds_only(mean_interval(fractions, level, "per-seed ratios")) if fractions else None


def _floors(payload: dict) -> dict[int, tuple[float, np.ndarray | None]]:
    """``{seed: (floor PSNR, per-example floor PSNR or None)}`` of an un-shuffling study."""
    floors = payload.get("floor") if isinstance(payload.get("floor"), list) else []
    settings = payload.get("settings") if isinstance(payload.get("settings"), dict) else {}
    seeds = settings.get("seeds") if isinstance(settings.get("seeds"), list) else []
    out = {}
    for seed, floor in zip(seeds, floors):
        value = finite_number(floor.get("psnr")) if isinstance(floor, dict) else None
        if isinstance(seed, int) and value is not None:
            out[seed] = (value, parse_values(floor.get("psnr_per_example"), value, PSNR_ROUNDING_DB))
    return out


def _mean(by_seed: dict) -> float:
    return float(np.mean([v for v, _ in by_seed.values()]))


def _verdict(claim_id: str, effect: str, estimate: Estimate, scope: str, details: str = "") -> Verdict:
    """The verdict on ``estimate`` (in the measured unit), stated in the unit the table shows."""
    claim = CLAIMS[claim_id]
    verdict = decide(claim, estimate)
    detectable, needed = power_of(claim, estimate)
    scale = claim.shown[0]
    shown = replace(
        estimate,
        value=estimate.value * scale,
        low=None if estimate.low is None else estimate.low * scale,
        high=None if estimate.high is None else estimate.high * scale,
        spread=_scaled(estimate.spread, scale),
        test_set_variance=_scaled(estimate.test_set_variance, scale**2),
    )
    detectable = None if detectable is None else detectable * scale
    if zero_width(estimate):
        details = "; ".join(x for x in (ZERO_WIDTH, details) if x)
    return Verdict(claim_id, effect, shown, verdict, scope, details, detectable, needed)


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


ZERO_WIDTH = "zero-width interval: the data show no spread at all, so they decide nothing"


def power_of(claim: Claim, estimate: Estimate) -> tuple[float | None, int | None]:
    """What the seeds behind ``estimate`` can decide at 80% power: the smallest distance from the
    claim's threshold, and the seeds the observed spread needs for the observed distance (both
    with the test set's share of the variance, which more seeds do not shrink)."""
    if estimate.spread is None or not math.isfinite(estimate.value) or zero_width(estimate):
        return None, None
    distance = estimate.value - claim.threshold
    floor = estimate.test_set_variance or 0.0
    return (
        detectable_distance(estimate.spread, estimate.n_seeds, estimate.level, test_set_variance=floor),
        seeds_needed(distance, estimate.spread, estimate.level, test_set_variance=floor),
    )


def _no_pairs(claim_id: str, scope: str, mode: str, where: str = "") -> Verdict:
    return Verdict(
        claim_id,
        CLAIMS[claim_id].effect + where,
        Estimate(math.nan, None, None, "no seed in common", 0),
        INCONCLUSIVE,
        scope,
        f"{mode.capitalize()} and Full share no seed: train both with the same seeds",
    )


def claim_verdicts(
    classification: dict | None = None,
    robustness: list[dict] | None = None,
    smoothing: list[dict] | None = None,
    unshuffle: dict | None = None,
    *,
    scope: str = "",
    commands: dict[str, str] | None = None,
    robust_examples: int | None = None,
    levels: dict[str, float] | None = None,
) -> list[Verdict]:
    """Every claim's verdict from the data of the studies (``None``: that study did not run).

    ``classification``: ``{mode: [summary, ...]}``; ``robustness`` / ``smoothing``: per-run records
    (see `robustness_verdicts`, `smoothing_verdicts`); ``unshuffle``: the un-shuffling
    study's ``unshuffle.json``. A claim without data gets a "not run" line naming ``commands[study]``.
    ``levels``: the confidence of each study's intervals (default 95%; higher where ``--until-decided``
    spends the error rate over several looks).
    """
    levels = levels or {}
    found = {
        "classification": classification_verdicts(
            classification or {}, scope, levels.get("classification", LEVEL)
        ),
        "robustness": robustness_verdicts(robustness or [], scope, levels.get("robustness", LEVEL)),
        "smoothing": smoothing_verdicts(
            smoothing or [], scope, robust_examples, levels.get("smoothing", LEVEL)
        ),
        "unshuffle": unshuffle_verdicts(unshuffle or {}, scope, levels.get("unshuffle", LEVEL)),
    }
    out = []
    for claim in CLAIMS.values():
        lines = [v for v in found[claim.studies] if v.claim == claim.id]
        if lines:
            out += lines
        elif commands is not None and claim.studies in commands:
            out.append(
                Verdict(claim.id, claim.effect, None, NOT_RUN, scope, f"run `{commands[claim.studies]}`")
            )
    return out

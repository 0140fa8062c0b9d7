"""One verdict per claim of the paper, computed from the data, never written by hand.

Each line gives the effect, its 95% interval, the seeds and examples behind it, and one word:

* **supports**: the whole interval lies on the paper's side of the claim's threshold;
* **contradicts**: the whole interval lies on the other side;
* **inconclusive**: the interval covers the threshold, or cannot be computed (one seed and no
  per-example results);
* **not run**: no data for the claim; the line names the command that would test it.

| claim | the paper says | effect measured | supports when the interval is |
|---|---|---|---|
| 1a | Chans reaches nearly Full's accuracy | Chans - Full clean test accuracy | above -1 point (the margin of "nearly the same") |
| 1b | Space is clearly worse than Full | Space - Full clean test accuracy | below 0 |
| 2a | Chans is more robust than Full (per eps > 0) | Chans - Full robust accuracy | above 0 |
| 2b | smoothing Chans's frozen filters adds robustness (per eps > 0) | slope of Chans robust accuracy against the smoothing sigma | above 0 |
| 3a | Chans un-shuffles as well as Full | Chans - Full un-shuffling test PSNR | above -1 dB |
| 3b | Chans recovers nearly all Full recovers | (Chans - floor) / (Full - floor) PSNR, floor = the scrambled input | above 0.9 |

"contradicts" is the mirror image: the whole interval below -1 point (1a), above 0 (1b), below 0
(2a, 2b), below -1 dB (3a), below 0.9 (3b).

The intervals (:mod:`spatialmix.statistics`): where both models of a pair saw the same examples
and saved per-example results (``test_correct_bits`` in a classification summary, ``robust_bits``
per budget of ``robustness.json``), the per-example difference is bootstrapped hierarchically
(seeds, then examples within each seed; 10,000 resamples, percentile interval), and McNemar's
exact test per seed is listed beside it. Otherwise the seed-paired differences get a Student
t-interval (undefined with one seed). The slope (2b) is ordinary least squares over every
(sigma, seed) point of Chans runs with its t-interval (df = points - 2). Models are paired by seed
within one setting: runs that differ in anything but mode and seed (and the smoothing sigma for
2b) are never compared with each other.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import runs
from .errors import SpatialmixError
from .reporting import ResultTable
from .statistics import Estimate, McNemar, mcnemar_exact, mean_interval, ols_slope, paired_bootstrap, \
    paired_t_interval

SUPPORTS, CONTRADICTS, INCONCLUSIVE, NOT_RUN = "supports", "contradicts", "inconclusive", "not run"
CLASSIFICATION_MARGIN = 0.01      # 1 point of accuracy: "nearly the same" (claim 1a)
PSNR_MARGIN_DB = 1.0              # claim 3a
GAIN_FRACTION = 0.9               # claim 3b
ROBUSTNESS_FILE = "robustness.json"
UNSHUFFLE_FILE = "unshuffle.json"
# Settings that do not change what a run computes: runs differing only in these are one setting.
NOT_A_SETTING = {"mode", "seed", "device", "data_dir", "download", "progress", "workers", "threads", "channels_last"}


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str            # what the paper says
    effect: str           # what is measured
    unit: str             # "accuracy", "accuracy per sigma", "dB" or "fraction"
    threshold: float
    side: int             # +1: the paper's side is above the threshold, -1: below
    studies: str          # the `reproduce` studies that test it


CLAIMS = {c.id: c for c in [
    Claim("1a", "Chans reaches nearly Full's accuracy", "Chans − Full clean test accuracy", "accuracy",
          -CLASSIFICATION_MARGIN, +1, "classification"),
    Claim("1b", "Space is clearly worse than Full", "Space − Full clean test accuracy", "accuracy", 0.0, -1,
          "classification"),
    Claim("2a", "Chans is more robust than Full", "Chans − Full robust accuracy", "accuracy", 0.0, +1, "robustness"),
    Claim("2b", "smoothing Chans's frozen filters adds robustness",
          "slope of Chans robust accuracy vs smoothing sigma", "accuracy per sigma", 0.0, +1, "smoothing"),
    Claim("3a", "Chans un-shuffles as well as Full", "Chans − Full un-shuffling PSNR", "dB", -PSNR_MARGIN_DB, +1,
          "unshuffle"),
    Claim("3b", "Chans recovers nearly all Full recovers", "(Chans − floor) / (Full − floor) PSNR", "fraction",
          GAIN_FRACTION, +1, "unshuffle"),
]}


@dataclass(frozen=True)
class Verdict:
    claim: str                     # an id of CLAIMS
    effect: str                    # what was measured (with the budget for 2a / 2b)
    estimate: Estimate | None      # None: not run
    verdict: str
    scope: str = ""                # which setting of a sweep, "" when there is one
    details: str = ""              # McNemar per seed, why an interval is missing, the command to run

    @property
    def paper(self) -> str:
        return CLAIMS[self.claim].paper


def decide(claim: Claim, estimate: Estimate | None) -> str:
    """The word of the rule in the module doc for ``estimate``'s interval."""
    if estimate is None:
        return NOT_RUN
    if not estimate.defined:
        return INCONCLUSIVE
    low, high = (estimate.low - claim.threshold) * claim.side, (estimate.high - claim.threshold) * claim.side
    low, high = min(low, high), max(low, high)
    return SUPPORTS if low > 0 else CONTRADICTS if high < 0 else INCONCLUSIVE


def rule_text(claim: Claim) -> str:
    """When the claim's verdict is "supports" (the mirror image gives "contradicts")."""
    scale, unit = {"accuracy": (100, " pts"), "accuracy per sigma": (100, " pts/σ"), "dB": (1, " dB")}.get(
        claim.unit, (1, ""))
    value = "0" if claim.threshold == 0 else f"{scale * claim.threshold:g}{unit}"
    return f"{'>' if claim.side > 0 else '<'} {value}"


# --------------------------------------------------------------------------- numbers from plain data

def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _bits(value) -> np.ndarray | None:
    """A '0'/'1' string (one character per example) as 0/1 integers; None for anything else."""
    if not isinstance(value, str) or not value or set(value) - {"0", "1"}:
        return None
    return np.frombuffer(value.encode("ascii"), dtype=np.uint8).astype(np.int8) - ord("0")


def _by_seed(items: list[dict], value_key: str, bits_key: str) -> dict:
    """``{seed: (value, bits)}`` of the items with a number at ``value_key`` (the first of a seed wins)."""
    out = {}
    for item in items:
        value, seed = _number(item.get(value_key)), item.get("seed")
        if value is not None and isinstance(seed, int) and seed not in out:
            out[seed] = (value, _bits(item.get(bits_key)))
    return out


def compare(first: dict, second: dict) -> tuple[Estimate, list[McNemar]] | None:
    """``first - second`` over the seeds both have (``{seed: (value, bits)}``): the paired per-example
    bootstrap when every pair has bits of one length, else the seed-paired t-interval."""
    seeds = sorted(set(first) & set(second))
    if not seeds:
        return None
    pairs = [(first[s][1], second[s][1]) for s in seeds]
    if all(a is not None and b is not None and a.size == b.size for a, b in pairs):
        estimate = paired_bootstrap([a.astype(float) - b for a, b in pairs])
        return estimate, [mcnemar_exact(a, b) for a, b in pairs]
    return paired_t_interval({s: first[s][0] for s in seeds}, {s: second[s][0] for s in seeds}), []


def _mcnemar_text(seeds_tests: list[McNemar], names: tuple[str, str]) -> str:
    if not seeds_tests:
        return ""
    parts = [f"{t.first_only}/{t.second_only} p={t.p_value:.2g}" for t in seeds_tests]
    return f"exact McNemar per seed (only {names[0]} / only {names[1]} right): " + ", ".join(parts)


def _eps_value(label: str) -> float | None:
    try:
        top, _, bottom = str(label).partition("/")
        return float(top) / (float(bottom) if bottom else 1.0)
    except (ValueError, ZeroDivisionError):
        return None


def _budget_labels(records: list[dict]) -> list[str]:
    labels = dict.fromkeys(k for r in records for k in (r.get("robust_acc") or {}))
    return sorted((k for k in labels if (_eps_value(k) or 0) > 0), key=_eps_value)


def _mode(value) -> str:
    return str(value).lower()


# --------------------------------------------------------------------------- the claims

def classification_verdicts(summaries: dict[str, list[dict]], scope: str = "") -> list[Verdict]:
    """1a and 1b from ``{mode: [summary, ...]}`` (``test_acc``, ``seed``, optional ``test_correct_bits``)."""
    by_mode = {_mode(m): _by_seed(rows, "test_acc", "test_correct_bits") for m, rows in summaries.items()
               if isinstance(rows, list)}
    out = []
    for claim_id, mode in (("1a", "chans"), ("1b", "space")):
        if not by_mode.get(mode) or not by_mode.get("full"):
            continue
        compared = compare(by_mode[mode], by_mode["full"])
        if compared is None:
            out.append(_no_pairs(claim_id, scope, mode))
            continue
        estimate, tests = compared
        out.append(_verdict(claim_id, CLAIMS[claim_id].effect, estimate, scope,
                            _mcnemar_text(tests, (mode.capitalize(), "Full"))))
    return out


def robustness_verdicts(records: list[dict], scope: str = "") -> list[Verdict]:
    """2a per budget from per-run records: ``mode``, ``seed``, ``robust_acc`` and optional ``robust_bits``
    (both ``{eps_label: ...}``), all evaluated on the same examples."""
    out = []
    for label in _budget_labels(records):
        side = {mode: _by_seed([{"seed": r.get("seed"), "acc": (r.get("robust_acc") or {}).get(label),
                                 "bits": (r.get("robust_bits") or {}).get(label)}
                                for r in records if _mode(r.get("mode")) == mode], "acc", "bits")
                for mode in ("chans", "full")}
        if not side["chans"] or not side["full"]:
            continue
        compared = compare(side["chans"], side["full"])
        if compared is None:
            out.append(_no_pairs("2a", scope, "chans", f" at eps {label}"))
            continue
        estimate, tests = compared
        out.append(_verdict("2a", f"{CLAIMS['2a'].effect} at eps {label}", estimate, scope,
                            _mcnemar_text(tests, ("Chans", "Full"))))
    return out


def smoothing_verdicts(records: list[dict], scope: str = "", n_examples: int | None = None) -> list[Verdict]:
    """2b per budget: the OLS slope of robust accuracy on ``smooth_sigma`` over Chans runs."""
    chans = [r for r in records if _mode(r.get("mode", "chans")) == "chans" and _number(r.get("smooth_sigma")) is not None]
    out = []
    for label in _budget_labels(chans):
        points = [(float(r["smooth_sigma"]), _number((r.get("robust_acc") or {}).get(label)), r.get("seed"))
                  for r in chans]
        points = [p for p in points if p[1] is not None]
        if len({p[0] for p in points}) < 2:
            continue
        estimate = ols_slope([p[0] for p in points], [p[1] for p in points], n_seeds=len({p[2] for p in points}),
                             n_examples=n_examples)
        sigmas = ", ".join(f"{s:g}" for s in sorted({p[0] for p in points}))
        out.append(_verdict("2b", f"{CLAIMS['2b'].effect} at eps {label}", estimate, scope, f"sigmas {sigmas}"))
    return out


def unshuffle_verdicts(payload: dict, scope: str = "") -> list[Verdict]:
    """3a and 3b from an un-shuffling study (``unshuffle.json``: ``runs`` = ``{label: [summary, ...]}``,
    ``floor`` = one ``{"psnr"}`` per seed of ``settings.seeds``)."""
    labelled = payload.get("runs") if isinstance(payload.get("runs"), dict) else {}
    psnr = {_mode(k): _by_seed(v, "test_psnr", "") for k, v in labelled.items() if isinstance(v, list)}
    chans, full = psnr.get("chans") or {}, psnr.get("full") or {}
    if not chans or not full:
        return []
    out = []
    compared = compare(chans, full)
    out.append(_verdict("3a", CLAIMS["3a"].effect, compared[0], scope) if compared else _no_pairs("3a", scope, "chans"))
    floors = _floors(payload)
    fractions = [(chans[s][0] - floors[s]) / (full[s][0] - floors[s]) for s in sorted(set(chans) & set(full) & set(floors))
                 if full[s][0] > floors[s]]
    if fractions:
        estimate = mean_interval(fractions)
        note = f"Chans {_mean(chans):.2f} dB, Full {_mean(full):.2f} dB, floor {np.mean(list(floors.values())):.2f} dB"
        out.append(_verdict("3b", CLAIMS["3b"].effect, estimate, scope, note))
    elif floors:
        out.append(Verdict("3b", CLAIMS["3b"].effect, Estimate(math.nan, None, None, "no seed where Full beats the "
                                                                "floor", 0), INCONCLUSIVE, scope))
    return out


def _floors(payload: dict) -> dict[int, float]:
    floors = payload.get("floor") if isinstance(payload.get("floor"), list) else []
    settings = payload.get("settings") if isinstance(payload.get("settings"), dict) else {}
    seeds = settings.get("seeds") if isinstance(settings.get("seeds"), list) else []
    values = [_number(f.get("psnr")) if isinstance(f, dict) else None for f in floors]
    return {s: v for s, v in zip(seeds, values) if isinstance(s, int) and v is not None}


def _mean(by_seed: dict) -> float:
    return float(np.mean([v for v, _ in by_seed.values()]))


def _verdict(claim_id: str, effect: str, estimate: Estimate, scope: str, details: str = "") -> Verdict:
    return Verdict(claim_id, effect, estimate, decide(CLAIMS[claim_id], estimate), scope, details)


def _no_pairs(claim_id: str, scope: str, mode: str, where: str = "") -> Verdict:
    return Verdict(claim_id, CLAIMS[claim_id].effect + where, Estimate(math.nan, None, None, "no seed in common", 0),
                   INCONCLUSIVE, scope, f"{mode.capitalize()} and Full share no seed: train both with the same seeds")


def claim_verdicts(classification: dict | None = None, robustness: list[dict] | None = None,
                   smoothing: list[dict] | None = None, unshuffle: dict | None = None, *, scope: str = "",
                   commands: dict[str, str] | None = None, robust_examples: int | None = None) -> list[Verdict]:
    """Every claim's verdict from the data of the studies (``None``: that study did not run).

    ``classification``: ``{mode: [summary, ...]}``; ``robustness`` / ``smoothing``: per-run records
    (see :func:`robustness_verdicts`, :func:`smoothing_verdicts`); ``unshuffle``: the un-shuffling
    study's ``unshuffle.json``. A claim without data gets a "not run" line naming ``commands[study]``.
    """
    found = {"classification": classification_verdicts(classification or {}, scope),
             "robustness": robustness_verdicts(robustness or [], scope),
             "smoothing": smoothing_verdicts(smoothing or [], scope, robust_examples),
             "unshuffle": unshuffle_verdicts(unshuffle or {}, scope)}
    out = []
    for claim in CLAIMS.values():
        lines = [v for v in found[claim.studies] if v.claim == claim.id]
        if lines:
            out += lines
        elif commands is not None and claim.studies in commands:
            out.append(Verdict(claim.id, claim.effect, None, NOT_RUN, scope, f"run `{commands[claim.studies]}`"))
    return out


# --------------------------------------------------------------------------- the table

def format_value(value: float, unit: str) -> str:
    sign = "+"
    if unit == "accuracy":
        return f"{100 * value:{sign}.2f} pts"
    if unit == "accuracy per sigma":
        return f"{100 * value:{sign}.2f} pts/σ"
    if unit == "dB":
        return f"{value:{sign}.2f} dB"
    return f"{value:{sign}.3f}"


def _interval(v: Verdict) -> str:
    est = v.estimate
    if est is None:
        return "-"
    if not est.defined:
        return "undefined"
    unit = CLAIMS[v.claim].unit
    low, high = format_value(est.low, unit), format_value(est.high, unit)
    suffix = low.partition(" ")[2]
    return f"[{low.partition(' ')[0]}, {high.partition(' ')[0]}]" + (f" {suffix}" if suffix else "")


def verdict_table(verdicts: list[Verdict], title: str = "Verdicts: each claim of the paper against the data") \
        -> ResultTable:
    """One row per verdict: claim, what the paper says, the effect, its 95% interval, seeds, examples,
    the word, and how the interval was made."""
    scoped = any(v.scope for v in verdicts)
    columns = [("claim", "claim", "")] + ([("scope", "setting", "")] if scoped else []) + [
        ("paper", "the paper says", ""), ("effect", "effect measured", ""), ("estimate", "estimate", ""),
        ("interval", "95% interval", ""), ("seeds", "seeds", ""), ("examples", "examples", ""),
        ("rule", "supports if interval", ""), ("verdict", "verdict", ""), ("how", "how", "")]
    table = ResultTable(title, columns)
    for v in verdicts:
        est = v.estimate
        known = est is not None and not math.isnan(est.value)
        how = "; ".join(x for x in ((est.method if est is not None else ""), v.details) if x)
        table.add(claim=v.claim, scope=v.scope or "-", paper=v.paper, effect=v.effect,
                  estimate=format_value(est.value, CLAIMS[v.claim].unit) if known else "-", interval=_interval(v),
                  seeds=est.n_seeds if est is not None and est.n_seeds else "-",
                  examples=f"{est.n_examples:,}" if est is not None and est.n_examples else "-",
                  rule=rule_text(CLAIMS[v.claim]), verdict=v.verdict, how=how)
    return table


# --------------------------------------------------------------------------- reading a study folder

def _read_json_or_none(path: Path):
    """An untrusted JSON file: None when absent, a clear error when corrupt."""
    if not path.is_file():
        return None
    return runs.read_json(path, "result file")


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def reproduce_commands(out_dir: Path, preset: str | None = None) -> dict[str, str]:
    preset_flag = f" --preset {preset}" if preset and preset != "quick" else ""
    return {study: f"spatialmix reproduce{preset_flag} --out {out_dir} --studies {study}"
            for study in ("classification", "robustness", "smoothing", "unshuffle")}


def _locate_run(out_dir: Path, saved: str) -> Path | None:
    """A run folder named in results.json: as written, or by its last two parts below the study folder
    (the folder may have been moved since)."""
    path = Path(str(saved))
    for candidate in (path, out_dir / path, out_dir / Path(*path.parts[-2:])):
        if runs.is_run_dir(candidate):
            return candidate
    return None


def robust_records(study_data: dict, out_dir: Path) -> list[dict]:
    """The per-run records of a robustness or smoothing study in results.json, with each run's
    ``robust_bits`` from its robustness.json when that file holds the same evaluation."""
    settings = {k: v for k, v in _dict(study_data.get("settings")).items() if k != "device"}
    records = []
    for saved in study_data.get("runs") or []:
        if not isinstance(saved, dict):
            continue
        record = dict(saved)
        run_dir = _locate_run(out_dir, saved.get("run", ""))
        result = _read_json_or_none(run_dir / ROBUSTNESS_FILE) if run_dir else None
        record["robust_bits"] = _matching_bits(result, settings, _dict(saved.get("robust_acc")))
        records.append(record)
    return records


def _matching_bits(result, settings: dict, robust_acc: dict) -> dict:
    """``{eps_label: bits}`` of a robustness.json when it is the evaluation results.json reports."""
    if not isinstance(result, dict):
        return {}
    theirs = {k: v for k, v in _dict(result.get("settings")).items() if k != "device"}
    if settings and theirs != settings:
        return {}
    bits = {}
    for budget in result.get("budgets") or []:
        label = _dict(budget).get("eps_label")
        values, acc = _bits(_dict(budget).get("robust_bits")), _number(robust_acc.get(label))
        if values is not None and acc is not None and abs(values.mean() - acc) < 1e-9:
            bits[label] = budget["robust_bits"]
    return bits


def _with_run_files(summaries: dict, out_dir: Path) -> dict:
    """Classification summaries completed from their run folders (``test_correct_bits`` when the saved
    copy lacks it) so that clean accuracy can be compared example by example."""
    completed = {}
    for mode, rows in summaries.items():
        completed[mode] = []
        for row in rows if isinstance(rows, list) else []:
            row = dict(row) if isinstance(row, dict) else {}
            if "test_correct_bits" not in row and isinstance(row.get("seed"), int):
                run_dir = out_dir / "classification" / f"{_mode(mode)}-seed{row['seed']}"   # study.classification_run_dir
                saved = _read_json_or_none(run_dir / runs.SUMMARY)
                if isinstance(saved, dict) and saved.get("test_acc") == row.get("test_acc"):
                    row["test_correct_bits"] = saved.get("test_correct_bits")
            completed[mode].append(row)
    return completed


def verdicts_for_study(out_dir: str | Path) -> list[Verdict]:
    """The verdicts of a ``spatialmix reproduce`` folder; a study that did not run gets "not run" lines.

    A folder with runs but no study results (a sweep, an interrupted study) is read as its runs
    (:func:`verdicts_for_runs`).
    """
    out_dir = Path(out_dir)
    results = _read_json_or_none(out_dir / "results.json")
    results = results if isinstance(results, dict) else {}
    studies = _dict(results.get("studies"))
    if not studies:
        from .report import find_runs

        found = find_runs(out_dir) if out_dir.is_dir() else []
        if found:
            return verdicts_for_runs(found, commands=reproduce_commands(out_dir, results.get("preset")))
    data = {name: _dict(_dict(studies.get(name)).get("data")) for name in ("classification", "robustness", "smoothing")}
    classification = data["classification"].get("runs")
    robustness, smoothing = (robust_records(data[n], out_dir) if data[n].get("runs") else None
                             for n in ("robustness", "smoothing"))
    unshuffle = _read_json_or_none(out_dir / "unshuffle" / UNSHUFFLE_FILE)
    examples = _dict(data["smoothing"].get("settings")).get("n_examples")
    return claim_verdicts(_with_run_files(classification, out_dir) if isinstance(classification, dict) else None,
                          robustness, smoothing, unshuffle if isinstance(unshuffle, dict) else None,
                          commands=reproduce_commands(out_dir, results.get("preset")),
                          robust_examples=examples if isinstance(examples, int) else None)


# --------------------------------------------------------------------------- reading run folders

@dataclass
class _Run:
    path: Path
    train: dict
    task: dict
    summary: dict
    robustness: dict | None


def _read_run(path: Path) -> _Run | None:
    """A finished run's config, summary and robustness.json; None for a run that has not finished."""
    runs.check_run_dir(path)
    summary = _read_json_or_none(path / runs.SUMMARY)
    if not isinstance(summary, dict):
        return None
    record = _dict(runs.read_json(path / runs.CONFIG, "run"))
    robustness = _read_json_or_none(path / ROBUSTNESS_FILE)
    return _Run(path, _dict(record.get("train")), _dict(record.get("task")), summary,
                robustness if isinstance(robustness, dict) else None)


def _setting(run: _Run, also_ignore: tuple[str, ...] = ()) -> str:
    kept = {k: v for k, v in run.train.items() if k not in NOT_A_SETTING and k not in also_ignore}
    return json.dumps({"train": kept, "task": run.task}, sort_keys=True, default=str)


def _scope_names(keys: list[str]) -> dict[str, str]:
    """Name each setting by the training fields whose values differ between the settings."""
    decoded = [json.loads(k)["train"] for k in keys]
    differ = [f for f in dict.fromkeys(f for d in decoded for f in d) if len({json.dumps(d.get(f)) for d in decoded}) > 1]
    return {k: ", ".join(f"{f}={d.get(f)}" for f in differ) for k, d in zip(keys, decoded)}


def _run_robust_record(run: _Run) -> dict | None:
    budgets = [b for b in (run.robustness or {}).get("budgets") or [] if isinstance(b, dict)]
    if not budgets:
        return None
    return {"mode": run.train.get("mode"), "seed": run.train.get("seed"), "smooth_sigma": run.train.get("smooth_sigma"),
            "robust_acc": {b.get("eps_label"): b.get("robust_acc") for b in budgets},
            "robust_bits": {b.get("eps_label"): b.get("robust_bits") for b in budgets},
            "attack": json.dumps({k: v for k, v in _dict(run.robustness.get("settings")).items() if k != "device"},
                                 sort_keys=True), "n_examples": run.robustness.get("n_examples")}


def _same_attack(records: list[dict]) -> list[dict]:
    """Only runs evaluated with the most common attack settings are compared with each other."""
    if not records:
        return records
    keys = [r["attack"] for r in records]
    common = max(dict.fromkeys(keys), key=keys.count)
    return [r for r in records if r["attack"] == common]


def _group_verdicts(members: list[_Run]) -> list[Verdict]:
    """Claims 1, 2a and 3a of one setting's runs (scope filled in later)."""
    classification = [r for r in members if r.summary.get("task", "classification") == "classification"]
    by_mode: dict[str, list[dict]] = {}
    for r in classification:
        by_mode.setdefault(_mode(r.train.get("mode")), []).append(r.summary)
    robust = _same_attack([x for x in map(_run_robust_record, classification) if x is not None])
    unshuffle: dict[str, list[dict]] = {}
    for r in members:
        if r.summary.get("task") == "unshuffle":
            unshuffle.setdefault(_mode(r.train.get("mode")), []).append(r.summary)
    return claim_verdicts(by_mode, robust, None, {"runs": unshuffle})


def _sigma_verdicts(members: list[_Run]) -> list[Verdict]:
    records = _same_attack([x for x in map(_run_robust_record, members) if x is not None])
    examples = records[0].get("n_examples") if records else None
    return claim_verdicts(smoothing=records, robust_examples=examples if isinstance(examples, int) else None)


def _named(found: list[tuple[str, list[Verdict]]]) -> list[Verdict]:
    """The verdicts of each setting, named by what sets it apart from the other settings with verdicts."""
    found = [(key, verdicts) for key, verdicts in found if verdicts]
    names = _scope_names([key for key, _ in found])
    return [replace(v, scope=names[key]) for key, verdicts in found for v in verdicts]


def verdicts_for_runs(run_dirs, commands: dict[str, str] | None = None) -> list[Verdict]:
    """The verdicts of arbitrary finished runs (a sweep grid, runs given to ``report``).

    Runs are grouped by every training setting except mode and seed; each group with Full and
    Chans runs gets claims 1 and 2a, each group of Chans runs that differ only in ``smooth_sigma``
    gets 2b, each group of un-shuffling runs 3a. When any claim has data, the others get one
    "not run" line. Unfinished runs are left out.
    """
    loaded = [r for r in (_read_run(Path(p)) for p in run_dirs) if r is not None]
    groups: dict[str, list[_Run]] = {}
    sigma_groups: dict[str, list[_Run]] = {}
    for run in loaded:
        groups.setdefault(_setting(run), []).append(run)
        if _mode(run.train.get("mode")) == "chans" and run.robustness:
            sigma_groups.setdefault(_setting(run, ("smooth_sigma",)), []).append(run)
    found = [(key, _group_verdicts(members)) for key, members in groups.items()]
    out = _named(found)
    out += _named([(key, _sigma_verdicts(members)) for key, members in sigma_groups.items()])
    if not out:
        return []
    commands = commands or {"classification": "train Full, Chans and Space runs of one setting with the same seeds",
                            "robustness": "spatialmix attack RUN_DIR ... (the Full and Chans runs)",
                            "smoothing": "train Chans runs at several --smooth-sigma values, then spatialmix attack them",
                            "unshuffle": "spatialmix unshuffle"}
    present = {v.claim for v in out}
    missing = [Verdict(c.id, c.effect, None, NOT_RUN, "", f"run `{commands[c.studies]}`")
               for c in CLAIMS.values() if c.id not in present and c.studies in commands]
    order = list(CLAIMS)
    return sorted(out + missing, key=lambda v: order.index(v.claim))

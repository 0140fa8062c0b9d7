"""Verdicts from study and run folders: the data each claim needs, read from what `spatialmix
reproduce` and `spatialmix train` / `attack` saved, then decided by `spatialmix.analysis.decision`.

Models are paired by seed within one setting: runs that differ in anything but mode and seed (and the
smoothing sigma for 2b) are never compared with each other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from spatialmix.analysis.claims import CLAIMS, NOT_RUN, TEST_EXAMPLES, Verdict
from spatialmix.analysis.decision import claim_verdicts, finite_number, mode_name, parse_bits
from spatialmix.analysis.families import Family, classification_families
from spatialmix.analysis.verdict_text import power_text, rule_text
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.io.paths import inside
from spatialmix.io.runs import find_runs

ROBUSTNESS_FILE = "robustness.json"
UNSHUFFLE_FILE = "unshuffle.json"
# Settings that do not change what a run computes: runs differing only in these are one setting.
NOT_A_SETTING = {
    "mode",
    "seed",
    "device",
    "data_dir",
    "download",
    "progress",
    "workers",
    "threads",
    "channels_last",
}


# --------------------------------------------------------------------------- reading a study folder


def _read_json_or_none(path: Path, base: Path):
    """An untrusted JSON file of the folder ``base``: None when absent, a clear error when bad or outside."""
    if not (path.is_file() or path.is_symlink()):
        return None
    return runs.read_json(path, "result file", base=base)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _failed_checks(checks) -> list[str]:
    """The names of the failed checks in a robustness.json's ``checks`` (untrusted: others skipped)."""
    items = checks if isinstance(checks, list) else []
    return [str(c.get("name"))[:40] for c in items if isinstance(c, dict) and c.get("ok") is False]


# The quick preset decides no claim-2 line (one seed of a one-epoch model says little about the
# next): the standard preset's 24 seeds are where claim 2 is tested.
CLAIM_2_STUDIES, CLAIM_2_PRESET = ("robustness", "smoothing"), "standard"
CLAIM_2_COMMAND = f"spatialmix reproduce --preset {CLAIM_2_PRESET} --out runs/{CLAIM_2_PRESET}"


def reproduce_commands(out_dir: Path, preset: str | None = None) -> dict[str, str]:
    """The command that runs each claim's study: claim 2 from the quick preset points to the standard one."""
    preset_flag = f" --preset {preset}" if preset and preset != "quick" else ""
    commands = {
        study: f"spatialmix reproduce{preset_flag} --out {out_dir} --studies {study}"
        for study in ("classification", "robustness", "smoothing", "unshuffle")
    }
    if not preset_flag:
        for study in CLAIM_2_STUDIES:
            commands[study] = CLAIM_2_COMMAND
    return commands


def _locate_run(out_dir: Path, saved: str) -> Path | None:
    """A run folder named in results.json, inside the study folder: as written, or by its last two
    parts below the study folder (the folder may have been moved since)."""
    path = Path(str(saved))
    for candidate in (path, out_dir / path, out_dir / Path(*path.parts[-2:])):
        # never a folder outside the study folder (results.json is untrusted)
        if inside(out_dir, candidate) is not None and runs.is_run_dir(candidate):
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
        try:
            result = _read_json_or_none(run_dir / ROBUSTNESS_FILE, run_dir) if run_dir else None
        except SpatialmixError:  # damaged: results.json's accuracies still give the seed-paired interval
            result = None
        record["robust_bits"] = _matching_bits(result, settings, _dict(saved.get("robust_acc")))
        if record["robust_bits"]:
            record["examples_sha256"] = result.get("examples_sha256")
            # (results.json written before it listed the failed checks: the run's own file says)
            record.setdefault("failed_checks", _failed_checks(result.get("checks")))
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
        values, acc = parse_bits(_dict(budget).get("robust_bits")), finite_number(robust_acc.get(label))
        # the same count of robust examples (the saved accuracy may be a float32 mean)
        if values is not None and acc is not None and abs(values.mean() - acc) < 0.5 / values.size:
            bits[label] = budget["robust_bits"]
    return bits


def _with_run_files(family: Family, out_dir: Path) -> dict:
    """A family's classification summaries completed from their run folders: ``test_correct_bits`` when
    the saved copy lacks it (to compare clean accuracy example by example) and the test set's size."""
    completed = {}
    for mode, rows in family.runs.items():
        completed[mode] = []
        for row in rows if isinstance(rows, list) else []:
            row = dict(row) if isinstance(row, dict) else {}
            run_dir = (
                out_dir / "classification" / f"{family.prefix}{mode_name(mode)}-seed{row.get('seed')}"
            )  # classification_run_dir
            if isinstance(row.get("seed"), int) and inside(out_dir, run_dir) and runs.is_run_dir(run_dir):
                saved = runs.Run(run_dir).summary()  # (inside: a link out of the study is not followed)
                if (
                    "test_correct_bits" not in row
                    and isinstance(saved, dict)
                    and saved.get("test_acc") == row.get("test_acc")
                ):
                    row["test_correct_bits"] = saved.get("test_correct_bits")
                row.setdefault(TEST_EXAMPLES, _test_set_size(runs.Run(run_dir).record()))
            completed[mode].append(row)
    return completed


def _test_set_size(record: dict) -> int | None:
    return _dict(record.get("data")).get("n_test")


def verdicts_for_study(out_dir: str | Path) -> list[Verdict]:
    """The verdicts of a ``spatialmix reproduce`` folder; a study that did not run gets "not run" lines.
    Intervals are at 95%, or at the level results.json's ``sequential`` record gives a study whose
    seeds were added until its claims were decided (``reproduce --until-decided``).

    A folder with runs but no study results (a sweep, an interrupted study) is read as its runs
    (`verdicts_for_runs`).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():  # a typo is not a study whose claims were "not run"
        raise SpatialmixError(
            f"{out_dir} is not a folder; pass the folder `spatialmix reproduce --out` wrote "
            f"(default runs/reproduce)"
        )
    results = _read_json_or_none(out_dir / "results.json", out_dir)
    results = results if isinstance(results, dict) else {}
    studies = _dict(results.get("studies"))
    if not studies:
        found = find_runs(out_dir)
        if found:  # a `reproduce` folder is told what to run next; a sweep gets the generic commands
            reproduce_like = (out_dir / "classification").is_dir()
            return verdicts_for_runs(
                found, commands=reproduce_commands(out_dir, results.get("preset")) if reproduce_like else None
            )
    data = {
        name: _dict(_dict(studies.get(name)).get("data"))
        for name in ("classification", "robustness", "smoothing")
    }
    own, *others = classification_families(data["classification"]) or [None]
    robustness, smoothing = (
        robust_records(data[n], out_dir) if data[n].get("runs") else None for n in ("robustness", "smoothing")
    )
    unshuffle = _read_json_or_none(out_dir / "unshuffle" / UNSHUFFLE_FILE, out_dir)
    examples = _dict(data["smoothing"].get("settings")).get("n_examples")
    levels = sequential_levels(results, out_dir / "results.json")
    verdicts = claim_verdicts(
        _with_run_files(own, out_dir) if own is not None else None,
        robustness,
        smoothing,
        unshuffle if isinstance(unshuffle, dict) else None,
        commands=reproduce_commands(out_dir, results.get("preset")),
        robust_examples=examples if isinstance(examples, int) else None,
        levels=levels,
    )
    return _with_families(verdicts, own, others, out_dir, levels) if others else verdicts


def _with_families(
    verdicts: list[Verdict], own: Family, others: list[Family], out_dir: Path, levels: dict[str, float]
) -> list[Verdict]:
    """The verdicts of the preset's own model named by it, and each other family's claim-1 lines
    beside them, named by theirs (the claims in order; the un-shuffling claims, measured on a model
    of their own, stay unnamed)."""
    out = [
        replace(v, scope=own.name) if v.verdict != NOT_RUN and CLAIMS[v.claim].studies != "unshuffle" else v
        for v in verdicts
    ]
    for family in others:
        out += claim_verdicts(_with_run_files(family, out_dir), scope=family.name, levels=levels)
    order = list(CLAIMS)
    return sorted(out, key=lambda v: order.index(v.claim))


def sequential_levels(results: dict, path: Path) -> dict[str, float]:
    """``{study: level}`` from results.json's ``sequential`` record (untrusted: checked field by field)."""
    record = results.get("sequential")
    if record is None:
        return {}
    studies = record.get("studies") if isinstance(record, dict) else None
    if not isinstance(studies, dict):
        raise SpatialmixError(f"{path}: field sequential.studies must be an object of studies")
    levels = {}
    for name, entry in studies.items():
        level = finite_number(entry.get("level")) if isinstance(entry, dict) else None
        if name not in {c.studies for c in CLAIMS.values()} or level is None or not 0 < level < 1:
            raise SpatialmixError(
                f"{path}: field sequential.studies.{str(name)[:40]}.level must be a number between 0 and 1 "
                "for a study of the claims"
            )
        levels[name] = level
    return levels


# --------------------------------------------------------------------------- reading run folders


@dataclass
class _FinishedRun:
    """What the verdicts need of one finished run (read through `runs.Run`)."""

    path: Path
    train: dict
    task: dict
    summary: dict
    robustness: dict | None


def _read_run(path: Path) -> _FinishedRun | None:
    """A finished run's config, summary and robustness.json, read through `runs.Run` (every
    file validated); None for a run that has not finished."""
    runs.check_run_dir(path)
    run = runs.Run(path)
    summary = run.summary()
    if summary is None:
        return None
    record = run.record()
    robustness = _read_json_or_none(run.file(ROBUSTNESS_FILE), run.path)
    summary = {TEST_EXAMPLES: _test_set_size(record), **summary}
    return _FinishedRun(
        path,
        _dict(record.get("train")),
        _dict(record.get("task")),
        summary,
        robustness if isinstance(robustness, dict) else None,
    )


def _setting(run: _FinishedRun, also_ignore: tuple[str, ...] = ()) -> str:
    kept = {k: v for k, v in run.train.items() if k not in NOT_A_SETTING and k not in also_ignore}
    return json.dumps({"train": kept, "task": run.task}, sort_keys=True, default=str)


def _scope_names(keys: list[str]) -> dict[str, str]:
    """Name each setting by the training fields whose values differ between the settings."""
    decoded = [json.loads(k)["train"] for k in keys]
    differ = [
        f
        for f in dict.fromkeys(f for d in decoded for f in d)
        if len({json.dumps(d.get(f)) for d in decoded}) > 1
    ]
    return {k: ", ".join(f"{f}={d.get(f)}" for f in differ) for k, d in zip(keys, decoded)}


def _run_robust_record(run: _FinishedRun) -> dict | None:
    budgets = [b for b in (run.robustness or {}).get("budgets") or [] if isinstance(b, dict)]
    if not budgets:
        return None
    return {
        "mode": run.train.get("mode"),
        "seed": run.train.get("seed"),
        "smooth_sigma": run.train.get("smooth_sigma"),
        "robust_acc": {b.get("eps_label"): b.get("robust_acc") for b in budgets},
        "robust_bits": {b.get("eps_label"): b.get("robust_bits") for b in budgets},
        "examples_sha256": run.robustness.get("examples_sha256"),
        "n_examples": run.robustness.get("n_examples"),
        "failed_checks": _failed_checks(run.robustness.get("checks")),
        "attack": json.dumps(
            [
                {k: v for k, v in _dict(run.robustness.get("settings")).items() if k != "device"},
                run.robustness.get("examples_sha256"),
            ],
            sort_keys=True,
            default=str,
        ),
    }


def _same_attack(records: list[dict]) -> list[dict]:
    """Only runs evaluated with the most common attack settings are compared with each other."""
    if not records:
        return records
    keys = [r["attack"] for r in records]
    common = max(dict.fromkeys(keys), key=keys.count)
    return [r for r in records if r["attack"] == common]


def _group_verdicts(members: list[_FinishedRun]) -> list[Verdict]:
    """Claims 1, 2a and 3a of one setting's runs (scope filled in later)."""
    classification = [r for r in members if r.summary.get("task", "classification") == "classification"]
    by_mode: dict[str, list[dict]] = {}
    for r in classification:
        by_mode.setdefault(mode_name(r.train.get("mode")), []).append(r.summary)
    robust = _same_attack([x for x in map(_run_robust_record, classification) if x is not None])
    unshuffle: dict[str, list[dict]] = {}
    for r in members:
        if r.summary.get("task") == "unshuffle":
            unshuffle.setdefault(mode_name(r.train.get("mode")), []).append(r.summary)
    return claim_verdicts(by_mode, robust, None, {"runs": unshuffle})


def _sigma_verdicts(members: list[_FinishedRun]) -> list[Verdict]:
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
    groups: dict[str, list[_FinishedRun]] = {}
    sigma_groups: dict[str, list[_FinishedRun]] = {}
    for run in loaded:
        groups.setdefault(_setting(run), []).append(run)
        if mode_name(run.train.get("mode")) == "chans" and run.robustness:
            sigma_groups.setdefault(_setting(run, ("smooth_sigma",)), []).append(run)
    found = [(key, _group_verdicts(members)) for key, members in groups.items()]
    out = _named(found)
    out += _named([(key, _sigma_verdicts(members)) for key, members in sigma_groups.items()])
    if not out:
        return []
    commands = commands or {
        "classification": "train Full, Chans and Space runs of one setting with the same seeds",
        "robustness": "spatialmix attack RUN_DIR ... (the Full and Chans runs)",
        "smoothing": "train Chans runs at several --smooth-sigma values, then spatialmix attack them",
        "unshuffle": "spatialmix unshuffle",
    }
    present = {v.claim for v in out}
    missing = [
        Verdict(c.id, c.effect, None, NOT_RUN, "", f"run `{commands[c.studies]}`")
        for c in CLAIMS.values()
        if c.id not in present and c.studies in commands
    ]
    order = list(CLAIMS)
    return sorted(out + missing, key=lambda v: order.index(v.claim))


# --------------------------------------------------------------------------- the step of `reproduce`


def verdict_record(verdict: Verdict) -> dict:
    """A verdict as strict JSON (no NaN): what results.json keeps."""
    est = verdict.estimate
    value = None if est is None or math.isnan(est.value) else est.value
    return {
        "claim": verdict.claim,
        "paper": verdict.paper,
        "effect": verdict.effect,
        "scope": verdict.scope,
        "verdict": verdict.verdict,
        "rule": rule_text(CLAIMS[verdict.claim]),
        "unit": verdict.unit,  # of estimate, low, high, spread and detectable
        "estimate": value,
        "low": est.low if est else None,
        "high": est.high if est else None,
        "method": est.method if est else None,
        "seeds": est.n_seeds if est else None,
        "examples": est.n_examples if est else None,
        "level": est.level if est else None,
        "spread": est.spread if est else None,
        "detectable": verdict.detectable,
        "seeds_needed": verdict.seeds_needed,
        "power": power_text(verdict),
        "details": verdict.details,
    }

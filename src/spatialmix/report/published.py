"""The published results: a finished `spatialmix reproduce` folder, condensed into the repository.

`spatialmix publish RUN_DIR` (`publish_results`) writes three small JSON files (no weights,
no per-example bits) into `results/<preset>/<cpu tag>/`:

* `verdicts.json`: every verdict line, each with all the fields of its `Verdict` (`fields`,
  numbers in the unit the table shows) and the cells `reproduce` prints for it (`shown`);
* `studies.json`: per study, its tables as printed and its numbers (`data`, per-example bits
  left out);
* `stamp.json`: what made them: the command, the CPU model and capability, processes and threads,
  the package versions, the git commit, the date, and the wall time of each study.

The documentation's tables are rendered from these files (`spatialmix.report.render_docs`),
never typed. A stored file is read like any untrusted file (bounded, inside `results/`) and
checked field by field: a malformed one is one line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from spatialmix.analysis.claims import Verdict
from spatialmix.analysis.verdict_text import verdict_table
from spatialmix.analysis.verdicts_from_folders import verdicts_for_study
from spatialmix.errors import SpatialmixError
from spatialmix.io import storage
from spatialmix.io.environment import code_commit, cpu_tag, machine_stamp, package_versions
from spatialmix.io.run_files import bad_field, is_number, need_dict, need_field
from spatialmix.io.study_results import SavedStudy, read_study_entry
from spatialmix.io.untrusted import read_json
from spatialmix.options import option_words
from spatialmix.report.page import saved_table

PUBLISHED_FORMAT = 1
STAMP_FILE, VERDICTS_FILE, STUDIES_FILE = "stamp.json", "verdicts.json", "studies.json"
# The studies' own folder is named by this word in the published files (it is a path of one machine).
RUN_DIR_WORD = "RUN_DIR"
_TAG = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")


# --------------------------------------------------------------------------- publishing


def publish_results(
    study_dir: str | Path,
    results_root: str | Path = "results",
    tag: str | None = None,
    note: str | None = None,
) -> Path:
    """Condense the finished `spatialmix reproduce` folder `study_dir` into
    `results_root/<preset>/<tag>/` (`tag`: by default the CPU the studies ran on, e.g.
    `intel-xeon-avx512`) and return that folder. The verdicts are computed from the folder by this
    code; `note` is a line the rendered stamp shows (e.g. what makes a run a placeholder)."""
    study_dir = Path(study_dir)
    results = _read_study_results(study_dir)
    path = study_dir / "results.json"
    entries = {name: read_study_entry(path, name, e) for name, e in results["studies"].items()}
    machine = _one_machine(study_dir, {name: entry.data.get("machine") for name, entry in entries.items()})
    tag = tag or cpu_tag(machine["cpu"]["model"], machine["cpu"]["capability"])
    if not _TAG.fullmatch(tag):
        raise SpatialmixError(
            f"--tag {tag!r} is not a folder name of lowercase letters, digits and dashes; "
            f"choose one like intel-xeon-avx512"
        )
    files = {
        VERDICTS_FILE: _verdicts_file(verdicts_for_study(study_dir)),
        STUDIES_FILE: _studies_file(entries),
        STAMP_FILE: _stamp_file(results, entries, machine, tag, note),  # last: it names a complete folder
    }
    out = Path(results_root) / results["preset"] / tag
    anonymous = _Anonymizer(study_dir)
    for name, payload in files.items():
        text = storage.strict_json(anonymous(payload), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        storage.atomic_write_bytes(out / name, text.encode("utf-8"))
    return out


def _verdicts_file(verdicts: list[Verdict]) -> dict:
    """Every line: all fields of its Verdict (new fields included) and the cells `reproduce` prints."""
    table = verdict_table(verdicts)
    keys = [key for key, _, _ in table.columns]
    return {
        "format": PUBLISHED_FORMAT,
        "columns": [[key, header] for key, header, _ in table.columns],
        "verdicts": [
            {"fields": _plain(dataclasses.asdict(v)), "shown": dict(zip(keys, cells))}
            for v, cells in zip(verdicts, table.cells())
        ],
    }


def _studies_file(entries: dict[str, SavedStudy]) -> dict:
    """Per study: its tables as printed and its numbers (the verdicts' own records are verdicts.json)."""
    return {
        "format": PUBLISHED_FORMAT,
        "studies": {
            name: {
                "section": entry.section,
                "tables": [_printed(t) for t in entry.tables],
                "data": {} if name == "verdicts" else _condensed(entry.data),
            }
            for name, entry in entries.items()
        },
    }


def _stamp_file(
    results: dict, entries: dict[str, SavedStudy], machine: dict, tag: str, note: str | None
) -> dict:
    """What made the numbers: per study its time and machine, and the code that published them."""
    times = {name: _number(entry.data.get("time_s")) for name, entry in entries.items()}
    return {
        "format": PUBLISHED_FORMAT,
        "preset": results["preset"],
        "tag": tag,
        "command": _headline_command(results),
        "seeds": results.get("seeds"),
        "overrides": results.get("overrides"),
        "sequential": results.get("sequential"),
        "machine": machine,
        "studies": {
            name: {"time_s": times[name], "machine": entry.data.get("machine")}
            for name, entry in entries.items()
        },
        "wall_s": sum(t or 0.0 for t in times.values()),
        "published": {**code_commit(), "versions": package_versions(), "date": _now()},
        "note": note,
    }


def _read_study_results(study_dir: Path) -> dict:
    if not (study_dir / "results.json").is_file():
        raise SpatialmixError(
            f"{study_dir} holds no results.json; pass the folder `spatialmix reproduce --out` wrote "
            f"once its studies finished"
        )
    results = need_dict(study_dir / "results.json", read_json(study_dir / "results.json", "study results"))
    path = study_dir / "results.json"
    need_field(path, results, "preset", lambda v: isinstance(v, str) and _TAG.fullmatch(v), "a preset name")
    need_field(path, results, "studies", lambda v: isinstance(v, dict) and v, "an object of studies")
    if "verdicts" not in results["studies"]:
        raise SpatialmixError(
            f"{path} has no verdicts; run `spatialmix reproduce --out {study_dir} --studies verdicts` "
            f"first, then publish it"
        )
    return results


def _one_machine(study_dir: Path, machines: dict[str, dict | None]) -> dict:
    """The stamp the studies share; a folder whose studies ran on different CPU kinds is refused
    (its numbers belong to no one CPU), one without stamps gets this machine's, marked as such."""
    recorded = {
        name: m for name, m in machines.items() if isinstance(m, dict) and isinstance(m.get("cpu"), dict)
    }
    kinds = {name: (m["cpu"].get("model"), m["cpu"].get("capability")) for name, m in recorded.items()}
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{name} on {model} ({cap})" for name, (model, cap) in kinds.items())
        raise SpatialmixError(
            f"the studies of {study_dir} ran on different CPUs ({listed}); publish a folder whose studies "
            f"ran on one CPU kind (rerun the others there)"
        )
    if not recorded:
        return {**machine_stamp(), "recorded": False}  # written before studies stamped their machine
    # the most recent study's stamp: its commit and versions made the latest numbers
    latest = max(recorded.values(), key=lambda m: str(m.get("date")))
    for field in ("model", "capability"):
        if not isinstance(latest["cpu"].get(field), str):
            raise bad_field(
                study_dir / "results.json", f"machine.cpu.{field}", "a string", latest["cpu"].get(field)
            )
    return {**latest, "recorded": True}


def _headline_command(results: dict) -> str:
    """The command that reproduces the whole folder: the last study's, or for `--until-decided`
    the preset, seeds and settings with its limits."""
    sequential = results.get("sequential")
    stamps = [e.get("data", {}).get("machine") for e in results["studies"].values() if isinstance(e, dict)]
    commands = [m.get("command") for m in stamps if isinstance(m, dict) and isinstance(m.get("command"), str)]
    if not isinstance(sequential, dict):
        return max(commands, key=len) if commands else f"spatialmix reproduce --preset {results['preset']}"
    limits = {
        "max_seeds": sequential.get("max_seeds"),
        "seed_step": sequential.get("step"),
        "budget": f"{sequential['budget_s']:g}s" if is_number(sequential.get("budget_s")) else None,
    }
    overrides = results.get("overrides") if isinstance(results.get("overrides"), dict) else {}
    words = [
        "spatialmix",
        "reproduce",
        "--preset",
        results["preset"],
        "--out",
        RUN_DIR_WORD,
        "--until-decided",
    ]
    return shlex.join(words + option_words({**limits, **dict(sorted(overrides.items()))}))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _number(value) -> float | None:
    return float(value) if is_number(value) else None


def _plain(value):
    """JSON of a dataclass's fields: tuples as lists, NaN and infinities as null (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _printed(table) -> dict:
    """A saved table as the study printed it: its title, headers and formatted cells."""
    shown = saved_table(table.title or "", table.rows, table.columns)
    return {"title": shown.title, "headers": [h for _, h, _ in shown.columns], "cells": shown.cells()}


def _condensed(data: dict) -> dict:
    """A study's numbers without its per-example bits (the verdicts are computed already) and
    without the stamp and time (they go into stamp.json)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not str(k).endswith("_bits")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return _plain(strip({k: v for k, v in data.items() if k not in ("machine", "time_s")}))


class _Anonymizer:
    """Replaces the study folder's path (of the machine that ran it) by `RUN_DIR_WORD`."""

    def __init__(self, study_dir: Path):
        spellings = {str(study_dir), str(study_dir.resolve()), study_dir.as_posix()}
        self.spellings = sorted(
            (s.rstrip("/") for s in spellings if s not in (".", "")), key=len, reverse=True
        )

    def __call__(self, value):
        if isinstance(value, str):
            for spelling in self.spellings:
                value = re.sub(re.escape(spelling) + r"(?=/|\b|$)", RUN_DIR_WORD, value)
            return value
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        return value


# --------------------------------------------------------------------------- reading them back


@dataclass(frozen=True)
class PublishedTable:
    title: str
    headers: list[str]
    cells: list[list[str]]


@dataclass(frozen=True)
class PublishedRun:
    """One folder of `results/<preset>/<tag>/`, checked."""

    folder: Path
    preset: str
    tag: str
    stamp: dict
    columns: list[tuple[str, str]]  # (key, header) of the verdict table
    verdicts: list[dict]  # each {"fields": ..., "shown": ...}
    tables: dict[str, list[PublishedTable]]  # per study

    @property
    def machine(self) -> dict:
        return self.stamp["machine"]


def published_runs(results_root: str | Path, preset: str) -> list[PublishedRun]:
    """Every published folder of `preset` below `results_root`, by tag (none: an empty list)."""
    root = Path(results_root)
    folder = root / preset
    if not folder.is_dir():
        return []
    return [read_published(root, p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.is_symlink()]


def read_published(results_root: Path, folder: Path) -> PublishedRun:
    """The three files of one published folder, each checked field by field."""
    stamp = _read(results_root, folder / STAMP_FILE)
    path = folder / STAMP_FILE
    preset = need_field(path, stamp, "preset", lambda v: isinstance(v, str), "a preset name")
    tag = need_field(path, stamp, "tag", lambda v: isinstance(v, str) and _TAG.fullmatch(v), "a CPU tag")
    need_field(path, stamp, "command", lambda v: isinstance(v, str), "the command line that made it")
    need_field(path, stamp, "wall_s", is_number, "a number of seconds")
    need_field(
        path, stamp, "note", lambda v: v is None or isinstance(v, str), "a line or null", optional=True
    )
    machine = need_field(path, stamp, "machine", lambda v: isinstance(v, dict), "an object")
    cpu = machine.get("cpu")
    for field in ("model", "capability"):
        if not isinstance(cpu, dict) or not isinstance(cpu.get(field), str):
            raise bad_field(
                path,
                f"machine.cpu.{field}",
                "a string",
                (cpu or {}).get(field) if isinstance(cpu, dict) else cpu,
            )
    for field in ("processes", "threads"):
        if machine.get(field) is not None and not isinstance(machine.get(field), int):
            raise bad_field(path, f"machine.{field}", "a whole number or null", machine.get(field))
    for field in ("commit", "date"):
        if machine.get(field) is not None and not isinstance(machine.get(field), str):
            raise bad_field(path, f"machine.{field}", "a string or null", machine.get(field))
    versions = machine.get("versions")
    if not isinstance(versions, dict) or not all(v is None or isinstance(v, str) for v in versions.values()):
        raise bad_field(path, "machine.versions", "an object of package versions", versions)
    studies = need_field(path, stamp, "studies", lambda v: isinstance(v, dict), "an object of studies")
    for name, entry in studies.items():
        if not isinstance(entry, dict) or not (entry.get("time_s") is None or is_number(entry.get("time_s"))):
            raise bad_field(path, f"studies.{str(name)[:40]}.time_s", "a number of seconds", entry)
    columns, verdicts = _read_verdicts(results_root, folder / VERDICTS_FILE)
    return PublishedRun(
        folder, preset, tag, stamp, columns, verdicts, _read_tables(results_root, folder / STUDIES_FILE)
    )


def _read(results_root: Path, path: Path) -> dict:
    if not path.is_file():
        raise SpatialmixError(f"{path} is missing; publish the study again with `spatialmix publish RUN_DIR`")
    data = need_dict(path, read_json(path, "published result", base=results_root))
    need_field(path, data, "format", lambda v: v == PUBLISHED_FORMAT, f"{PUBLISHED_FORMAT}")
    return data


def _is_text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _read_verdicts(results_root: Path, path: Path) -> tuple[list[tuple[str, str]], list[dict]]:
    data = _read(results_root, path)
    columns = need_field(
        path,
        data,
        "columns",
        lambda v: isinstance(v, list) and all(_is_text_list(c) and len(c) == 2 for c in v),
        "a list of [key, header] pairs",
    )
    verdicts = need_field(path, data, "verdicts", lambda v: isinstance(v, list), "a list of verdict lines")
    for n, line in enumerate(verdicts):
        if not isinstance(line, dict) or not isinstance(line.get("fields"), dict):
            raise bad_field(path, f"verdicts[{n}].fields", "an object of the verdict's fields", line)
        shown = line.get("shown")
        if not isinstance(shown, dict) or not all(isinstance(v, str) for v in shown.values()):
            raise bad_field(path, f"verdicts[{n}].shown", "an object of printed cells", shown)
        fields = line["fields"]
        for key in ("claim", "effect", "verdict"):
            if not isinstance(fields.get(key), str):
                raise bad_field(path, f"verdicts[{n}].fields.{key}", "a string", fields.get(key))
        estimate = fields.get("estimate")
        if estimate is not None and not (
            isinstance(estimate, dict) and _is_number_or_none(estimate.get("value"))
        ):
            raise bad_field(
                path, f"verdicts[{n}].fields.estimate", "an object with a number value, or null", estimate
            )
    return [tuple(c) for c in columns], verdicts


def _is_number_or_none(value) -> bool:
    return value is None or is_number(value)


def _read_tables(results_root: Path, path: Path) -> dict[str, list[PublishedTable]]:
    data = _read(results_root, path)
    studies = need_field(path, data, "studies", lambda v: isinstance(v, dict), "an object of studies")
    tables = {}
    for name, entry in studies.items():
        where = f"studies.{str(name)[:40]}"
        saved = entry.get("tables") if isinstance(entry, dict) else None
        if not isinstance(saved, list):
            raise bad_field(path, f"{where}.tables", "a list of tables", saved)
        tables[name] = []
        for n, table in enumerate(saved):
            ok = (
                isinstance(table, dict)
                and isinstance(table.get("title"), str)
                and _is_text_list(table.get("headers"))
                and isinstance(table.get("cells"), list)
                and all(_is_text_list(row) and len(row) == len(table["headers"]) for row in table["cells"])
            )
            if not ok:
                raise bad_field(
                    path, f"{where}.tables[{n}]", "a title, headers and rows of text cells", table
                )
            tables[name].append(PublishedTable(table["title"], table["headers"], table["cells"]))
    return tables

"""The sections of the report, each filled from whatever results the inputs hold.

The page leads with the verdicts, then classification, training curves, the studies' own
sections, the filter analysis (`spatialmix.report.filters`) and the configuration last.
A study's results go to the section the study declared (`spatialmix.io.study_results.StudyResult`):
its tables, its figures with their captions and the names of its other files; nothing is
placed by guessing from a file's name. A section with nothing to show keeps its heading and
says why (`ABSENT`), so a report of a single run or of an interrupted study is still a report.
"""

from __future__ import annotations

import json
from pathlib import Path

from spatialmix.analysis.families import classification_families
from spatialmix.io.study_results import SavedStudy
from spatialmix.report.inputs import Inputs, RunInfo, shown_path, skipped_links, task_name
from spatialmix.report.page import Section, details_table, fold, format_value
from spatialmix.report.robustness import interval_items, run_robustness_items
from spatialmix.report.study_files import study_items
from spatialmix.report.tables import classification_table
from spatialmix.ui.display import ResultTable

SECTIONS = {
    "verdicts": "Verdicts",
    "classification": "Classification",
    "curves": "Training curves",
    "robustness": "Robustness",
    "smoothing": "Smoothing study",
    "init": "Priors of the frozen random filters",
    "unshuffle": "Pixel un-shuffling",
    "filters": "Filter analysis",
    "other": "Other results",
    "configuration": "Configuration",
}
# Why a section is empty. Sections not named here (init, other) are left out of the page when empty.
ABSENT = {
    "verdicts": "no claim of the paper can be judged from these inputs: that needs finished Full and Chans "
    "(or "
    "Space) runs of one setting with the same seeds, or a study folder of `spatialmix reproduce`",
    "configuration": "no runs in these inputs",
    "classification": "no finished classification run in these inputs (train one with `spatialmix train` "
    "or `spatialmix reproduce`)",
    "curves": "no run in these inputs has finished an epoch (metrics.jsonl is empty)",
    "robustness": "no robustness results in these inputs (run `spatialmix reproduce` with the robustness "
    "study, or `spatialmix attack RUN_DIR`)",
    "smoothing": "no smoothing study in these inputs (it is part of the robustness study of "
    "`spatialmix reproduce`)",
    "unshuffle": "no un-shuffling results in these inputs (run `spatialmix unshuffle` or `spatialmix "
    "reproduce`)",
    "filters": "no run in these inputs has a checkpoint of a model with spatial mixers",
}
# --------------------------------------------------------------------------- classification

CLASSIFICATION_KEYS = (
    "trainable_params",
    "frozen_params",
    "test_acc",
    "best_acc",
    "train_time",
    "images_per_s",
)


def _is_classification_summary(summary) -> bool:
    return (
        isinstance(summary, dict)
        and all(k in summary for k in CLASSIFICATION_KEYS)
        and isinstance(summary["test_acc"], (int, float))
        and summary.get("task", "classification") == "classification"
    )


def _saved_summaries(entry: SavedStudy) -> list[dict[str, list[dict]]]:
    """Per model family, the per-mode run summaries a classification study saved in results.json (only
    well-formed ones)."""
    found = []
    for family in classification_families(entry.data):
        summaries = {
            mode: [s for s in rows if _is_classification_summary(s)]
            for mode, rows in family.runs.items()
            if isinstance(rows, list)
        }
        if any(summaries.values()):
            found.append(summaries)
    return found


def classification_section(inputs: Inputs) -> Section:
    """From each study's classification results (a table per model family), else from its runs'
    summaries; then the runs given."""
    section = Section("classification", SECTIONS["classification"])
    for study in inputs.studies:
        saved = [
            family
            for entry in study.entries
            if entry.section == "classification"
            for family in _saved_summaries(entry)
        ]
        for summaries in saved or [_group_summaries(study.runs)]:
            if summaries:
                title = _classification_title(study.path.name, summaries)
                section.items.append(classification_table(summaries, title))
    grouped = _group_summaries(inputs.loose_runs)
    if grouped:
        section.items.append(classification_table(grouped, _classification_title("runs given", grouped)))
    if section.items:
        section.items.insert(
            0,
            "Test accuracy of the last epoch and the best epoch; mean ± standard deviation "
            "over seeds where there are several.",
        )
    else:
        section.absent = ABSENT["classification"]
    return section


def _group_summaries(run_infos: list[RunInfo]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for r in run_infos:
        if _is_classification_summary(r.summary):
            grouped.setdefault(r.group, []).append(r.summary)
    return grouped


def _classification_title(source: str, summaries: dict[str, list[dict]]) -> str:
    first = next(s for rows in summaries.values() for s in rows)
    seeds = {s.get("seed") for rows in summaries.values() for s in rows}
    what = f"{first.get('dataset', '?')}, {first.get('model', '?')}, {len(seeds)} seed(s)"
    return f"Classification, {source} ({what})"


# --------------------------------------------------------------------------- the studies' own sections


def study_section(inputs: Inputs, section_id: str) -> Section | None:
    """Every study that declared ``section_id``: its tables, warnings, figures and files. ``None`` when
    empty and the section is one that only appears with results (init, other)."""
    section = Section(section_id, SECTIONS[section_id])
    for study, entry in inputs.entries(section_id):
        section.items += with_report_figures(study_items(study, entry), entry, section_id)
    if section_id == "robustness":
        for r in inputs.loose_runs:
            section.items += run_robustness_items(r)
    if not section.items:
        if section_id not in ABSENT:
            return None
        section.absent = ABSENT[section_id]
    return section


def with_report_figures(items: list, entry: SavedStudy, section_id: str) -> list:
    """A study's items with the figures the report draws from its numbers put after its tables."""
    drawn = interval_items(entry) if section_id == "robustness" else []
    tables = next((i for i, item in enumerate(items) if not isinstance(item, ResultTable)), len(items))
    return items[:tables] + drawn + items[tables:]


# --------------------------------------------------------------------------- configuration


def configuration_section(inputs: Inputs) -> Section:
    section = Section("configuration", SECTIONS["configuration"])
    for study in inputs.studies:
        res = study.results
        if res:
            overrides = ", ".join(f"{k}={v}" for k, v in (res.get("overrides") or {}).items()) or "none"
            section.items.append(
                f"Study folder {shown_path(study.path)}: preset {res.get('preset', '?')}, seeds "
                f"{res.get('seeds', '?')}, overrides: {overrides}; studies run: "
                f"{', '.join(e.name for e in study.entries) or 'none'}."
            )
        else:
            section.items.append(
                f"Folder {shown_path(study.path)}: runs without results.json (an interrupted "
                "`spatialmix reproduce`?)."
            )
        if study.outside:
            section.items.append(
                f"Study folder {shown_path(study.path)}: {skipped_links(study.path, study.outside)}."
            )
    all_runs = inputs.runs
    if not all_runs:
        section.absent = ABSENT["configuration"]
        return section
    settings = [_flat_settings(r) for r in all_runs]
    keys = [k for k in dict.fromkeys(k for s in settings for k in s)]
    differing = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
    common = [k for k in keys if k not in differing]
    section.items += _runs_tables(all_runs, settings, differing)
    shared = ResultTable("Settings shared by every run", [("setting", "setting", ""), ("value", "value", "")])
    for k in common:
        shared.add(setting=k, value=format_value(settings[0].get(k)))
    section.items.append(details_table(shared))
    return section


def _runs_tables(all_runs: list[RunInfo], settings: list[dict], differing: list[str]) -> list:
    """One narrow table of runs, each naming its group of settings, and each group's settings (those
    that tell runs apart, but for mode and seed, which the run's name says) once in a second table."""
    groups = _setting_groups(all_runs, settings, [k for k in differing if k not in ("mode", "seed")])
    per_run = ResultTable(
        "Runs",
        [
            ("run", "run", ""),
            ("path", "folder", ""),
            ("state", "state", ""),
            ("trainable", "trainable params", ""),
            ("frozen", "frozen params", ""),
        ]
        + ([("group", "settings", "")] if len(groups) > 1 else []),
    )
    group_of = {id(r): name for name, (members, _) in groups.items() for r in members}
    for r in all_runs:
        params = r.record.get("params", {}) if isinstance(r.record.get("params"), dict) else {}
        per_run.add(
            run=r.label,
            path=_short_path(r),
            state=r.status.get("state", "?"),
            trainable=format_value(params.get("trainable")),
            frozen=format_value(params.get("frozen")),
            group=group_of[id(r)],
        )
    tables = [fold(per_run)]
    if len(groups) > 1:
        by_group = ResultTable(
            "Settings that differ between runs",
            [("group", "settings", ""), ("runs", "runs", ""), ("values", "values", "")],
        )
        for name, (members, values) in groups.items():
            by_group.add(group=name, runs=len(members), values=values)
        tables.append(fold(by_group))
    return tables


def _setting_groups(runs: list[RunInfo], settings: list[dict], keys: list[str]) -> dict:
    """Runs that agree on every one of ``keys``, as ``{name: (runs, "key=value, ...")}``, named A, B, ...
    in the order of their first run."""
    groups: dict[str, tuple[list, str]] = {}
    for run, s in zip(runs, settings):
        values = ", ".join(f"{k}={format_value(s.get(k))}" for k in keys) or "-"
        groups.setdefault(values, ([], values))[0].append(run)
    return {_group_name(i): group for i, group in enumerate(groups.values())}


def _group_name(index: int) -> str:
    """A, B, ..., Z, AA, AB, ...: the name of the ``index``-th group of settings."""
    name = ""
    index += 1
    while index:
        index, letter = divmod(index - 1, 26)
        name = chr(ord("A") + letter) + name
    return name


def _short_path(run: RunInfo) -> str:
    """A run's folder relative to the study folder it was found in (the study is named above the table)."""
    if run.source:
        try:
            return str(Path(run.source).name / run.path.relative_to(run.source))
        except ValueError:
            pass
    return shown_path(run.path)


def _flat_settings(run: RunInfo) -> dict:
    train = run.record.get("train") if isinstance(run.record.get("train"), dict) else {}
    data = run.record.get("data") if isinstance(run.record.get("data"), dict) else {}
    flat = {"task": task_name(run), **train}
    for key in ("name", "image_size", "n_train", "n_test"):
        if key in data:
            flat[f"data.{key}"] = data[key]
    flat["spatialmix_version"] = run.record.get("spatialmix_version")
    flat["torch_version"] = run.record.get("torch_version")
    return flat

"""The sections of the report, each filled from whatever results the inputs hold.

The page leads with the verdicts, then classification, training curves, the studies' own
sections, the filter analysis (:mod:`spatialmix.report.filters`) and the configuration last.
A study's results go to the section the study declared (:class:`spatialmix.io.study_results.StudyResult`):
its tables, its figures with their captions and the names of its other files; nothing is
placed by guessing from a file's name. A section with nothing to show keeps its heading and
says why (:data:`ABSENT`), so a report of a single run or of an interrupted study is still a report.
"""

from __future__ import annotations

import json
from pathlib import Path

from spatialmix.analysis.verdicts import verdict_table, verdicts_for_runs, verdicts_for_study
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.io.paths import contained_file
from spatialmix.io.study_results import SavedStudy, json_rows
from spatialmix.report.inputs import Inputs, RunInfo, StudyInfo, task_name
from spatialmix.report.page import Image, Section, figure_image, format_value, rows_table, saved_table
from spatialmix.report.tables import classification_table
from spatialmix.robustness.results import result_rows
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
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}
MAX_EMBED_BYTES = 20 * 2**20
MAX_CURVE_PANELS = 4


# --------------------------------------------------------------------------- verdicts

VERDICTS_INTRO = (
    "Each claim of the paper against the data: the effect, its interval, and the seeds and examples "
    "behind it. supports: the whole interval lies on the paper's side of the threshold in "
    "'supports if interval'; contradicts: the whole interval lies on the other side; inconclusive: "
    "the interval covers the threshold, or cannot be computed (one seed); not run: no data for this "
    "claim yet (the line names the command that tests it). Every interval rests on one effect per "
    "seed (two models of a seed compared on the same examples, McNemar's exact test per seed "
    "beside it) and a t-interval over the seeds, df = seeds - 1; '80% power' says what an "
    "inconclusive line's seeds could decide and how many seeds its spread needs."
)


def verdicts_section(inputs: Inputs) -> Section:
    """The answer first: one verdict table per study folder, one for the runs given directly."""
    section = Section("verdicts", SECTIONS["verdicts"])
    sources = [
        (study.path.name, lambda study=study: verdicts_for_study(study.path)) for study in inputs.studies
    ]
    if inputs.loose_runs:
        sources.append(("runs given", lambda: verdicts_for_runs([r.path for r in inputs.loose_runs])))
    for name, compute in sources:
        try:
            verdicts = compute()
        except SpatialmixError as err:  # a damaged result file: the rest of the report still stands
            section.items.append(f"Verdicts of {name} could not be computed: {err}")
            continue
        if verdicts:
            title = "Verdicts" + (f": {name}" if len(sources) > 1 else "")
            section.items.append(verdict_table(verdicts, title=title))
    if any(isinstance(i, ResultTable) for i in section.items):
        section.items.insert(0, VERDICTS_INTRO)
    else:
        section.absent = ABSENT["verdicts"]
    return section


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


def _saved_summaries(entry: SavedStudy) -> dict[str, list[dict]]:
    """The per-mode run summaries a classification study saved in results.json (only well-formed ones)."""
    saved = entry.data.get("runs")
    if not isinstance(saved, dict):
        return {}
    summaries = {
        mode: [s for s in rows if _is_classification_summary(s)]
        for mode, rows in saved.items()
        if isinstance(rows, list)
    }
    return summaries if any(summaries.values()) else {}


def classification_section(inputs: Inputs) -> Section:
    """From each study's classification results, else from its runs' summaries; then the runs given."""
    section = Section("classification", SECTIONS["classification"])
    for study in inputs.studies:
        saved = [_saved_summaries(entry) for entry in study.entries if entry.section == "classification"]
        for summaries in [s for s in saved if s] or [_group_summaries(study.runs)]:
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


# --------------------------------------------------------------------------- training curves


def curve_keys(run_infos: list[RunInfo]) -> list[str]:
    """The per-epoch numbers worth a panel: train loss, then every test metric, in first-seen order."""
    keys = ["train_loss"]
    for r in run_infos:
        for m in r.metrics:
            keys += [
                k
                for k, v in m.items()
                if k.startswith("test_") and isinstance(v, (int, float)) and k not in keys
            ]
    return keys[:MAX_CURVE_PANELS]


def curves_section(inputs: Inputs) -> Section:
    """One figure per task (classification, un-shuffling, ...): their losses are not comparable."""
    section = Section("curves", SECTIONS["curves"])
    by_task: dict[str, list[RunInfo]] = {}
    for r in inputs.runs:
        if any("epoch" in m for m in r.metrics):
            by_task.setdefault(task_name(r), []).append(r)
    if not by_task:
        section.absent = ABSENT["curves"]
        return section
    for task, run_infos in by_task.items():
        section.items.append(
            figure_image(
                curves_figure(run_infos, curve_keys(run_infos)),
                f"{task}: per-epoch metrics from each run's metrics.jsonl.",
            )
        )
    if all(len(r.metrics) == 1 for rs in by_task.values() for r in rs):
        section.items.append("Every run has a single epoch, so each curve is one point.")
    return section


def curves_figure(run_infos: list[RunInfo], keys: list[str]):
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.ticker import MaxNLocator

    fig = MplFigure(figsize=(3.6 * len(keys) + 1, 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        for i, r in enumerate(run_infos):
            points = [
                (m["epoch"], m[key])
                for m in r.metrics
                if isinstance(m.get(key), (int, float)) and "epoch" in m
            ]
            if points:
                ax.plot(
                    *zip(*points), marker="o", color=f"C{i % 10}", ls="-" if i < 10 else "--", label=r.label
                )
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, max(len(r.metrics) for r in run_infos) + 0.5)
    axes[0].legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------- the studies' own sections


def study_section(inputs: Inputs, section_id: str) -> Section | None:
    """Every study that declared ``section_id``: its tables, warnings, figures and files. ``None`` when
    empty and the section is one that only appears with results (init, other)."""
    section = Section(section_id, SECTIONS[section_id])
    for study, entry in inputs.entries(section_id):
        section.items += study_items(study, entry)
    if section_id == "robustness":
        for r in inputs.loose_runs:
            section.items += run_robustness_items(r)
    if not section.items:
        if section_id not in ABSENT:
            return None
        section.absent = ABSENT[section_id]
    return section


def study_items(study: StudyInfo, entry: SavedStudy) -> list:
    """The tables, warnings, figures and other files of one study's entry of results.json."""
    items: list = []
    for i, table in enumerate(entry.tables):
        title = f"{entry.name} ({study.path.name})" + (f", table {i + 1}" if len(entry.tables) > 1 else "")
        if table.title is not None:
            title = f"{table.title} ({study.path.name})"
        items.append(saved_table(title, table.rows, table.columns))
    warnings = entry.data.get("warnings")
    if isinstance(warnings, list) and warnings:
        items.append(f"Warnings from the {entry.name} study: " + "; ".join(str(w) for w in warnings))
    if entry.legacy:  # an older results.json: every image among its files, captioned with its name
        return items + legacy_file_items(study.path, entry.files)
    declared = [(f.file, f.caption) for f in entry.figures] + [(name, None) for name in entry.files]
    # (checked when read; a path is never followed out of the study folder)
    return items + _file_items(
        [(name, contained_file(study.path, study.path / name), caption) for name, caption in declared]
    )


def _file_items(files: list[tuple[str, Path | None, str | None]]) -> list:
    """Each (name, path, caption): embedded when it is an image with a caption, else named; a path of
    None is listed as not found."""
    items, other, missing = [], [], []
    for name, path, caption in files:
        image = _image(path, caption) if path is not None and caption is not None else None
        if path is None:
            missing.append(name)
        elif image is not None:
            items.append(image)
        else:
            other.append(str(path))
    return items + _named(other, missing)


def _image(path: Path, caption: str) -> Image | None:
    """``path`` as an image of the page, or None when it is not an image (or too large to embed)."""
    if path.suffix.lower() not in IMAGE_TYPES or path.stat().st_size > MAX_EMBED_BYTES:
        return None
    return Image(path.read_bytes(), caption, IMAGE_TYPES[path.suffix.lower()])


def _named(other: list[str], missing: list[str]) -> list[str]:
    """The files of a study that are not shown, and those listed but not there, each in one sentence."""
    return (["Other files of this study: " + ", ".join(other) + "."] if other else []) + (
        ["Listed in results.json but not found: " + ", ".join(missing) + "."] if missing else []
    )


def legacy_file_items(base: Path, files: list[str]) -> list:
    """The files of an older entry: its images embedded (captioned with their names), the others named."""
    paths = [(name, resolve_file(base, name)) for name in files]
    return _file_items([(name, path, path.name if path is not None else None) for name, path in paths])


def resolve_file(base: Path, name: str) -> Path | None:
    """A file named in an older results.json: as written, relative to the study folder, or by name below it
    (the folder may have been moved since)."""
    path = Path(name)
    for candidate in (path, base / path):
        found = contained_file(base, candidate)  # never a file outside the folder reported on
        if found is not None:
            return found
    matches = [m for m in sorted(base.rglob(path.name)) if contained_file(base, m)] if path.name else []
    return matches[0] if matches else None


def run_robustness_items(run: RunInfo) -> list:
    """What `spatialmix attack` saved in a run directory: each result JSON (one with per-budget results) as a
    table, and the plot it drew beside it (the same name, .png)."""
    items: list = []
    for path in sorted(run.path.glob("*.json")):
        if path.name in (runs.CONFIG, runs.STATUS, runs.SUMMARY) or contained_file(run.path, path) is None:
            continue
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            items.append(f"{path} is not valid JSON; left out.")
            continue
        if not (isinstance(saved, dict) and isinstance(saved.get("budgets"), list)):
            continue  # not an attack result
        rows = attack_result_rows(saved)
        if rows:
            items.append(rows_table(f"{run.label}: {path.name}", rows))
            if isinstance(saved.get("warnings"), list):
                items += [f"{run.label}: {w}" for w in saved["warnings"]]
        plot = contained_file(run.path, path.with_suffix(".png"))
        image = _image(plot, f"{run.label}: {plot.name}") if plot is not None else None
        if image is not None:
            items.append(image)
    return items


def attack_result_rows(result: dict) -> list[dict] | None:
    """One row per budget of a `spatialmix attack` result, as the attack module lays them out."""
    try:
        return result_rows(result)
    except (KeyError, TypeError, AttributeError):  # written by another version: show what is there
        return json_rows(result.get("budgets"))


# --------------------------------------------------------------------------- configuration


def configuration_section(inputs: Inputs) -> Section:
    section = Section("configuration", SECTIONS["configuration"])
    for study in inputs.studies:
        res = study.results
        if res:
            overrides = ", ".join(f"{k}={v}" for k, v in (res.get("overrides") or {}).items()) or "none"
            section.items.append(
                f"Study folder {study.path}: preset {res.get('preset', '?')}, seeds "
                f"{res.get('seeds', '?')}, overrides: {overrides}; studies run: "
                f"{', '.join(e.name for e in study.entries) or 'none'}."
            )
        else:
            section.items.append(
                f"Folder {study.path}: runs without results.json (an interrupted `spatialmix reproduce`?)."
            )
    all_runs = inputs.runs
    if not all_runs:
        section.absent = ABSENT["configuration"]
        return section
    settings = [_flat_settings(r) for r in all_runs]
    keys = [k for k in dict.fromkeys(k for s in settings for k in s)]
    differing = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
    common = [k for k in keys if k not in differing]
    # One narrow table: the settings that tell runs apart go into one wrapping cell, not a column each
    # (a study with un-shuffling runs differs in a dozen fields), and folders are relative to their study.
    per_run = ResultTable(
        "Runs",
        [
            ("run", "run", ""),
            ("path", "folder", ""),
            ("state", "state", ""),
            ("trainable", "trainable params", ""),
            ("frozen", "frozen params", ""),
            ("differs", "settings that differ between runs", ""),
        ],
    )
    for r, s in zip(all_runs, settings):
        params = r.record.get("params", {}) if isinstance(r.record.get("params"), dict) else {}
        per_run.add(
            run=r.label,
            path=_short_path(r),
            state=r.status.get("state", "?"),
            trainable=format_value(params.get("trainable")),
            frozen=format_value(params.get("frozen")),
            differs=", ".join(f"{k}={format_value(s.get(k))}" for k in differing if k not in ("mode", "seed"))
            or "-",
        )
    section.items.append(per_run)
    shared = ResultTable("Settings shared by every run", [("setting", "setting", ""), ("value", "value", "")])
    for k in common:
        shared.add(setting=k, value=format_value(settings[0].get(k)))
    section.items.append(("details", shared))
    return section


def _short_path(run: RunInfo) -> str:
    """A run's folder relative to the study folder it was found in (the study is named above the table)."""
    if run.source:
        try:
            return str(Path(run.source).name / run.path.relative_to(run.source))
        except ValueError:
            pass
    return str(run.path)


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

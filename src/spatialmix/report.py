"""One page for every result: ``spatialmix report RUN_DIR_OR_STUDY_DIR ... -o report.html``.

The page leads with the answer: the verdict of every claim of the paper (:mod:`spatialmix.verdicts`),
then each claim's tables and figures, the filter analysis, and the configuration last.

The page is a single HTML file that needs nothing else to be read: figures are embedded as
base64 PNG, the style sheet is inline, there is no script and no external URL. The tables are
also written as Markdown next to it (``report.md``) for a README or a paper draft.

Inputs are run directories (``spatialmix train``) and study folders (``spatialmix reproduce``:
``results.json`` plus the runs below it). Each section is filled from whatever results exist;
a section with nothing to show keeps its heading and says so, so a report of a single run or of
an interrupted study is still a report. Results of the robustness, smoothing and un-shuffling
studies are read defensively from ``results.json`` (their table rows and their image files),
since those studies decide their own columns.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, runs
from .analysis import (FFT_SIZE, LOW_HIGH_CUTOFF, FilterAnalysis, analyze_run, frozen_layers_moved,
                       plot_filter_grids, plot_mean_spectra, plot_radial_profiles, run_label, spectrum_table,
                       statistics_table)
from .errors import SpatialmixError
from .mixing import MODES
from .reporting import ResultTable, console
from .study import StudyContext, StudyResult, classification_table
from .verdicts import VERDICT_WORDS, verdict_table, verdicts_for_runs, verdicts_for_study

RESULTS = "results.json"
SECTIONS = {
    "verdicts": "Verdicts",
    "classification": "Classification",
    "curves": "Training curves",
    "robustness": "Robustness",
    "smoothing": "Smoothing study",
    "unshuffle": "Pixel un-shuffling",
    "filters": "Filter analysis",
    "configuration": "Configuration",
}
# Study names in results.json that feed each section (the studies register under these names).
STUDY_SECTIONS = {"robustness": ("robustness", "attack", "attacks"), "smoothing": ("smoothing", "smooth"),
                  "unshuffle": ("unshuffle", "unshuffling")}
ABSENT = {
    "verdicts": "no claim of the paper can be judged from these inputs: that needs finished Full and Chans (or "
                "Space) runs of one setting with the same seeds, or a study folder of `spatialmix reproduce`",
    "configuration": "no runs in these inputs",
    "classification": "no finished classification run in these inputs (train one with `spatialmix train` "
                      "or `spatialmix reproduce`)",
    "curves": "no run in these inputs has finished an epoch (metrics.jsonl is empty)",
    "robustness": "no robustness results in these inputs (run `spatialmix reproduce` with the robustness "
                  "study, or `spatialmix attack RUN_DIR`)",
    "smoothing": "no smoothing study in these inputs (it is part of the robustness study of "
                 "`spatialmix reproduce`)",
    "unshuffle": "no un-shuffling results in these inputs (run `spatialmix unshuffle` or `spatialmix reproduce`)",
    "filters": "no run in these inputs has a checkpoint of a model with spatial mixers",
}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml"}
MAX_EMBED_BYTES = 20 * 2**20
MAX_FIGURE_ROWS = 12
RUN_SKIP_DIRS = {"checkpoints"}


# --------------------------------------------------------------------------- inputs

@dataclass
class RunInfo:
    path: Path
    record: dict                 # config.json
    summary: dict | None
    status: dict
    metrics: list[dict]
    label: str
    group: str                   # label without the seed
    source: str                  # the study folder it was found in, or "" for a run given directly


@dataclass
class StudyInfo:
    path: Path
    results: dict                # results.json, {} when the folder has runs but no results yet
    runs: list[RunInfo] = field(default_factory=list)


@dataclass
class Inputs:
    studies: list[StudyInfo]
    loose_runs: list[RunInfo]

    @property
    def runs(self) -> list[RunInfo]:
        return self.loose_runs + [r for s in self.studies for r in s.runs]


def find_runs(folder: Path, max_depth: int = 3) -> list[Path]:
    """Run directories below ``folder`` (not below another run), sorted."""
    found = []

    def walk(path: Path, depth: int):
        for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if runs.is_run_dir(child):
                found.append(child)
            elif depth < max_depth and child.name not in RUN_SKIP_DIRS:
                walk(child, depth + 1)

    walk(folder, 1)
    return found


def _read_run(path: Path, source: str = "", prefix: str = "") -> RunInfo:
    run = runs.Run(path).check()   # every file validated: one line naming the file and the field
    record, summary, status = run.record(), run.summary(), run.status()
    train = record.get("train") if isinstance(record.get("train"), dict) else {}
    return RunInfo(path, record, summary, status, run.metrics(),
                   prefix + run_label(train), prefix + run_label(train, with_seed=False), source)


def _read_results(path: Path) -> dict:
    results = runs.read_json(path, "study folder")
    if not isinstance(results, dict) or not isinstance(results.get("studies", {}), dict):
        raise SpatialmixError(f"{path} is not a spatialmix results file (no 'studies' table); "
                              f"pass a folder made by `spatialmix reproduce`")
    return results


def read_inputs(paths: list[str | Path]) -> Inputs:
    """Sort ``paths`` into run directories and study folders; one clear error for anything else."""
    if not paths:
        raise SpatialmixError("nothing to report: pass at least one run directory or study folder")
    studies, loose, seen = [], [], set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SpatialmixError(f"{path} does not exist; pass a run directory (with config.json) or a study "
                                  f"folder (with results.json) made by spatialmix")
        if not path.is_dir():
            raise SpatialmixError(f"{path} is a file, not a run directory or a study folder")
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if runs.is_run_dir(path):
            loose.append(_read_run(path))
            continue
        if not any(path.iterdir()):
            raise SpatialmixError(f"{path} is an empty directory: nothing to report; pass a run directory "
                                  f"or a study folder made by spatialmix")
        has_results = (path / RESULTS).is_file()
        run_dirs = find_runs(path)
        if not has_results and not run_dirs:
            raise SpatialmixError(f"{path} is neither a spatialmix run (no config.json) nor a study folder "
                                  f"(no results.json, no runs inside); pass a folder made by `spatialmix train` "
                                  f"or `spatialmix reproduce`")
        study = StudyInfo(path, _read_results(path / RESULTS) if has_results else {})
        for run_dir in sorted(run_dirs, key=lambda d: _run_order(path, d)):
            top = run_dir.relative_to(path).parts[0]
            prefix = "" if top == "classification" or run_dir.parent == path else f"{top}: "
            study.runs.append(_read_run(run_dir, source=str(path), prefix=prefix))
        studies.append(study)
    inputs = Inputs(studies, loose)
    _make_labels_unique(inputs.runs)
    return inputs


def _run_order(study: Path, run_dir: Path) -> tuple:
    """Classification runs first, then by folder, mode (Full, Chans, Space), smoothing sigma, seed."""
    parts = run_dir.relative_to(study).parts
    top = parts[0] if len(parts) > 1 else ""
    try:
        train = runs.read_json(run_dir / runs.CONFIG, "run").get("train") or {}
    except SpatialmixError:
        train = {}
    mode, seed, sigma = train.get("mode"), train.get("seed"), train.get("smooth_sigma")
    return (top != "classification", top, MODES.index(mode) if mode in MODES else len(MODES),
            sigma if isinstance(sigma, (int, float)) else 0, seed if isinstance(seed, int) else 1 << 62, str(run_dir))


def _make_labels_unique(run_infos: list[RunInfo]) -> None:
    """Tell apart runs whose settings give the same label: by folder name, else by full path."""
    for describe in (lambda r: r.path.name, lambda r: str(r.path)):
        counts: dict[str, int] = {}
        for r in run_infos:
            counts[r.label] = counts.get(r.label, 0) + 1
        for r in run_infos:
            if counts[r.label] > 1:
                r.label = f"{r.label} ({describe(r)})"


# --------------------------------------------------------------------------- the page's building blocks

@dataclass
class Figure:
    png: bytes
    caption: str
    mime: str = "image/png"


@dataclass
class Section:
    id: str
    title: str
    items: list = field(default_factory=list)   # str (a paragraph), ResultTable, Figure, ("details", ResultTable)
    absent: str | None = None

    @property
    def present(self) -> bool:
        return bool(self.items) and self.absent is None


def figure_png(fig, caption: str) -> Figure:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return Figure(buffer.getvalue(), caption)


def format_value(value) -> str:
    """A table cell from JSON: ints with separators, floats to 4 significant digits, [mean, std] pairs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        mean, std = value
        return f"{format_value(float(mean))} ± {format_value(float(std))}" if std else format_value(float(mean))
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def rows_table(title: str, rows: list[dict]) -> ResultTable:
    """A ResultTable from JSON rows whose columns nobody told us: the union of their keys, in order."""
    keys: list[str] = []
    for row in sorted(rows, key=len, reverse=True):   # the fullest row sets the order
        keys += [k for k in row if k not in keys]
    table = ResultTable(title, [(k, k.replace("_", " "), "") for k in keys])
    for row in rows:
        table.add(**{k: format_value(row.get(k)) if k in row else None for k in keys})
    return table


def saved_table(title: str, rows: list[dict], columns) -> ResultTable:
    """A table from results.json: with its saved (key, header, format) columns when it has them."""
    valid = isinstance(columns, list) and columns and all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(x, str) for x in c) for c in columns)
    if not valid:
        return rows_table(title, rows)
    table = ResultTable(title, [tuple(c) for c in columns])
    for row in rows:
        # JSON turned (mean, std) tuples into lists; ResultTable formats tuples as "mean ± std"
        table.add(**{k: tuple(v) if isinstance(v, list) and len(v) == 2 else v for k, v in row.items()})
    try:
        table.cells()
    except (TypeError, ValueError):   # a saved format that does not fit the saved values
        return rows_table(title, rows)
    return table


def _json_rows(obj) -> list[dict] | None:
    """Rows out of a JSON value of unknown layout: a list of dicts, or a dict holding one."""
    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        return obj
    if isinstance(obj, dict):
        for key in ("rows", "table", "results"):
            if key in obj:
                return _json_rows(obj[key])
    return None


# --------------------------------------------------------------------------- sections

def configuration_section(inputs: Inputs) -> Section:
    section = Section("configuration", SECTIONS["configuration"])
    for study in inputs.studies:
        res = study.results
        if res:
            overrides = ", ".join(f"{k}={v}" for k, v in (res.get("overrides") or {}).items()) or "none"
            section.items.append(f"Study folder {study.path}: preset {res.get('preset', '?')}, seeds "
                                 f"{res.get('seeds', '?')}, overrides: {overrides}; studies run: "
                                 f"{', '.join(res.get('studies', {})) or 'none'}.")
        else:
            section.items.append(f"Folder {study.path}: runs without results.json (an interrupted "
                                 f"`spatialmix reproduce`?).")
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
    per_run = ResultTable("Runs", [("run", "run", ""), ("path", "folder", ""), ("state", "state", ""),
                                   ("trainable", "trainable params", ""), ("frozen", "frozen params", ""),
                                   ("differs", "settings that differ between runs", "")])
    for r, s in zip(all_runs, settings):
        params = r.record.get("params", {}) if isinstance(r.record.get("params"), dict) else {}
        per_run.add(run=r.label, path=_short_path(r), state=r.status.get("state", "?"),
                    trainable=format_value(params.get("trainable")), frozen=format_value(params.get("frozen")),
                    differs=", ".join(f"{k}={format_value(s.get(k))}" for k in differing if k not in ("mode", "seed"))
                    or "-")
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


VERDICTS_INTRO = ("Each claim of the paper against the data: the effect, its 95% interval, and the seeds and examples "
                  "behind it. supports: the whole interval lies on the paper's side of the threshold in "
                  "'supports if interval'; contradicts: the whole interval lies on the other side; inconclusive: "
                  "the interval covers the threshold, or cannot be computed (one seed without per-example "
                  "results); not run: no data for this claim yet (the line names the command that tests it). "
                  "Paired comparisons use the same examples for both models (per-example bootstrap over seeds and "
                  "examples, with McNemar's exact test per seed); otherwise a t-interval over seed-paired "
                  "differences.")


def verdicts_section(inputs: Inputs) -> Section:
    """The answer first: one verdict table per study folder, one for the runs given directly."""
    section = Section("verdicts", SECTIONS["verdicts"])
    sources = [(study.path.name, lambda study=study: verdicts_for_study(study.path)) for study in inputs.studies]
    if inputs.loose_runs:
        sources.append(("runs given", lambda: verdicts_for_runs([r.path for r in inputs.loose_runs])))
    for name, compute in sources:
        try:
            verdicts = compute()
        except SpatialmixError as err:   # a damaged result file: the rest of the report still stands
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


CLASSIFICATION_KEYS = ("trainable_params", "frozen_params", "test_acc", "best_acc", "train_time", "images_per_s")


def _is_classification_summary(summary) -> bool:
    return (isinstance(summary, dict) and all(k in summary for k in CLASSIFICATION_KEYS)
            and isinstance(summary["test_acc"], (int, float)) and summary.get("task", "classification") == "classification")


def classification_section(inputs: Inputs) -> Section:
    section = Section("classification", SECTIONS["classification"])
    for study in inputs.studies:
        data = study.results.get("studies", {}).get("classification", {}).get("data", {}) if study.results else {}
        summaries = data.get("runs") if isinstance(data, dict) else None
        if isinstance(summaries, dict) and any(_is_classification_summary(s) for v in summaries.values() for s in v):
            summaries = {mode: [s for s in rows if _is_classification_summary(s)] for mode, rows in summaries.items()}
            section.items.append(classification_table(summaries, _classification_title(study.path.name, summaries)))
        else:
            grouped = _group_summaries(study.runs)
            if grouped:
                section.items.append(classification_table(grouped, _classification_title(study.path.name, grouped)))
    grouped = _group_summaries(inputs.loose_runs)
    if grouped:
        section.items.append(classification_table(grouped, _classification_title("runs given", grouped)))
    if section.items:
        section.items.insert(0, "Test accuracy of the last epoch and the best epoch; mean ± standard deviation "
                                "over seeds where there are several.")
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
    return f"Classification, {source} ({first.get('dataset', '?')}, {first.get('model', '?')}, {len(seeds)} seed(s))"


MAX_CURVE_PANELS = 4


def task_name(run: RunInfo) -> str:
    task = run.record.get("task")
    return str(task.get("name", "classification")) if isinstance(task, dict) else "classification"


def curve_keys(run_infos: list[RunInfo]) -> list[str]:
    """The per-epoch numbers worth a panel: train loss, then every test metric, in first-seen order."""
    keys = ["train_loss"]
    for r in run_infos:
        for m in r.metrics:
            keys += [k for k, v in m.items() if k.startswith("test_") and isinstance(v, (int, float))
                     and k not in keys]
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
        section.items.append(figure_png(curves_figure(run_infos, curve_keys(run_infos)),
                                        f"{task}: per-epoch metrics from each run's metrics.jsonl."))
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
            points = [(m["epoch"], m[key]) for m in r.metrics if isinstance(m.get(key), (int, float)) and "epoch" in m]
            if points:
                ax.plot(*zip(*points), marker="o", color=f"C{i % 10}", ls="-" if i < 10 else "--", label=r.label)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, max(len(r.metrics) for r in run_infos) + 0.5)
    axes[0].legend(fontsize=7)
    return fig


def _study_entries(inputs: Inputs, names: tuple[str, ...]) -> list[tuple[StudyInfo, str, dict]]:
    found = []
    for study in inputs.studies:
        for name, entry in (study.results.get("studies", {}) if study.results else {}).items():
            if name in names and isinstance(entry, dict):
                found.append((study, name, entry))
    return found


def _is_smoothing_table(rows: list[dict]) -> bool:
    return any("sigma" in str(k).lower() or "smooth" in str(k).lower() for row in rows for k in row)


def _is_smoothing_file(path: str) -> bool:
    return any(word in Path(path).name.lower() for word in ("smooth", "sigma"))


def study_items(study: StudyInfo, name: str, entry: dict, keep_table=lambda rows: True,
                keep_file=lambda path: True) -> list:
    """Tables (rows from results.json) and embedded images (its files) of one study entry."""
    items: list = []
    tables = entry.get("tables") if isinstance(entry.get("tables"), list) else []
    titles = entry.get("table_titles") if isinstance(entry.get("table_titles"), list) else []
    columns = entry.get("table_columns") if isinstance(entry.get("table_columns"), list) else []
    for i, rows in enumerate(tables):
        rows = _json_rows(rows)
        if rows and keep_table(rows):
            title = f"{name} ({study.path.name})" + (f", table {i + 1}" if len(tables) > 1 else "")
            if i < len(titles) and isinstance(titles[i], str):
                title = f"{titles[i]} ({study.path.name})"
            items.append(saved_table(title, rows, columns[i] if i < len(columns) else None))
    data = entry.get("data") if isinstance(entry.get("data"), dict) else {}
    warnings = data.get("warnings")
    if isinstance(warnings, list) and warnings:
        items.append(f"Warnings from the {name} study: " + "; ".join(str(w) for w in warnings))
    files = [str(f) for f in (entry.get("files") or []) if keep_file(str(f))]
    items += file_items(study.path, files)
    return items


def file_items(base: Path, files: list[str]) -> list:
    """Images among ``files`` embedded; other files and missing ones named in a sentence."""
    items, other, missing = [], [], []
    for name in files:
        path = resolve_file(base, name)
        if path is None:
            missing.append(name)
        elif path.suffix.lower() in IMAGE_TYPES and path.stat().st_size <= MAX_EMBED_BYTES:
            items.append(Figure(path.read_bytes(), path.name, IMAGE_TYPES[path.suffix.lower()]))
        else:
            other.append(str(path))
    if other:
        items.append("Other files of this study: " + ", ".join(other) + ".")
    if missing:
        items.append("Listed in results.json but not found: " + ", ".join(missing) + ".")
    return items


def resolve_file(base: Path, name: str) -> Path | None:
    """A file named in results.json: as written, relative to the study folder, or by name below it
    (the folder may have been moved since)."""
    path = Path(name)
    for candidate in (path, base / path):
        found = runs.contained_file(base, candidate)   # never a file outside the folder reported on
        if found is not None:
            return found
    matches = [m for m in sorted(base.rglob(path.name)) if runs.contained_file(base, m)] if path.name else []
    return matches[0] if matches else None


def robustness_section(inputs: Inputs, has_smoothing_study: bool) -> Section:
    section = Section("robustness", SECTIONS["robustness"])
    for study, name, entry in _study_entries(inputs, STUDY_SECTIONS["robustness"]):
        # without a study of its own, the smoothing tables and plots go to their own section
        section.items += study_items(
            study, name, entry,
            keep_table=lambda rows: has_smoothing_study or not _is_smoothing_table(rows),
            keep_file=lambda path: has_smoothing_study or not _is_smoothing_file(path))
    for r in inputs.loose_runs:
        section.items += run_robustness_items(r)
    if not section.items:
        section.absent = ABSENT["robustness"]
    return section


def run_robustness_items(run: RunInfo) -> list:
    """What `spatialmix attack` saved in a run directory: its result JSON as a table, its plot."""
    items: list = []
    for path in sorted(run.path.glob("*.json")):
        if path.name in (runs.CONFIG, runs.STATUS, runs.SUMMARY) or runs.contained_file(run.path, path) is None:
            continue
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            items.append(f"{path} is not valid JSON; left out.")
            continue
        if isinstance(saved, dict) and isinstance(saved.get("budgets"), list):
            rows = attack_result_rows(saved)
        elif any(word in path.name.lower() for word in ("robust", "attack")):
            rows = _json_rows(saved)
        else:
            continue
        if rows:
            items.append(rows_table(f"{run.label}: {path.name}", rows))
            if isinstance(saved, dict) and isinstance(saved.get("warnings"), list):
                items += [f"{run.label}: {w}" for w in saved["warnings"]]
    items += file_items(run.path, [p.name for p in sorted(run.path.glob("*.png"))
                                   if any(word in p.name.lower() for word in ("robust", "attack"))])
    return items


def attack_result_rows(result: dict) -> list[dict] | None:
    """One row per budget of a `spatialmix attack` result, as the attack module lays them out."""
    try:
        from .attacks import result_rows
    except ImportError:   # an installation without the robustness study
        return _json_rows(result.get("budgets"))
    try:
        return result_rows(result)
    except (KeyError, TypeError, AttributeError):   # written by another version: show what is there
        return _json_rows(result.get("budgets"))


def smoothing_section(inputs: Inputs) -> Section:
    section = Section("smoothing", SECTIONS["smoothing"])
    entries = _study_entries(inputs, STUDY_SECTIONS["smoothing"])
    for study, name, entry in entries:
        section.items += study_items(study, name, entry)
    if not entries:
        for study, name, entry in _study_entries(inputs, STUDY_SECTIONS["robustness"]):
            section.items += study_items(study, name, entry, keep_table=_is_smoothing_table,
                                         keep_file=_is_smoothing_file)
    if not section.items:
        section.absent = ABSENT["smoothing"]
    return section


def unshuffle_section(inputs: Inputs) -> Section:
    section = Section("unshuffle", SECTIONS["unshuffle"])
    for study, name, entry in _study_entries(inputs, STUDY_SECTIONS["unshuffle"]):
        section.items += study_items(study, name, entry)
    if not section.items:
        section.absent = ABSENT["unshuffle"]
    return section


def other_section(inputs: Inputs) -> Section | None:
    known = {"classification", "verdicts", "report", *(n for names in STUDY_SECTIONS.values() for n in names)}
    section = Section("other", "Other results")
    for study in inputs.studies:
        for name, entry in (study.results.get("studies", {}) if study.results else {}).items():
            if name not in known and isinstance(entry, dict):
                section.items += study_items(study, name, entry)
    return section if section.items else None


def filters_section(inputs: Inputs, fft_size: int = FFT_SIZE) -> Section:
    section = Section("filters", SECTIONS["filters"])
    analyses: list[FilterAnalysis] = []
    skipped: list[str] = []
    for r in inputs.runs:
        try:
            analysis = analyze_run(r.path, fft_size, label=r.label)
        except SpatialmixError as err:
            if "FFT size" in str(err):
                raise
            reason = str(err).split("; ")[0]   # the first clause says what is wrong; the advice is for the CLI
            skipped.append(reason if r.label in reason else f"{r.label}: {reason}")
            continue
        analysis.group = f"{r.source}|{r.group}"
        analyses.append(analysis)
    if not analyses:
        section.absent = ABSENT["filters"] + (": " + "; ".join(skipped) if skipped else "")
        return section
    shown = _representatives(analyses)
    section.items.append(
        f"Spatial filters (depthwise k x k) of each run's latest checkpoint. Frequencies are in cycles/pixel "
        f"(0.5 = Nyquist), from each filter's DFT zero-padded to {fft_size} x {fft_size}. Energy ratios do not "
        f"depend on the filters' scale: a white spectrum (a delta, or i.i.d. random filters in expectation) "
        f"has a flat relative profile at 1 and a low/high energy ratio of about "
        f"{_white_ratio(fft_size):.3f} (the share of the frequency grid below {LOW_HIGH_CUTOFF:g} cycles/pixel); "
        f"more energy at low frequency means smoother filters. Full and Chans runs of the same seed and init "
        f"start from the same random filters, so a Chans row shows what the Full row started from.")
    if len(shown) < len(analyses):
        section.items.append(f"Figures show the first seed of each setting ({len(shown)} of {len(analyses)} runs); "
                             f"the tables show every run.")
    shown = [a for a in shown if a.filters]   # token-mixing models have no k x k filters to draw
    if not shown:
        section.items.append("These runs' spatial mixers are token-mixing matrices (no k x k filters): they are "
                             "described by their norms and distance from initialization below.")
    else:
        _filter_figures(section, shown)
    if any(a.spectra for a in analyses):
        section.items.append(spectrum_table([a for a in analyses if a.spectra]))
    stats = statistics_table(analyses)
    section.items.append(("details", stats) if len(stats.rows) > 40 else stats)
    moved = frozen_layers_moved(analyses)
    frozen_count = sum(s.frozen for a in analyses for s in a.stats)
    if moved:
        section.items.append("WARNING: frozen layers moved away from their initialization: " + "; ".join(moved))
    elif frozen_count:
        section.items.append(f"Check: all {frozen_count} frozen layers are bit-for-bit at their initialization "
                             f"(distance exactly 0).")
    if skipped:
        section.items.append("Not analyzed: " + "; ".join(skipped) + ".")
    return section


def _filter_figures(section: Section, shown: list[FilterAnalysis]) -> None:
    section.items.append(figure_png(plot_filter_grids(shown),
                                    "The first 16 filters of each spatial layer; each filter scaled by its own "
                                    "largest |weight| (red positive, blue negative)."))
    section.items.append(figure_png(plot_radial_profiles(shown),
                                    "Radial profile of the mean power spectrum of each spatial layer, relative to "
                                    "the layer's mean power (dotted: white spectrum; dashed: the low/high cutoff)."))
    section.items.append(figure_png(plot_mean_spectra(shown),
                                    "Mean 2-D magnitude spectrum of each spatial layer (DC in the centre, each panel "
                                    "scaled to its maximum)."))


def _white_ratio(size: int) -> float:
    from .analysis import frequency_radius

    low = int((frequency_radius(size) < LOW_HIGH_CUTOFF).sum())
    return low / (size * size - low)


def _representatives(analyses: list[FilterAnalysis]) -> list[FilterAnalysis]:
    """The first run of each setting (seeds of one setting look alike), at most MAX_FIGURE_ROWS."""
    chosen, groups = [], set()
    for a in analyses:
        if a.group not in groups:
            groups.add(a.group)
            chosen.append(a)
    return chosen[:MAX_FIGURE_ROWS]


# --------------------------------------------------------------------------- rendering

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1300px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
caption { font-weight: bold; text-align: left; padding: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; max-width: 32em; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.absent { color: #777; font-style: italic; } .meta { color: #555; font-size: 0.9em; }
nav ul { columns: 2; } code { background: #f4f4f4; padding: 0 0.2em; overflow-wrap: anywhere; }
td.verdict-supports { background: #dff3df !important; font-weight: bold; }
td.verdict-contradicts { background: #f8dcdc !important; font-weight: bold; }
td.verdict-inconclusive { background: #fff4d6 !important; } td.verdict-not-run { color: #777; }
"""


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _td(cell: str, column: str) -> str:
    if column == "verdict" and cell in VERDICT_WORDS:   # the word of a verdict, coloured
        return f'<td class="verdict-{cell.replace(" ", "-")}">{_esc(cell)}</td>'
    return f"<td>{_esc(cell)}</td>"


def html_table(table: ResultTable) -> str:
    """A table in a scrolling wrapper, so that no table is ever wider than the page."""
    head = "".join(f"<th>{_esc(h)}</th>" for _, h, _ in table.columns)
    keys = [k for k, _, _ in table.columns]
    body = "\n".join("<tr>" + "".join(_td(c, k) for c, k in zip(cells, keys)) + "</tr>" for cells in table.cells())
    return (f'<div class="table-wrap"><table>\n<caption>{_esc(table.title)}</caption>\n<thead><tr>{head}</tr>'
            f"</thead>\n<tbody>\n{body}\n</tbody>\n</table></div>")


def html_item(item) -> str:
    if isinstance(item, str):
        return f"<p>{_esc(item)}</p>"
    if isinstance(item, ResultTable):
        return html_table(item)
    if isinstance(item, Figure):
        data = base64.b64encode(item.png).decode("ascii")
        return (f'<figure><img alt="{_esc(item.caption)}" src="data:{item.mime};base64,{data}">'
                f"<figcaption>{_esc(item.caption)}</figcaption></figure>")
    if isinstance(item, tuple) and item[0] == "details":
        table = item[1]
        return (f"<details><summary>{_esc(table.title)} ({len(table.rows)} rows)</summary>\n"
                f"{html_table(table)}\n</details>")
    raise TypeError(f"cannot render {type(item).__name__} in a report")


def render_html(sections: list[Section], paths: list[str], created: str) -> str:
    nav = "".join(f'<li><a href="#{s.id}">{_esc(s.title)}</a>{"" if s.present else " (absent)"}</li>'
                  for s in sections)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>spatialmix report</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             "<h1>spatialmix report</h1>",
             f'<p class="meta">Written {_esc(created)} by spatialmix {_esc(__version__)} from: '
             + ", ".join(f"<code>{_esc(p)}</code>" for p in paths) + "</p>",
             f"<nav><ul>{nav}</ul></nav>"]
    for s in sections:
        state = "present" if s.present else "absent"
        parts.append(f'<section id="{s.id}" class="{state}-section">')
        parts.append(f"<h2>{_esc(s.title)}</h2>")
        if s.absent is not None:
            parts += [html_item(i) for i in s.items if isinstance(i, str)]
            parts.append(f'<p class="absent">Absent: {_esc(s.absent)}.</p>')
        else:
            parts += [html_item(i) for i in s.items]
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def render_markdown(sections: list[Section], paths: list[str], created: str) -> str:
    lines = ["# spatialmix report", "", f"Written {created} by spatialmix {__version__} from: "
             + ", ".join(f"`{p}`" for p in paths), ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for item in s.items:
            if isinstance(item, tuple):
                item = item[1]
            if isinstance(item, ResultTable):
                lines.append(item.to_markdown())
            elif isinstance(item, Figure):
                lines += [f"_Figure in the HTML report: {item.caption}_", ""]
            elif isinstance(item, str):
                lines += [item, ""]
        if s.absent is not None:
            lines += [f"_Absent: {s.absent}._", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry points

@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    present: list[str]          # ids of the sections with results
    absent: list[str]           # ids of the sections left out with a note
    verdicts: list[ResultTable] = field(default_factory=list)   # the verdict tables, for the terminal


def build_sections(paths: list[str | Path], fft_size: int = FFT_SIZE) -> list[Section]:
    """Every section of the report of ``paths`` (run directories and study folders)."""
    if not isinstance(fft_size, int) or fft_size <= 0:
        raise SpatialmixError(f"FFT size must be a positive integer, got {fft_size}")
    inputs = read_inputs(paths)
    has_smoothing = bool(_study_entries(inputs, STUDY_SECTIONS["smoothing"]))
    sections = [verdicts_section(inputs), classification_section(inputs), curves_section(inputs),
                robustness_section(inputs, has_smoothing), smoothing_section(inputs), unshuffle_section(inputs),
                filters_section(inputs, fft_size)]
    other = other_section(inputs)
    return sections + ([other] if other else []) + [configuration_section(inputs)]


def write_report(paths: list[str | Path], out_html: str | Path, fft_size: int = FFT_SIZE) -> ReportFiles:
    """Write the HTML report of ``paths`` to ``out_html`` and its tables to the ``.md`` file beside it.

    Everything is computed before anything is written, and both files are written atomically,
    so a failed report leaves the previous one intact.
    """
    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise SpatialmixError(f"the report file must end in .html, got {out_html}; the Markdown tables are "
                              f"written beside it as .md")
    if out_html.is_dir():
        raise SpatialmixError(f"{out_html} is a directory; pass a file name such as {out_html / 'report.html'}")
    runs.check_writable(out_html.parent)   # before the work, not after it
    paths = [str(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    sections = build_sections(paths, fft_size)
    created = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    markdown = out_html.with_suffix(".md")
    page = render_html(sections, paths, created)
    runs.atomic_write_bytes(markdown, render_markdown(sections, paths, created).encode())
    runs.atomic_write_bytes(out_html, page.encode())
    verdicts = [i for s in sections if s.id == "verdicts" for i in s.items if isinstance(i, ResultTable)]
    return ReportFiles(out_html, markdown, [s.id for s in sections if s.present],
                       [s.id for s in sections if not s.present], verdicts)


def report_study(ctx: StudyContext) -> StudyResult:
    """The last step of ``spatialmix reproduce``: the report of the study folder."""
    files = write_report([ctx.out_dir], ctx.out_dir / "report.html")
    console.print(f"[bold]report[/]: {files.html} (tables: {files.markdown})", highlight=False)
    return StudyResult("report", [], {"html": str(files.html), "markdown": str(files.markdown),
                                      "present": files.present, "absent": files.absent},
                       [str(files.html), str(files.markdown)])

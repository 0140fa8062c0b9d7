"""What a report is made from: run directories (``spatialmix train``) and study folders
(``spatialmix reproduce``: ``results.json`` plus the runs below it).

Everything is read and checked here, before the report computes or writes anything: each run
folder through `spatialmix.io.runs.Run` (every file validated) and each study's entry of
``results.json`` through `spatialmix.io.study_results.read_study_entry` (its section, tables,
figures and files), so a damaged input is one line naming the file and the field.

A study folder is walked for runs without leaving it (`spatialmix.io.paths.FolderWalk`): a link whose
target leaves it is skipped, never followed, and named in one line (`skipped_links`), on the page
and by the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spatialmix.analysis.filters import run_label
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.io.paths import FolderWalk
from spatialmix.io.runs import find_runs
from spatialmix.io.study_results import SavedStudy, check_study_settings, read_study_entry
from spatialmix.names import MODES

RESULTS = "results.json"


@dataclass
class RunInfo:
    path: Path
    record: dict  # config.json
    summary: dict | None
    status: dict
    metrics: list[dict]
    label: str
    group: str  # label without the seed
    source: str  # the study folder it was found in, or "" for a run given directly


@dataclass
class StudyInfo:
    path: Path
    results: dict  # results.json, {} when the folder has runs but no results yet
    runs: list[RunInfo] = field(default_factory=list)
    entries: list[SavedStudy] = field(default_factory=list)  # results.json's studies, checked, in order
    outside: list[Path] = field(default_factory=list)  # its links that lead out of it, skipped


@dataclass
class Inputs:
    studies: list[StudyInfo]
    loose_runs: list[RunInfo]

    @property
    def runs(self) -> list[RunInfo]:
        return self.loose_runs + [r for s in self.studies for r in s.runs]

    def entries(self, section: str) -> list[tuple[StudyInfo, SavedStudy]]:
        """Every study entry that feeds ``section``, study folder by study folder."""
        return [
            (study, entry) for study in self.studies for entry in study.entries if entry.section == section
        ]


def skipped_links(study: Path, links: list[Path]) -> str:
    """The links of ``study`` skipped because they lead out of it, named below it in one clause."""
    names = ", ".join(sorted(link.relative_to(study).as_posix() for link in links))
    what = "a link that leads" if len(links) == 1 else "links that lead"
    return f"skipped {names}, {what} out of the folder"


def shown_path(path: str | Path) -> str:
    """How the page names an input: as given when that is a relative path below the current folder
    (``runs/reproduce``), else by its folder's name. A shared report holds no path of the machine."""
    path = Path(path)
    if not path.is_absolute() and ".." not in path.parts:
        return path.as_posix()
    return path.resolve().name or path.as_posix()


def path_names(paths: list[str | Path]) -> dict[str, str]:
    """Each input's path as given and as resolved -> `shown_path` of it, longest first: what the
    page replaces in the messages and tables it quotes (an error names the file it read)."""
    names = {}
    for path in map(Path, paths):
        for form in (str(path), str(path.resolve())):
            if form != shown_path(path):
                names[form] = shown_path(path)
    return dict(sorted(names.items(), key=lambda item: -len(item[0])))


def task_name(run: RunInfo) -> str:
    task = run.record.get("task")
    return str(task.get("name", "classification")) if isinstance(task, dict) else "classification"


def _read_run(path: Path, source: str = "", prefix: str = "") -> RunInfo:
    run = runs.Run(path).check()  # every file validated: one line naming the file and the field
    record, summary, status = run.record(), run.summary(), run.status()
    train = record.get("train") if isinstance(record.get("train"), dict) else {}
    return RunInfo(
        path,
        record,
        summary,
        status,
        run.metrics(),
        prefix + run_label(train),
        prefix + run_label(train, with_seed=False),
        source,
    )


def read_results(path: Path) -> tuple[dict, list[SavedStudy]]:
    """A study folder's results.json and its studies' entries, every field checked."""
    results = runs.read_json(path, "study folder")
    if not isinstance(results, dict) or not isinstance(results.get("studies", {}), dict):
        raise SpatialmixError(
            f"{path} is not a spatialmix results file (no 'studies' table); "
            f"pass a folder made by `spatialmix reproduce`"
        )
    check_study_settings(path, results)
    return results, [
        read_study_entry(path, name, entry) for name, entry in results.get("studies", {}).items()
    ]


def read_inputs(paths: list[str | Path]) -> Inputs:
    """Sort ``paths`` into run directories and study folders; one clear error for anything else."""
    if not paths:
        raise SpatialmixError("nothing to report: pass at least one run directory or study folder")
    studies, loose, seen = [], [], set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SpatialmixError(
                f"{path} does not exist; pass a run directory (with config.json) or a study "
                f"folder (with results.json) made by spatialmix"
            )
        if not path.is_dir():
            raise SpatialmixError(f"{path} is a file, not a run directory or a study folder")
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if runs.is_run_dir(path):
            loose.append(_read_run(path))
            continue
        if not any(path.iterdir()):
            raise SpatialmixError(
                f"{path} is an empty directory: nothing to report; pass a run directory "
                f"or a study folder made by spatialmix"
            )
        has_results = (path / RESULTS).is_file()
        walk = FolderWalk(path)
        run_dirs = find_runs(path, walk=walk)
        if not has_results and not run_dirs:
            skipped = f"; {skipped_links(path, walk.outside)}" if walk.outside else ""
            raise SpatialmixError(
                f"{path} is neither a spatialmix run (no config.json) nor a study folder "
                f"(no results.json, no runs inside{skipped}); pass a folder made "
                f"by `spatialmix train` or `spatialmix reproduce`"
            )
        results, entries = read_results(path / RESULTS) if has_results else ({}, [])
        study = StudyInfo(path, results, entries=entries, outside=walk.outside)
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
    try:  # only to sort: a damaged config.json is reported when the run is read
        record = runs.read_json(run_dir / runs.CONFIG, "run")
    except SpatialmixError:
        record = {}
    train = record.get("train") if isinstance(record, dict) and isinstance(record.get("train"), dict) else {}
    mode, seed, sigma = train.get("mode"), train.get("seed"), train.get("smooth_sigma")
    return (
        top != "classification",
        top,
        MODES.index(mode) if mode in MODES else len(MODES),
        sigma if isinstance(sigma, (int, float)) else 0,
        seed if isinstance(seed, int) else 1 << 62,
        str(run_dir),
    )


def _make_labels_unique(run_infos: list[RunInfo]) -> None:
    """Tell apart runs whose settings give the same label: by folder name, else by full path."""
    for describe in (lambda r: r.path.name, lambda r: str(r.path)):
        counts: dict[str, int] = {}
        for r in run_infos:
            counts[r.label] = counts.get(r.label, 0) + 1
        for r in run_infos:
            if counts[r.label] > 1:
                r.label = f"{r.label} ({describe(r)})"

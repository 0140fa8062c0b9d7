"""What a study hands back, and how ``results.json`` keeps it.

A study declares everything the report needs to place its results: the report section it feeds
(`SECTIONS`), its tables, its figures (a PNG it wrote, with a caption) and any other files
it wrote, beside its raw numbers (``data``). ``reproduce`` writes one entry per study into the
study folder's ``results.json`` (`study_entry`, paths relative to the folder so it can be
moved); the report reads the entries back with `read_study_entry`.

A ``results.json`` is untrusted input: every field of an entry is checked, a malformed one is a
one-line error naming the file and the field, and a figure or file must be named by a relative
path below the study folder (the report checks where it leads when it reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spatialmix.errors import SpatialmixError
from spatialmix.ui.display import ResultTable

# The report sections a study can feed, in the order of the page. A study with nothing for the
# report (the verdicts, which the report recomputes; the report itself) declares ``section=None``.
SECTIONS: tuple[str, ...] = ("classification", "robustness", "smoothing", "init", "unshuffle", "other")


@dataclass(frozen=True)
class Figure:
    """A PNG a study wrote and what it shows. ``file``: where the study wrote it (in results.json:
    relative to the study folder)."""

    file: str | Path
    caption: str


@dataclass
class StudyResult:
    """The result of one study: its tables, its raw numbers, and where the report shows them."""

    name: str
    tables: list[ResultTable] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # JSON-serializable raw results
    section: str | None = "other"  # one of SECTIONS, or None: nothing for the report
    figures: list[Figure] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # other files it wrote (CSV, HTML, ...): named, not shown

    def __post_init__(self):
        if self.section is not None and self.section not in SECTIONS:
            raise ValueError(
                f"study {self.name!r}: section {self.section!r} is not one of {SECTIONS} or None"
            )


def study_entry(result: StudyResult, folder: str | Path) -> dict:
    """The results.json entry of ``result``; its figures' and files' paths relative to ``folder``."""
    folder = Path(folder)
    return {
        "section": result.section,
        "data": result.data,
        "tables": [t.rows for t in result.tables],
        "table_titles": [t.title for t in result.tables],
        "table_columns": [[list(c) for c in t.columns] for t in result.tables],
        "figures": [{"file": _relative(f.file, folder), "caption": f.caption} for f in result.figures],
        "files": [_relative(f, folder) for f in result.files],
        "markdown": "\n".join(t.to_markdown() for t in result.tables),
    }


def _relative(path: str | Path, folder: Path) -> str:
    path = Path(path)
    for base, target in ((folder, path), (folder.resolve(), path.resolve())):
        try:
            return target.relative_to(base).as_posix()
        except ValueError:
            continue
    if not path.is_absolute() and ".." not in path.parts:
        return path.as_posix()  # already relative to the study folder
    raise ValueError(f"{path} lies outside the study folder {folder}: a study writes its files inside it")


# --------------------------------------------------------------------------- reading an entry back


@dataclass
class SavedTable:
    title: str | None
    rows: list[dict]
    columns: list[tuple[str, str, str]] | None  # (key, header, format); None: unknown, from the rows


@dataclass
class SavedStudy:
    """A study's entry of results.json, checked. Paths of figures and files are relative to the study
    folder."""

    name: str
    section: str | None
    tables: list[SavedTable]
    figures: list[Figure]
    files: list[str]
    data: dict


# What results.json says about the whole study besides its entries: (field, check, what it must be).
STUDY_SETTINGS = (
    ("preset", lambda v: isinstance(v, str), "a preset name"),
    ("seeds", lambda v: isinstance(v, list), "a list of seeds"),
    ("overrides", lambda v: isinstance(v, dict), "an object of training settings"),
)


def check_study_settings(path: Path, results: dict) -> dict:
    """``results`` (a results.json's contents) if its study-wide fields have their shapes."""
    for name, check, wanted in STUDY_SETTINGS:
        if name in results and not check(results[name]):
            raise _bad_field(path, name, wanted, results[name])
    return results


def _bad_field(path: Path, field: str, wanted: str, value) -> SpatialmixError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return SpatialmixError(
        f"{path}: field {field!r} must be {wanted}, got {shown}; the file is damaged or not spatialmix's"
    )


def _bad(path: Path, name: str, what: str, wanted: str, value) -> SpatialmixError:
    """A malformed field ``what`` of the entry of study ``name``."""
    return _bad_field(path, f"studies.{name}{what}", wanted, value)


def read_study_entry(path: Path, name: str, entry) -> SavedStudy:
    """The entry ``name`` of the results file ``path``, checked field by field."""
    path = Path(path)
    if not isinstance(entry, dict):
        raise _bad(path, name, "", "a JSON object", entry)
    if "section" not in entry:
        raise SpatialmixError(
            f"{path}: field 'studies.{name}.section' is missing; the file is damaged or not spatialmix's"
        )
    section = entry["section"]
    if section is not None and not isinstance(section, str):
        raise _bad(path, name, ".section", "a section name or null", section)
    if isinstance(section, str) and section not in SECTIONS:
        section = "other"  # written by a newer spatialmix: shown, under "Other results"
    data = entry.get("data", {})
    if not isinstance(data, dict):
        raise _bad(path, name, ".data", "a JSON object", data)
    files = [
        _file_field(path, name, f".files[{i}]", f)
        for i, f in enumerate(_list(path, name, ".files", entry.get("files", [])))
    ]
    return SavedStudy(
        name, section, _tables(path, name, entry), _figures(path, name, entry.get("figures", [])), files, data
    )


def _list(path: Path, name: str, what: str, value) -> list:
    if not isinstance(value, list):
        raise _bad(path, name, what, "a list", value)
    return value


def _tables(path: Path, name: str, entry: dict) -> list[SavedTable]:
    tables = _list(path, name, ".tables", entry.get("tables", []))
    titles = _list(path, name, ".table_titles", entry.get("table_titles", []))
    columns = _list(path, name, ".table_columns", entry.get("table_columns", []))
    saved = []
    for i, rows in enumerate(tables):
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise _bad(path, name, f".tables[{i}]", "a list of rows (JSON objects)", rows)
        title = titles[i] if i < len(titles) else None
        if title is not None and not isinstance(title, str):
            raise _bad(path, name, f".table_titles[{i}]", "a string", title)
        cols = columns[i] if i < len(columns) else None
        if cols is not None and not (
            isinstance(cols, list)
            and all(isinstance(c, list) and len(c) == 3 and all(isinstance(x, str) for x in c) for c in cols)
        ):
            raise _bad(path, name, f".table_columns[{i}]", "a list of [key, header, format] strings", cols)
        saved.append(SavedTable(title, rows, [tuple(c) for c in cols] if cols else None))
    return saved


def _figures(path: Path, name: str, value) -> list[Figure]:
    figures = []
    for i, item in enumerate(_list(path, name, ".figures", value)):
        if not isinstance(item, dict):
            raise _bad(path, name, f".figures[{i}]", 'an object {"file": ..., "caption": ...}', item)
        caption = item.get("caption", "")
        if not isinstance(caption, str):
            raise _bad(path, name, f".figures[{i}].caption", "a string", caption)
        figures.append(Figure(_file_field(path, name, f".figures[{i}].file", item.get("file")), caption))
    return figures


def _file_field(path: Path, name: str, what: str, value) -> str:
    """``value`` if it is a relative path below the study folder (``path``'s folder). What lies there is
    the reader's to check when it opens it: a missing file, or a link that leads out of the folder, is
    one line of the report (which never reads it), not a damaged results.json."""
    wanted = "a relative path inside the study folder"
    if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in Path(value).parts:
        raise _bad(path, name, what, wanted, value)
    return value


def json_rows(obj) -> list[dict] | None:
    """Rows out of a JSON value of unknown layout: a list of dicts, or a dict holding one."""
    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        return obj
    if isinstance(obj, dict):
        for key in ("rows", "table", "results"):
            if key in obj:
                return json_rows(obj[key])
    return None

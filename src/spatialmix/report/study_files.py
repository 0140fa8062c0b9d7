"""The files a study lists in ``results.json``, as the page shows them; never one outside its folder.

Its figures are embedded, its other files named, and each file that is missing or leads out of the
study folder is said so in one line.

A study folder is untrusted and the page is meant to be shared, so a file is read only when it lies
inside the folder once links are followed (`spatialmix.io.paths.inside`), and it is read from
the very file that check found, opened without following a link put in its place since
(``O_NOFOLLOW``): a link to a private file never ends up base64-encoded in ``report.html``.
Names are shown relative to the study folder, never as paths of the machine.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from spatialmix.io.paths import inside
from spatialmix.io.study_results import SavedStudy
from spatialmix.report.inputs import StudyInfo
from spatialmix.report.page import Details, Image, saved_table, wrap_strip

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}
MAX_EMBED_BYTES = 20 * 2**20
MISSING, OUTSIDE, UNREADABLE, TOO_LARGE = "missing", "outside", "unreadable", "too large"


class NotShown(Exception):
    """Why a listed file is not shown: one of MISSING, OUTSIDE, UNREADABLE, TOO_LARGE."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def checked_file(base: Path, path: Path) -> Path:
    """The file ``path`` names once links are followed, if it is a regular file inside ``base``; else
    `NotShown` (a link that leads out of ``base`` is OUTSIDE, whether or not its target exists)."""
    real = Path(os.path.realpath(path))
    if inside(base, real) is None:
        raise NotShown(OUTSIDE if os.path.lexists(path) else MISSING)
    if not real.is_file():
        raise NotShown(MISSING)
    return real


def read_inside(base: Path, path: Path, limit: int = MAX_EMBED_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes inside ``base``; else
    `NotShown`. The file is opened without following a final link, so a link swapped in after
    the check is refused rather than followed out of the folder."""
    real = checked_file(base, path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotShown(MISSING) from None
    except OSError:  # ELOOP: the file became a link since it was checked; EACCES: not ours to read
        raise NotShown(OUTSIDE if os.path.islink(real) else UNREADABLE) from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NotShown(MISSING)
        if info.st_size > limit:
            raise NotShown(TOO_LARGE)
        return file.read(limit + 1)


def read_image(base: Path, path: Path, caption: str) -> Image:
    """``path`` as an image of the page; `NotShown` when it cannot be shown (TOO_LARGE also for a
    file that is no image: it is named instead)."""
    mime = IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        checked_file(base, path)
        raise NotShown(TOO_LARGE)
    image = Image(read_inside(base, path), caption, mime)
    return wrap_strip(image) if image.strip else image


# --------------------------------------------------------------------------- a study's entry


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
        items += warning_items(f"the {entry.name} study", [str(w) for w in warnings])
    declared = [Listed(f.file, study.path / f.file, f.caption) for f in entry.figures]
    declared += [Listed(name, study.path / name, None) for name in entry.files]
    return items + file_items(study.path, declared)


def warning_items(source: str, warnings: list[str]) -> list:
    """A study's warnings: the first in a line, all of them behind it when there are several."""
    if len(warnings) == 1:
        return [f"Warning from {source}: {warnings[0]}"]
    return [Details(f"{len(warnings)} warnings from {source} (open to read them)", warnings)]


@dataclass
class Listed:
    """A file a study listed: its name in results.json, where it is, and its caption (None: only named)."""

    name: str
    path: Path | None
    caption: str | None


def file_items(base: Path, files: list[Listed]) -> list:
    """Each listed file: embedded when it is an image with a caption, else named; one line for those
    missing and one for those that lead out of ``base`` (never read)."""
    items, named, why_not = [], [], {MISSING: [], OUTSIDE: [], UNREADABLE: []}
    for f in files:
        try:
            if f.path is None:
                raise NotShown(MISSING)
            if f.caption is None:
                checked_file(base, f.path)
                raise NotShown(TOO_LARGE)
            items.append(read_image(base, f.path, f.caption))
        except NotShown as reason:
            (named if reason.why == TOO_LARGE else why_not[reason.why]).append(f.name)
    return items + not_shown_lines(named, why_not)


def not_shown_lines(named: list[str], why_not: dict[str, list[str]]) -> list[str]:
    """The files of a study that are not shown, each kind in one sentence."""
    sentences = {
        MISSING: "Listed in results.json but not found: ",
        OUTSIDE: "Skipped, a link that leads out of the study folder (never read into this page): ",
        UNREADABLE: "Skipped, not readable: ",
    }
    lines = ["Other files of this study: " + ", ".join(named) + "."] if named else []
    return lines + [sentences[why] + ", ".join(names) + "." for why, names in why_not.items() if names]

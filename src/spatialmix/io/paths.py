"""Where files may be: inside the folder the user pointed at, once symbolic links are followed.

`inside` is the one containment check: a results.json, a run folder or a grid file may name,
or link to, any path of the machine, and every path read from one goes through it. `FolderWalk`
lists a folder with the same check: a link whose target leaves the folder is never followed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from spatialmix.errors import SpatialmixError


def inside(base: Path, path: Path) -> Path | None:
    """``path`` if it lies inside ``base`` once symlinks are followed, else None; a link loop or an
    unreadable path is outside. Both are taken as they would be opened (a relative path from the
    current folder): join a name to its folder before asking, as ``base / name``."""
    base, path = Path(base), Path(path)
    try:
        root, target = base.resolve(), path.resolve()
    except (OSError, RuntimeError):
        return None
    return path if root in target.parents else None


def check_folder_path(path: Path) -> Path:
    """A clear error when ``path`` cannot become a folder: it is a file, or lies below one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SpatialmixError(f"{path} is a file, not a run folder; choose another --out")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SpatialmixError(
                    f"{path} lies below a file ({parent}), not a folder; choose another --out"
                )
            break
    return path


def check_writable(folder: Path) -> Path:
    """Raise a clear error now (before hours of work) if results cannot be written into ``folder``
    (or, when it does not exist yet, into the folder that would hold it)."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise SpatialmixError(
            f"{existing} is not writable (a read-only folder or mount); copy it somewhere "
            f"writable or choose another output"
        )
    return folder


class FolderWalk:
    """The folder ``base`` the user pointed at, walked without ever leaving it.

    Entries are listed with `os.scandir` and their kind asked without following links. A link whose
    target leaves ``base`` is never followed (nothing below its target is opened, listed or even
    asked about): it is kept in ``outside``, for the caller to name. A link that stays inside is
    followed once the folders themselves are walked, and a folder reached by two names (a link to
    it, a link loop) is walked once, under the name met first.
    """

    def __init__(self, base: str | os.PathLike):
        self.base = Path(base)
        self.outside: list[Path] = []  # the links met whose target leaves base, as named below it
        self._root = os.path.realpath(self.base)
        self._walked = {self._root}

    def walk(
        self, descend: Callable[[Path, int], bool] = lambda folder, depth: True
    ) -> list[tuple[Path, bool]]:
        """Every entry below ``base`` reached without leaving it, as ``(path, is_folder)``. A folder's own
        entries are listed when ``descend(folder, depth)`` (``depth`` 1: a folder of ``base`` itself)."""
        found: list[tuple[Path, bool]] = []
        folders, linked = [(self.base, 0)], []
        while folders or linked:
            if not folders:  # the folders reached through a link, once the folders themselves are done
                self._take(*linked.pop(), found, folders, descend)
                continue
            folder, depth = folders.pop()
            for path, is_folder, is_link in self._entries(folder):
                if not is_folder:
                    found.append((path, False))
                elif is_link:
                    linked.append((path, depth + 1))
                else:
                    self._take(path, depth + 1, found, folders, descend)
        return found

    def _take(self, folder: Path, depth: int, found: list, folders: list, descend) -> None:
        if os.path.realpath(folder) in self._walked:
            return
        self._walked.add(os.path.realpath(folder))
        found.append((folder, True))
        if descend(folder, depth):
            folders.append((folder, depth))

    def _entries(self, folder: Path) -> list[tuple[Path, bool, bool]]:
        """``(path, is_folder, is_link)`` of each entry of ``folder`` that stays inside ``base``, by name."""
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        kept = []
        for entry in entries:
            path = folder / entry.name
            if not entry.is_symlink():
                kept.append((path, entry.is_dir(follow_symlinks=False), False))
            elif inside(self.base, path) is not None or os.path.realpath(path) == self._root:
                kept.append((path, path.is_dir(), True))  # (a link to base itself is a folder walked)
            else:
                self.outside.append(path)
        return kept

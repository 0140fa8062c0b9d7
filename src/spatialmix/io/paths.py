"""Where files may be: inside the folder the user pointed at, once symbolic links are followed.

:func:`inside` is the one containment check: a results.json, a run folder or a grid file may name,
or link to, any path of the machine, and every path read from one goes through it.
"""

from __future__ import annotations

import os
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

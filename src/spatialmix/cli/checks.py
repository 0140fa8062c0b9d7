"""Checks of the command line's values that hold for every command, made before a command starts.

A seed torch cannot take, a thread count no machine has, or an output path the file system cannot
hold was a traceback (or a crash) somewhere inside the work; here it is one line before anything
is read or written. Imports nothing heavy.
"""

from __future__ import annotations

import argparse
import os
import unicodedata
from pathlib import Path

from spatialmix.engine.config import TrainConfig, check_seed, check_threads
from spatialmix.errors import SpatialmixError
from spatialmix.options import flag_of, given_values

# Output options: argparse destination -> whether it names a folder that files go into.
OUTPUTS = {"out": True, "plot": False}
# Room a folder output keeps for the longest path spatialmix writes inside it
# (checkpoints/epoch-0001/.optimizer.safetensors.x1a2b3c4.tmp and the like, in a sweep's runs/NAME).
ROOM_INSIDE = 128
DEFAULT_NAME_MAX, DEFAULT_PATH_MAX = 255, 4096
CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a bad seed, thread count or output path of any command with one line."""
    threads = getattr(args, "threads", None)
    if threads is not None:
        check_threads("--threads", threads)
    for name in ("seed", "init_seed", "perm_seed"):
        if getattr(args, name, None) is not None:
            check_seed(flag_of(name), getattr(args, name))
    for seed in getattr(args, "seeds", None) or ():
        check_seed("--seeds", seed)
    for name, is_folder in OUTPUTS.items():
        value = getattr(args, name, None)
        if isinstance(value, str) and value.strip().lower() not in ("none", "auto"):
            flag = "-o" if args.command == "report" else flag_of(name)
            check_path_characters(flag, value)
            check_path_length(flag, value, ROOM_INSIDE if is_folder else 0)
    out_name = getattr(args, "out_name", None)
    if out_name:
        check_path_length("--out-name", f"{out_name}.json", 0)
    if args.command == "train" and not getattr(args, "resume", None):
        # the whole configuration, from the torch-free name tables: a typo is answered at once
        TrainConfig(**given_values(TrainConfig, args)).validate()


def _limits(path: Path) -> tuple[int, int]:
    """The longest name and path the file system holding ``path`` (or its nearest existing folder) takes."""
    existing = next((p for p in path.parents if _is_folder(p)), Path("."))
    limits = []
    for key, default in (("PC_NAME_MAX", DEFAULT_NAME_MAX), ("PC_PATH_MAX", DEFAULT_PATH_MAX)):
        try:
            limits.append(os.pathconf(existing, key))
        except (OSError, ValueError, AttributeError):
            limits.append(default)
    return limits[0], limits[1]


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long to look up
        return False


def check_path_characters(flag: str, path: str) -> None:
    """Refuse an output path with a control character in a name (a newline, a tab, an escape): the
    file system takes it, but every listing, log line and one-line message naming the folder breaks."""
    for part in Path(path).parts:
        bad = next((c for c in part if unicodedata.category(c) == "Cc"), None)
        if bad is not None:
            what = CONTROL_NAMES.get(bad, f"U+{ord(bad):04X}")
            raise SpatialmixError(
                f"{flag} holds a control character ({what}) in {part!r}; choose a name without one"
            )


def check_path_length(flag: str, path: str, room_inside: int = 0) -> None:
    """Refuse ``path`` when one of its names, or the whole path (with ``room_inside`` bytes more for what
    goes inside a folder), is longer than the file system allows (OSError 36 after the work)."""
    path_ = Path(os.path.abspath(path))
    name_max, path_max = _limits(path_)
    for part in path_.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise SpatialmixError(
                f"{flag}: the name {part[:24]}... is {size} bytes, more than the {name_max} a file or "
                f"folder name may have here; choose a shorter {flag}"
            )
    size = len(os.fsencode(str(path_)))
    if size + room_inside >= path_max:
        inside = f", {room_inside} of them kept for the files that go inside it" if room_inside else ""
        raise SpatialmixError(
            f"{flag} {str(path_)[:40]}... is {size} bytes long; a path may have at most {path_max - 1} "
            f"bytes here{inside}; choose a shorter {flag}"
        )

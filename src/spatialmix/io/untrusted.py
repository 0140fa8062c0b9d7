"""Reading files that may come from anyone: a run folder or a study folder someone shared.

Every read goes through `open_inside`. The file must lie inside the folder it belongs to once
links are followed (a link that stays inside is fine; one that leaves is refused), it is opened
without following a link at any step of its resolved path (``O_NOFOLLOW``: a link swapped in after
the check is refused, never followed), and it must be a regular file (not a device such as
``/dev/zero``, a fifo that would block, or a folder) of at most the bytes its kind may have
(`spatialmix.io.limits`). JSON is parsed within bounds the standard parser lacks: at most
``JSON_DEPTH`` levels of nesting and whole numbers of at most ``JSON_INT_DIGITS`` digits, each
refused in one line naming the file and the field. Weights are read with safetensors or
``torch.load(weights_only=True)``: no code is ever unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from spatialmix.errors import SpatialmixError
from spatialmix.io.limits import JSON_DEPTH, JSON_INT_DIGITS, RESULT_BYTES, WEIGHTS_BYTES
from spatialmix.io.paths import inside

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a fifo returns at once (and is then refused as not a regular file) instead of
# waiting for a writer that never comes; it changes nothing for a regular file.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


# --------------------------------------------------------------------------- opening


def outside_error(path: Path, where: str) -> SpatialmixError:
    return SpatialmixError(
        f"{path} points outside {where} (to {os.path.realpath(path)}); a run or study folder holds only "
        f"its own files: remove the link"
    )


def open_inside(
    base: Path, path: Path, max_bytes: int, what: str = "file", where: str | None = None
) -> BinaryIO:
    """``path`` opened for reading, after checking that it lies inside ``base`` once links are followed,
    that no step of the way is a link (so nothing swapped in after the check is followed), and that
    it is a regular file of at most ``max_bytes`` bytes. ``where`` names ``base`` in the errors."""
    base, path = Path(base), Path(path)
    root, target = Path(os.path.realpath(base)), Path(os.path.realpath(path))
    # (the second test asks the same of the very paths opened below, resolved once)
    if inside(base, path) is None or root not in target.parents:
        if not os.path.lexists(path):
            raise SpatialmixError(f"{path} is missing: not a spatialmix {what}")
        raise outside_error(path, where or str(base))
    try:  # the path as resolved above, every step without following a link
        fd = _open_below(root, target.relative_to(root).parts)
    except FileNotFoundError:
        raise SpatialmixError(f"{path} is missing: not a spatialmix {what}") from None
    except OSError as err:
        why = err.strerror or type(err).__name__
        if err.errno in (errno.ELOOP, errno.ENOTDIR):  # a step became a link (or a file) after the check
            why += "; a link may have changed while it was read"
        raise SpatialmixError(f"{path} cannot be read ({why}); restore it from a copy") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpatialmixError(
                f"{path} is not a regular file; a run or study folder holds only plain files: replace it "
                f"with the real file"
            )
        if info.st_size > max_bytes:
            raise _too_large(path, info.st_size, max_bytes, what)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_below(root: Path, parts: tuple[str, ...]) -> int:
    """The file ``root/parts...`` opened one step at a time, refusing a link at every step."""
    fd = os.open(root, _DIRECTORY & ~os.O_NOFOLLOW)  # the folder itself may be reached through links
    try:
        for part in parts[:-1]:
            below = os.open(part, _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        return os.open(parts[-1], _FILE, dir_fd=fd)
    finally:
        os.close(fd)


def _too_large(path: Path, size: int, max_bytes: int, what: str) -> SpatialmixError:
    return SpatialmixError(
        f"{path} is {size:,} bytes, more than the {max_bytes:,} a {what} file may have here; it is not "
        f"a spatialmix file"
    )


def read_bytes(base: Path, path: Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of ``path`` (see `open_inside`); a file that grows past the bound while read is
    refused too."""
    with open_inside(base, path, max_bytes, what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(Path(path), len(data), max_bytes, what)
    return data


def _folder_of(path: Path, base: Path | None) -> Path:
    """The folder a file must stay in: ``base``, or by default the folder that holds it."""
    return Path(base) if base is not None else Path(path).parent


# --------------------------------------------------------------------------- JSON


class _LongNumber:
    """A whole number longer than any spatialmix writes, kept unconverted (converting one of 5,000
    digits fails, and one of millions takes minutes) until it is reported with its field."""

    def __init__(self, digits: int):
        self.digits = digits


def _parse_int(text: str):
    digits = len(text) - text.startswith("-")
    return int(text) if digits <= JSON_INT_DIGITS else _LongNumber(digits)


def parse_json(text: str, where: str):
    """``json.loads`` within spatialmix's bounds; ``where`` names the file (and line) in the errors.
    A syntax error is left to the caller (``json.JSONDecodeError``)."""
    try:
        value = json.loads(text, parse_int=_parse_int)
    except RecursionError:  # nested far beyond the bound: find where, without recursing
        raise _too_deep(where, _deep_field(text)) from None
    _check_tree(value, where)
    return value


def _too_deep(where: str, field: str) -> SpatialmixError:
    return SpatialmixError(
        f"{where}: field {field!r} nests arrays or objects more than {JSON_DEPTH} levels deep; the file "
        f"is damaged or not spatialmix's"
    )


def _check_tree(value, where: str) -> None:
    """Refuse nesting deeper than ``JSON_DEPTH`` and numbers too long, naming the field (iteratively)."""
    stack = [(value, "", 0)]
    while stack:
        node, field, depth = stack.pop()
        if isinstance(node, _LongNumber):
            raise SpatialmixError(
                f"{where}: field {field or '(top level)'!r} is a whole number of {node.digits:,} digits, "
                f"more than the {JSON_INT_DIGITS} spatialmix writes; the file is damaged or not spatialmix's"
            )
        if isinstance(node, (dict, list)):
            if depth >= JSON_DEPTH:  # named by its keys, as _deep_field names it
                raise _too_deep(where, re.sub(r"\[\d+\]", "", field) or "(top level)")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((child, _child_name(field, key), depth + 1) for key, child in items)


def _child_name(field: str, key) -> str:
    if isinstance(key, int):
        return f"{field}[{key}]"
    key = key if len(key) <= 40 else key[:37] + "..."
    return f"{field}.{key}" if field else key


# A string (with the colon that makes it a key), or a bracket: enough to follow the nesting.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"\s*:?|[\[\]{}]')


def _deep_field(text: str) -> str:
    """The keys leading to where ``text`` first nests deeper than ``JSON_DEPTH`` (a scan, no recursion)."""
    keys: list[str | None] = []  # the key of each open array or object
    key = None
    for token in _TOKEN.finditer(text):
        token = token.group()
        if token[0] == '"':
            key = token[1:].rstrip(": \t\r\n")[:-1][:40] if token.endswith(":") else key
        elif token in "[{":
            keys.append(key)
            key = None
            if len(keys) > JSON_DEPTH:
                break
        else:
            if keys:
                keys.pop()
            key = None
    return ".".join(k for k in keys if k) or "(top level)"


def read_json(path: Path, what: str = "file", base: Path | None = None, max_bytes: int = RESULT_BYTES):
    """A JSON file of a run or study folder (``base``, by default the folder that holds it), within
    the bounds above; every problem is one line naming the file."""
    path = Path(path)
    data = read_bytes(_folder_of(path, base), path, max_bytes, what)
    try:
        return parse_json(data.decode("utf-8"), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpatialmixError(f"{path} is corrupt (not JSON); restore it or start a new run") from None


def read_jsonl(path: Path, base: Path | None = None, max_bytes: int = RESULT_BYTES) -> list[dict]:
    """The records of a JSON-lines file (none when it does not exist); a last line cut short by a kill
    is left out."""
    path = Path(path)
    if not os.path.lexists(path):
        return []
    try:
        lines = read_bytes(_folder_of(path, base), path, max_bytes, "metrics").decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise SpatialmixError(
            f"{path} is not UTF-8 text (corrupt); delete it or restore it from a copy"
        ) from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, f"{path}: line {number}")
        except json.JSONDecodeError:
            if number == len(lines):
                break  # a line cut short by a kill: everything before it is good
            raise SpatialmixError(
                f"{path}: line {number} is not JSON (corrupt); restore it from a copy"
            ) from None
        if not isinstance(record, dict):
            raise SpatialmixError(f"{path}: line {number} is not a JSON object; restore it from a copy")
        records.append(record)
    return records


# --------------------------------------------------------------------------- weights


def _same_file(f: BinaryIO) -> str | None:
    """A name that opens the very file ``f`` holds (whatever its path points at now), where the system
    has one."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(folder):
            return f"{folder}/{f.fileno()}"
    return None


def load_weights(path: Path, base: Path | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file of a run folder (``base``, by default the folder that holds it)."""
    path = Path(path)
    with open_inside(_folder_of(path, base), path, WEIGHTS_BYTES, "weights") as f:
        try:
            return load_file(_same_file(f) or os.path.realpath(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise SpatialmixError(
                f"{path} is not a readable safetensors file ({err}); delete it or restore it from a copy"
            ) from None


def load_torch(path: Path, base: Path | None = None):
    """A ``torch.save`` file of a run folder, loaded with ``weights_only=True`` (tensors and plain
    values, never code); anything it cannot read is one line."""
    path = Path(path)
    with open_inside(_folder_of(path, base), path, WEIGHTS_BYTES, "training state") as f:
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds for a damaged or hostile file
            raise SpatialmixError(f"{path} is corrupt ({type(err).__name__})") from None


def file_sha256(path: Path, max_bytes: int | None = None, base: Path | None = None) -> str:
    """SHA-256 of a regular file, read in chunks (never the whole file at once)."""
    path = Path(path)
    digest = hashlib.sha256()
    limit = WEIGHTS_BYTES if max_bytes is None else max_bytes
    with open_inside(_folder_of(path, base), path, limit, "weights") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

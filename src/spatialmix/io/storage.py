"""Files that survive kills and power losses, and reads that survive hostile files.

Writes go to a unique temporary name beside the target, are fsynced, renamed into place (which
replaces a symlink itself, never writes through it) and the folder is fsynced after, so a reader
sees the old file or the new one, never a mix, even across a power loss. Reads check what they
are given first: a regular file (not a device or a fifo), of plausible size, inside the folder it
should be in, and JSON that is UTF-8; a weights file is never read whole just to hash it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import stat
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from spatialmix.errors import SpatialmixError

# Weights beyond this are not read (a hostile folder could name a huge or endless file).
MAX_WEIGHTS_BYTES = 16 << 30
MAX_JSON_BYTES = 64 << 20

_UMASK = os.umask(0)
os.umask(_UMASK)


# --------------------------------------------------------------------------- writes


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power loss after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    """A temporary name beside ``path`` that no other writer uses (pid and random suffix)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_error(path: Path, err: OSError) -> SpatialmixError:
    why = err.strerror or type(err).__name__
    hint = "free some space and resume" if err.errno == errno.ENOSPC else "choose a writable folder"
    return SpatialmixError(f"cannot write {path} ({why}); {hint}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a symlink itself, never writes through it
        fsync_dir(path.parent)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise


def strict_json(obj, **kwargs) -> str:
    """JSON without NaN / Infinity literals (which strict parsers reject); a non-finite number is an error."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        raise SpatialmixError(
            f"refusing to write a non-finite number as JSON: {_non_finite_keys(obj)}"
        ) from None


def _non_finite_keys(obj, prefix="") -> list[str]:
    if isinstance(obj, float) and not math.isfinite(obj):
        return [prefix or "value"]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in _non_finite_keys(v, f"{prefix}{key}.")]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in _non_finite_keys(v, f"{prefix}{i}.")]
    return []


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_via_tmp(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it onto ``path``."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        if isinstance(err, RuntimeError) and "write" in str(err).lower():  # torch.save on a full disk
            raise write_error(path, OSError(errno.EIO, str(err).splitlines()[0][:120])) from None
        raise


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_via_tmp(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def check_regular_file(path: Path, max_bytes: int | None = None) -> int:
    """The size of ``path``, after checking it is a regular file (not a device, fifo, ...) of plausible
    size."""
    max_bytes = MAX_WEIGHTS_BYTES if max_bytes is None else max_bytes
    try:
        st = os.stat(path)
    except OSError as err:
        raise SpatialmixError(f"{path} cannot be read ({err.strerror}); restore it from a copy") from None
    if not stat.S_ISREG(st.st_mode):
        raise SpatialmixError(
            f"{path} is not a regular file; a run folder holds only plain files: "
            f"replace it with the real file"
        )
    if st.st_size > max_bytes:
        raise SpatialmixError(
            f"{path} is {st.st_size:,} bytes, more than the {max_bytes:,} a weights file may "
            f"have here; it is not a spatialmix file"
        )
    return st.st_size


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    check_regular_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SpatialmixError(
            f"{path} is not a readable safetensors file ({err}); delete it or restore it from a copy"
        ) from None


def file_sha256(path: Path, max_bytes: int | None = None) -> str:
    """SHA-256 of a regular file, read in chunks (never the whole file at once)."""
    check_regular_file(path, max_bytes)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def append_jsonl(path: Path, record: dict) -> None:
    """Append one strict-JSON line; never through a symlink (the line would land in another file)."""
    line = strict_json(record, sort_keys=True) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SpatialmixError(
                f"{path} is a symlink; a run folder's files must be plain files: remove it and resume"
            ) from None
        raise write_error(path, err) from None
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        os.close(fd)


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_bytes(path, "".join(strict_json(r, sort_keys=True) + "\n" for r in records).encode())


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a last line cut short by a kill is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise SpatialmixError(
            f"{path} is not UTF-8 text (corrupt); delete it or restore it from a copy"
        ) from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
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


def read_json(path: Path, what: str = "file") -> dict:
    path = Path(path)
    try:
        if os.stat(path).st_size > MAX_JSON_BYTES:
            raise SpatialmixError(f"{path} is too large for a spatialmix {what} file; it is not one")
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise SpatialmixError(f"{path} is missing: not a spatialmix {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpatialmixError(f"{path} is corrupt (not JSON); restore it or start a new run") from None
    except OSError as err:
        raise SpatialmixError(f"{path} cannot be read ({err.strerror}); restore it from a copy") from None


# --------------------------------------------------------------------------- where files may be

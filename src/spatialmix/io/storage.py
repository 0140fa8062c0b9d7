"""Files that survive kills, power losses and full disks.

Reads of untrusted files are in `spatialmix.io.untrusted`.

Writes go to a unique temporary name beside the target, are fsynced, renamed into place (which
replaces a symlink itself, never writes through it) and the folder is fsynced after, so a reader
sees the old file or the new one, never a mix, even across a power loss. A write that fails (a full
disk, a read-only folder; torch's and safetensors' writers report a full disk in their own words)
leaves no temporary file behind and is one `WriteError` line.

Written here rather than with atomicwrites: that package is archived by its author, and most of this
module is what no library does for spatialmix: torch's and safetensors' writers made atomic, their
full-disk failures turned into one line, and appends that never go through a planted symlink.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from spatialmix.errors import SpatialmixError

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


class WriteError(SpatialmixError):
    """A file could not be written: ``full`` when the disk (or the user's quota) is full."""

    def __init__(self, path: Path, why: str, full: bool, advice: str | None = None):
        self.path, self.why, self.full, self.advice = Path(path), why, full, advice
        what = f"no space left on device while writing {path}" if full else f"cannot write {path} ({why})"
        advice = advice or ("free space and try again" if full else "choose a writable folder")
        super().__init__(f"{what}; {advice}")

    def __reduce__(self):  # pickled whole (a sweep's worker hands its error back to the parent)
        return WriteError, (self.path, self.why, self.full, self.advice)

    def advise(self, advice: str) -> WriteError:
        """The same failure with the caller's advice (what to run once space is freed)."""
        return WriteError(self.path, self.why, self.full, advice)


def write_error(path: Path, err: OSError) -> WriteError:
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    return WriteError(path, err.strerror or type(err).__name__, full)


# How torch's and safetensors' writers report a failed write (a full disk): torch's zip writer finds
# fewer bytes written than it wrote ("unexpected pos 704 vs 598"); safetensors names the os error.
_TORCH_WRITER = re.compile(r"inline_container|PytorchStreamWriter|unexpected pos|write failed")
_TORCH_DETAIL = re.compile(r"unexpected pos \d+ vs \d+|file write failed")
_OS_ERROR = re.compile(r"os error (\d+)")


def _writer_failure(path: Path, err: BaseException) -> WriteError | None:
    """The `WriteError` that a writer's own exception stands for; None for any other error."""
    if isinstance(err, OSError):
        return write_error(path, err)
    if isinstance(err, SafetensorError) and (code := _OS_ERROR.search(str(err))):
        return write_error(path, OSError(int(code.group(1)), os.strerror(int(code.group(1)))))
    if isinstance(err, RuntimeError) and _TORCH_WRITER.search(str(err)):
        detail = _TORCH_DETAIL.search(str(err))
        why = f"torch's writer stopped short: {detail.group() if detail else 'write failed'}"
        try:  # asked before the partial file is removed, while the disk is still full
            full = shutil.disk_usage(path.parent).free < 1 << 20
        except OSError:
            full = False
        return WriteError(path, why, full, None if full else "check the free space there and try again")
    return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(path)
        # 0666 less the process's umask, as for any file the user makes: results are meant to be shared
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as err:
        raise write_error(path, err) from None
    try:
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
        failure = _writer_failure(path, err)
        tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from None
        raise


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_via_tmp(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


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


# --------------------------------------------------------------------------- where files may be

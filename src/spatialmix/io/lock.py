"""One writer per run folder: an exclusive ``flock`` on ``RUN/run.lock``, held for the whole run.

The operating system releases the lock when its process dies, so a killed run never leaves a
stale lock behind; the lock file holds the pid of its holder, so the second writer can say who
holds the folder.

Written here rather than with filelock (installed with torch): filelock would replace only the
``flock`` call, while what this module is for stays around it either way: the holder's pid in the
refusal, no folder left behind by a start that wrote nothing, and only rank 0 locking under torchrun.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from spatialmix.errors import SpatialmixError

LOCK = "run.lock"


class RunLockedError(SpatialmixError):
    """Another process holds the run folder."""


_HELD: dict[str, list] = {}  # resolved run folder -> [fd, depth]: the locks this process holds
WRITER_ADVICE = "wait for it to finish or stop it, or choose another --out"


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike, advice: str = WRITER_ADVICE):
    """Hold the run folder exclusively (``flock`` on ``RUN/run.lock``) for the duration of the block.

    The operating system releases the lock when the process dies, so a killed run never leaves a
    stale lock. Re-entrant within a process (a study holding a run may call ``train`` on it). A
    second process gets `RunLockedError` naming the pid that holds the folder, then ``advice``. The
    folder is created if needed, and removed again if the block leaves nothing in it.
    """
    if str(run_dir) == "":
        raise SpatialmixError("the run folder is an empty string; pass a folder name such as runs/my-run")
    path = Path(run_dir)
    key = os.path.realpath(path)
    if int(os.environ.get("RANK", "0") or 0) != 0:  # under torchrun only rank 0 writes, so only it locks
        yield path
        return
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    created = not path.exists()
    try:
        if path.exists() and not path.is_dir():
            raise SpatialmixError(f"{path} is a file, not a run folder; choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        # 0666 less the umask, applied by the kernel
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except NotADirectoryError:
        raise SpatialmixError(f"{path} lies below a file, not a folder; choose another --out") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SpatialmixError(f"{path / LOCK} is a symlink; remove it") from None
        raise SpatialmixError(f"cannot write in {path} ({err.strerror}); choose a writable --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLockedError(
                f"{path} is in use by another spatialmix process (pid {holder}); {advice}"
            ) from None
        raise SpatialmixError(f"cannot lock {path} ({err.strerror}); choose another --out") from None
    _HELD[key] = [fd, 1]
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        del _HELD[key]
        try:
            os.ftruncate(fd, 0)  # empty when free: the folder's bytes do not depend on who last held it
        except OSError:
            pass
        with contextlib.suppress(OSError):
            if created and all(p.name == LOCK for p in path.iterdir()):
                (path / LOCK).unlink(missing_ok=True)  # a start that wrote nothing leaves nothing behind
                path.rmdir()
        os.close(fd)  # releases the flock

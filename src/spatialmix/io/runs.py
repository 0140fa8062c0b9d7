"""A run directory on disk: resolved config, metrics, atomic checkpoints, one writer at a time.

Layout:

    RUN_DIR/
      run.lock               held (flock) by the one process writing the run; holds its pid
      config.json            resolved training config (+ spatialmix version)
      init.safetensors       weights at initialization (frozen filters can be checked against it)
      metrics.jsonl          one JSON line per epoch
      status.json            running / finished / failed / interrupted, and why
      summary.json           final numbers, written when the run finishes
      checkpoints/
        latest.json          names the newest complete checkpoint folder (written last, atomically)
        epoch-0003/model.safetensors, epoch-0003/train_state.pt

Every file is written to a unique temporary name, fsynced, renamed into place, and the folder is
fsynced after, so a run killed at any moment (or a power loss) leaves the previous checkpoint
intact. A checkpoint becomes visible only when ``latest.json`` points at it.

A run folder is something people download and share, so everything read from it is untrusted:
`Run` refuses any link in it whose target leaves it (`Run.check_links`, and again at
every read), reads every file through `spatialmix.io.untrusted` (no link followed out, no
device or fifo, a bounded size, JSON of bounded depth and numbers; never code unpickled) and checks
the shape of every file (`spatialmix.io.run_files`: one line naming the file and the field).
The writes are in `spatialmix.io.storage`, the lock in `spatialmix.io.lock`; the names
other modules use are re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

import torch

from spatialmix.errors import SpatialmixError, resume_command, setting
from spatialmix.io.limits import RECORD_BYTES, SPEED_FIELDS
from spatialmix.io.lock import LOCK, WRITER_ADVICE
from spatialmix.io.lock import locked as _locked_path
from spatialmix.io.paths import FolderWalk, inside
from spatialmix.io.run_files import (
    CHECKPOINT_NAME,
    validate_latest,
    validate_record,
    validate_status,
    validate_summary,
)
from spatialmix.io.storage import (
    WriteError,
    atomic_via_tmp,
    atomic_write_json,
    fsync_dir,
    save_weights,
    write_error,
)
from spatialmix.io.untrusted import (
    file_sha256,
    load_torch,
    load_weights,
    outside_error,
    read_json,
    read_jsonl,
)

CONFIG, INIT, METRICS, STATUS, SUMMARY = (
    "config.json",
    "init.safetensors",
    "metrics.jsonl",
    "status.json",
    "summary.json",
)
CKPT_DIR, LATEST, MODEL_FILE, STATE_FILE = "checkpoints", "latest.json", "model.safetensors", "train_state.pt"


# --------------------------------------------------------------------------- one run folder


class Run:
    """One run folder and every question asked about it: what it is, whether it finished (with
    which config), its summary, status, metrics and newest checkpoint. Everything read is validated.
    """

    def __init__(self, path: str | os.PathLike):
        if str(path) == "":
            raise SpatialmixError("the run folder is an empty string; pass a folder name such as runs/my-run")
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ---- paths
    def file(self, *parts: str) -> Path:
        """``RUN/parts...``, refusing a path that leads out of the run folder (a symlink to elsewhere)."""
        path = self.path.joinpath(*parts)
        if parts and os.path.lexists(path) and inside(self.path, path) is None:
            raise outside_error(path, "its run folder")
        return path

    def check_links(self) -> None:
        """Refuse the run folder if a link in it (its files, ``checkpoints/``, a checkpoint folder and
        what they hold) leads out of it: such a folder is damaged or built to read another's files."""
        folders = [self.path]
        while folders:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    path = Path(entry.path)
                    if entry.is_symlink():
                        self.file(*path.relative_to(self.path).parts)
                    elif entry.is_dir() and (entry.name == CKPT_DIR or CHECKPOINT_NAME.fullmatch(entry.name)):
                        folders.append(path)

    @property
    def exists(self) -> bool:
        return self.path.is_dir() and self.file(CONFIG).is_file()

    def check(self) -> Run:
        """Raise a clear error unless this is a spatialmix run of a version we read."""
        if not self.path.exists():
            raise SpatialmixError(f"run directory {self.path} does not exist")
        if not self.path.is_dir() or not self.file(CONFIG).is_file():
            raise SpatialmixError(
                f"{self.path} is not a spatialmix run (no {CONFIG}); pass a folder made by "
                f"`spatialmix train` or `spatialmix reproduce`"
            )
        self.check_links()
        self.record()
        return self

    def holds_nothing(self) -> bool:
        """True when the folder is missing, or holds only what a start killed before its first file leaves."""
        if not self.path.is_dir():
            return not self.path.exists()
        return all(p.name in (LOCK, INIT) or _is_tmp(p) for p in self.path.iterdir())

    # ---- the files
    def _json(self, name: str, what: str):
        path = self.file(name)
        return read_json(path, what, base=self.path, max_bytes=RECORD_BYTES), path

    def record(self) -> dict:
        """config.json, validated."""
        record, path = self._json(CONFIG, "run")
        return validate_record(record, path)

    def status(self) -> dict:
        """status.json, validated; ``{}`` when there is none yet."""
        if not self.file(STATUS).is_file():
            return {}
        status, path = self._json(STATUS, "run status")
        return validate_status(status, path)

    def summary(self) -> dict | None:
        if not self.file(SUMMARY).is_file():
            return None
        summary, path = self._json(SUMMARY, "run summary")
        return validate_summary(summary, path)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.file(METRICS), base=self.path)

    def is_finished(self) -> bool:
        return self.status().get("state") == "finished" and self.summary() is not None

    # ---- config comparison
    def config_differences(self, config, ignore=SPEED_FIELDS) -> list[tuple[str, object, object]]:
        """``(field, saved, ours)`` for every field of ``config`` that differs from the saved one.

        A field added to the config class after the run was made counts as its default (what the
        run behaved as). ``ignore``: fields that do not change what the run computes.
        """
        record = self.record()
        saved = {**dataclasses.asdict(type(config)()), **record["train"]}
        ours = dataclasses.asdict(config)
        # a config class may say that two spellings mean the same run (TrainConfig.same_setting)
        same = getattr(type(config), "same_setting", lambda name, a, b, saved: False)
        return [
            (k, saved.get(k), v)
            for k, v in ours.items()
            if k not in ignore and saved.get(k) != v and not same(k, saved.get(k), v, saved)
        ]

    def finished_summary(self, config, task: dict | None = None) -> dict | None:
        """The summary if this run finished with ``config``; None if it has not finished (or does not
        exist); an error if it finished with another config (reusing it would be a silent lie)."""
        if not self.path.is_dir() or not self.file(CONFIG).is_file() or not self.is_finished():
            return None
        diff = self.config_differences(config)
        saved_task = self.record().get("task") or {"name": "classification"}
        if task is not None and saved_task != task:
            diff.append(("task", saved_task, task))
        if diff:
            details = ", ".join(f"{k}={a!r} there, {b!r} now" for k, a, b in diff[:3])
            raise SpatialmixError(
                f"{self.path} finished with another configuration ({details}); use another "
                f"{setting('run_dir')}, or delete that run to train it again"
            )
        return self.summary()

    # ---- checkpoints
    def checkpoint_root(self) -> Path:
        return self.file(CKPT_DIR)

    def latest_checkpoint(self) -> Path | None:
        """The folder ``latest.json`` names, checked to be a checkpoint folder inside ``checkpoints/``."""
        pointer = self.file(CKPT_DIR, LATEST)
        if not pointer.is_file():
            return None
        saved = read_json(pointer, "checkpoint pointer", base=self.path, max_bytes=RECORD_BYTES)
        name, _ = validate_latest(saved, pointer)
        folder = self.file(CKPT_DIR, name)
        if not folder.is_dir():
            raise SpatialmixError(
                f"{pointer} names {name}, which is missing; resume with {resume_command(self.path)} "
                f"to continue from the newest complete checkpoint"
            )
        return folder

    def require_checkpoint(self) -> Path:
        folder = self.latest_checkpoint()
        if folder is None:
            raise SpatialmixError(no_checkpoint_message(self.path))
        return folder

    def checkpoints_newest_first(self) -> list[Path]:
        """Every checkpoint folder with both files, newest first (for falling back past a damaged one)."""
        root = self.checkpoint_root()
        if not root.is_dir():
            return []
        found = []
        for p in root.iterdir():
            match = CHECKPOINT_NAME.fullmatch(p.name)
            if (
                match
                and not p.is_symlink()
                and p.is_dir()
                and all((p / f).is_file() for f in (MODEL_FILE, STATE_FILE))
            ):
                found.append((int(match.group(1)), self.file(CKPT_DIR, p.name)))
        return [p for _, p in sorted(found, reverse=True)]

    def weights_fingerprint(self) -> dict:
        """Which weights the newest checkpoint holds: its folder and the SHA-256 of its model file."""
        folder = self.require_checkpoint()
        return {
            "checkpoint": folder.name,
            "sha256": file_sha256(self.file(CKPT_DIR, folder.name, MODEL_FILE), base=self.path),
        }

    # ---- cleaning after a kill (only under the lock)
    def remove_stray_temporaries(self) -> list[Path]:
        """Delete the ``.*.tmp`` files a kill left behind (call only while holding the run's lock).

        Only in the run's own folders: a link leading out of the run is refused before anything is
        deleted, and no link is followed (``checkpoints`` linked to another run's would otherwise
        lose that run's files)."""
        self.check_links()
        folders, root = [self.path], self.path / CKPT_DIR
        if root.is_dir() and not root.is_symlink():
            folders += [root, *(p for p in sorted(root.glob("epoch-*")) if p.is_dir() and not p.is_symlink())]
        removed = []
        for folder in folders:
            for p in folder.iterdir():
                if _is_tmp(p) and (p.is_file() or p.is_symlink()):
                    p.unlink(missing_ok=True)  # a link is removed itself, never what it points at
                    removed.append(p)
        return removed


def _is_tmp(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(".tmp")


def no_checkpoint_message(run_dir: Path) -> str:
    return (
        f"{run_dir} has no checkpoint yet (training never finished an epoch); train it first with "
        f"{resume_command(run_dir)}"
    )


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def check_run_dir(path: Path) -> Path:
    """Raise a clear error unless ``path`` is a spatialmix run directory of a version we read."""
    return Run(path).check().path


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: Path, epoch: int, model_state: dict, train_state: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/epoch-NNNN/`` then point ``latest.json`` at it; prune older ones."""
    run = Run(run_dir)
    ckpt_root = run.checkpoint_root()
    if ckpt_root.is_symlink():
        raise SpatialmixError(f"{ckpt_root} is a symlink; a run folder holds only its own files: remove it")
    folder = ckpt_root / f"epoch-{epoch:04d}"
    try:
        if folder.is_symlink():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        save_weights(folder / MODEL_FILE, model_state, metadata={"epoch": str(epoch)})
        atomic_via_tmp(folder / STATE_FILE, lambda tmp: torch.save(train_state, tmp))
        fsync_dir(ckpt_root)
        atomic_write_json(ckpt_root / LATEST, {"folder": folder.name, "epoch": epoch})
    except (OSError, WriteError) as err:
        # latest.json still names the last complete checkpoint; the incomplete folder goes, which
        # frees the space it took on a full disk.
        shutil.rmtree(folder, ignore_errors=True)
        failure = err if isinstance(err, WriteError) else write_error(folder, err)
        raise failure.advise(
            f"the last complete checkpoint is kept: free space and resume with {resume_command(run_dir)}"
        ) from None
    done = sorted(p for p in ckpt_root.glob("epoch-*") if p.is_dir() and not p.is_symlink())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    return Run(run_dir).latest_checkpoint()


def load_checkpoint(folder: Path, run_dir: Path) -> tuple[dict, dict]:
    """The model weights and training state of the checkpoint ``folder`` of ``run_dir`` (both files
    read only from inside the run folder)."""
    model_state = load_weights(folder / MODEL_FILE, base=run_dir)
    train_state = load_torch(folder / STATE_FILE, base=run_dir)
    if not isinstance(train_state, dict):
        raise SpatialmixError(f"{folder / STATE_FILE} is corrupt (not a training state)")
    return model_state, train_state


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike, advice: str = WRITER_ADVICE):
    """Hold ``run_dir`` exclusively for the block (see `spatialmix.io.lock`; ``advice`` ends the line that
    refuses it to a second process); yields its `Run`."""
    with _locked_path(Run(run_dir).path, advice):
        yield Run(run_dir)


RUN_SKIP_DIRS = {"checkpoints"}


def find_runs(folder: Path, max_depth: int = 3, walk: FolderWalk | None = None) -> list[Path]:
    """Run directories below ``folder`` (not below another run, nor in a hidden folder), sorted.

    ``folder`` is walked without leaving it (see `FolderWalk`): a link whose target leaves it is never
    followed, and is kept in ``walk.outside`` (pass a walk to name them); a run reached by two names
    counts once."""

    def descend(path: Path, depth: int) -> bool:
        return (
            depth < max_depth
            and not path.name.startswith(".")
            and path.name not in RUN_SKIP_DIRS
            and not is_run_dir(path)
        )

    found = (walk if walk is not None else FolderWalk(folder)).walk(descend)
    return sorted(p for p, is_folder in found if is_folder and not p.name.startswith(".") and is_run_dir(p))

"""A run directory on disk: resolved config, metrics, atomic checkpoints, one writer at a time.

Layout::

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
:class:`Run` checks the shape of every JSON file (one line naming the file and the field when it
is wrong), refuses paths that lead out of the run folder (symlinks, ``latest.json`` pointing
elsewhere), checks that weights files are regular files of plausible size before reading them,
and never unpickles code (safetensors, ``torch.load(weights_only=True)``). The file primitives are
in :mod:`spatialmix.io.storage`, the lock in :mod:`spatialmix.io.lock`; both are re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
from pathlib import Path

import torch

from spatialmix.errors import SpatialmixError
from spatialmix.io.limits import SIZE_LIMITS, SPEED_FIELDS
from spatialmix.io.lock import LOCK
from spatialmix.io.lock import locked as _locked_path
from spatialmix.io.paths import inside
from spatialmix.io.storage import (
    atomic_via_tmp,
    atomic_write_json,
    check_regular_file,
    file_sha256,
    fsync_dir,
    load_weights,
    read_json,
    read_jsonl,
    save_weights,
    write_error,
)

FORMAT_VERSION = 1
CONFIG, INIT, METRICS, STATUS, SUMMARY = (
    "config.json",
    "init.safetensors",
    "metrics.jsonl",
    "status.json",
    "summary.json",
)
CKPT_DIR, LATEST, MODEL_FILE, STATE_FILE = "checkpoints", "latest.json", "model.safetensors", "train_state.pt"
STATES = ("running", "finished", "failed", "interrupted")
CHECKPOINT_NAME = re.compile(r"epoch-(\d{4,9})")


# --------------------------------------------------------------------------- shapes of the run files


def _bad(path: Path, field: str, wanted: str, value) -> SpatialmixError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return SpatialmixError(
        f"{path}: field {field!r} must be {wanted}, got {shown}; the file is damaged or not spatialmix's"
    )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _need(path: Path, obj: dict, field: str, check, wanted: str, optional: bool = False):
    if field not in obj:
        if optional:
            return None
        raise SpatialmixError(f"{path}: field {field!r} is missing; the file is damaged or not spatialmix's")
    if not check(obj[field]):
        raise _bad(path, field, wanted, obj[field])
    return obj[field]


def _need_dict(path: Path, value, what: str = "a JSON object") -> dict:
    if not isinstance(value, dict):
        raise SpatialmixError(
            f"{path} must hold {what}, got {type(value).__name__}; the file is damaged or not spatialmix's"
        )
    return value


# The largest sizes a run folder may ask for. A model is built from config.json before its weights
# are read, so a hostile or mistyped size (width 10**9) would allocate without bound; these are
# several times the largest models of the paper (ConvMixer-1536/20, kernel 9, patch 7, 224 pixels)
# and of ImageNet-21k's 21,841 classes.
_LIMITS_TEXT = ", ".join(f"{name} {limit:,}" for name, limit in SIZE_LIMITS.items())


def check_size_limits(path: Path, values: dict) -> None:
    """Refuse a size above :data:`SIZE_LIMITS` in ``values`` (one section of config.json), before anything is
    built."""
    for name, limit in SIZE_LIMITS.items():
        value = values.get(name)
        if _is_int(value) and value > limit:
            raise SpatialmixError(
                f"{path}: field {name!r} is {value:,}; a run folder may ask for {name} at most "
                f"{limit:,} (limits: {_LIMITS_TEXT}): the file is damaged or not spatialmix's"
            )


def validate_record(record, path: Path) -> dict:
    """config.json's shape: what loading the run relies on (the TrainConfig fields are checked by it)."""
    _need_dict(path, record)
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise SpatialmixError(
            f"{path.parent} was written by an incompatible spatialmix (run format {version!r}, "
            f"this version reads {FORMAT_VERSION}); re-run it with this version"
        )
    train = _need(path, record, "train", lambda v: isinstance(v, dict), "a JSON object of training settings")
    data = _need(path, record, "data", lambda v: isinstance(v, dict), "a JSON object")
    for name in ("in_chans", "num_classes", "image_size"):
        _need(path, data, name, lambda v: _is_int(v) and v > 0, "a positive whole number")
    check_size_limits(path, train)
    check_size_limits(path, data)
    for name in ("mean", "std"):
        _need(
            path,
            data,
            name,
            lambda v: isinstance(v, list) and len(v) == data["in_chans"] and all(_is_number(x) for x in v),
            f"a list of {data['in_chans']} numbers",
        )
    if any(s <= 0 for s in data["std"]):
        raise _bad(path, "std", "positive numbers", data["std"])
    task = record.get("task")
    if task is not None:
        _need_dict(path, task, "a task object")
        _need(path, task, "name", lambda v: isinstance(v, str), "a task name")
    _need(path, record, "frozen_fingerprint", lambda v: isinstance(v, str), "a string", optional=True)
    return record


def validate_status(status, path: Path) -> dict:
    _need_dict(path, status)
    _need(path, status, "state", lambda v: v in STATES, f"one of {', '.join(STATES)}")
    _need(path, status, "epoch", lambda v: _is_int(v) and v >= 0, "a whole number >= 0")
    return status


SUMMARY_NUMBERS = (
    "trainable_params",
    "frozen_params",
    "epochs",
    "train_time",
    "images_per_s",
    "test_acc",
    "test_loss",
)


def validate_summary(summary, path: Path) -> dict:
    _need_dict(path, summary)
    for name, value in summary.items():
        if (name in SUMMARY_NUMBERS or name.startswith("best_")) and not _is_number(value):
            raise _bad(path, name, "a number", value)
    return summary


def validate_latest(pointer, path: Path) -> tuple[str, int]:
    _need_dict(path, pointer)
    folder = _need(
        path,
        pointer,
        "folder",
        lambda v: isinstance(v, str) and CHECKPOINT_NAME.fullmatch(v),
        "a checkpoint folder name like epoch-0003",
    )
    epoch = _need(path, pointer, "epoch", lambda v: _is_int(v) and v >= 0, "a whole number >= 0")
    if int(CHECKPOINT_NAME.fullmatch(folder).group(1)) != epoch:
        raise _bad(path, "epoch", f"the epoch of {folder}", epoch)
    return folder, epoch


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
            raise SpatialmixError(
                f"{path} points outside its run folder (to {os.path.realpath(path)}); a run folder holds "
                f"only its own files: remove the link"
            )
        return path

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
        return read_json(path, what), path

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
        return read_jsonl(self.file(METRICS))

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
                f"--out, or delete that run to train it again"
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
        name, _ = validate_latest(read_json(pointer, "checkpoint pointer"), pointer)
        folder = self.file(CKPT_DIR, name)
        if not folder.is_dir():
            raise SpatialmixError(
                f"{pointer} names {name}, which is missing; resume with `spatialmix train "
                f"--resume --out {self.path}` to continue from the newest complete checkpoint"
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
            "sha256": file_sha256(self.file(CKPT_DIR, folder.name, MODEL_FILE)),
        }

    # ---- cleaning after a kill (only under the lock)
    def remove_stray_temporaries(self) -> list[Path]:
        """Delete the ``.*.tmp`` files a kill left behind (call only while holding the run's lock)."""
        removed = []
        for folder in [self.path, self.path / CKPT_DIR, *sorted((self.path / CKPT_DIR).glob("epoch-*"))]:
            if folder.is_dir() and not folder.is_symlink():
                for p in folder.iterdir():
                    if _is_tmp(p) and (p.is_file() or p.is_symlink()):
                        p.unlink(missing_ok=True)
                        removed.append(p)
        return removed


def _is_tmp(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(".tmp")


def no_checkpoint_message(run_dir: Path) -> str:
    return (
        f"{run_dir} has no checkpoint yet (training never finished an epoch); train it first with "
        f"`spatialmix train --resume --out {run_dir}`"
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
    except OSError as err:
        raise write_error(folder, err) from None
    save_weights(folder / MODEL_FILE, model_state, metadata={"epoch": str(epoch)})
    atomic_via_tmp(folder / STATE_FILE, lambda tmp: torch.save(train_state, tmp))
    fsync_dir(ckpt_root)
    atomic_write_json(ckpt_root / LATEST, {"folder": folder.name, "epoch": epoch})
    done = sorted(p for p in ckpt_root.glob("epoch-*") if p.is_dir() and not p.is_symlink())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    return Run(run_dir).latest_checkpoint()


def load_checkpoint(folder: Path) -> tuple[dict, dict]:
    model_state = load_weights(folder / MODEL_FILE)
    check_regular_file(folder / STATE_FILE)
    try:
        train_state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SpatialmixError(f"{folder / STATE_FILE} is corrupt ({type(err).__name__})") from None
    if not isinstance(train_state, dict):
        raise SpatialmixError(f"{folder / STATE_FILE} is corrupt (not a training state)")
    return model_state, train_state


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike):
    """Hold ``run_dir`` exclusively for the block (see :mod:`spatialmix.io.lock`); yields its :class:`Run`."""
    with _locked_path(Run(run_dir).path):
        yield Run(run_dir)


RUN_SKIP_DIRS = {"checkpoints"}


def find_runs(folder: Path, max_depth: int = 3) -> list[Path]:
    """Run directories below ``folder`` (not below another run), sorted."""
    found = []

    def walk(path: Path, depth: int):
        for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if is_run_dir(child):
                found.append(child)
            elif depth < max_depth and child.name not in RUN_SKIP_DIRS:
                walk(child, depth + 1)

    walk(folder, 1)
    return found

"""The shapes of a run folder's files: what each must hold, checked field by field.

config.json, status.json, summary.json, ``checkpoints/latest.json`` and a checkpoint's training
progress (``train_state.pt``) are checked here.

Each check raises one line naming the file and the field (``bad_field``), so a damaged or hostile file
is refused before anything relies on it; `spatialmix.io.runs` reads the files through them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from spatialmix.errors import SpatialmixError
from spatialmix.io.limits import SIZE_LIMITS, out_of_range

FORMAT_VERSION = 1
STATES = ("running", "finished", "failed", "interrupted")
CHECKPOINT_NAME = re.compile(r"epoch-(\d{4,9})")

# --------------------------------------------------------------------------- shapes of the run files


def bad_field(path: Path, field: str, wanted: str, value) -> SpatialmixError:
    return SpatialmixError(
        f"{path}: field {field!r} must be {wanted}, got {_shown(value)}; the file is damaged or not "
        f"spatialmix's"
    )


def _shown(value) -> str:
    """``repr(value)``, cut to 60 characters, for any value a hostile file may hold."""
    if is_int(value) and value.bit_length() > 128:
        return f"a whole number of {value.bit_length():,} bits"
    if isinstance(value, (list, dict, str, bytes)) and len(value) > 1000:
        return f"a {type(value).__name__} of {len(value):,} items"
    try:
        shown = repr(value)
    except (ValueError, RecursionError):  # a number of 5,000 digits inside, or nesting without end
        return f"a {type(value).__name__}"
    return shown if len(shown) <= 60 else shown[:57] + "..."


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def need_field(path: Path, obj: dict, field: str, check, wanted: str, optional: bool = False):
    if field not in obj:
        if optional:
            return None
        raise SpatialmixError(f"{path}: field {field!r} is missing; the file is damaged or not spatialmix's")
    if not check(obj[field]):
        raise bad_field(path, field, wanted, obj[field])
    return obj[field]


def need_dict(path: Path, value, what: str = "a JSON object") -> dict:
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
    """Refuse a size above `SIZE_LIMITS` in ``values`` (one section of config.json), before anything is
    built."""
    for name, limit in SIZE_LIMITS.items():
        value = values.get(name)
        if is_int(value) and value > limit:
            raise SpatialmixError(
                f"{path}: field {name!r} is {value:,}; a run folder may ask for {name} at most "
                f"{limit:,} (limits: {_LIMITS_TEXT}): the file is damaged or not spatialmix's"
            )


def validate_record(record, path: Path) -> dict:
    """config.json's shape: what loading the run relies on (the TrainConfig fields are checked by it)."""
    need_dict(path, record)
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise SpatialmixError(
            f"{path.parent} was written by an incompatible spatialmix (run format {version!r}, "
            f"this version reads {FORMAT_VERSION}); re-run it with this version"
        )
    train = need_field(
        path, record, "train", lambda v: isinstance(v, dict), "a JSON object of training settings"
    )
    data = need_field(path, record, "data", lambda v: isinstance(v, dict), "a JSON object")
    for name in ("in_chans", "num_classes", "image_size"):
        need_field(path, data, name, lambda v: is_int(v) and v > 0, "a positive whole number")
    check_size_limits(path, train)
    check_size_limits(path, data)
    wrong = out_of_range(train)
    if wrong:
        name, value, lowest, highest = wrong
        raise bad_field(path, name, f"a whole number from {lowest:,} to {highest:,}", value)
    for name in ("mean", "std"):
        need_field(
            path,
            data,
            name,
            lambda v: isinstance(v, list) and len(v) == data["in_chans"] and all(is_number(x) for x in v),
            f"a list of {data['in_chans']} numbers",
        )
    if any(s <= 0 for s in data["std"]):
        raise bad_field(path, "std", "positive numbers", data["std"])
    task = record.get("task")
    if task is not None:
        need_dict(path, task, "a task object")
        need_field(path, task, "name", lambda v: isinstance(v, str), "a task name")
    need_field(path, record, "frozen_fingerprint", lambda v: isinstance(v, str), "a string", optional=True)
    return record


def validate_status(status, path: Path) -> dict:
    need_dict(path, status)
    need_field(path, status, "state", lambda v: v in STATES, f"one of {', '.join(STATES)}")
    need_field(path, status, "epoch", lambda v: is_int(v) and v >= 0, "a whole number >= 0")
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
    need_dict(path, summary)
    for name, value in summary.items():
        if (name in SUMMARY_NUMBERS or name.startswith("best_")) and not is_number(value):
            raise bad_field(path, name, "a number", value)
    return summary


def validate_latest(pointer, path: Path) -> tuple[str, int]:
    need_dict(path, pointer)
    folder = need_field(
        path,
        pointer,
        "folder",
        lambda v: isinstance(v, str) and CHECKPOINT_NAME.fullmatch(v),
        "a checkpoint folder name like epoch-0003",
    )
    epoch = need_field(path, pointer, "epoch", lambda v: is_int(v) and v >= 0, "a whole number >= 0")
    if int(CHECKPOINT_NAME.fullmatch(folder).group(1)) != epoch:
        raise bad_field(path, "epoch", f"the epoch of {folder}", epoch)
    return folder, epoch


# --------------------------------------------------------------------------- a checkpoint's progress

PROGRESS_NUMBERS = {  # field -> (check, what it must be)
    "step": (lambda v: is_int(v) and v >= 0, "a whole number >= 0"),
    "images_seen": (lambda v: is_int(v) and v >= 0, "a whole number >= 0"),
    "best_score": (is_number, "a finite number"),
    "train_time": (lambda v: is_number(v) and v >= 0, "a finite number >= 0"),
}


def validate_progress(train_state: dict, path: Path, epoch: int, epochs: int) -> dict:
    """train_state.pt's ``progress`` (what continuing the run relies on), of the checkpoint of ``epoch``
    in a run of ``epochs``: every field of the right type and range, one metrics record per epoch."""
    progress = train_state.get("progress")
    if not isinstance(progress, dict):
        raise bad_field(path, "progress", "an object of training progress", progress)
    fields = {f"progress.{k}": v for k, v in progress.items()}
    unknown = sorted(str(k) for k in progress if k not in (*PROGRESS_NUMBERS, "epoch", "history"))
    if unknown:
        raise SpatialmixError(
            f"{path}: field 'progress' holds fields this spatialmix does not know "
            f"({', '.join(unknown)[:80]}); the file is damaged or not spatialmix's"
        )
    if epoch > epochs:
        raise bad_field(path, "progress.epoch", f"at most the run's {epochs} epochs", epoch)
    need_field(
        path,
        fields,
        "progress.epoch",
        lambda v: is_int(v) and v == epoch,
        f"{epoch}, its checkpoint's epoch",
    )
    for name, (check, wanted) in PROGRESS_NUMBERS.items():
        need_field(path, fields, f"progress.{name}", check, wanted)
    history = need_field(
        path,
        fields,
        "progress.history",
        lambda v: isinstance(v, list) and len(v) == epoch,
        f"a list of {epoch} records",
    )
    for number, record in enumerate(history, 1):
        if not _is_metrics_of(record, number):
            raise bad_field(path, f"progress.history[{number - 1}]", f"the metrics of epoch {number}", record)
    return progress


def _is_metrics_of(record, epoch: int) -> bool:
    """A metrics record of ``epoch``: names to finite numbers (what metrics.jsonl is rewritten from)."""
    return (
        isinstance(record, dict)
        and is_int(record.get("epoch"))
        and record["epoch"] == epoch
        and all(isinstance(k, str) and (isinstance(v, str) or is_number(v)) for k, v in record.items())
    )

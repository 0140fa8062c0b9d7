"""A run directory on disk: resolved config, metrics, atomic checkpoints.

Layout::

    RUN_DIR/
      config.json            resolved training config (+ spatialmix version)
      init.safetensors       weights at initialization (frozen filters can be checked against it)
      metrics.jsonl          one JSON line per epoch
      status.json            running / finished / failed, and why
      summary.json           final numbers, written when the run finishes
      checkpoints/
        latest.json          names the newest complete checkpoint folder (written last, atomically)
        epoch-0003/model.safetensors, epoch-0003/train_state.pt

Every file is written to a temporary name and renamed into place, and a checkpoint becomes
visible only when ``latest.json`` points at it, so a run killed at any moment leaves the
previous checkpoint intact. Nothing here unpickles code: weights are safetensors and the
training state is loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import SpatialmixError

FORMAT_VERSION = 1
CONFIG, INIT, METRICS, STATUS, SUMMARY = "config.json", "init.safetensors", "metrics.jsonl", "status.json", "summary.json"
CKPT_DIR, LATEST, MODEL_FILE, STATE_FILE = "checkpoints", "latest.json", "model.safetensors", "train_state.pt"


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _atomic_via_tmp(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _atomic_via_tmp(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SpatialmixError(f"{path} is not a readable safetensors file ({err}); "
                              f"delete it or restore it from a copy") from None


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything before it is good
    return records


def read_json(path: Path, what: str = "file") -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpatialmixError(f"{path} is missing: not a spatialmix {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpatialmixError(f"{path} is corrupt (not JSON); restore it or start a new run") from None


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def check_run_dir(path: Path) -> Path:
    """Raise a clear error unless ``path`` is a spatialmix run directory of a version we read."""
    path = Path(path)
    if not path.exists():
        raise SpatialmixError(f"run directory {path} does not exist")
    if not path.is_dir() or not is_run_dir(path):
        raise SpatialmixError(f"{path} is not a spatialmix run (no {CONFIG}); pass a folder made by "
                              f"`spatialmix train` or `spatialmix reproduce`")
    version = read_json(path / CONFIG, "run").get("format_version")
    if version != FORMAT_VERSION:
        raise SpatialmixError(f"{path} was written by an incompatible spatialmix (run format {version}, "
                              f"this version reads {FORMAT_VERSION}); re-run it with this version")
    return path


# --------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: Path, epoch: int, model_state: dict, train_state: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/epoch-NNNN/`` then point ``latest.json`` at it; prune older ones."""
    ckpt_root = Path(run_dir) / CKPT_DIR
    folder = ckpt_root / f"epoch-{epoch:04d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_weights(folder / MODEL_FILE, model_state, metadata={"epoch": str(epoch)})
    _atomic_via_tmp(folder / STATE_FILE, lambda tmp: torch.save(train_state, tmp))
    atomic_write_json(ckpt_root / LATEST, {"folder": folder.name, "epoch": epoch})
    done = sorted(p for p in ckpt_root.glob("epoch-*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CKPT_DIR / LATEST
    if not pointer.is_file():
        return None
    folder = Path(run_dir) / CKPT_DIR / read_json(pointer, "checkpoint")["folder"]
    if not folder.is_dir():
        raise SpatialmixError(f"{pointer} names {folder.name}, which is missing; the run directory was "
                              f"edited by hand: start a new run")
    return folder


def load_checkpoint(folder: Path) -> tuple[dict, dict]:
    model_state = load_weights(folder / MODEL_FILE)
    try:
        train_state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SpatialmixError(f"{folder / STATE_FILE} is corrupt ({type(err).__name__}); "
                              f"delete {folder} to resume from the checkpoint before it") from None
    return model_state, train_state

"""Starting, checkpointing and continuing a run folder (see `spatialmix.io.runs` for its files).

Everything `spatialmix.engine.train.fit` needs to make a run survive a kill at any moment:
whether a folder may be started or continued with a config (`prepare_run_dir`,
`resume_config`), the record written at its start, saving and restoring the complete
training state (weights, optimizer, random generators, progress) with a fall-back to the newest
complete checkpoint, and the refusal to save anything non-finite.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from spatialmix.core.mixing import applied_inits, frozen_fingerprint, summarize
from spatialmix.data.datasets import ImageData
from spatialmix.engine import distributed
from spatialmix.engine.config import DIVERGED_RESUMABLE_FIELDS, RESUMABLE_FIELDS, TrainConfig
from spatialmix.engine.divergence import divergence_reason
from spatialmix.engine.tasks import data_info, saved_config, task_from_dict
from spatialmix.errors import NonFiniteLossError, SpatialmixError, setting
from spatialmix.io import run_files, runs
from spatialmix.io.paths import check_folder_path
from spatialmix.io.run_files import validate_progress
from spatialmix.version import __version__

# The training state's entries of a run with a moving average (its model file holds the average).
TRAINED_WEIGHTS, AVERAGED_STEPS = "trained_weights", "averaged_steps"


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_score: float = float("-inf")
    train_time: float = 0.0  # seconds spent in training steps (not evaluation)
    images_seen: int = 0
    history: list = field(default_factory=list)


def resumable_fields(run: runs.Run) -> frozenset:
    """What may change when ``run`` is continued: speed settings and epochs; lr and amp too after a
    divergence."""
    return RESUMABLE_FIELDS | (
        DIVERGED_RESUMABLE_FIELDS if run.status().get("state") == "failed" else frozenset()
    )


def _different_config_error(run_dir: Path, diff: list, allowed) -> SpatialmixError:
    details = ", ".join(f"{k}={saved!r} (saved) vs {ours!r}" for k, saved, ours in diff[:4])
    may = ", ".join(sorted(a for a in allowed if a not in ("threads", "download")))
    return SpatialmixError(
        f"cannot resume {run_dir}: it was made with a different config ({details}); only {may} "
        f"may change on resume: drop the other options, or start a new run with another {setting('run_dir')}"
    )


def resume_config(run_dir: str | Path, changes: dict | None = None) -> TrainConfig:
    """The config that continues ``run_dir``: its saved config with ``changes`` (options given again).

    A change to a field that may not change on resume is an error naming the field; a folder where
    nothing was saved yet gives ``TrainConfig(**changes)`` (the run starts), and is an error when no
    option was given (a default run is not the run that was killed).
    """
    changes = dict(changes or {})
    TrainConfig(**changes).validate()  # names and signs first, whatever the run holds
    run = runs.Run(run_dir)
    if run.holds_nothing():
        if not changes:  # a default run is not the run that was killed
            raise SpatialmixError(
                f"{run.path}: nothing of this run was saved (it stopped before writing config.json), so "
                f"{setting('resume', True)} cannot know its options; give its options again with "
                f"{setting('resume', True)}, and it starts"
            )
        return TrainConfig(**changes)
    run.check()
    saved = saved_config(run)
    allowed = resumable_fields(run)
    _check_epochs_grow(run, changes.get("epochs", saved.epochs))
    diff = [
        (k, getattr(saved, k), v) for k, v in changes.items() if k not in allowed and getattr(saved, k) != v
    ]
    if diff:
        raise _different_config_error(run.path, diff, allowed)
    return saved.replace(**changes)


def prepare_run_dir(run_dir: Path, config: TrainConfig, resume: bool, task) -> None:
    """Check that starting or resuming in ``run_dir`` cannot damage anything already there.

    ``resume`` continues a run, or starts it when nothing was saved yet (a kill before its first file).
    """
    run = runs.Run(run_dir)
    check_folder_path(run.path)
    if run.holds_nothing():
        return
    if not resume:
        raise SpatialmixError(
            f"{run.path} already holds a run; pass {setting('resume', True)} to continue it or choose "
            f"another {setting('run_dir')}"
        )
    run.check()
    allowed = resumable_fields(run)
    diff = run.config_differences(config, ignore=allowed)
    saved_task = run.record().get("task") or {"name": "classification"}
    try:
        task_from_dict(saved_task)
    except SpatialmixError as err:
        raise SpatialmixError(f"{run.file(runs.CONFIG)}: {err}") from None
    if saved_task != task.to_dict():
        diff.append(("task", saved_task, task.to_dict()))
    _check_epochs_grow(run, config.epochs)
    if diff:
        raise _different_config_error(run.path, diff, allowed)


def _check_epochs_grow(run: runs.Run, epochs: int) -> None:
    saved = saved_config(run).epochs
    if epochs < saved:
        raise SpatialmixError(
            f"cannot resume {run.path} with --epochs {epochs}: it was made for {saved} epochs, and "
            f"epochs may only grow on resume (to extend a run)"
        )


def run_record(config: TrainConfig, data: ImageData, model: nn.Module, task, fingerprint: str) -> dict:
    summary = summarize(model)
    return {
        "format_version": run_files.FORMAT_VERSION,
        "spatialmix_version": __version__,
        "torch_version": torch.__version__,
        "task": task.to_dict(),
        "model_name": config.model_name,  # (train.model is the named configuration the sizes override)
        "train": config.to_dict(),
        "data": data_info(data),
        "params": {"trainable": summary.trainable, "frozen": summary.frozen, "by_kind": summary.rows},
        "inits": applied_inits(model),  # which init each mixer kind started from
        "frozen_fingerprint": fingerprint,
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        # This process's GPU only: reading all of them would open a context on every GPU of the node
        # in every process, and a run resumed on fewer GPUs could not restore them.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, torch.Tensor):
            torch.cuda.set_rng_state(cuda)
        else:  # checkpoints written before: one state per GPU
            torch.cuda.set_rng_state_all(list(cuda)[: torch.cuda.device_count()])


def save_state(
    run_dir: Path, model: nn.Module, optimizer, state: TrainState, averaged: AveragedModel | None = None
) -> None:
    """Save a checkpoint. Its model file holds the weights the run is judged by: the moving average
    when there is one (what evaluation, ``attack`` and ``Run.model()`` read), and then the weights
    being trained and the average's count go into the training state, for resuming."""
    train_state = {
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(),
        "progress": {k: v for k, v in dataclasses.asdict(state).items()},
    }
    weights = model.state_dict()
    if averaged is not None:
        train_state[TRAINED_WEIGHTS] = weights
        train_state[AVERAGED_STEPS] = averaged.n_averaged.detach().cpu().clone()
        weights = averaged.module.state_dict()
    runs.save_checkpoint(run_dir, state.epoch, weights, train_state)


def saved_metrics(run_dir: Path) -> list[dict] | None:
    try:
        return runs.Run(run_dir).metrics()
    except SpatialmixError:  # damaged: rewritten from the checkpoint's history
        return None


def restore_newest(
    run_dir: Path,
    model: nn.Module,
    optimizer,
    init_fingerprint: str,
    say: bool,
    averaged: AveragedModel | None = None,
) -> TrainState | None:
    """Load the newest checkpoint that is complete and readable; None when there is none (start over).

    A damaged newest checkpoint (or a ``latest.json`` naming a missing folder) falls back to the
    one before it, with a line saying so; when none is left the error says how to start over.
    """
    run = runs.Run(run_dir)
    problem = None
    try:
        latest = run.latest_checkpoint()
    except SpatialmixError as err:
        latest, problem = None, err
    candidates = ([latest] if latest is not None else []) + [
        c for c in run.checkpoints_newest_first() if latest is None or c.name != latest.name
    ]
    epochs = saved_config(run).epochs if candidates else 0  # no checkpoint may be past them
    for folder in candidates:
        try:
            state = _restore(run, model, optimizer, folder, init_fingerprint, epochs, averaged)
        except SpatialmixError as err:
            problem = problem or err
            continue
        if problem is not None and say:
            print(
                f"spatialmix: warning: {str(problem).split('; ')[0]}; continuing from the newest complete "
                f"checkpoint, {folder.name}",
                file=sys.stderr,
            )
        return state
    if problem is None or (latest is None and not candidates and "which is missing" in str(problem)):
        if problem is not None and say:  # its checkpoints were deleted by hand: start over
            print(
                f"spatialmix: warning: {run_dir} has no checkpoint left; training starts from the beginning",
                file=sys.stderr,
            )
        return None
    raise SpatialmixError(
        f"{problem} (no older complete checkpoint to fall back to; delete "
        f"{run.checkpoint_root()} and resume to train again from the beginning)"
    )


def _restore(
    run: runs.Run,
    model: nn.Module,
    optimizer,
    folder: Path,
    init_fingerprint: str,
    epochs: int,
    averaged: AveragedModel | None = None,
) -> TrainState:
    model_state, train_state = runs.load_checkpoint(folder, run.path)
    state_file = folder / runs.STATE_FILE
    epoch = int(runs.CHECKPOINT_NAME.fullmatch(folder.name).group(1))
    progress = validate_progress(train_state, state_file, epoch, epochs)
    if (averaged is not None) != (TRAINED_WEIGHTS in train_state):
        raise SpatialmixError(
            f"checkpoint {folder} was saved {'without' if averaged is not None else 'with'} a moving "
            f"average of the weights (ema_decay); start a new run with another --out"
        )
    try:
        if averaged is not None:
            averaged.module.load_state_dict(model_state)
            averaged.n_averaged.copy_(train_state[AVERAGED_STEPS])
            model_state = train_state[TRAINED_WEIGHTS]
        model.load_state_dict(model_state)
        optimizer.load_state_dict(train_state["optimizer"])
        _set_rng_state(train_state["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise SpatialmixError(
            f"checkpoint {folder} does not match this run's model ({first}); "
            f"start a new run with another {setting('run_dir')}"
        ) from None
    averaged_fingerprint = init_fingerprint if averaged is None else frozen_fingerprint(averaged.module)
    if {frozen_fingerprint(model), averaged_fingerprint} != {init_fingerprint}:
        raise SpatialmixError(
            f"checkpoint {folder}: frozen tensors differ from the ones this config rebuilds; "
            f"the checkpoint belongs to another config or was modified"
        )
    _check_optimizer_state(optimizer, state_file)
    return TrainState(**progress)


def _check_optimizer_state(optimizer, path: Path) -> None:
    """Every tensor the optimizer keeps per parameter has that parameter's shape (load_state_dict checks
    only the groups: a damaged moment tensor would fail at the first step, mid-training)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise SpatialmixError(
                        f"{path}: field 'optimizer.state.{name}' has shape {tuple(value.shape)}, its "
                        f"parameter {tuple(param.shape)}; the checkpoint is damaged: resume from another copy"
                    )


def record_stop(run: runs.Run, err: BaseException) -> None:
    """After a run stopped early: status.json names the newest complete checkpoint and why it stopped."""
    if isinstance(err, NonFiniteLossError) or not run.file(runs.CONFIG).is_file():
        return  # a divergence writes its own status; a start that saved nothing has no status
    try:
        if run.status().get("state") in ("finished", "failed"):
            return
        latest = run.latest_checkpoint()
        epoch = int(latest.name.split("-")[1]) if latest is not None else 0
    except SpatialmixError:
        epoch = 0
    why = (
        "interrupted"
        if isinstance(err, KeyboardInterrupt)
        else (str(err).splitlines() or [type(err).__name__])[0]
    )
    try:
        runs.atomic_write_json(
            run.file(runs.STATUS), {"state": "interrupted", "epoch": epoch, "reason": why[:300]}
        )
    except (SpatialmixError, OSError):
        pass  # the disk may be full: the checkpoints are consistent anyway


def stop_if_not_finite(
    run_dir: Path,
    state: TrainState,
    model: nn.Module,
    test: dict,
    epoch: int,
    config: TrainConfig,
    device: torch.device,
) -> None:
    """Never save a poisoned checkpoint: the weights, the BatchNorm statistics and the test loss must be
    finite."""
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not torch.isfinite(t).all()
    ]
    bad += [f"test {k}" for k, v in test.items() if isinstance(v, float) and not math.isfinite(v)]
    if not distributed.all_true(torch.tensor(not bad, device=device), device):
        what = (
            ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            if bad
            else "another rank"
        )
        stop_on_nonfinite(run_dir, state, f"{what} became non-finite in epoch {epoch + 1}", config, model)


def stop_on_nonfinite(
    run_dir: Path, state: TrainState, what: str, config: TrainConfig, model: nn.Module | None = None
):
    reason = divergence_reason(run_dir, state.epoch, state.step, what, config, model)
    if distributed.is_main():
        runs.atomic_write_json(
            run_dir / runs.STATUS, {"state": "failed", "epoch": state.epoch, "reason": reason}
        )
    raise NonFiniteLossError(f"training stopped: {reason}")

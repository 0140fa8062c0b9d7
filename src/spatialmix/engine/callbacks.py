"""Hooks into training: `Callback`, and the TensorBoard and Weights & Biases loggers built on it.

``train(..., callbacks=[...])`` calls each callback at the start of the run, after every optimizer
step, after every epoch (with the line just appended to ``metrics.jsonl``) and at the end, on rank
0 only (under ``torchrun`` the other processes train silently). An exception raised by a callback
stops the run like any other error: the run is left resumable and the exception reaches the caller.
``spatialmix train --log tensorboard,wandb`` picks the built-in loggers by name (`LOGGERS`).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from spatialmix.engine.distributed import launched_rank
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.io import runs

LOG_DIR = "logs"  # RUN/logs/: where the loggers write unless told otherwise


class Callback:
    """Subclass and override what you need; every method does nothing by default."""

    def on_run_start(self, run_dir: Path, config, step: int) -> None:
        """Before the first step of this call: ``step`` optimizer steps were taken before (resumed: > 0)."""

    def on_step_end(self, step: int, loss: torch.Tensor) -> None:
        """After optimizer step ``step`` (counted from the run's start). ``loss`` is the batch's loss
        as a 0-d tensor on the training device: ``loss.item()`` waits for the device, so call it only
        on the steps you log."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        """After epoch ``epoch`` (1-based) was evaluated and checkpointed; ``metrics`` is its line of
        ``metrics.jsonl`` (``train_loss``, ``test_acc``, ``step``, ``lr``, ...)."""

    def on_run_end(self, summary: dict | None) -> None:
        """When this call ends: the run's summary when it finished, None when it stopped before
        (an error, Ctrl-C, ``max_steps``)."""


def _log_folder(run_dir: Path, name: str) -> Path:
    """``RUN/logs/NAME``, refused if it leads out of the run folder (a run folder may come from anyone)."""
    run = runs.Run(run_dir)
    run.file(LOG_DIR), run.file(LOG_DIR, name)
    return run.path / LOG_DIR / name


class TensorBoardLogger(Callback):
    """Every metric of every epoch as a TensorBoard scalar (its tag is the metric's name, its step the
    optimizer step), the training loss every ``every_n_steps`` steps as ``train_loss_step``, and the
    config as text. Event files go to ``log_dir`` (default: ``RUN/logs/tensorboard``):

        tensorboard --logdir runs/my-run/logs/tensorboard
    """

    def __init__(self, log_dir: str | Path | None = None, every_n_steps: int = 20):
        if every_n_steps < 1:
            raise SpatialmixError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.every_n_steps = every_n_steps
        self.writer: SummaryWriter | None = None

    def on_run_start(self, run_dir: Path, config, step: int) -> None:
        folder = self.log_dir or _log_folder(run_dir, "tensorboard")
        # purge_step: a resumed run hides what the steps after its checkpoint had logged before the kill
        # (they run again).
        self.writer = SummaryWriter(str(folder), purge_step=step + 1 if step else None)
        self.writer.add_text("config", f"```\n{json.dumps(config.to_dict(), indent=1)}\n```", step)

    def on_step_end(self, step: int, loss: torch.Tensor) -> None:
        if step % self.every_n_steps == 0:
            self.writer.add_scalar("train_loss_step", loss.item(), step)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        for name, value in metrics.items():
            if name not in ("epoch", "step") and isinstance(value, (int, float)):
                self.writer.add_scalar(name, value, metrics["step"])
        self.writer.add_scalar("epoch", epoch, metrics["step"])
        self.writer.flush()

    def on_run_end(self, summary: dict | None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(Callback):
    """Every metric of every epoch (and the training loss every ``every_n_steps`` steps) to Weights &
    Biases, the config as its config and the summary as its summary. ``mode``: wandb's own
    ``WANDB_MODE`` where it is set (``disabled`` turns the logger off), else ``"offline"``, which
    writes to ``dir`` (default: ``RUN/logs``) for ``wandb sync`` later; ``"online"`` sends as it goes.
    ``init``: more arguments of ``wandb.init`` (``entity``, ``tags``, ...). Needs ``pip install wandb``.
    """

    def __init__(
        self,
        project: str = "spatialmix",
        mode: str | None = None,
        dir: str | Path | None = None,
        every_n_steps: int = 20,
        **init,
    ):
        try:
            self.wandb = importlib.import_module("wandb")  # optional: only this logger needs it
        except ImportError:
            raise SpatialmixError(
                "logging to Weights & Biases needs the wandb package: pip install wandb"
            ) from None
        if every_n_steps < 1:
            raise SpatialmixError(f"every_n_steps must be at least 1, got {every_n_steps}")
        if mode is None:  # what the environment says (WANDB_MODE=disabled in CI), else offline
            mode = os.environ.get("WANDB_MODE") or "offline"
        self.project, self.mode, self.dir, self.init = project, mode, dir, init
        self.every_n_steps = every_n_steps
        self.run = None

    def on_run_start(self, run_dir: Path, config, step: int) -> None:
        folder = Path(self.dir) if self.dir is not None else _log_folder(run_dir, "")
        folder.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            **{
                "project": self.project,
                "mode": self.mode,
                "dir": str(folder),
                "name": Path(run_dir).name,
                "config": config.to_dict(),
                **self.init,
            }
        )

    def on_step_end(self, step: int, loss: torch.Tensor) -> None:
        if step % self.every_n_steps == 0:
            self.run.log({"train_loss_step": loss.item()}, step=step)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.run.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def on_run_end(self, summary: dict | None) -> None:
        if self.run is None:
            return
        if summary is not None:
            per_example = ("test_correct_bits", "test_psnr_per_example")  # long, one value per example
            self.run.summary.update({k: v for k, v in summary.items() if k not in per_example})
        self.run.finish()
        self.run = None


# The loggers ``--log`` names.
LOGGERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}


def loggers(names) -> list[Callback]:
    """The built-in loggers named (``["tensorboard", "wandb"]``), each with its defaults."""
    for name in names:
        if name not in LOGGERS:
            raise unknown_name("logger", name, LOGGERS)
    return [LOGGERS[name]() for name in dict.fromkeys(names)]


def for_this_rank(callbacks) -> list[Callback]:
    """``callbacks`` on rank 0 (every process of a plain run); none on the other ranks under ``torchrun``."""
    return list(callbacks) if launched_rank() == 0 else []


def call(callbacks, event: str, *args) -> None:
    """Call ``event`` of every callback, in order; an exception goes to the caller."""
    for callback in callbacks:
        getattr(callback, event)(*args)

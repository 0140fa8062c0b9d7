"""Training one configuration: the loop, read top to bottom.

`TrainConfig` says everything a run depends on;
`build_model` turns it into a model with its mixers initialized and
frozen; `fit` runs it in four named steps (start or resume, one epoch, evaluate and
checkpoint, finish) and keeps the run folder (`spatialmix.io.runs`, `spatialmix.engine.resume`)
up to date after every epoch, so a run killed at any moment continues bit for bit. (The public
``sm.train`` wraps it and returns a `spatialmix.workflow.handle.Run`.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from spatialmix.accel import speed
from spatialmix.core.mixing import frozen_fingerprint, trainable_parameters
from spatialmix.data.batches import BatchLoader, InputSpaceModel
from spatialmix.data.datasets import ImageData
from spatialmix.engine import callbacks as hooks
from spatialmix.engine import distributed
from spatialmix.engine.classification import ClassificationTask
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.device import autocast_context, resolve_amp, resolve_device
from spatialmix.engine.divergence import all_finite, what_became_non_finite
from spatialmix.engine.loaders import load_data_for, make_loaders
from spatialmix.engine.optim import make_optimizer, moving_average, piecewise_linear_lr
from spatialmix.engine.resume import (
    TrainState,
    prepare_run_dir,
    record_stop,
    restore_newest,
    run_record,
    save_state,
    saved_metrics,
    stop_if_not_finite,
    stop_on_nonfinite,
)
from spatialmix.engine.tasks import build_model, saved_config, task_from_dict
from spatialmix.engine.user_model import (
    SOURCE_FIELD,
    UserModel,
    check_fits,
    for_training,
    rebuilder,
    saved_source,
    source_record,
)
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.io import runs, storage
from spatialmix.ui.progress import TrainProgress

# --------------------------------------------------------------------------- data and optimizer


# --------------------------------------------------------------------------- the loop


@dataclass
class _Session:
    """Everything one call of `fit` works with, built by `_start_or_resume`."""

    config: TrainConfig
    run_dir: Path
    task: object
    world: distributed.World
    amp: str
    model: nn.Module  # the plain module: evaluated and saved
    ddp_model: nn.Module  # the same module behind DDP: trained
    optimizer: torch.optim.Optimizer
    train_loader: BatchLoader
    test_loader: BatchLoader
    state: TrainState
    record: dict
    init_fingerprint: str
    callbacks: list  # rank 0's; empty on the other ranks
    summary: dict | None = None  # set when the run had already finished
    steps_this_call: int = 0
    test_correct: torch.Tensor | None = None  # per example, from this call's last evaluation
    test_per_example: dict | None = None  # summary entries of one value per test example (a task's own)
    evaluated_this_call: bool = False
    averaged: AveragedModel | None = None  # the moving average of the weights (config.ema_decay > 0)

    @property
    def evaluated(self) -> nn.Module:
        """The model that is evaluated, saved as the run's weights and attacked: the moving average of
        the weights when the config asks for one, else the trained module itself."""
        return self.model if self.averaged is None else self.averaged.module

    @property
    def device(self) -> torch.device:
        return self.world.device

    @property
    def total_steps(self) -> int:
        return self.config.epochs * len(self.train_loader)


def fit(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    data: ImageData | None = None,
    max_steps: int | None = None,
    task=None,
    *,
    model=None,
    trust_code: bool = False,
    callbacks=(),
) -> dict:
    """Train ``config`` in ``run_dir`` (or continue it with ``resume=True``); return the summary.

    The run folder is locked for the whole call (`spatialmix.io.runs.locked`): a second writer
    gets an error naming the process that holds it. ``resume=True`` starts the run when nothing
    was saved yet, and otherwise continues it from its newest complete checkpoint. However the
    call ends (finished, diverged, Ctrl-C, SIGTERM, an error), ``status.json`` says so.

    ``task`` is what is learned (default: classification). ``max_steps`` stops early after that
    many optimizer steps in this call (for benchmarks and tests); the run is then left resumable.
    ``model``: a model of your own (a factory or a module; ``config.model`` names it, see
    `spatialmix.engine.user_model`); ``trust_code`` lets a ``config.model`` reference be imported
    instead. ``callbacks``: `Callback` objects, called on rank 0.
    Under ``torchrun`` every process calls this with the same arguments: each rank trains on its
    shard of every global batch of ``config.batch_size`` examples, the numbers printed and saved
    are global, and only rank 0 writes to ``run_dir`` (see `spatialmix.engine.distributed`).
    """
    config.validate()
    task = task or ClassificationTask()
    run = runs.Run(run_dir)
    if distributed.launched_rank() == 0:  # before the lock file is made: never in a folder that is not ours
        prepare_run_dir(run.path, config, resume, task)
    user = for_training(config, run.path, model, trust_code)
    with runs.locked(run.path):
        if distributed.launched_rank() == 0:
            run.remove_stray_temporaries()
        started: list[bool] = []  # set once training began, so an error before it leaves the folder as it was
        callbacks = hooks.for_this_rank(callbacks)
        try:
            s = _start_or_resume(config, run.path, resume, data, task, user, callbacks)
            if s.summary is not None:
                return s.summary
            started.append(True)
            hooks.call(callbacks, "on_run_start", s.run_dir, s.config, s.state.step)
            summary = _train_epochs(s, max_steps)
        except BaseException as err:
            if started and distributed.launched_rank() == 0:
                record_stop(run, err)
                hooks.call(callbacks, "on_run_end", None)
            raise
        hooks.call(callbacks, "on_run_end", summary if s.state.epoch >= config.epochs else None)
        return summary


def _train_epochs(s: _Session, max_steps: int | None) -> dict:
    criterion = s.task.loss_fn(s.config)
    progress = TrainProgress(
        enabled=s.config.progress and s.world.is_main,
        total_epochs=s.config.epochs,
        steps_per_epoch=len(s.train_loader),
        title=f"{s.config.model_name} {s.config.mode}",
        score=s.task.score,
    )
    with progress, speed.FastKernels():  # the CPU kernels of spatialmix.accel, for this call only
        for epoch in range(s.state.epoch, s.config.epochs):
            totals = _one_epoch(s, epoch, criterion, progress, max_steps)
            if max_steps is not None and s.steps_this_call >= max_steps:
                loss_sum, score_sum, seen, epoch_time = totals
                return {
                    "images_per_s": seen / epoch_time,
                    "steps": s.steps_this_call,
                    "train_time": epoch_time,
                }
            metrics = _evaluate_and_checkpoint(s, epoch, totals)
            progress.end_epoch(metrics)
            hooks.call(s.callbacks, "on_epoch_end", s.state.epoch, metrics)
    return _finish(s)


def _start_or_resume(
    config: TrainConfig, run_dir: Path, resume: bool, data, task, user: UserModel | None, callbacks: list
) -> _Session:
    """Build the model, loaders and optimizer; restore the newest checkpoint or write the run's start."""
    speed.set_threads(config.threads)  # only when the config asks (None: the process's own setting)
    world = distributed.setup(resolve_device(config.device))
    device = world.device
    distributed.run_on_main(lambda: prepare_run_dir(run_dir, config, resume, task))
    data = data if data is not None else load_data_for(config)
    model = build_model(config, data.in_chans, data.num_classes, data.image_size, task, user)
    init_fingerprint = frozen_fingerprint(model)
    record = run_record(config, data, model, task, init_fingerprint)
    if user is not None:
        record[SOURCE_FIELD] = source_record(user, model)
        if resume and runs.Run(run_dir).file(runs.CONFIG).is_file():  # the one it was trained with
            check_fits(model, saved_source(runs.Run(run_dir), runs.Run(run_dir).record()), run_dir)
    train_loader, test_loader = make_loaders(config, data, device, world.rank, world.world_size)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and world.distributed:
        model = distributed.convert_sync_batchnorm(model, device)
    optimizer = make_optimizer(model, config)
    state = TrainState()

    averaged = moving_average(model, config.ema_decay)
    restored = (
        restore_newest(run_dir, model, optimizer, init_fingerprint, world.is_main, averaged)
        if resume
        else None
    )
    if restored is not None:
        state = restored
        if (
            world.is_main
        ):  # options that may change on resume (epochs, lr after a divergence) are now the run's
            saved = runs.Run(run_dir).record()
            if saved["train"] != config.to_dict():
                runs.atomic_write_json(run_dir / runs.CONFIG, {**saved, "train": config.to_dict()})
    elif world.is_main:
        # A fresh run, or one killed before its first checkpoint: (re)write the start, which the
        # config determines bit for bit. config.json goes first, so a kill between the two files
        # leaves a run that --resume recognizes.
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_json(run_dir / runs.CONFIG, record)
        runs.save_weights(run_dir / runs.INIT, model.state_dict())
    if resume and world.is_main and saved_metrics(run_dir) != state.history:
        # Killed between an epoch's metrics line and its checkpoint: that epoch runs again, so its
        # line goes now instead of appearing twice.
        storage.write_jsonl(run_dir / runs.METRICS, state.history)
    # Forward and backward go through DDP (gradient all-reduce); evaluation and checkpoints use the
    # plain module, so saved weights load in any number of processes.
    s = _Session(
        config,
        run_dir,
        task,
        world,
        resolve_amp(config.amp, device),
        model,
        distributed.wrap_model(model, world),
        optimizer,
        train_loader,
        test_loader,
        state,
        record,
        init_fingerprint,
        callbacks,
        averaged=averaged,
    )
    summary = runs.Run(run_dir).summary() if resume and state.epoch >= config.epochs else None
    if summary is not None:
        # (Killed after the last checkpoint but before the summary: train on, which writes it;
        # killed between the summary and the status: write the status.)
        if world.is_main and runs.Run(run_dir).status().get("state") != "finished":
            runs.atomic_write_json(run_dir / runs.STATUS, {"state": "finished", "epoch": state.epoch})
        s.summary = summary
    elif world.is_main:
        runs.atomic_write_json(run_dir / runs.STATUS, {"state": "running", "epoch": state.epoch})
    return s


def _one_epoch(s: _Session, epoch: int, criterion, progress: TrainProgress, max_steps: int | None):
    """Train one epoch (or up to ``max_steps`` steps of this call); return the global
    ``(loss sum, score sum, examples, seconds)``."""
    s.train_loader.set_epoch(epoch)
    s.model.train()
    progress.start_epoch(epoch)
    device, state, config = s.device, s.state, s.config
    trainable = trainable_parameters(s.model)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    score_sum = torch.zeros((), device=device, dtype=torch.float64)
    seen = 0
    t0 = time.perf_counter()
    for i, batch in enumerate(s.train_loader):
        inputs, targets = s.task.batch(*batch)
        for group in s.optimizer.param_groups:
            group["lr"] = piecewise_linear_lr(state.step, s.total_steps, config.lr)
        with autocast_context(device, s.amp):
            outputs = s.ddp_model(inputs)
            loss = criterion(outputs.float(), targets)
        finite = torch.isfinite(loss)
        # Before the first update, a broken start (the init's scale) may show only in the statistics.
        if state.step == 0:
            finite = finite & all_finite(s.model)
        if not distributed.all_true(finite, device):  # every rank stops together
            what = what_became_non_finite(s.model, loss, epoch, i)
            stop_on_nonfinite(s.run_dir, state, what, config, s.model)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(trainable, config.clip_grad)
        s.optimizer.step()
        if s.averaged is not None:
            s.averaged.update_parameters(s.model)
        state.step += 1
        s.steps_this_call += 1
        n = len(targets)
        loss_sum += loss.detach() * n
        score_sum += s.task.running_score(outputs.detach(), targets)
        seen += n
        # The bar shows rank 0's running loss and score; counts scaled to all ranks for img/s.
        ranks = s.world.world_size
        progress.update(i + 1, loss_sum * ranks, score_sum * ranks, seen * ranks, time.perf_counter() - t0)
        hooks.call(s.callbacks, "on_step_end", state.step, loss.detach())
        if max_steps is not None and s.steps_this_call >= max_steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    totals = _global_epoch_totals(loss_sum, score_sum, seen, time.perf_counter() - t0)
    state.train_time += totals[3]
    state.images_seen += totals[2]
    return totals


def _evaluate_and_checkpoint(s: _Session, epoch: int, totals) -> dict:
    """Evaluate after ``epoch``, refuse anything non-finite, then append the metrics line and save
    the checkpoint (rank 0). Returns the epoch's metrics."""
    loss_sum, score_sum, seen, epoch_time = totals
    # Evaluate the model rank 0 saves (without SyncBatchNorm the running statistics of the ranks
    # differ); every rank evaluates its shard of the test set, and the means combine.
    distributed.broadcast_buffers(s.evaluated)
    evaluation = s.task.evaluate(s.evaluated, s.test_loader, s.device, s.amp)
    s.evaluated_this_call = True
    s.test_correct = evaluation.pop("correct", None)  # per example; only rank 0's shard under DDP
    s.test_per_example = evaluation.pop("per_example", None)
    test = distributed.mean_over_ranks(evaluation, s.test_loader.num_examples(), s.device)
    stop_if_not_finite(s.run_dir, s.state, s.evaluated, test, epoch, s.config, s.device)
    s.state.epoch = epoch + 1
    s.state.best_score = max(s.state.best_score, test[s.task.score])
    metrics = {
        "epoch": s.state.epoch,
        "step": s.state.step,
        "train_loss": loss_sum.item() / seen,
        f"train_{s.task.score}": score_sum.item() / seen,
        **{f"test_{k}": v for k, v in test.items() if k != "n"},
        "lr": piecewise_linear_lr(s.state.step, s.total_steps, s.config.lr),
        "epoch_time": epoch_time,
        "images_per_s": seen / epoch_time,
    }
    s.state.history.append(metrics)
    if s.world.is_main:
        storage.append_jsonl(s.run_dir / runs.METRICS, metrics)
        save_state(s.run_dir, s.model, s.optimizer, s.state, s.averaged)
        runs.atomic_write_json(s.run_dir / runs.STATUS, {"state": "running", "epoch": s.state.epoch})
    return metrics


def _finish(s: _Session) -> dict:
    """Check that no frozen tensor moved, then write the summary and the finished status."""
    if {frozen_fingerprint(s.model), frozen_fingerprint(s.evaluated)} != {s.init_fingerprint}:
        raise SpatialmixError(
            f"frozen tensors changed during training in {s.run_dir}: this is a bug in spatialmix, "
            f"please report it"
        )
    config, state, task = s.config, s.state, s.task
    last = state.history[-1]
    summary = {
        "task": task.name,
        "mode": config.mode,
        "model": config.model_name,
        "dataset": config.dataset,
        "seed": config.seed,
        "trainable_params": s.record["params"]["trainable"],
        "frozen_params": s.record["params"]["frozen"],
        **{k: v for k, v in last.items() if k.startswith("test_")},
        f"best_{task.score}": state.best_score,
        "epochs": state.epoch,
        "train_time": state.train_time,
        "images_per_s": state.images_seen / max(state.train_time, 1e-9),
        "frozen_unchanged": True,
        "frozen_fingerprint": s.init_fingerprint,
    }
    if s.world.world_size == 1 and not s.evaluated_this_call:
        # Resumed after the last epoch's checkpoint (killed before the summary): evaluating the saved
        # weights again gives the same per-example answers (eval mode, same order).
        evaluation = task.evaluate(s.evaluated, s.test_loader, s.device, s.amp)
        s.test_correct = evaluation.pop("correct", None)
        s.test_per_example = evaluation.pop("per_example", None)
    if s.world.world_size == 1 and s.test_correct is not None:
        # One character per test example, in test-set order: lets two runs be compared example by example.
        summary["test_correct_bits"] = "".join("1" if hit else "0" for hit in s.test_correct.tolist())
    if s.world.world_size == 1 and s.test_per_example:
        summary.update(s.test_per_example)
    if s.world.is_main:
        runs.atomic_write_json(s.run_dir / runs.SUMMARY, summary)
        runs.atomic_write_json(s.run_dir / runs.STATUS, {"state": "finished", "epoch": state.epoch})
    distributed.barrier()  # the run's files exist on return, on every rank
    return summary


def _global_epoch_totals(loss_sum: torch.Tensor, score_sum: torch.Tensor, seen: int, elapsed: float):
    """Sums over all ranks (and the slowest rank's time), so every rank records the same numbers."""
    sums = distributed.all_reduce_sum(
        torch.stack(
            [
                loss_sum.double(),
                score_sum.double(),
                torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device),
            ]
        )
    )
    elapsed = distributed.all_reduce_max(torch.tensor([elapsed], dtype=torch.float64, device=loss_sum.device))
    return sums[0], sums[1], int(sums[2].item()), elapsed.item()


# --------------------------------------------------------------------------- loading saved runs


def load_trained_model(
    run_dir: str | Path,
    weights: str = "latest",
    device: str | torch.device = "cpu",
    *,
    model=None,
    trust_code: bool = False,
) -> tuple[nn.Module, dict]:
    """Rebuild the model of a saved run and load its weights; returns ``(model in eval mode, run record)``.

    The model takes images in [0, 1] and normalizes them itself (RobustBench's convention): it is
    an ``InputSpaceModel`` whose ``normalize`` holds the run's data set mean and std (from
    ``config.json``) and whose ``model`` is the trained network, which takes normalized images (its
    ``state_dict`` is the checkpoint's). So attacks, and anything else working in pixel space, use
    it as it is.

    ``weights``: ``latest`` (the newest checkpoint) or ``init`` (the weights at initialization).
    The run record is ``config.json``: ``record["train"]`` is the TrainConfig, ``record["data"]``
    has ``mean``/``std``/``in_chans``/``num_classes``/``image_size``.

    A run trained with a model of its own is rebuilt with ``model`` (the factory or module it was
    trained with; a module is copied, never changed), or with ``trust_code=True`` by importing the
    factory its config.json names; without either it is refused, and nothing is imported.
    """
    if weights not in ("latest", "init"):
        raise unknown_name("weights", weights, ("latest", "init"))
    run = runs.Run(run_dir).check()
    run_dir = run.path
    record = run.record()
    config = saved_config(run)
    d = record["data"]
    try:
        task = task_from_dict(record.get("task"))
    except SpatialmixError as err:
        raise SpatialmixError(f"{run.file(runs.CONFIG)}: {err}") from None
    source = saved_source(run, record)
    if source is None and model is not None:
        raise SpatialmixError(
            f"{run_dir} was trained with the built-in model {config.model}; open it without model="
        )
    user = None if source is None else rebuilder(run, source, model, trust_code)
    built = build_model(config, d["in_chans"], d["num_classes"], d["image_size"], task, user, fresh=True)
    if source is not None:
        check_fits(built, source, run_dir)
    if weights == "init":
        state = runs.load_weights(run.file(runs.INIT))
    else:
        folder = run.require_checkpoint()
        state = runs.load_weights(run.file(runs.CKPT_DIR, folder.name, runs.MODEL_FILE))
    try:
        built.load_state_dict(state)
    except RuntimeError as err:
        raise SpatialmixError(
            f"weights in {run_dir} do not fit the model its config builds "
            f"({str(err).splitlines()[0][:160]}); the run is damaged"
        ) from None
    return InputSpaceModel(built, d["mean"], d["std"]).to(device).eval(), record

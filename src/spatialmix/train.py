"""Training one configuration: config, model construction, the loop, checkpoints and resume.

Read top to bottom: :class:`TrainConfig` says everything a run depends on; :func:`build_model`
turns it into a model with its mixers initialized and frozen; :func:`train` runs the loop and
keeps the run directory (see :mod:`spatialmix.runs`) up to date after every epoch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, distributed, runs
from .data import (AUGMENTATIONS, DATASETS, BatchLoader, FolderData, FolderLoader, ImageData, load_dataset,
                   load_image_folder)
from .errors import NonFiniteLossError, SpatialmixError, check_positive, unknown_name
from .mixing import INITS, MODES, InitSpec, apply_mixing, frozen_fingerprint, summarize
from .models import create_model, list_models
from .reporting import TrainProgress

AMP_CHOICES = ("auto", "bf16", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = {"device", "data_dir", "download", "progress"}


@dataclass
class TrainConfig:
    """Everything a training run depends on. Saved as ``config.json`` in the run directory."""

    # data
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = True
    train_subset: int | None = None   # a fixed seeded subset of the training set (quick runs)
    test_subset: int | None = None
    augment: str | None = None        # None: the data set's default
    # model
    model: str = "convmixer-128/6"
    width: int | None = None          # overrides of the named configuration
    depth: int | None = None
    kernel_size: int | None = None
    patch_size: int | None = None
    activation: str | None = None
    token_hidden: int | None = None   # mlpmixer: hidden sizes of the token and channel MLPs
    channel_hidden: int | None = None
    # mixing: what is frozen and how it is initialized
    mode: str = "full"
    spatial_init: str = "default"
    channel_init: str = "default"
    init_std: float = 0.1
    smooth_sigma: float = 0.0
    init_seed: int | None = None      # None: same as seed
    init_from: str | None = None      # spatial_init covariance-from: the trained run whose filters are the prior
    spatial_pattern: str | None = None   # layer-name globs declared spatial mixers (comma-separated)
    channel_pattern: str | None = None   # ... and channel mixers (override the automatic classification)
    # optimization (the ConvMixer CIFAR recipe)
    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    clip_grad: float = 1.0
    # speed
    amp: str = "auto"                 # auto: bf16 where the hardware computes it natively
    channels_last: bool = True
    device: str = "auto"
    sync_bn: bool = False
    progress: bool = True
    image_size: int | None = None     # imagefolder only: the crop size (default 224)
    workers: int = 4                  # imagefolder only: DataLoader processes decoding images

    def validate(self) -> "TrainConfig":
        """Reject bad values with one clear message before anything is built or written."""
        if self.dataset not in DATASETS:
            raise unknown_name("dataset", self.dataset, DATASETS)
        known = list_models()
        if self.model not in known and not self.model.startswith(("timm:", "torchvision:")):
            raise unknown_name("model", self.model, known)
        if self.mode not in MODES:
            raise unknown_name("mode", self.mode, MODES)
        for init in (self.spatial_init, self.channel_init):
            if init not in INITS:
                raise unknown_name("init", init, INITS)
        if self.channel_init.startswith("covariance"):
            raise SpatialmixError(f"--channel-init {self.channel_init} is for spatial mixers (depthwise k x k filters); "
                                  f"use default, gaussian or uniform for the channel mixers")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise unknown_name("augmentation", self.augment, AUGMENTATIONS)
        if self.amp not in AMP_CHOICES:
            raise unknown_name("amp setting", self.amp, AMP_CHOICES)
        if self.device not in DEVICE_CHOICES:
            raise unknown_name("device", self.device, DEVICE_CHOICES)
        check_positive(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        if self.workers < 0:
            raise SpatialmixError(f"workers must be >= 0, got {self.workers}")
        for name in ("width", "depth", "kernel_size", "patch_size", "train_subset", "test_subset", "image_size",
                     "token_hidden", "channel_hidden"):
            value = getattr(self, name)
            if value is not None:
                check_positive(**{name: value})
        for name in ("weight_decay", "label_smoothing", "clip_grad"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise SpatialmixError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if self.label_smoothing >= 1:
            raise SpatialmixError(f"label smoothing must be below 1, got {self.label_smoothing}")
        self.spatial_init_spec(), self.channel_init_spec()
        return self

    def spatial_init_spec(self) -> InitSpec:
        return InitSpec(self.spatial_init, self.init_std, self.smooth_sigma, source=self.init_from)

    def channel_init_spec(self) -> InitSpec:
        return InitSpec(self.channel_init, self.init_std, 0.0)

    @property
    def resolved_init_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SpatialmixError(f"config has unknown fields {sorted(unknown)}: written by another spatialmix version")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- building blocks

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpatialmixError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


class ClassificationTask:
    """What a run learns: here, labels from images. Other tasks (un-shuffling) follow the same shape.

    A task builds the network for the data, turns loader batches into (inputs, targets), gives the
    loss, a running score for the progress bar, and the test metrics. ``score`` names the metric
    (higher is better) that ``best_<score>`` in the summary tracks.
    """

    name = "classification"
    score = "acc"

    def to_dict(self) -> dict:
        return {"name": self.name}

    def create_model(self, config: "TrainConfig", data_info: dict) -> nn.Module:
        return create_model(config.model, in_chans=data_info["in_chans"], num_classes=data_info["num_classes"],
                            image_size=data_info["image_size"], width=config.width, depth=config.depth,
                            kernel_size=config.kernel_size, patch_size=config.patch_size,
                            activation=config.activation, token_hidden=config.token_hidden,
                            channel_hidden=config.channel_hidden)

    def batch(self, x, y):
        return x, y

    def loss_fn(self, config: "TrainConfig"):
        return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def running_score(self, outputs, targets) -> torch.Tensor:
        """Summed over the batch; the progress bar divides by the examples seen."""
        return (outputs.argmax(1) == targets).sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, amp: str = "none") -> dict:
        return evaluate(model, loader, device, amp)


TASKS: dict[str, type] = {"classification": ClassificationTask}
# Tasks that register themselves in TASKS when their module is imported (so load_trained_model finds them).
TASK_MODULES = {"unshuffle": "spatialmix.unshuffle"}


def task_from_dict(d: dict | None):
    d = dict(d or {"name": "classification"})
    name = d.pop("name")
    if name not in TASKS and name in TASK_MODULES:   # register a task of another module on first use
        import importlib

        importlib.import_module(TASK_MODULES[name])
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name](**d)


def data_info(data: ImageData) -> dict:
    """What building a model needs to know about its data (saved in config.json)."""
    return {"name": data.name, "in_chans": data.in_chans, "image_size": data.image_size,
            "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std),
            "n_train": len(data.train_labels), "n_test": len(data.test_labels), "source": data.source}


def build_model(config: TrainConfig, in_chans: int, num_classes: int, image_size: int, task=None) -> nn.Module:
    """The model of ``config`` with its mixers initialized from the seeded init specs and frozen per mode.

    Construction runs under a fixed seed too, so every tensor (not only the mixers) is a function
    of the config: the same config always rebuilds the same initial model.
    """
    task = task or ClassificationTask()
    info = {"in_chans": in_chans, "num_classes": num_classes, "image_size": image_size}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.resolved_init_seed)
        model = task.create_model(config, info)
    return apply_mixing(model, config.mode, spatial_init=config.spatial_init_spec(),
                        channel_init=config.channel_init_spec(), seed=config.resolved_init_seed,
                        spatial=config.spatial_pattern, channel=config.channel_pattern)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only; no weight decay on norms and biases (timm's rule)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, "adamw", lr=config.lr, weight_decay=config.weight_decay,
                               filter_bias_and_bn=True)


def piecewise_linear_lr(step: int, total_steps: int, lr_max: float) -> float:
    """The ConvMixer CIFAR schedule: 0 -> lr_max at 2/5, -> lr_max/20 at 4/5, -> 0 at the end."""
    t = step / max(1, total_steps)
    return float(np.interp(t, [0, 0.4, 0.8, 1.0], [0, lr_max, lr_max / 20, 0]))


def resolve_amp(amp: str, device: torch.device) -> str:
    """``auto`` picks bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere bf16 is
    emulated and several times slower than fp32, so it picks ``none``."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "none"


def autocast_context(device: torch.device, amp: str):
    if resolve_amp(amp, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, device: torch.device, amp: str = "none") -> dict:
    """Loss and accuracy of ``model`` over every example of ``loader``."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    count = 0
    for x, y in loader:
        with autocast_context(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    return {"loss": loss_sum.item() / max(1, count), "acc": correct.item() / max(1, count), "n": count}


# --------------------------------------------------------------------------- the run directory

def prepare_run_dir(run_dir: Path, config: TrainConfig, resume: bool, task) -> None:
    """Check that starting or resuming in ``run_dir`` cannot damage anything already there."""
    run_dir = Path(run_dir)
    if resume:
        runs.check_run_dir(run_dir)
        record = runs.read_json(run_dir / runs.CONFIG, "run")
        # A field added after the run was made counts as its default (what the run behaved as).
        saved, ours = {**TrainConfig().to_dict(), **record["train"]}, config.to_dict()
        saved["task"], ours["task"] = record.get("task", {"name": "classification"}), task.to_dict()
        diff = [k for k in ours if k not in RESUMABLE_FIELDS and saved.get(k) != ours[k]]
        if diff:
            details = ", ".join(f"{k}={saved.get(k)!r} (saved) vs {ours[k]!r}" for k in diff[:4])
            raise SpatialmixError(f"cannot resume {run_dir}: it was made with a different config ({details}); "
                                  f"resume with the saved settings or start a new run with another --out")
    elif runs.is_run_dir(run_dir) or (run_dir.exists() and any(run_dir.iterdir())):
        raise SpatialmixError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")


def run_record(config: TrainConfig, data: ImageData, model: nn.Module, task, fingerprint: str) -> dict:
    summary = summarize(model)
    return {
        "format_version": runs.FORMAT_VERSION,
        "spatialmix_version": __version__,
        "torch_version": torch.__version__,
        "task": task.to_dict(),
        "train": config.to_dict(),
        "data": data_info(data),
        "params": {"trainable": summary.trainable, "frozen": summary.frozen, "by_kind": summary.rows},
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
        else:   # checkpoints written before: one state per GPU
            torch.cuda.set_rng_state_all(list(cuda)[:torch.cuda.device_count()])


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainState:
    epoch: int = 0             # epochs completed
    step: int = 0              # optimizer steps taken
    best_score: float = float("-inf")
    train_time: float = 0.0    # seconds spent in training steps (not evaluation)
    images_seen: int = 0
    history: list = field(default_factory=list)


def load_data_for(config: TrainConfig) -> ImageData | FolderData:
    if config.dataset == "imagefolder":
        data = load_image_folder(config.data_dir, config.image_size or 224)
    else:
        data = load_dataset(config.dataset, config.data_dir, download=config.download)
    return data.subset(config.train_subset, config.test_subset, seed=config.seed)


def make_loaders(config: TrainConfig, data: ImageData, device: torch.device, rank: int = 0, world_size: int = 1
                 ) -> tuple[BatchLoader, BatchLoader]:
    """Loaders of this rank's shard; ``config.batch_size`` is the global batch, split over the ranks."""
    if config.batch_size % world_size:
        raise SpatialmixError(f"batch size {config.batch_size} (the global batch) does not split evenly over "
                              f"{world_size} processes; use a multiple of {world_size}")
    augment = config.augment or DATASETS[config.dataset].default_augment
    shard = dict(rank=rank, world_size=world_size)
    if isinstance(data, FolderData):
        folder = dict(device=device, channels_last=config.channels_last, workers=config.workers, **shard)
        train_loader = FolderLoader(data.train_set, data.train_labels, config.batch_size // world_size, data.mean,
                                    data.std, train=True, augment=augment, seed=config.seed, **folder)
        test_loader = FolderLoader(data.test_set, data.test_labels, max(256, config.batch_size) // world_size,
                                   data.mean, data.std, train=False, **folder)
    else:
        train_loader = BatchLoader(data.train_images, data.train_labels, config.batch_size // world_size,
                                   data.mean, data.std, train=True, augment=augment, seed=config.seed,
                                   device=device, channels_last=config.channels_last, **shard)
        test_loader = BatchLoader(data.test_images, data.test_labels, max(256, config.batch_size) // world_size,
                                  data.mean, data.std, train=False, device=device,
                                  channels_last=config.channels_last, **shard)
    if len(train_loader) == 0:
        raise SpatialmixError(f"batch size {config.batch_size} is larger than the {len(data.train_labels)} "
                              f"training images; lower --batch-size")
    return train_loader, test_loader


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False, data: ImageData | None = None,
          max_steps: int | None = None, task=None) -> dict:
    """Train ``config`` in ``run_dir`` (or continue it with ``resume=True``); return the summary.

    ``task`` is what is learned (default: classification). ``max_steps`` stops early after that
    many optimizer steps in this call (for benchmarks and tests); the run is then left resumable.

    Under ``torchrun`` every process calls this with the same arguments: the model is wrapped in
    DistributedDataParallel, each rank trains on its shard of every global batch of
    ``config.batch_size`` examples, the numbers printed and saved are global, and only rank 0
    writes to ``run_dir`` (see :mod:`spatialmix.distributed`).
    """
    config.validate()
    task = task or ClassificationTask()
    run_dir = Path(run_dir)
    world = distributed.setup(resolve_device(config.device))
    device = world.device
    amp = resolve_amp(config.amp, device)
    distributed.run_on_main(lambda: prepare_run_dir(run_dir, config, resume, task))
    data = data if data is not None else load_data_for(config)
    model = build_model(config, data.in_chans, data.num_classes, data.image_size, task)
    init_fingerprint = frozen_fingerprint(model)
    record = run_record(config, data, model, task, init_fingerprint)
    train_loader, test_loader = make_loaders(config, data, device, world.rank, world.world_size)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and world.distributed:
        model = distributed.convert_sync_batchnorm(model, device)
    optimizer = make_optimizer(model, config)
    state = TrainState()

    checkpoint = runs.latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        state = _restore(model, optimizer, checkpoint, init_fingerprint)
    elif world.is_main:
        # A fresh run, or one killed before its first checkpoint: (re)write the start, which the
        # config determines bit for bit. config.json goes first, so a kill between the two files
        # leaves a run that --resume recognizes.
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_json(run_dir / runs.CONFIG, record)
        runs.save_weights(run_dir / runs.INIT, model.state_dict())
    if resume and world.is_main and runs.read_jsonl(run_dir / runs.METRICS) != state.history:
        # Killed between an epoch's metrics line and its checkpoint: that epoch runs again, so its
        # line goes now instead of appearing twice.
        runs.atomic_write_bytes(run_dir / runs.METRICS,
                                "".join(json.dumps(m, sort_keys=True) + "\n" for m in state.history).encode())
    if state.epoch >= config.epochs and (run_dir / runs.SUMMARY).is_file():
        # (Killed after the last checkpoint but before the summary: fall through and write it.)
        return runs.read_json(run_dir / runs.SUMMARY, "run summary")

    total_steps = config.epochs * len(train_loader)
    if world.is_main:
        runs.atomic_write_json(run_dir / runs.STATUS, {"state": "running", "epoch": state.epoch})
    criterion = task.loss_fn(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Forward and backward go through DDP (gradient all-reduce); evaluation and checkpoints use the
    # plain module, so saved weights load in any number of processes.
    ddp_model = distributed.wrap_model(model, world)
    progress = TrainProgress(enabled=config.progress and world.is_main, total_epochs=config.epochs,
                             steps_per_epoch=len(train_loader), title=f"{config.model} {config.mode}",
                             score=task.score)
    steps_this_call = 0
    with progress:
        for epoch in range(state.epoch, config.epochs):
            train_loader.set_epoch(epoch)
            model.train()
            progress.start_epoch(epoch)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            score_sum = torch.zeros((), device=device, dtype=torch.float64)
            seen = 0
            t0 = time.perf_counter()
            for i, batch in enumerate(train_loader):
                inputs, targets = task.batch(*batch)
                for group in optimizer.param_groups:
                    group["lr"] = piecewise_linear_lr(state.step, total_steps, config.lr)
                with autocast_context(device, amp):
                    outputs = ddp_model(inputs)
                    loss = criterion(outputs.float(), targets)
                if not distributed.all_true(torch.isfinite(loss), device):   # every rank stops together
                    _stop_on_nonfinite(run_dir, state, loss, epoch, i)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, config.clip_grad)
                optimizer.step()
                state.step += 1
                steps_this_call += 1
                n = len(targets)
                loss_sum += loss.detach() * n
                score_sum += task.running_score(outputs.detach(), targets)
                seen += n
                # The bar shows rank 0's running loss and score; counts scaled to all ranks for img/s.
                progress.update(i + 1, loss_sum * world.world_size, score_sum * world.world_size,
                                seen * world.world_size, time.perf_counter() - t0)
                if max_steps is not None and steps_this_call >= max_steps:
                    break
            if device.type == "cuda":
                torch.cuda.synchronize()
            loss_sum, score_sum, seen, epoch_time = _global_epoch_totals(loss_sum, score_sum, seen,
                                                                         time.perf_counter() - t0)
            state.train_time += epoch_time
            state.images_seen += seen
            if max_steps is not None and steps_this_call >= max_steps:
                return {"images_per_s": seen / epoch_time, "steps": steps_this_call, "train_time": epoch_time}
            # Evaluate the model rank 0 saves (without SyncBatchNorm the running statistics of the
            # ranks differ); every rank evaluates its shard of the test set, and the means combine.
            distributed.broadcast_buffers(model)
            test = distributed.mean_over_ranks(task.evaluate(model, test_loader, device, amp),
                                               test_loader.num_examples(), device)
            state.epoch = epoch + 1
            state.best_score = max(state.best_score, test[task.score])
            metrics = {"epoch": state.epoch, "step": state.step, "train_loss": loss_sum.item() / seen,
                       f"train_{task.score}": score_sum.item() / seen,
                       **{f"test_{k}": v for k, v in test.items() if k != "n"},
                       "lr": piecewise_linear_lr(state.step, total_steps, config.lr),
                       "epoch_time": epoch_time, "images_per_s": seen / epoch_time}
            state.history.append(metrics)
            if world.is_main:
                runs.append_jsonl(run_dir / runs.METRICS, metrics)
                _save(run_dir, model, optimizer, state)
            progress.end_epoch(metrics)

    if frozen_fingerprint(model) != init_fingerprint:
        raise SpatialmixError(f"frozen tensors changed during training in {run_dir}: this is a bug in spatialmix, "
                              f"please report it")
    last = state.history[-1]
    summary = {"task": task.name, "mode": config.mode, "model": config.model, "dataset": config.dataset,
               "seed": config.seed, "trainable_params": record["params"]["trainable"],
               "frozen_params": record["params"]["frozen"],
               **{k: v for k, v in last.items() if k.startswith("test_")},
               f"best_{task.score}": state.best_score, "epochs": state.epoch, "train_time": state.train_time,
               "images_per_s": state.images_seen / max(state.train_time, 1e-9),
               "frozen_unchanged": True, "frozen_fingerprint": init_fingerprint}
    if world.is_main:
        runs.atomic_write_json(run_dir / runs.SUMMARY, summary)
        runs.atomic_write_json(run_dir / runs.STATUS, {"state": "finished", "epoch": state.epoch})
    distributed.barrier()   # the run's files exist on return, on every rank
    return summary


def _global_epoch_totals(loss_sum: torch.Tensor, score_sum: torch.Tensor, seen: int, elapsed: float):
    """Sums over all ranks (and the slowest rank's time), so every rank records the same numbers."""
    sums = distributed.all_reduce_sum(torch.stack([loss_sum.double(), score_sum.double(),
                                                   torch.tensor(float(seen), dtype=torch.float64,
                                                                device=loss_sum.device)]))
    elapsed = distributed.all_reduce_max(torch.tensor([elapsed], dtype=torch.float64, device=loss_sum.device))
    return sums[0], sums[1], int(sums[2].item()), elapsed.item()


def _save(run_dir: Path, model: nn.Module, optimizer, state: TrainState) -> None:
    train_state = {"optimizer": optimizer.state_dict(), "rng": _rng_state(),
                   "progress": {k: v for k, v in dataclasses.asdict(state).items()}}
    runs.save_checkpoint(run_dir, state.epoch, model.state_dict(), train_state)


def _restore(model: nn.Module, optimizer, folder: Path, init_fingerprint: str) -> TrainState:
    model_state, train_state = runs.load_checkpoint(folder)
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(train_state["optimizer"])
        progress = train_state["progress"]
        _set_rng_state(train_state["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise SpatialmixError(f"checkpoint {folder} does not match this run's model ({first}); "
                              f"start a new run with another --out") from None
    if frozen_fingerprint(model) != init_fingerprint:
        raise SpatialmixError(f"checkpoint {folder}: frozen tensors differ from the ones this config rebuilds; "
                              f"the checkpoint belongs to another config or was modified")
    return TrainState(**progress)


def _stop_on_nonfinite(run_dir: Path, state: TrainState, loss, epoch: int, step: int):
    reason = (f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
              f"the last good checkpoint (epoch {state.epoch}) is kept in {run_dir}; "
              f"lower --lr, raise --clip-grad or use --amp none")
    if distributed.is_main():
        runs.atomic_write_json(run_dir / runs.STATUS, {"state": "failed", "epoch": state.epoch, "reason": reason})
    raise NonFiniteLossError(f"training stopped: {reason}")


# --------------------------------------------------------------------------- loading saved runs

def load_trained_model(run_dir: str | Path, weights: str = "latest", device: str | torch.device = "cpu"
                       ) -> tuple[nn.Module, dict]:
    """Rebuild the model of a saved run and load its weights; returns ``(model in eval mode, run record)``.

    ``weights``: ``latest`` (the newest checkpoint) or ``init`` (the weights at initialization).
    The run record is ``config.json``: ``record["train"]`` is the TrainConfig, ``record["data"]``
    has ``mean``/``std``/``in_chans``/``num_classes``/``image_size``.
    """
    run_dir = runs.check_run_dir(Path(run_dir))
    record = runs.read_json(run_dir / runs.CONFIG, "run")
    config = TrainConfig.from_dict(record["train"])
    d = record["data"]
    model = build_model(config, d["in_chans"], d["num_classes"], d["image_size"], task_from_dict(record.get("task")))
    if weights == "init":
        state = runs.load_weights(run_dir / runs.INIT)
    elif weights == "latest":
        folder = runs.latest_checkpoint(run_dir)
        if folder is None:
            raise SpatialmixError(f"{run_dir} has no checkpoint yet (training never finished an epoch); "
                                  f"train it first with `spatialmix train --resume --out {run_dir}`")
        state = runs.load_weights(folder / runs.MODEL_FILE)
    else:
        raise unknown_name("weights", weights, ("latest", "init"))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise SpatialmixError(f"weights in {run_dir} do not fit the model its config builds "
                              f"({str(err).splitlines()[0][:160]}); the run is damaged") from None
    return model.to(device).eval(), record

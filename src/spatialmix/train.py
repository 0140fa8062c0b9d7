"""Training one configuration: config, model construction, the loop, checkpoints and resume.

Read top to bottom: :class:`TrainConfig` says everything a run depends on; :func:`build_model`
turns it into a model with its mixers initialized and frozen; :func:`train` runs the loop and
keeps the run directory (see :mod:`spatialmix.runs`) up to date after every epoch.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import typing
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, distributed, runs, speed
from .data import (AUGMENTATIONS, DATASETS, BatchLoader, FolderData, FolderLoader, ImageData, load_dataset,
                   load_image_folder)
from .errors import NonFiniteLossError, SpatialmixError, check_positive, unknown_name
from .mixing import INITS, MODES, InitSpec, apply_mixing, frozen_fingerprint, summarize
from .models import create_model, list_models
from .reporting import TrainProgress

AMP_CHOICES = ("auto", "bf16", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
# Fields that may change between an interrupted run and its resumption (epochs: to extend a run).
RESUMABLE_FIELDS = frozenset(runs.SPEED_FIELDS | {"epochs"})
# ... and, for a run that diverged (status "failed"), what its advice tells the user to change.
DIVERGED_RESUMABLE_FIELDS = frozenset({"lr", "amp"})


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
    image_size: int | None = None     # imagefolder only: the crop size (default: the images' size, at most 224)
    workers: int | None = None        # imagefolder only: DataLoader processes decoding images (default: the cores)
    threads: int | None = None        # torch intra-op threads (default: torch's own, the physical cores)

    def validate(self) -> "TrainConfig":
        """Reject bad values with one clear message before anything is built or written."""
        self.check_types()
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
        if self.threads is not None:
            check_positive(threads=self.threads)
        if self.workers is not None and self.workers < 0:
            raise SpatialmixError(f"workers must be >= 0, got {self.workers}")
        for name in ("width", "depth", "kernel_size", "patch_size", "train_subset", "test_subset", "image_size",
                     "token_hidden", "channel_hidden"):
            value = getattr(self, name)
            if value is not None:
                check_positive(**{name: value})
        for name in ("weight_decay", "label_smoothing", "clip_grad", "init_std", "smooth_sigma"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise SpatialmixError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if self.label_smoothing >= 1:
            raise SpatialmixError(f"label smoothing must be below 1, got {self.label_smoothing}")
        self.spatial_init_spec(), self.channel_init_spec()
        return self

    def check_types(self) -> None:
        """Every field has its declared type (a grid file or a config.json can hold anything)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
            if value is None and type(None) in kinds:
                continue
            for kind, ok, wanted in ((bool, lambda v: isinstance(v, bool), "true or false"),
                                     (int, lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
                                     (float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                                      "a number"),
                                     (str, lambda v: isinstance(v, str), "a string")):
                if kind in kinds:
                    if not ok(value):
                        optional = " (or null)" if type(None) in kinds else ""
                        raise SpatialmixError(f"{f.name} must be {wanted}{optional}, got {value!r}")
                    break

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
    def from_dict(cls, d: dict, source: str | os.PathLike | None = None) -> "TrainConfig":
        """The config of a dict (a field missing from it takes its default); ``source`` names the file it came
        from, and then every value is validated too (a config.json may come from anyone)."""
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise SpatialmixError(f"{where}the training settings must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SpatialmixError(f"{where}config has unknown fields {sorted(unknown)}: written by another "
                                  f"spatialmix version")
        config = cls(**d)
        try:
            config.validate() if source else config.check_types()
        except SpatialmixError as err:
            raise SpatialmixError(f"{where}{err}") from None
        return config

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


# Every task a run can learn, as "module:class": the un-shuffling task lives in its own module,
# imported only when a run of it is trained or loaded.
TASKS: dict[str, str] = {
    "classification": "spatialmix.train:ClassificationTask",
    "unshuffle": "spatialmix.unshuffle:UnshuffleTask",
}


def task_from_dict(d: dict | None):
    import importlib

    if d is not None and not (isinstance(d, dict) and isinstance(d.get("name"), str)):
        raise SpatialmixError(f"a task must be an object with a 'name', got {d!r}; the run's config.json is damaged")
    d = dict(d or {"name": "classification"})
    name = d.pop("name")
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    module, cls = TASKS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)(**d)
    except TypeError:
        raise SpatialmixError(f"task {name!r} has settings this spatialmix does not know ({', '.join(sorted(d))}); "
                              f"the run's config.json is damaged or from another version") from None


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
    model = apply_mixing(model, config.mode, spatial_init=config.spatial_init_spec(),
                         channel_init=config.channel_init_spec(), seed=config.resolved_init_seed,
                         spatial=config.spatial_pattern, channel=config.channel_pattern)
    return speed.accelerate(model)


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
    """Loss and accuracy of ``model`` over every example of ``loader``, and under ``"correct"`` the
    per-example correctness in the loader's order (what paired comparisons of two models need)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    hits = []
    count = 0
    for x, y in loader:
        with autocast_context(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        hits.append(logits.argmax(1) == y)
        count += len(y)
    model.train(was_training)
    correct = torch.cat(hits).cpu() if hits else torch.zeros(0, dtype=torch.bool)
    return {"loss": loss_sum.item() / max(1, count), "acc": correct.sum().item() / max(1, count), "n": count,
            "correct": correct}


# --------------------------------------------------------------------------- the run directory

def resumable_fields(run: runs.Run) -> frozenset:
    """What may change when ``run`` is continued: speed settings and epochs; lr and amp too after a divergence."""
    return RESUMABLE_FIELDS | (DIVERGED_RESUMABLE_FIELDS if run.status().get("state") == "failed" else frozenset())


def _different_config_error(run_dir: Path, diff: list, allowed) -> SpatialmixError:
    details = ", ".join(f"{k}={saved!r} (saved) vs {ours!r}" for k, saved, ours in diff[:4])
    may = ", ".join(sorted(a for a in allowed if a not in ("threads", "download")))
    return SpatialmixError(f"cannot resume {run_dir}: it was made with a different config ({details}); only {may} "
                           f"may change on resume: drop the other options, or start a new run with another --out")


def resume_config(run_dir: str | Path, changes: dict | None = None) -> TrainConfig:
    """The config that continues ``run_dir``: its saved config with ``changes`` (options given again).

    A change to a field that may not change on resume is an error naming the field; a folder where
    nothing was saved yet gives ``TrainConfig(**changes)`` (the run starts).
    """
    changes = dict(changes or {})
    TrainConfig(**changes).validate()   # names and signs first, whatever the run holds
    run = runs.Run(run_dir)
    if run.holds_nothing():
        return TrainConfig(**changes)
    run.check()
    saved = run.train_config()
    allowed = resumable_fields(run)
    _check_epochs_grow(run, changes.get("epochs", saved.epochs))
    diff = [(k, getattr(saved, k), v) for k, v in changes.items() if k not in allowed and getattr(saved, k) != v]
    if diff:
        raise _different_config_error(run.path, diff, allowed)
    return saved.replace(**changes)


def prepare_run_dir(run_dir: Path, config: TrainConfig, resume: bool, task) -> None:
    """Check that starting or resuming in ``run_dir`` cannot damage anything already there.

    ``resume`` continues a run, or starts it when nothing was saved yet (a kill before its first file).
    """
    run = runs.Run(run_dir)
    runs.check_folder_path(run.path)
    if run.holds_nothing():
        return
    if not resume:
        raise SpatialmixError(f"{run.path} already holds a run; pass --resume to continue it or choose another --out")
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
    saved = run.train_config().epochs
    if epochs < saved:
        raise SpatialmixError(f"cannot resume {run.path} with --epochs {epochs}: it was made for {saved} epochs, and "
                              f"epochs may only grow on resume (to extend a run)")


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
        data = load_image_folder(config.data_dir, config.image_size,
                                 augment=config.augment or DATASETS[config.dataset].default_augment)
    else:
        data = load_dataset(config.dataset, config.data_dir, download=config.download)
    return data.subset(config.train_subset, config.test_subset, seed=config.seed)


def load_evaluation_data(run_dir: str | Path, data_dir: str | None = None) -> ImageData | FolderData:
    """The full data set of a saved run, to evaluate it (attacks, analysis).

    Where the files come from is the user's choice (``data_dir``, ``$SPATIALMIX_DATA``, the system's
    data package, the download cache), never the ``data_dir`` in the run's config.json: a run folder
    may come from anyone, and its config must not point data loading somewhere the user did not choose.
    """
    run = runs.Run(run_dir).check()
    config = run.train_config().replace(train_subset=None, test_subset=None, data_dir=data_dir)
    try:
        return load_data_for(config)
    except SpatialmixError as err:
        saved = run.record()["train"].get("data_dir")
        hint = (f"; the run was trained on data from {saved} (its config.json says so): pass --data-dir {saved} "
                f"if you trust it") if saved and data_dir is None else ""
        raise SpatialmixError(f"{err}{hint}") from None


def resolve_workers(workers: int | None) -> int:
    """Image-folder decoding processes: by default one per core this process may use."""
    return workers if workers is not None else len(os.sched_getaffinity(0))


def make_loaders(config: TrainConfig, data: ImageData, device: torch.device, rank: int = 0, world_size: int = 1
                 ) -> tuple[BatchLoader, BatchLoader]:
    """Loaders of this rank's shard; ``config.batch_size`` is the global batch, split over the ranks."""
    if config.batch_size % world_size:
        raise SpatialmixError(f"batch size {config.batch_size} (the global batch) does not split evenly over "
                              f"{world_size} processes; use a multiple of {world_size}")
    augment = config.augment or DATASETS[config.dataset].default_augment
    shard = dict(rank=rank, world_size=world_size)
    if isinstance(data, FolderData):
        folder = dict(device=device, channels_last=config.channels_last, workers=resolve_workers(config.workers),
                      **shard)
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

    The run folder is locked for the whole call (:func:`spatialmix.runs.locked`): a second writer
    gets an error naming the process that holds it. ``resume=True`` starts the run when nothing
    was saved yet, and otherwise continues it from its newest complete checkpoint. However the
    call ends (finished, diverged, Ctrl-C, SIGTERM, an error), ``status.json`` says so.
    """
    config.validate()
    task = task or ClassificationTask()
    run = runs.Run(run_dir)
    if distributed.launched_rank() == 0:   # before the lock file is made: never in a folder that is not ours
        prepare_run_dir(run.path, config, resume, task)
    with runs.locked(run.path):
        if distributed.launched_rank() == 0:
            run.remove_stray_temporaries()
        started: list[bool] = []   # set once training began, so an error before it leaves the folder as it was
        try:
            return _train_locked(config, run.path, resume, data, max_steps, task, started)
        except BaseException as err:
            if started and distributed.launched_rank() == 0:
                _record_stop(run, err)
            raise


def _record_stop(run: runs.Run, err: BaseException) -> None:
    """After a run stopped early: status.json names the newest complete checkpoint and why it stopped."""
    if isinstance(err, NonFiniteLossError) or not run.file(runs.CONFIG).is_file():
        return   # a divergence writes its own status; a start that saved nothing has no status
    try:
        if run.status().get("state") in ("finished", "failed"):
            return
        latest = run.latest_checkpoint()
        epoch = int(latest.name.split("-")[1]) if latest is not None else 0
    except SpatialmixError:
        epoch = 0
    why = "interrupted" if isinstance(err, KeyboardInterrupt) else (str(err).splitlines() or [type(err).__name__])[0]
    try:
        runs.atomic_write_json(run.file(runs.STATUS), {"state": "interrupted", "epoch": epoch, "reason": why[:300]})
    except (SpatialmixError, OSError):
        pass   # the disk may be full: the checkpoints are consistent anyway


def _train_locked(config: TrainConfig, run_dir: Path, resume: bool, data, max_steps: int | None, task,
                  started: list) -> dict:
    """The body of :func:`train`, run while this process holds the run folder.

    ``task`` is what is learned (default: classification). ``max_steps`` stops early after that
    many optimizer steps in this call (for benchmarks and tests); the run is then left resumable.

    Under ``torchrun`` every process calls this with the same arguments: the model is wrapped in
    DistributedDataParallel, each rank trains on its shard of every global batch of
    ``config.batch_size`` examples, the numbers printed and saved are global, and only rank 0
    writes to ``run_dir`` (see :mod:`spatialmix.distributed`).
    """
    speed.set_threads(config.threads)
    speed.tune_allocator()
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

    restored = _restore_newest(run_dir, model, optimizer, init_fingerprint, world.is_main) if resume else None
    if restored is not None:
        state = restored
        if world.is_main:   # options that may change on resume (epochs, lr after a divergence) are now the run's
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
    if resume and world.is_main and _saved_metrics(run_dir) != state.history:
        # Killed between an epoch's metrics line and its checkpoint: that epoch runs again, so its
        # line goes now instead of appearing twice.
        runs.write_jsonl(run_dir / runs.METRICS, state.history)
    summary = runs.Run(run_dir).summary() if resume and state.epoch >= config.epochs else None
    if summary is not None:
        # (Killed after the last checkpoint but before the summary: fall through and write it;
        # killed between the summary and the status: write the status.)
        if world.is_main and runs.Run(run_dir).status().get("state") != "finished":
            runs.atomic_write_json(run_dir / runs.STATUS, {"state": "finished", "epoch": state.epoch})
        return summary

    total_steps = config.epochs * len(train_loader)
    if world.is_main:
        runs.atomic_write_json(run_dir / runs.STATUS, {"state": "running", "epoch": state.epoch})
    started.append(True)
    criterion = task.loss_fn(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Forward and backward go through DDP (gradient all-reduce); evaluation and checkpoints use the
    # plain module, so saved weights load in any number of processes.
    ddp_model = distributed.wrap_model(model, world)
    progress = TrainProgress(enabled=config.progress and world.is_main, total_epochs=config.epochs,
                             steps_per_epoch=len(train_loader), title=f"{config.model} {config.mode}",
                             score=task.score)
    steps_this_call = 0
    test_correct = None   # the last evaluation's per-example correctness, when it ran in this call
    evaluated_this_call = False
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
                    _stop_on_nonfinite(run_dir, state, f"loss became {loss.item()} at epoch {epoch + 1}, "
                                                        f"step {i + 1}", config)
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
            evaluation = task.evaluate(model, test_loader, device, amp)
            evaluated_this_call = True
            test_correct = evaluation.pop("correct", None)   # per example; only rank 0's shard under DDP
            test = distributed.mean_over_ranks(evaluation, test_loader.num_examples(), device)
            _stop_if_not_finite(run_dir, state, model, test, epoch, config, device)
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
                runs.atomic_write_json(run_dir / runs.STATUS, {"state": "running", "epoch": state.epoch})
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
    if world.world_size == 1 and not evaluated_this_call:
        # Resumed after the last epoch's checkpoint (killed before the summary): evaluating the saved
        # weights again gives the same per-example answers (eval mode, same order).
        test_correct = task.evaluate(model, test_loader, device, amp).pop("correct", None)
    if world.world_size == 1 and test_correct is not None:
        # One character per test example, in test-set order: lets two runs be compared example by example.
        summary["test_correct_bits"] = "".join("1" if hit else "0" for hit in test_correct.tolist())
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


def _saved_metrics(run_dir: Path) -> list[dict] | None:
    try:
        return runs.Run(run_dir).metrics()
    except SpatialmixError:   # damaged: rewritten from the checkpoint's history
        return None


def _restore_newest(run_dir: Path, model: nn.Module, optimizer, init_fingerprint: str, say: bool
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
    candidates = ([latest] if latest is not None else []) + [c for c in run.checkpoints_newest_first()
                                                               if latest is None or c.name != latest.name]
    for folder in candidates:
        try:
            state = _restore(model, optimizer, folder, init_fingerprint)
        except SpatialmixError as err:
            problem = problem or err
            continue
        if problem is not None and say:
            print(f"spatialmix: warning: {str(problem).split('; ')[0]}; continuing from the newest complete "
                  f"checkpoint, {folder.name}", file=sys.stderr)
        return state
    if problem is None or (latest is None and not candidates and "which is missing" in str(problem)):
        if problem is not None and say:   # its checkpoints were deleted by hand: start over
            print(f"spatialmix: warning: {run_dir} has no checkpoint left; training starts from the beginning",
                  file=sys.stderr)
        return None
    raise SpatialmixError(f"{problem} (no older complete checkpoint to fall back to; delete "
                          f"{run.checkpoint_root()} and resume to train again from the beginning)")


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


def _stop_if_not_finite(run_dir: Path, state: TrainState, model: nn.Module, test: dict, epoch: int,
                        config: TrainConfig, device: torch.device) -> None:
    """Never save a poisoned checkpoint: the weights, the BatchNorm statistics and the test loss must be finite."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    bad += [f"test {k}" for k, v in test.items() if isinstance(v, float) and not math.isfinite(v)]
    if not distributed.all_true(torch.tensor(not bad, device=device), device):
        what = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") if bad else "another rank"
        _stop_on_nonfinite(run_dir, state, f"{what} became non-finite in epoch {epoch + 1}", config)


def _stop_on_nonfinite(run_dir: Path, state: TrainState, what: str, config: TrainConfig):
    lower = f"{config.lr / 10:g}"
    reason = (f"{what}; the last good checkpoint (epoch {state.epoch}) is kept in {run_dir}; lower --lr: "
              f"continue with `spatialmix train --resume --out {run_dir} --lr {lower}` (--amp none may help too)")
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
    run = runs.Run(run_dir).check()
    run_dir = run.path
    record = run.record()
    config = run.train_config()
    d = record["data"]
    try:
        task = task_from_dict(record.get("task"))
    except SpatialmixError as err:
        raise SpatialmixError(f"{run.file(runs.CONFIG)}: {err}") from None
    model = build_model(config, d["in_chans"], d["num_classes"], d["image_size"], task)
    if weights == "init":
        state = runs.load_weights(run.file(runs.INIT))
    elif weights == "latest":
        folder = run.require_checkpoint()
        state = runs.load_weights(run.file(runs.CKPT_DIR, folder.name, runs.MODEL_FILE))
    else:
        raise unknown_name("weights", weights, ("latest", "init"))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise SpatialmixError(f"weights in {run_dir} do not fit the model its config builds "
                              f"({str(err).splitlines()[0][:160]}); the run is damaged") from None
    return model.to(device).eval(), record

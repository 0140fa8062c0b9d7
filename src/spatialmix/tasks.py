"""What a run learns, and the model it learns it with.

A task (:class:`ClassificationTask`, or the un-shuffling task of :mod:`spatialmix.unshuffle`)
builds the network for the data, turns loader batches into (inputs, targets), and gives the loss,
a running score for the progress bar and the test metrics. :data:`TASKS` is the one table of
them. :func:`build_model` turns a config into a model with its mixers initialized and frozen
(:mod:`spatialmix.mixing`) and the fast CPU kernels swapped in (:mod:`spatialmix.speed`).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from . import speed
from .config import TrainConfig
from .batches import BatchLoader
from .data import ImageData
from .errors import SpatialmixError, unknown_name
from .mixing import apply_mixing
from .models import create_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpatialmixError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)

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

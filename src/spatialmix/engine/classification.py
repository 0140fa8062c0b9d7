"""The classification task: labels from images, and the test metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spatialmix.data.batches import BatchLoader
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.device import autocast_context
from spatialmix.models.factory import create_model


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

    def create_model(self, config: TrainConfig, data_info: dict) -> nn.Module:
        return create_model(
            config.model,
            in_chans=data_info["in_chans"],
            num_classes=data_info["num_classes"],
            image_size=data_info["image_size"],
            width=config.width,
            depth=config.depth,
            kernel_size=config.kernel_size,
            patch_size=config.patch_size,
            activation=config.activation,
            token_hidden=config.token_hidden,
            channel_hidden=config.channel_hidden,
        )

    def batch(self, x, y):
        return x, y

    def loss_fn(self, config: TrainConfig):
        return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def running_score(self, outputs, targets) -> torch.Tensor:
        """Summed over the batch; the progress bar divides by the examples seen."""
        return (outputs.argmax(1) == targets).sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, amp: str = "none") -> dict:
        return evaluate(model, loader, device, amp)


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
    return {
        "loss": loss_sum.item() / max(1, count),
        "acc": correct.sum().item() / max(1, count),
        "n": count,
        "correct": correct,
    }

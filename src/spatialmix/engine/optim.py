"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from spatialmix.core.mixing import trainable_parameters
from spatialmix.engine.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups: only trainable tensors (frozen mixers never reach the
    optimizer, so they get no state and no decay), weight decay on matrices and filters, none on
    norms and biases (1-D tensors)."""
    no_decay, decay = [], []
    for p in trainable_parameters(model):
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `parameter_groups` (the ConvMixer recipe's optimizer)."""
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)


def moving_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """torch's exponential moving average of ``model``'s weights and buffers (None for ``decay`` 0).

    A frozen tensor stays bitwise what it was: the first update copies it, and every later one is
    ``torch.lerp`` between two equal tensors, which returns them exactly."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def piecewise_linear_lr(step: int, total_steps: int, lr_max: float) -> float:
    """The ConvMixer CIFAR schedule: 0 -> lr_max at 2/5, -> lr_max/20 at 4/5, -> 0 at the end."""
    t = step / max(1, total_steps)
    return float(np.interp(t, [0, 0.4, 0.8, 1.0], [0, lr_max, lr_max / 20, 0]))

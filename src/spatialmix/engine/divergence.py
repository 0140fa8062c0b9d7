"""What went non-finite first when a run diverges, and the advice that follows from it.

A NaN or infinite number shows up in one of three places: the weights (an update was too large),
the batch-norm running statistics (activations overflowed, with finite weights), or only the loss.
Before the first update the learning rate cannot be the cause: the start itself is, most often the
scale of a Gaussian or uniform init (``--init-std 1e30`` made the statistics infinite in the first
forward pass, and the advice was to divide the learning rate by 10, again and again). The advice
names the likely cause and one command or change that follows from it; the tests follow it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from spatialmix.engine.config import TrainConfig
from spatialmix.errors import resume_command, setting

# Below this peak learning rate, updates are too small to be the cause of a divergence.
SMALL_LR = 1e-5
SCALED_INITS = ("gaussian", "uniform")  # the inits whose scale is --init-std
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def non_finite_tensors(model: nn.Module) -> tuple[list[str], list[str]]:
    """The names of the weights and of the buffers (batch-norm statistics) holding a NaN or an infinity."""
    weights = [
        n for n, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()
    ]
    buffers = [n for n, b in model.named_buffers() if b.is_floating_point() and not torch.isfinite(b).all()]
    return weights, buffers


def all_finite(model: nn.Module) -> torch.Tensor:
    """One boolean tensor: every weight and buffer of ``model`` is finite (one check, on the device)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def _largest_weight(model: nn.Module) -> float:
    return max((p.detach().abs().max().item() for p in model.parameters() if p.numel()), default=0.0)


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def what_became_non_finite(model: nn.Module, loss: torch.Tensor, epoch: int, step: int) -> str:
    """``loss became nan at epoch 2, step 1``, or the tensors that did when the loss is finite."""
    where = f"at epoch {epoch + 1}, step {step + 1}"
    if not torch.isfinite(loss):
        return f"loss became {loss.item()} {where}"
    weights, buffers = non_finite_tensors(model)
    return f"{_names(weights + buffers) or 'another rank'} became non-finite {where}"


def divergence_reason(
    run_dir: Path, epoch: int, updates: int, what: str, config: TrainConfig, model: nn.Module | None
) -> str:
    """The one line status.json and the error give: what went non-finite, what did first, its likely
    cause and what to do. ``updates``: optimizer steps taken before it happened."""
    weights, buffers = non_finite_tensors(model) if model is not None else ([], [])
    if updates == 0:
        start = _first_at_start(weights, buffers)
        return f"{what}, before any update: {start}; {_start_advice(config, run_dir)}"
    finite = "the weights are finite"
    if model is not None:
        finite += f" (the largest is {_largest_weight(model):.3g})"
    if weights:
        first = f"the weights went non-finite ({_names(weights)})"
    elif buffers:
        first = f"the batch-norm statistics went non-finite ({_names(buffers)}) while {finite}"
    else:
        first = f"the loss went non-finite while the statistics and {finite}"
    return (
        f"{what}; {first}; the last good checkpoint (epoch {epoch}) is kept in {run_dir}; "
        f"{_update_advice(config, run_dir)}"
    )


def _first_at_start(weights: list[str], buffers: list[str]) -> str:
    if weights:
        return f"the initial weights are not finite ({_names(weights)})"
    if buffers:
        return f"the first forward pass made the batch-norm statistics non-finite ({_names(buffers)})"
    return "the loss of the initial weights is not finite"


def _start_advice(config: TrainConfig, run_dir: Path) -> str:
    """Nothing was updated, so not the learning rate: the init's scale, or else the data or the model."""
    scaled = [
        setting(f"{kind}_init", init)
        for kind, init in (("spatial", config.spatial_init), ("channel", config.channel_init))
        if init in SCALED_INITS
    ]
    if scaled:
        default = _DEFAULTS["init_std"]
        smaller = default if config.init_std > default else config.init_std / 10
        return (
            f"not the learning rate (nothing was updated); the likely cause is the init's scale, "
            f"{setting('init_std', config.init_std)} with {' and '.join(scaled)}: train again with "
            f"{setting('init_std', smaller)} and another {setting('run_dir')} ({run_dir} holds only this "
            f"failed start)"
        )
    return (
        "so neither the learning rate (nothing was updated) nor the init's scale (PyTorch's default "
        "init) is the cause; the likely cause is the data or the model: check them"
    )


def _update_advice(config: TrainConfig, run_dir: Path) -> str:
    """After updates: a lower learning rate, unless it is already too small to matter."""
    lr = setting("lr", config.lr)
    if config.lr < SMALL_LR:
        if config.amp != "none":
            return (
                f"{lr} is already small, so the learning rate is unlikely the cause; "
                f"try full precision: continue with {resume_command(run_dir, amp='none')}"
            )
        inits = ", ".join(setting(name) for name in ("init_std", "spatial_init", "channel_init"))
        return (
            f"{lr} is already small, so the learning rate is unlikely the cause; check the "
            f"data and the init ({inits})"
        )
    default = _DEFAULTS["lr"]
    if config.lr > 10 * default:  # a tenth would likely diverge too: go to the recipe's rate at once
        lower, why = default, f" (the default; {config.lr:g} is far above it)"
    else:
        lower, why = config.lr / 10, ""
    return (
        f"the learning rate is the likely cause; lower {setting('lr')}: continue with "
        f"{resume_command(run_dir, lr=float(f'{lower:g}'))}{why} ({setting('amp', 'none')} may help too)"
    )

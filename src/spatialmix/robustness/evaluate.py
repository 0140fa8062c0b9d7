"""Adversarial evaluation of a model in memory: every budget, the masking checks, one result dict.

`evaluate_robustness` is the library's entry point (RobustBench's conventions: inputs in
[0, 1], normalization inside the attacked model, the model in eval mode); `attack_examples`
returns the adversarial images of one attack.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from spatialmix.data.batches import InputSpaceModel, to_unit_range
from spatialmix.engine.device import resolve_device
from spatialmix.errors import SpatialmixError
from spatialmix.robustness import masking
from spatialmix.robustness.apgd import project
from spatialmix.robustness.attacks import (
    DLR_MIN_CLASSES,
    Attacker,
    Progress,
    attack_every_budget,
    attack_mode,
)
from spatialmix.robustness.results import result_dict
from spatialmix.robustness.settings import AttackSettings
from spatialmix.ui.progress import AttackProgress


def evaluate_robustness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: AttackSettings | None = None,
    *,
    mean=None,
    std=None,
    label: str = "model",
    progress: bool | Progress = True,
    checks: bool = True,
    **changes,
) -> dict:
    """Clean and robust accuracy of ``model`` on ``images`` (floats in [0, 1], or uint8) over the budgets.

    ``model`` takes [0, 1] inputs, or give the ``mean`` and ``std`` it was trained with and it
    is wrapped in `InputSpaceModel`. ``settings`` (or keyword ``changes`` to the defaults,
    e.g. ``eps=(0, 8/255), steps=20``) say what runs; see `AttackSettings`. ``checks=False``
    skips the reference and the masking checks (for benchmarks). ``progress``: a rich progress
    bar (True), none (False), or a callable ``(stage, gradient_steps)``. The model is left on its
    device and in its mode. Returns a JSON-able dict (see `spatialmix.robustness.results.result_dict`).
    """

    settings = (settings or AttackSettings()).replace(**changes).validate()
    images, labels = _check_examples(images, labels)
    device = resolve_device(settings.device)
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise SpatialmixError(
                "give both mean and std (the normalization the model was trained with), or neither"
            )
        model = InputSpaceModel(model, mean, std)
    started = time.perf_counter()
    original_device = _device_of(model)
    model.to(device)
    try:
        with attack_mode(model), AttackProgress.for_setting(progress, label) as bar:
            attacker = Attacker(model, images, labels, settings, device, bar)
            _check_finite(attacker, label)
            _check_classes(
                attacker.num_classes, settings if checks else settings.replace(reference_examples=0)
            )
            budgets = attack_every_budget(attacker, settings)
            default_time = time.perf_counter() - started
            report = masking.run_checks(attacker, settings, budgets) if checks else None
    finally:
        if original_device is not None:
            model.to(original_device)
    gradients = masking.check_gradients(attacker, budgets, settings.tolerance)
    result = result_dict(label, settings, attacker, budgets, report, always=[gradients])
    result["time_s"] = time.perf_counter() - started
    result["default_time_s"] = default_time
    return result


def _check_finite(attacker: Attacker, label: str) -> None:
    """Refuse a model whose clean logits are NaN or infinite: no attack can measure it (argmax would
    call a NaN row its first class, and its gradient steers nowhere)."""
    bad = int((~attacker.finite).sum())
    if bad:
        raise SpatialmixError(
            f"{label}: the model gives NaN or infinite logits on {bad} of {len(attacker.y)} clean images, "
            f"so no attack can measure it; its weights are damaged or its forward pass overflows "
            f"(check the checkpoint, or train it again)"
        )


def _check_classes(num_classes: int, s: AttackSettings) -> None:
    """Refuse, before any attack runs, a targeted attack the model has too few classes for."""
    if s.needs_targets() and num_classes < DLR_MIN_CLASSES:
        raise SpatialmixError(
            f"APGD-T's targeted DLR loss needs at least {DLR_MIN_CLASSES} classes, this model has "
            f"{num_classes}; leave apgd-t out (--attacks apgd-ce) and set --reference-targets 0"
        )
    if s.needs_targets() > num_classes - 1:
        raise SpatialmixError(
            f"{s.needs_targets()} APGD-T targets asked for, but this model has only "
            f"{num_classes - 1} other classes; lower --targets / --reference-targets"
        )


def _device_of(model: nn.Module):
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return None if tensor is None else tensor.device


def _check_examples(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if len(images) == 0:
        raise SpatialmixError("zero examples to attack; pass at least one image")
    if len(images) != len(labels):
        raise SpatialmixError(f"{len(images)} images but {len(labels)} labels; pass one label per image")
    if images.dtype == torch.uint8:
        images = to_unit_range(images)
    images = images.detach().float().cpu().contiguous()
    if images.min() < 0 or images.max() > 1:
        raise SpatialmixError(
            f"images must be in [0, 1] (got values in [{images.min():.3g}, {images.max():.3g}]); "
            f"attacks work on unnormalized images: pass mean/std for the normalization"
        )
    return images, labels.detach().long().cpu()


def attack_examples(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    name: str,
    eps: float,
    norm: str = "Linf",
    *,
    seed: int = 0,
    steps: int = 10,
    square_queries: int = 1000,
    step_size: float = 2.5,
) -> torch.Tensor:
    """Adversarial examples for ``images`` (in [0, 1]) from one seeded attack of `Attacker`.

    ``name``: apgd-ce, apgd-t (the next-ranked class), pgd, fgsm or square. The result is always
    inside the eps ball and [0, 1]; an example the attack did not break comes back at its end point.
    """
    settings = AttackSettings(
        eps=(eps,),
        norm=norm,
        steps=steps,
        square_queries=square_queries,
        seed=seed,
        step_size=step_size,
        device="cpu",
    ).validate()
    images, labels = _check_examples(images, labels)
    if len(images) == 0 or eps == 0:
        return images.clone()
    with attack_mode(model):
        attacker = Attacker(model, images, labels, settings, torch.device("cpu"))
        _check_finite(attacker, "model")
        _, ends = attacker.run(
            "apgd-t1" if name == "apgd-t" else name, eps, torch.arange(len(labels)), tag="attack_examples"
        )
    return project(ends.points, images, eps, settings.norm)

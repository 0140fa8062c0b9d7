"""The table of models by name, filled by each model family's ``@register_model``.

Every model takes ``in_chans`` and ``num_classes`` and is a plain ``nn.Module`` whose
spatial mixing is done by depthwise convolutions and whose channel mixing is done by
1 x 1 convolutions, so that :mod:`spatialmix.core.mixing` can freeze either kind.

Names understood by :func:`create_model`:

* ``convmixer-W/D``: a named ConvMixer configuration (see ``CONVMIXER_CONFIGS``);
* ``convmixer``: a ConvMixer with explicit ``width``, ``depth``, ``kernel_size``, ``patch_size``;
* ``resnet18-sep``, ``resnet34-sep``, ``resnet50-sep`` (and ``resnet18`` ... for the ordinary
  ResNet baseline);
* ``mlpmixer`` / ``mlpmixer-W/D``: a small isotropic MLP-Mixer (Tolstikhin et al., 2021) whose spatial
  mixing is done by token-mixing linear layers instead of depthwise convolutions (``kernel_size``
  and ``activation`` do not apply to it and are ignored, so a study preset's ConvMixer settings
  carry over to ``--model mlpmixer``);
* ``timm:NAME`` and ``torchvision:NAME``: any model of those libraries (random weights unless
  ``pretrained=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class RegisteredModel:
    """One entry of :data:`MODEL_REGISTRY`: a builder (a class or function) and its default sizes."""

    name: str
    builder: Callable[..., nn.Module]
    defaults: dict
    description: str


# Every built-in model by name (`spatialmix models` lists it; timm:NAME / torchvision:NAME too). Each
# family's module registers its own names with @register_model; spatialmix.models.factory imports
# every family, so the table is complete wherever a model is built.
MODEL_REGISTRY: dict[str, RegisteredModel] = {}
"""Every built-in model by name, as `register_model` recorded it (`create_model` builds them)."""


def register_model(name: str, description: str, **defaults):
    """Decorator: add ``builder`` (a class or function taking ``in_chans``, ``num_classes`` and the
    ``defaults``' names) to the table as ``name``. Models of your own register the same way."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODEL_REGISTRY[name] = RegisteredModel(name, builder, dict(defaults), description)
        return builder

    return add

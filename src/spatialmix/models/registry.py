"""The table of models by name: each entry's builder, its default sizes and how it fits an image size.

Every model takes ``in_chans`` and ``num_classes`` and is a plain ``nn.Module`` whose
spatial mixing is done by depthwise convolutions and whose channel mixing is done by
1 x 1 convolutions, so that `spatialmix.core.mixing` can freeze either kind.

Names understood by `create_model`:

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

from spatialmix.models.convmixer import CONVMIXER_CONFIGS, ConvMixer, convmixer_for_image
from spatialmix.models.mlpmixer import MLPMIXER_CONFIGS, MLPMixer, mlpmixer_for_image
from spatialmix.models.resnet import RESNET_DEPTHS, SmallResNet, resnet, resnet_for_image
from spatialmix.models.unshufflenet import UnshuffleNet


def sizes_as_given(sizes: dict, image_size: int | None) -> dict:
    """How a model whose sizes do not depend on the image takes them: unchanged."""
    return sizes


@dataclass(frozen=True)
class RegisteredModel:
    """One entry of `MODEL_REGISTRY`: a builder (a class or function), its default sizes, and
    ``fit_to_image(sizes, image_size)``, which turns the sizes (defaults, then the caller's) into the
    builder's keyword arguments for images of ``image_size`` pixels (None: not known), refusing
    sizes that cannot fit them."""

    name: str
    builder: Callable[..., nn.Module]
    defaults: dict
    description: str
    fit_to_image: Callable[[dict, int | None], dict] = sizes_as_given


def _table(*entries: RegisteredModel) -> dict[str, RegisteredModel]:
    return {entry.name: entry for entry in entries}


MODEL_REGISTRY: dict[str, RegisteredModel] = _table(
    RegisteredModel(
        "convmixer",
        ConvMixer,
        dict(width=256, depth=8, kernel_size=5, patch_size=2, activation="gelu"),
        "ConvMixer with explicit width/depth/kernel_size/patch_size",
        convmixer_for_image,
    ),
    *(
        RegisteredModel(name, ConvMixer, sizes, f"ConvMixer {sizes}", convmixer_for_image)
        for name, sizes in CONVMIXER_CONFIGS.items()
    ),
    RegisteredModel(
        "mlpmixer",
        MLPMixer,
        dict(width=128, depth=6, patch_size=4),
        "MLP-Mixer with explicit width/depth/patch_size (token_hidden, channel_hidden)",
        mlpmixer_for_image,
    ),
    *(
        RegisteredModel(name, MLPMixer, sizes, f"MLP-Mixer {sizes}", mlpmixer_for_image)
        for name, sizes in MLPMIXER_CONFIGS.items()
    ),
    RegisteredModel(
        "resnet-sep",
        SmallResNet,
        dict(width=16, depth=1, patch_size=1, separable=True),
        "small-image ResNet (3 stages of basic blocks), separable after the stem, with explicit "
        "width/depth/patch_size",
    ),
    RegisteredModel(
        "resnet",
        SmallResNet,
        dict(width=16, depth=1, patch_size=1, separable=False),
        "ordinary small-image ResNet (the baseline of resnet-sep)",
    ),
    *(
        entry
        for arch in RESNET_DEPTHS
        for entry in (
            RegisteredModel(
                f"{arch}-sep",
                resnet,
                dict(arch=arch, separable=True),
                f"{arch}, separable after the stem",
                resnet_for_image,
            ),
            RegisteredModel(
                arch,
                resnet,
                dict(arch=arch, separable=False),
                f"ordinary {arch} (baseline)",
                resnet_for_image,
            ),
        )
    ),
    RegisteredModel(
        "unshufflenet",
        UnshuffleNet,
        dict(width=256, depth=8, kernel_size=7, patch_size=1, activation="gelu"),
        "image-to-image ConvMixer at full resolution (pixel un-shuffling)",
    ),
)
"""Every built-in model by name, with its builder and default sizes (`spatialmix models` lists it;
`timm:NAME` and `torchvision:NAME` build those libraries' models)."""


def register_model(name: str, description: str, **defaults):
    """Decorator: add ``builder`` (a class or function taking ``in_chans``, ``num_classes`` and the
    ``defaults``' names) to the table as ``name``, its sizes taken as given. Models of your own
    register this way."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODEL_REGISTRY[name] = RegisteredModel(name, builder, dict(defaults), description)
        return builder

    return add

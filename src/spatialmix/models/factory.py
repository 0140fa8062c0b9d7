"""Build a model by name: the built-in families, or any timm / torchvision model.

Every model takes ``in_chans`` and ``num_classes`` and is a plain ``nn.Module`` whose
spatial mixing is done by depthwise convolutions and whose channel mixing is done by
1 x 1 convolutions, so that :mod:`spatialmix.core.mixing` can freeze either kind.

Names understood by :func:`create_model`:

* ``convmixer-W/D``: a named ConvMixer configuration (see
:data:`~spatialmix.models.convmixer.CONVMIXER_CONFIGS`);
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

from torch import nn

from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.models import convmixer, mlpmixer, resnet, unshufflenet
from spatialmix.models.convmixer import ConvMixer
from spatialmix.models.external import external_model
from spatialmix.models.mlpmixer import MLPMixer
from spatialmix.models.registry import MODEL_REGISTRY

# Every family: importing them runs their @register_model lines, so MODEL_REGISTRY is complete here.
FAMILIES = (convmixer, mlpmixer, resnet, unshufflenet)


def model_kwargs(name: str, image_size: int | None = None, **overrides) -> dict:
    """The resolved constructor arguments of a registered model (defaults, then overrides)."""
    if name not in MODEL_REGISTRY:
        raise unknown_name("model", name, list_models())
    info = MODEL_REGISTRY[name]
    kwargs = dict(info.defaults)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if info.builder is resnet.resnet and "stem" not in overrides:
        kwargs["stem"] = "cifar" if image_size is not None and image_size <= 64 else "imagenet"
    return kwargs


def create_model(
    name: str,
    in_chans: int = 3,
    num_classes: int = 1000,
    image_size: int | None = None,
    pretrained: bool = False,
    **overrides,
) -> nn.Module:
    """Build a model by name. ``overrides`` replace the named configuration's sizes.

    ``image_size`` lets the builder reject impossible sizes (a patch larger than the image) and
    pick the small-image ResNet stem.
    """
    if name.startswith(("timm:", "torchvision:")):
        return external_model(
            name, in_chans, num_classes, pretrained, image_size, overrides.get("patch_size")
        )
    kwargs = model_kwargs(name, image_size, **overrides)
    info = MODEL_REGISTRY[name]
    if info.builder is ConvMixer and image_size is not None and kwargs["patch_size"] > image_size:
        raise SpatialmixError(
            f"patch size {kwargs['patch_size']} is larger than the {image_size} x {image_size} image; "
            f"use --patch-size {max(1, image_size // 8)} or smaller"
        )
    if info.builder is MLPMixer:
        kwargs["image_size"] = image_size if image_size is not None else kwargs.get("image_size", 224)
        # A study preset's ConvMixer settings carry over: an MLP-Mixer has no kernel and uses GELU.
        kwargs.pop("kernel_size", None), kwargs.pop("activation", None)
    try:
        model = info.builder(in_chans=in_chans, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise SpatialmixError(f"model {name!r} does not take these options: {err}") from None
    if image_size is not None:  # what spatialmix.core.token_mixers feeds the model to find its token axis
        model.spatialmix_input_shape = (in_chans, image_size, image_size)
    return model


def count_parameters(model: nn.Module) -> int:
    """The number of scalars in `model`'s parameters, frozen ones included."""
    return sum(p.numel() for p in model.parameters())


def list_models() -> list[str]:
    """The names `create_model` accepts: every registered model, then `timm:NAME` and
    `torchvision:NAME` for the models of those libraries."""
    return sorted(MODEL_REGISTRY) + ["timm:NAME", "torchvision:NAME"]

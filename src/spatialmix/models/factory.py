"""Build a model by name: a built-in one from `MODEL_REGISTRY`, or any timm / torchvision model.

`spatialmix.models.registry` lists the built-in names and how each takes its sizes; ``timm:NAME`` and
``torchvision:NAME`` go to `external_model`.
"""

from __future__ import annotations

from torch import nn

from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.models.external import external_model
from spatialmix.models.registry import MODEL_REGISTRY


def model_kwargs(name: str, image_size: int | None = None, **overrides) -> dict:
    """The constructor arguments of a registered model: its defaults, then the overrides that are not
    None, fitted to ``image_size`` by its entry (see `RegisteredModel`)."""
    if name not in MODEL_REGISTRY:
        raise unknown_name("model", name, list_models())
    entry = MODEL_REGISTRY[name]
    sizes = {**entry.defaults, **{k: v for k, v in overrides.items() if v is not None}}
    return entry.fit_to_image(sizes, image_size)


def create_model(
    name: str,
    in_chans: int = 3,
    num_classes: int = 1000,
    image_size: int | None = None,
    pretrained: bool = False,
    **overrides,
) -> nn.Module:
    """Build a model by name. ``overrides`` replace the named configuration's sizes.

    ``image_size`` lets the model's entry reject impossible sizes (a patch larger than the image) and
    pick what depends on it (the small-image ResNet stem, an MLP-Mixer's number of tokens).
    """
    if name.startswith(("timm:", "torchvision:")):
        return external_model(
            name, in_chans, num_classes, pretrained, image_size, overrides.get("patch_size")
        )
    kwargs = model_kwargs(name, image_size, **overrides)
    try:
        model = MODEL_REGISTRY[name].builder(in_chans=in_chans, num_classes=num_classes, **kwargs)
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

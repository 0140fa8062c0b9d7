"""Any model of timm or torchvision, adapted to the data's channels and image size."""

from __future__ import annotations

import torch
from torch import nn

from spatialmix.errors import SpatialmixError


def external_model(
    name: str,
    in_chans: int,
    num_classes: int,
    pretrained: bool,
    image_size: int | None = None,
    patch_size: int | None = None,
) -> nn.Module:
    """A timm or torchvision model. ``patch_size`` goes to timm models that take one (ConvNeXt's stem
    stride, a ViT's patch) and is refused for the others; the other size options are for the
    built-in models only."""
    library, _, arch = name.partition(":")
    if patch_size is not None and (
        isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1
    ):
        raise SpatialmixError(f"--patch-size must be a whole number of at least 1, got {patch_size!r}")
    if library == "timm":
        import timm

        if not timm.is_model(arch):
            raise SpatialmixError(f"timm has no model {arch!r}; see timm.list_models() for the names")
        kwargs = dict(pretrained=pretrained, in_chans=in_chans, num_classes=num_classes)
        # Token-mixing models (MLP-Mixer, ResMLP, gMLP, ViT) are built for one image size: give them ours.
        optional = {k: v for k, v in (("patch_size", patch_size), ("img_size", image_size)) if v is not None}
        model = _create_timm(timm, arch, kwargs, optional)
    else:
        import torchvision

        try:
            builder = torchvision.models.get_model_builder(arch)
        except ValueError:
            raise SpatialmixError(
                f"torchvision has no model {arch!r}; see torchvision.models.list_models()"
            ) from None
        if patch_size is not None:
            raise _takes_no_patch_size(name)
        model = builder(weights="DEFAULT" if pretrained else None, num_classes=num_classes)
        if in_chans != 3:
            _adapt_first_conv(model, in_chans)
    if image_size is not None:
        _check_image_fits(model, name, in_chans, image_size)
        model.spatialmix_input_shape = (in_chans, image_size, image_size)
    return model


def _takes_no_patch_size(name: str) -> SpatialmixError:
    return SpatialmixError(
        f"{name} takes no patch size (--patch-size is for the built-in models and timm models with a "
        f"patch stem, e.g. ConvNeXt, ViT, MLP-Mixer); leave --patch-size out"
    )


def _create_timm(timm, arch: str, kwargs: dict, optional: dict) -> nn.Module:
    """``timm.create_model`` with the ``optional`` arguments the model takes (one left out per refusal):
    the image size is the data's, and left out where the model has none; the patch size is the
    user's, and refused where the model has none (it was ignored without a word)."""
    optional = dict(optional)
    while True:
        try:
            return timm.create_model(arch, **kwargs, **optional)
        except TypeError as err:
            refused = [k for k in optional if k in str(err)]
            if not refused:
                raise
            if refused[0] == "patch_size":
                raise _takes_no_patch_size(f"timm:{arch}") from None
            optional.pop(refused[0])


@torch.no_grad()
def _check_image_fits(model: nn.Module, name: str, in_chans: int, image_size: int) -> None:
    """One image through the model now: an image too small for its downsampling is then a clear
    error here, not a traceback in the first training step (ImageNet models shrink by 32)."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_chans, image_size, image_size))
    except RuntimeError as err:
        raise SpatialmixError(
            f"{name} cannot take {image_size} x {image_size} images "
            f"({str(err).strip().splitlines()[0][:120]}); "
            "it downsamples them to nothing: use larger images or a model that downsamples less (timm "
            "models "
            f"with a patch stem take --patch-size: ConvNeXt with --patch-size 1 fits 28 x 28 images)"
        ) from None
    finally:
        model.train(was_training)


def _adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give a torchvision model (built for RGB) a first conv with ``in_chans`` inputs."""
    for module in model.modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(
                    in_chans,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    1,
                    child.bias is not None,
                )
                setattr(module, child_name, new)
                return
    raise SpatialmixError("could not find the first 3-channel conv to adapt to in_chans; use 3-channel data")

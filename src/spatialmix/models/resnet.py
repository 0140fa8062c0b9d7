"""torchvision's ResNets, made separable after the stem (the paper's ResNet variant is not stated)."""

from __future__ import annotations

from torch import nn

from spatialmix.errors import check_positive, unknown_name
from spatialmix.models.layers import make_separable

RESNET_DEPTHS = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
}


def resnet(
    arch: str = "resnet18",
    in_chans: int = 3,
    num_classes: int = 1000,
    separable: bool = True,
    stem: str = "imagenet",
) -> nn.Module:
    """A torchvision ResNet, made separable after the stem unless ``separable=False``.

    ``stem="cifar"`` replaces the 7 x 7 stride-2 stem and max-pool with a 3 x 3 stride-1 conv,
    the usual choice for 32 x 32 images (otherwise a 28 x 28 input shrinks to 1 x 1).
    """
    import torchvision

    if arch not in RESNET_DEPTHS:
        raise unknown_name("ResNet", arch, RESNET_DEPTHS)
    if stem not in ("imagenet", "cifar"):
        raise unknown_name("ResNet stem", stem, ("imagenet", "cifar"))
    check_positive(in_chans=in_chans, num_classes=num_classes)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if separable:
        make_separable(model, skip=("conv1",))
    model.num_classes = num_classes
    model.spatialmix_mixer_init = "default"  # as the other built-in models (see ConvMixer)
    return model


def resnet_for_image(sizes: dict, image_size: int | None) -> dict:
    """A ResNet's sizes for images of ``image_size`` pixels: the small-image stem up to 64 pixels, the
    ImageNet stem above or when the size is not known, unless a stem is given."""
    if "stem" in sizes:
        return sizes
    return {**sizes, "stem": "cifar" if image_size is not None and image_size <= 64 else "imagenet"}

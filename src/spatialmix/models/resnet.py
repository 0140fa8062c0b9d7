"""ResNets made separable after the stem (the paper's ResNet variant is not stated).

* ``resnet18-sep`` ... ``resnet101-sep``: torchvision's ImageNet ResNets;
* ``resnet-sep``: He et al.'s small-image layout (a 3 x 3 stem, then three stages of basic blocks of
  ``width``, 2 x ``width`` and 4 x ``width`` channels, the last two halving the resolution) with an
  explicit ``width``, ``depth`` (blocks per stage) and ``patch_size`` (the stem's stride): sized to
  train beside a small ConvMixer in the same time (the classification study of ``reproduce``).

Each has an ordinary baseline without ``-sep``.
"""

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


class BasicBlock(nn.Module):
    """He et al.'s basic block: 3 x 3 conv, BatchNorm, ReLU, 3 x 3 conv, BatchNorm, plus the shortcut
    (a strided 1 x 1 conv and BatchNorm where the shape changes), then ReLU; torchvision's layout."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_chans != out_chans:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chans)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class SmallResNet(nn.Module):
    """He et al.'s ResNet for small images (CIFAR's ResNet-20 is ``width=16, depth=3``): a 3 x 3 stem
    of stride ``patch_size``, three stages of ``depth`` basic blocks with ``width``, 2 x ``width`` and
    4 x ``width`` channels (the second and third start with stride 2), global average pool, linear
    head. ``separable=True`` turns every 3 x 3 conv after the stem into depthwise + pointwise."""

    spatialmix_mixer_init = "default"  # as the other built-in models (see ConvMixer)

    def __init__(
        self,
        width: int = 16,
        depth: int = 1,
        patch_size: int = 1,
        in_chans: int = 3,
        num_classes: int = 1000,
        separable: bool = True,
    ):
        super().__init__()
        check_positive(
            width=width, depth=depth, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes
        )
        self.width, self.depth, self.patch_size, self.num_classes = width, depth, patch_size, num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=patch_size, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        blocks, chans = [], width
        for stage in range(3):
            out_chans = width * 2**stage
            for i in range(depth):
                blocks.append(BasicBlock(chans, out_chans, stride=2 if stage > 0 and i == 0 else 1))
                chans = out_chans
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(chans, num_classes)
        if separable:
            make_separable(self, skip=("stem.0",))

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))))

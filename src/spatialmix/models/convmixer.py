"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?"), and its published configurations."""

from __future__ import annotations

from torch import nn

from spatialmix.errors import SpatialmixError, check_positive
from spatialmix.models.layers import check_kernel_size, convmixer_block, make_activation


class ConvMixer(nn.Module):
    """ConvMixer (Trockman & Kolter), laid out like the reference implementation.

    stem (patch embedding) -> ``depth`` blocks -> global average pool -> linear head.
    """

    # Its mixers' own init: PyTorch's default, drawn per layer by spatialmix.core.mixing.apply_mixing
    # in every mode, so Full and Chans runs with one seed start from the same model.
    spatialmix_mixer_init = "default"

    def __init__(
        self,
        width: int,
        depth: int,
        kernel_size: int = 9,
        patch_size: int = 7,
        in_chans: int = 3,
        num_classes: int = 1000,
        activation: str = "gelu",
    ):
        super().__init__()
        check_positive(
            width=width, depth=depth, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes
        )
        check_kernel_size(kernel_size)
        self.width, self.depth = width, depth
        self.kernel_size, self.patch_size = kernel_size, patch_size
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size),
            make_activation(activation),
            nn.BatchNorm2d(width),
        )
        self.blocks = nn.Sequential(*[convmixer_block(width, kernel_size, activation) for _ in range(depth)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return self.blocks(self.stem(x))

    def forward(self, x):
        return self.head(self.pool(self.forward_features(x)))


# The published configurations (kernel, patch, activation as in the ConvMixer paper / timm).
CONVMIXER_CONFIGS = {
    "convmixer-1536/20": dict(width=1536, depth=20, kernel_size=9, patch_size=7, activation="gelu"),
    "convmixer-768/32": dict(width=768, depth=32, kernel_size=7, patch_size=7, activation="relu"),
    "convmixer-1024/20": dict(width=1024, depth=20, kernel_size=9, patch_size=14, activation="gelu"),
    "convmixer-256/8": dict(width=256, depth=8, kernel_size=5, patch_size=2, activation="gelu"),
    "convmixer-128/6": dict(width=128, depth=6, kernel_size=5, patch_size=2, activation="gelu"),
}


def convmixer_for_image(sizes: dict, image_size: int | None) -> dict:
    """A ConvMixer's sizes for images of ``image_size`` pixels: a patch larger than the image is refused."""
    if image_size is not None and sizes["patch_size"] > image_size:
        raise SpatialmixError(
            f"patch size {sizes['patch_size']} is larger than the {image_size} x {image_size} image; "
            f"use --patch-size {max(1, image_size // 8)} or smaller"
        )
    return sizes

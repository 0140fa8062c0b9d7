"""The pixel un-shuffling network: an image-to-image ConvMixer at full resolution."""

from __future__ import annotations

from torch import nn

from spatialmix.errors import SpatialmixError, check_positive
from spatialmix.models.layers import check_kernel_size, convmixer_block, make_activation


class UnshuffleNet(nn.Module):
    """An isotropic ConvMixer that keeps the full resolution and outputs an image.

    stem (1 x 1 conv -> activation -> BatchNorm) -> ``depth`` ConvMixer blocks -> 1 x 1 conv head
    to ``in_chans`` channels (the stem and the head are learned in every mode). ``num_classes`` is accepted so
    that the model registry can build it, and ignored.
    """

    # Its mixers' own init: PyTorch's default, drawn per layer by spatialmix.core.mixing.apply_mixing
    # in every mode, so Full and Chans runs with one seed start from the same model.
    spatialmix_mixer_init = "default"

    def __init__(
        self,
        width: int = 256,
        depth: int = 8,
        kernel_size: int = 7,
        patch_size: int = 1,
        in_chans: int = 3,
        num_classes: int | None = None,
        activation: str = "gelu",
    ):
        super().__init__()
        check_positive(width=width, depth=depth, in_chans=in_chans)
        check_kernel_size(kernel_size)
        if patch_size != 1:
            raise SpatialmixError(
                f"UnshuffleNet works at full resolution: patch size must be 1, got {patch_size}"
            )
        self.width, self.depth, self.kernel_size, self.patch_size = width, depth, kernel_size, 1
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, kernel_size=1), make_activation(activation), nn.BatchNorm2d(width)
        )
        self.blocks = nn.Sequential(*[convmixer_block(width, kernel_size, activation) for _ in range(depth)])
        self.head = nn.Conv2d(width, in_chans, kernel_size=1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))

"""A small isotropic MLP-Mixer whose spatial mixing is done by token-mixing linear layers."""

from __future__ import annotations

from torch import nn

from spatialmix.errors import SpatialmixError, check_positive


class TokenMixingMLP(nn.Module):
    """Linear -> GELU -> Linear along the token axis: input and output are (batch, tokens, width).

    The two linear layers see (batch, width, tokens): they mix the patches of the grid, one
    channel at a time, which is what a depthwise convolution does with a k x k window.
    """

    def __init__(self, num_tokens: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(num_tokens, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, num_tokens)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.transpose(1, 2)))).transpose(1, 2)


class MixerBlock(nn.Module):
    """Pre-norm residual token mixing, then pre-norm residual channel mixing (the MLP-Mixer block)."""

    def __init__(self, width: int, num_tokens: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.token_mlp = TokenMixingMLP(num_tokens, token_hidden)
        self.norm2 = nn.LayerNorm(width)
        self.channel_mlp = nn.Sequential(
            nn.Linear(width, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, width)
        )

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x))
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    """An isotropic MLP-Mixer for small images: patch stem -> ``depth`` blocks -> LayerNorm -> mean -> head.

    ``token_hidden`` defaults to width / 2 and ``channel_hidden`` to 4 x width (the ratios of
    Mixer-S/16: 256 and 2048 for width 512). The number of tokens is fixed by the image size,
    so the model is built for one ``image_size``.
    """

    # Its mixers' own init: PyTorch's default, drawn per layer by spatialmix.core.mixing.apply_mixing
    # in every mode, so Full and Chans runs with one seed start from the same model.
    spatialmix_mixer_init = "default"

    def __init__(
        self,
        width: int,
        depth: int,
        patch_size: int = 4,
        image_size: int = 32,
        token_hidden: int | None = None,
        channel_hidden: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
    ):
        super().__init__()
        check_positive(
            width=width,
            depth=depth,
            patch_size=patch_size,
            image_size=image_size,
            in_chans=in_chans,
            num_classes=num_classes,
        )
        token_hidden = max(1, width // 2) if token_hidden is None else token_hidden
        channel_hidden = 4 * width if channel_hidden is None else channel_hidden
        check_positive(token_hidden=token_hidden, channel_hidden=channel_hidden)
        if patch_size > image_size:
            raise SpatialmixError(
                f"patch size {patch_size} is larger than the {image_size} x {image_size} image; "
                f"use --patch-size {max(1, image_size // 8)} or smaller"
            )
        self.width, self.depth, self.patch_size, self.image_size = width, depth, patch_size, image_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.Sequential(
            *[MixerBlock(width, self.num_tokens, token_hidden, channel_hidden) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.spatialmix_input_shape = (in_chans, image_size, image_size)

    def forward_features(self, x):
        x = self.stem(x)
        if x.shape[-2:] != self.grid:
            raise SpatialmixError(
                f"this MLP-Mixer was built for {self.image_size} x {self.image_size} images "
                f"(a {self.grid[0]} x {self.grid[1]} patch grid), got {tuple(x.shape[-2:])} patches"
            )
        return self.norm(self.blocks(x.flatten(2).transpose(1, 2)))

    def forward(self, x):
        return self.head(self.forward_features(x).mean(1))


# Small isotropic MLP-Mixers sized like the ConvMixers above, for the same CPU studies.
MLPMIXER_CONFIGS = {
    "mlpmixer-128/6": dict(width=128, depth=6, patch_size=4),
    "mlpmixer-256/8": dict(width=256, depth=8, patch_size=4),
}


def mlpmixer_for_image(sizes: dict, image_size: int | None) -> dict:
    """An MLP-Mixer's sizes for images of ``image_size`` pixels (224 when not known): it is built for
    one image size. A study preset's ConvMixer settings carry over: it has no kernel and uses GELU."""
    fitted = {k: v for k, v in sizes.items() if k not in ("kernel_size", "activation")}
    fitted["image_size"] = image_size if image_size is not None else sizes.get("image_size", 224)
    return fitted

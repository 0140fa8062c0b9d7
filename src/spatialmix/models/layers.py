"""The building blocks of separable models: activations, residuals, spatial and channel mixers."""

from __future__ import annotations

from torch import nn

from spatialmix.errors import SpatialmixError, check_positive, unknown_name

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise unknown_name("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def check_kernel_size(kernel_size: int) -> None:
    check_positive(kernel_size=kernel_size)
    if kernel_size % 2 == 0:
        raise SpatialmixError(
            f"kernel size {kernel_size} is even: spatial mixers use symmetric 'same' padding, "
            f"which needs an odd kernel (try {kernel_size - 1} or {kernel_size + 1})"
        )


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def spatial_mixer(dim: int, kernel_size: int, act: str) -> nn.Sequential:
    """Depthwise k x k conv (one filter per channel) -> activation -> BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2),
        make_activation(act),
        nn.BatchNorm2d(dim),
    )


def channel_mixer(dim: int, act: str) -> nn.Sequential:
    """Pointwise 1 x 1 conv -> activation -> BatchNorm."""
    return nn.Sequential(nn.Conv2d(dim, dim, kernel_size=1), make_activation(act), nn.BatchNorm2d(dim))


def convmixer_block(dim: int, kernel_size: int, act: str) -> nn.Sequential:
    """One ConvMixer block: residual spatial mixing, then channel mixing."""
    return nn.Sequential(Residual(spatial_mixer(dim, kernel_size, act)), *channel_mixer(dim, act))


def separable_conv(conv: nn.Conv2d) -> nn.Sequential:
    """Replace a k x k conv by depthwise k x k (carrying the stride) + pointwise 1 x 1.

    The pointwise conv takes over the bias, so the pair has the same interface as ``conv``.
    """
    depthwise = nn.Conv2d(
        conv.in_channels,
        conv.in_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.in_channels,
        bias=False,
    )
    pointwise = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
    return nn.Sequential(depthwise, pointwise)


def make_separable(model: nn.Module, skip: tuple[str, ...] = ()) -> nn.Module:
    """Turn every k x k (k > 1) full convolution of ``model`` into a separable pair, in place.

    Modules whose qualified name is in ``skip`` (the stem) stay full convolutions.
    """
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full_name = f"{name}.{child_name}" if name else child_name
            if (
                isinstance(child, nn.Conv2d)
                and full_name not in skip
                and child.groups == 1
                and max(child.kernel_size) > 1
            ):
                setattr(module, child_name, separable_conv(child))
    return model

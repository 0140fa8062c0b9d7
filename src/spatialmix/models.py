"""Separable vision models, and a registry to build them by name.

Every model takes ``in_chans`` and ``num_classes`` and is a plain ``nn.Module`` whose
spatial mixing is done by depthwise convolutions and whose channel mixing is done by
1 x 1 convolutions, so that :mod:`spatialmix.mixing` can freeze either kind.

Names understood by :func:`create_model`:

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

import importlib

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import SpatialmixError, check_positive, unknown_name

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


class ConvMixer(nn.Module):
    """ConvMixer (Trockman & Kolter), laid out like the reference implementation.

    stem (patch embedding) -> ``depth`` blocks -> global average pool -> linear head.
    """

    def __init__(self, width: int, depth: int, kernel_size: int = 9, patch_size: int = 7,
                 in_chans: int = 3, num_classes: int = 1000, activation: str = "gelu"):
        super().__init__()
        check_positive(width=width, depth=depth, patch_size=patch_size, in_chans=in_chans,
                       num_classes=num_classes)
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


# --------------------------------------------------------------------------- MLP-Mixer

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
        self.channel_mlp = nn.Sequential(nn.Linear(width, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, width))

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x))
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    """An isotropic MLP-Mixer for small images: patch stem -> ``depth`` blocks -> LayerNorm -> mean -> head.

    ``token_hidden`` defaults to width / 2 and ``channel_hidden`` to 4 x width (the ratios of
    Mixer-S/16: 256 and 2048 for width 512). The number of tokens is fixed by the image size,
    so the model is built for one ``image_size``.
    """

    def __init__(self, width: int, depth: int, patch_size: int = 4, image_size: int = 32, token_hidden: int | None = None,
                 channel_hidden: int | None = None, in_chans: int = 3, num_classes: int = 1000):
        super().__init__()
        check_positive(width=width, depth=depth, patch_size=patch_size, image_size=image_size, in_chans=in_chans,
                       num_classes=num_classes)
        token_hidden = max(1, width // 2) if token_hidden is None else token_hidden
        channel_hidden = 4 * width if channel_hidden is None else channel_hidden
        check_positive(token_hidden=token_hidden, channel_hidden=channel_hidden)
        if patch_size > image_size:
            raise SpatialmixError(f"patch size {patch_size} is larger than the {image_size} x {image_size} image; "
                                  f"use --patch-size {max(1, image_size // 8)} or smaller")
        self.width, self.depth, self.patch_size, self.image_size = width, depth, patch_size, image_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.Sequential(*[MixerBlock(width, self.num_tokens, token_hidden, channel_hidden)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.spatialmix_input_shape = (in_chans, image_size, image_size)

    def forward_features(self, x):
        x = self.stem(x)
        if x.shape[-2:] != self.grid:
            raise SpatialmixError(f"this MLP-Mixer was built for {self.image_size} x {self.image_size} images "
                                  f"(a {self.grid[0]} x {self.grid[1]} patch grid), got {tuple(x.shape[-2:])} patches")
        return self.norm(self.blocks(x.flatten(2).transpose(1, 2)))

    def forward(self, x):
        return self.head(self.forward_features(x).mean(1))


# --------------------------------------------------------------------------- separable ResNet

def separable_conv(conv: nn.Conv2d) -> nn.Sequential:
    """Replace a k x k conv by depthwise k x k (carrying the stride) + pointwise 1 x 1.

    The pointwise conv takes over the bias, so the pair has the same interface as ``conv``.
    """
    depthwise = nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, groups=conv.in_channels,
                          bias=False)
    pointwise = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
    return nn.Sequential(depthwise, pointwise)


def make_separable(model: nn.Module, skip: tuple[str, ...] = ()) -> nn.Module:
    """Turn every k x k (k > 1) full convolution of ``model`` into a separable pair, in place.

    Modules whose qualified name is in ``skip`` (the stem) stay full convolutions.
    """
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full_name = f"{name}.{child_name}" if name else child_name
            if (isinstance(child, nn.Conv2d) and full_name not in skip and child.groups == 1
                    and max(child.kernel_size) > 1):
                setattr(module, child_name, separable_conv(child))
    return model


RESNET_DEPTHS = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
                 "resnet101": "resnet101"}


def resnet(arch: str = "resnet18", in_chans: int = 3, num_classes: int = 1000, separable: bool = True,
           stem: str = "imagenet") -> nn.Module:
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
    return model


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module] | str   # a class or function, or "module:name" imported when first built
    defaults: dict
    description: str

    def constructor(self) -> Callable[..., nn.Module]:
        if not isinstance(self.builder, str):
            return self.builder
        module, _, attribute = self.builder.partition(":")
        return getattr(importlib.import_module(module), attribute)


# The published configurations (kernel, patch, activation as in the ConvMixer paper / timm).
CONVMIXER_CONFIGS = {
    "convmixer-1536/20": dict(width=1536, depth=20, kernel_size=9, patch_size=7, activation="gelu"),
    "convmixer-768/32": dict(width=768, depth=32, kernel_size=7, patch_size=7, activation="relu"),
    "convmixer-1024/20": dict(width=1024, depth=20, kernel_size=9, patch_size=14, activation="gelu"),
    "convmixer-256/8": dict(width=256, depth=8, kernel_size=5, patch_size=2, activation="gelu"),
    "convmixer-128/6": dict(width=128, depth=6, kernel_size=5, patch_size=2, activation="gelu"),
}
# Small isotropic MLP-Mixers sized like the ConvMixers above, for the same CPU studies.
MLPMIXER_CONFIGS = {
    "mlpmixer-128/6": dict(width=128, depth=6, patch_size=4),
    "mlpmixer-256/8": dict(width=256, depth=8, patch_size=4),
}

# Every built-in model, in one table (`spatialmix models` lists it; timm:NAME / torchvision:NAME too).
MODEL_REGISTRY: dict[str, ModelInfo] = {info.name: info for info in [
    ModelInfo("convmixer", ConvMixer, dict(width=256, depth=8, kernel_size=5, patch_size=2, activation="gelu"),
              "ConvMixer with explicit width/depth/kernel_size/patch_size"),
    *(ModelInfo(name, ConvMixer, cfg, f"ConvMixer {cfg}") for name, cfg in CONVMIXER_CONFIGS.items()),
    ModelInfo("mlpmixer", MLPMixer, dict(width=128, depth=6, patch_size=4),
              "MLP-Mixer with explicit width/depth/patch_size (token_hidden, channel_hidden)"),
    *(ModelInfo(name, MLPMixer, cfg, f"MLP-Mixer {cfg}") for name, cfg in MLPMIXER_CONFIGS.items()),
    *(ModelInfo(f"{arch}-sep", resnet, dict(arch=arch, separable=True), f"{arch}, separable after the stem")
      for arch in RESNET_DEPTHS),
    *(ModelInfo(arch, resnet, dict(arch=arch, separable=False), f"ordinary {arch} (baseline)")
      for arch in RESNET_DEPTHS),
    # The un-shuffling network lives with its task (spatialmix.unshuffle), imported when first built.
    ModelInfo("unshufflenet", "spatialmix.unshuffle:UnshuffleNet",
              dict(width=256, depth=8, kernel_size=7, patch_size=1, activation="gelu"),
              "image-to-image ConvMixer at full resolution (pixel un-shuffling)"),
]}


def register_model(name: str, builder: Callable[..., nn.Module], description: str, **defaults) -> None:
    """Add a model of your own to the table (spatialmix's own are all listed above)."""
    MODEL_REGISTRY[name] = ModelInfo(name, builder, defaults, description)


def list_models() -> list[str]:
    return sorted(MODEL_REGISTRY) + ["timm:NAME", "torchvision:NAME"]


def _external_model(name: str, in_chans: int, num_classes: int, pretrained: bool, image_size: int | None = None,
                    patch_size: int | None = None) -> nn.Module:
    """A timm or torchvision model. ``patch_size`` goes to timm models that take one (ConvNeXt's stem
    stride, a ViT's patch); the other size options are for the built-in models only."""
    library, _, arch = name.partition(":")
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
            raise SpatialmixError(f"torchvision has no model {arch!r}; see torchvision.models.list_models()") from None
        model = builder(weights="DEFAULT" if pretrained else None, num_classes=num_classes)
        if in_chans != 3:
            _adapt_first_conv(model, in_chans)
    if image_size is not None:
        _check_image_fits(model, name, in_chans, image_size)
        model.spatialmix_input_shape = (in_chans, image_size, image_size)
    return model


def _create_timm(timm, arch: str, kwargs: dict, optional: dict) -> nn.Module:
    """``timm.create_model`` with the ``optional`` arguments the model takes (one left out per refusal)."""
    optional = dict(optional)
    while True:
        try:
            return timm.create_model(arch, **kwargs, **optional)
        except TypeError as err:
            refused = [k for k in optional if k in str(err)]
            if not refused:
                raise
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
            f"{name} cannot take {image_size} x {image_size} images ({str(err).strip().splitlines()[0][:120]}); "
            f"it downsamples them to nothing: use larger images or a model that downsamples less (timm models "
            f"with a patch stem take --patch-size: ConvNeXt with --patch-size 1 fits 28 x 28 images)") from None
    finally:
        model.train(was_training)


def _adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give a torchvision model (built for RGB) a first conv with ``in_chans`` inputs."""
    for module in model.modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(in_chans, child.out_channels, child.kernel_size, child.stride, child.padding,
                                child.dilation, 1, child.bias is not None)
                setattr(module, child_name, new)
                return
    raise SpatialmixError("could not find the first 3-channel conv to adapt to in_chans; use 3-channel data")


def model_kwargs(name: str, image_size: int | None = None, **overrides) -> dict:
    """The resolved constructor arguments of a registered model (defaults, then overrides)."""
    if name not in MODEL_REGISTRY:
        raise unknown_name("model", name, list_models())
    info = MODEL_REGISTRY[name]
    kwargs = dict(info.defaults)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if info.builder is resnet and "stem" not in overrides:
        kwargs["stem"] = "cifar" if image_size is not None and image_size <= 64 else "imagenet"
    return kwargs


def create_model(name: str, in_chans: int = 3, num_classes: int = 1000, image_size: int | None = None,
                 pretrained: bool = False, **overrides) -> nn.Module:
    """Build a model by name. ``overrides`` replace the named configuration's sizes.

    ``image_size`` lets the builder reject impossible sizes (a patch larger than the image) and
    pick the small-image ResNet stem.
    """
    if name.startswith(("timm:", "torchvision:")):
        return _external_model(name, in_chans, num_classes, pretrained, image_size, overrides.get("patch_size"))
    kwargs = model_kwargs(name, image_size, **overrides)
    info = MODEL_REGISTRY[name]
    if info.builder is ConvMixer and image_size is not None and kwargs["patch_size"] > image_size:
        raise SpatialmixError(
            f"patch size {kwargs['patch_size']} is larger than the {image_size} x {image_size} image; "
            f"use --patch-size {max(1, image_size // 8)} or smaller")
    if info.builder is MLPMixer:
        kwargs["image_size"] = image_size if image_size is not None else kwargs.get("image_size", 224)
        # A study preset's ConvMixer settings carry over: an MLP-Mixer has no kernel and uses GELU.
        kwargs.pop("kernel_size", None), kwargs.pop("activation", None)
    try:
        model = info.constructor()(in_chans=in_chans, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise SpatialmixError(f"model {name!r} does not take these options: {err}") from None
    if image_size is not None:   # what spatialmix.token_mixers feeds the model to find its token axis
        model.spatialmix_input_shape = (in_chans, image_size, image_size)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""What is frozen and how it is initialized: the heart of the paper.

A separable network splits each convolution into a *spatial mixer* (a depthwise k x k conv, one
filter per channel) and a *channel mixer* (a pointwise 1 x 1 conv). The paper trains the same
network in three modes:

* ``full``:  every layer is learned;
* ``chans``: only the channel mixers (and everything that is neither) are learned; the spatial
  mixers stay at their random initialization;
* ``space``: only the spatial mixers (and everything that is neither) are learned; the channel
  mixers stay at their random initialization.

Everything here works on any ``nn.Module`` (our models, timm, torchvision): layers are found by
their shape, not their name.

Frozen tensors get ``requires_grad=False``; :func:`trainable_parameters` and the optimizer built
by :mod:`spatialmix.train` only ever see trainable ones, so frozen tensors receive no gradient, no
optimizer state and no weight decay, and :func:`frozen_fingerprint` proves they did not move.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SpatialmixError, unknown_name

MODES = ("full", "chans", "space")
INITS = ("default", "gaussian", "uniform")

SPATIAL, CHANNEL, STEM_OR_FULL, NORM, HEAD, OTHER = "spatial", "channel", "full-conv", "norm", "head", "other"
KINDS = (SPATIAL, CHANNEL, STEM_OR_FULL, NORM, HEAD, OTHER)
_FROZEN_KIND = {"full": None, "chans": SPATIAL, "space": CHANNEL}
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def is_spatial_mixer(module: nn.Module) -> bool:
    """A depthwise conv: one (or a few) k x k filters per input channel, k > 1."""
    return (isinstance(module, nn.Conv2d) and module.in_channels > 1
            and module.groups == module.in_channels and max(module.kernel_size) > 1)


def is_channel_mixer(module: nn.Module, head: nn.Module | None = None) -> bool:
    """A pointwise 1 x 1 conv, or a linear layer other than the classifier head.

    Linear layers count because models in channels-last style (ConvNeXt's MLP) mix channels with
    ``nn.Linear``.
    """
    if module is head:
        return False
    if isinstance(module, nn.Conv2d):
        return tuple(module.kernel_size) == (1, 1)
    return isinstance(module, nn.Linear)


def find_head(model: nn.Module) -> nn.Module | None:
    """The classifier: ``model.head`` / ``get_classifier()`` / ``fc`` / ``classifier``, else the last Linear."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    for attr in ("head", "fc", "classifier"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            if linears:
                return linears[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def classify_layers(model: nn.Module) -> dict[str, str]:
    """Map each parameter-owning layer's qualified name to its kind (see ``KINDS``)."""
    head = find_head(model)
    kinds = {}
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if module is head:
            kinds[name] = HEAD
        elif is_spatial_mixer(module):
            kinds[name] = SPATIAL
        elif is_channel_mixer(module, head):
            kinds[name] = CHANNEL
        elif isinstance(module, nn.modules.conv._ConvNd):
            kinds[name] = STEM_OR_FULL
        elif isinstance(module, _NORMS):
            kinds[name] = NORM
        else:
            kinds[name] = OTHER
    return kinds


def layers_of_kind(model: nn.Module, kind: str) -> list[tuple[str, nn.Module]]:
    kinds = classify_layers(model)
    modules = dict(model.named_modules())
    return [(name, modules[name]) for name, k in kinds.items() if k == kind]


# --------------------------------------------------------------------------- initialization

@dataclass(frozen=True)
class InitSpec:
    """How random filters are drawn. Stored in the run config so a frozen model can be rebuilt.

    ``name``: ``default`` (PyTorch's conv default, uniform in +-1/sqrt(fan_in), i.e. +-1/k for a
    depthwise k x k), ``gaussian`` (normal with ``std``) or ``uniform`` (in +-``std``).
    ``smooth_sigma`` > 0 then blurs each k x k filter with a Gaussian of that sigma (in pixels)
    and rescales it to its original L2 norm, so smoothing changes the frequency content of the
    filters and not their gain.
    """

    name: str = "default"
    std: float = 0.1
    smooth_sigma: float = 0.0

    def __post_init__(self):
        if self.name not in INITS:
            raise unknown_name("init", self.name, INITS)
        if not (self.std > 0 and math.isfinite(self.std)):
            raise SpatialmixError(f"init std must be a positive number, got {self.std}")
        if not (self.smooth_sigma >= 0 and math.isfinite(self.smooth_sigma)):
            raise SpatialmixError(f"smoothing sigma must be >= 0, got {self.smooth_sigma}")


def gaussian_kernel(sigma: float, size: int) -> torch.Tensor:
    """A normalized 2-D Gaussian of the given sigma, ``size`` x ``size`` (size odd)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    kernel = g[:, None] * g[None, :]
    return kernel / kernel.sum()


def smooth_filters(weight: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each k x k filter of ``weight`` (out, in, k, k) with a Gaussian, keeping its L2 norm.

    Zero padding, 'same' size: the result is the band-limited part of the filter that fits in
    its k x k support. Filters are processed in float64 so that equal seeds give equal bits.
    """
    if sigma == 0:
        return weight.clone()
    out_ch, in_ch, kh, kw = weight.shape
    size = 2 * math.ceil(3 * sigma) + 1
    blur = gaussian_kernel(sigma, size)[None, None]
    w = weight.to(torch.float64).reshape(out_ch * in_ch, 1, kh, kw)
    smoothed = F.conv2d(w, blur, padding=size // 2)
    smoothed = smoothed[..., (smoothed.shape[-2] - kh) // 2:][..., :kh, (smoothed.shape[-1] - kw) // 2:][..., :kw]
    norm_before = w.flatten(1).norm(dim=1).clamp_min(1e-12)
    norm_after = smoothed.flatten(1).norm(dim=1).clamp_min(1e-12)
    smoothed = smoothed * (norm_before / norm_after)[:, None, None, None]
    return smoothed.reshape(weight.shape).to(weight.dtype)


def _draw(shape, fan_in: int, spec: InitSpec, generator: torch.Generator) -> torch.Tensor:
    if spec.name == "default":
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    if spec.name == "uniform":
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * spec.std
    return torch.randn(shape, generator=generator, dtype=torch.float64) * spec.std


@torch.no_grad()
def initialize_layers(layers: list[tuple[str, nn.Module]], spec: InitSpec, seed: int) -> None:
    """Draw new weights (and biases) for ``layers`` from ``spec``, reproducibly from ``seed``.

    Each layer gets its own generator seeded from (seed, layer name), so the filters of a layer
    do not depend on the global RNG, on the order of construction or on the other layers.
    """
    for name, module in layers:
        generator = torch.Generator().manual_seed(_layer_seed(seed, name))
        weight = module.weight
        fan_in = weight[0].numel()
        new = _draw(weight.shape, fan_in, spec, generator)
        if spec.smooth_sigma > 0 and weight.dim() == 4:
            new = smooth_filters(new, spec.smooth_sigma)
        weight.copy_(new.to(weight.dtype))
        bias = getattr(module, "bias", None)
        if bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            bias.copy_(((torch.rand(bias.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
                       .to(bias.dtype))


def _layer_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- modes

def frozen_kind(mode: str) -> str | None:
    if mode not in MODES:
        raise unknown_name("mode", mode, MODES)
    return _FROZEN_KIND[mode]


def apply_mixing(model: nn.Module, mode: str, spatial_init: InitSpec | None = InitSpec(),
                 channel_init: InitSpec | None = None, seed: int = 0) -> nn.Module:
    """Initialize the mixers explicitly and freeze the kind that ``mode`` says, in place.

    The spatial mixers are (re)drawn from ``spatial_init`` in every mode, so that Full and Chans
    runs with the same seed start from the same filters; ``None`` keeps the model's own init.
    ``channel_init`` does the same for the channel mixers (default: keep the model's).

    Raises a clear error when the mode needs a kind of layer the model does not have.
    """
    kind_to_freeze = frozen_kind(mode)
    spatial = layers_of_kind(model, SPATIAL)
    channel = layers_of_kind(model, CHANNEL)
    if spatial_init is not None:
        initialize_layers(spatial, spatial_init, seed)
    if channel_init is not None:
        initialize_layers(channel, channel_init, seed + 1)
    if kind_to_freeze is None:
        return model
    targets = spatial if kind_to_freeze == SPATIAL else channel
    if not targets:
        what = "depthwise (spatial-mixing)" if kind_to_freeze == SPATIAL else "pointwise (channel-mixing)"
        raise SpatialmixError(
            f"mode {mode!r} freezes the {what} convolutions, but this model has none; "
            f"use --mode full or a separable model (e.g. resnet18-sep, convmixer)")
    for _, module in targets:
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def frozen_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def frozen_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the exact bytes of every frozen tensor: equal fingerprints, equal bits."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class MixingSummary:
    """Parameter counts per layer kind, trainable and frozen."""

    rows: list[dict]

    @property
    def trainable(self) -> int:
        return sum(r["trainable"] for r in self.rows)

    @property
    def frozen(self) -> int:
        return sum(r["frozen"] for r in self.rows)

    def __str__(self) -> str:
        lines = [f"{'kind':<10} {'layers':>6} {'trainable':>12} {'frozen':>12}"]
        for r in self.rows:
            lines.append(f"{r['kind']:<10} {r['layers']:>6} {r['trainable']:>12,} {r['frozen']:>12,}")
        lines.append(f"{'total':<10} {sum(r['layers'] for r in self.rows):>6} {self.trainable:>12,} {self.frozen:>12,}")
        return "\n".join(lines)


def summarize(model: nn.Module) -> MixingSummary:
    """How many parameters of each kind are trainable and frozen."""
    kinds = classify_layers(model)
    modules = dict(model.named_modules())
    layers, trainable, frozen = Counter(), Counter(), Counter()
    for name, kind in kinds.items():
        layers[kind] += 1
        for p in modules[name].parameters(recurse=False):
            (trainable if p.requires_grad else frozen)[kind] += p.numel()
    rows = [dict(kind=k, layers=layers[k], trainable=trainable[k], frozen=frozen[k]) for k in KINDS if layers[k]]
    return MixingSummary(rows)

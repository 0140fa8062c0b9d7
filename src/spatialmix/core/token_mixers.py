"""Which linear layers mix tokens (space) and which mix channels, decided by structure.

A token-mixing MLP (MLP-Mixer's ``mlp_tokens``, ResMLP's ``linear_tokens``, gMLP's spatial gating
projection) is an ``nn.Linear`` like any channel MLP; what makes it a *spatial* mixer is the axis
it is applied along. :func:`probe_token_mixers` finds that axis by running one image through the
model with hooks:

* the patch grid (gh x gw, so N = gh * gw tokens) is the spatial size of the last 4-D activation
  (the patch-embedding conv's output) before the first linear layer sees a 3-D input;
* a linear layer whose input is ``(batch, A, F)`` with A == N is applied once per token: it mixes
  channels. One with A != N whose input or output size is N is applied once per channel along
  the tokens: it mixes space. Inputs of other ranks (ConvNeXt's channels-last (B, H, W, C), a
  classifier's (B, C)) are channel mixing.

When the width of the tensor a layer sees equals N (e.g. 49 channels on a 7 x 7 grid) the
shapes cannot tell the two axes apart. Those layers are looked up in :data:`KNOWN_BLOCKS`, a
small table of published block types and which of their children mix tokens; a layer that is
ambiguous and not in the table makes :func:`spatialmix.core.mixing.classify_layers` refuse with a
line that says how to declare it (``--spatial-pattern`` / ``--channel-pattern``).

A model whose input size cannot be found (no ``spatialmix_input_shape``, no timm patch
embedding) or whose forward fails on a blank image is classified from the table alone.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

# Block type (module.qualname) -> child paths (prefixes, relative to the block) that mix tokens,
# and those that mix channels. Used only where the shapes are ambiguous (width == token count).
KNOWN_BLOCKS: dict[str, dict[str, tuple[str, ...]]] = {
    "timm.models.mlp_mixer.MixerBlock": {"spatial": ("mlp_tokens",), "channel": ("mlp_channels",)},
    "timm.models.mlp_mixer.ResBlock": {"spatial": ("linear_tokens",), "channel": ("mlp_channels",)},
    "timm.models.mlp_mixer.SpatialGatingBlock": {
        "spatial": ("mlp_channels.gate.proj",),
        "channel": ("mlp_channels.fc1", "mlp_channels.fc2"),
    },
    "timm.models.mlp_mixer.SpatialGatingUnit": {"spatial": ("proj",), "channel": ()},
    "spatialmix.models.mlpmixer.MixerBlock": {"spatial": ("token_mlp",), "channel": ("channel_mlp",)},
    "spatialmix.models.mlpmixer.TokenMixingMLP": {"spatial": ("fc1", "fc2"), "channel": ()},
}


@dataclass(frozen=True)
class TokenProbe:
    """What the probe found: the patch grid, and per token-mixing linear which side indexes the grid."""

    grid: tuple[int, int] | None = None
    token_axis: dict = field(default_factory=dict)  # layer name -> "in" (rows over the grid) or "out"
    ambiguous: tuple[str, ...] = ()  # linear layers neither shapes nor table could place
    probed: bool = False  # False: no forward pass, table only


def block_type(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """(channels, height, width) of one input image, from what spatialmix or timm recorded on the model."""
    shape = getattr(model, "spatialmix_input_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    for attr in ("patch_embed", "stem"):
        embed = getattr(model, attr, None)
        size = getattr(embed, "img_size", None)
        proj = getattr(embed, "proj", None)
        if size is not None and isinstance(proj, nn.Conv2d):
            h, w = (size, size) if isinstance(size, int) else size
            return proj.in_channels, int(h), int(w)
    return None


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def probe_token_mixers(model: nn.Module, head: nn.Module | None = None) -> TokenProbe:
    """Classify the model's linear layers (other than ``head``) by the axis they act on; cached per model."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}
    if not linears:
        return TokenProbe()
    shape = input_shape(model)
    signature = (shape, tuple((name, id(m)) for name, m in model.named_modules()))
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    shapes, grid = _run_probe(model, linears, shape) if shape is not None else ({}, None)
    probe = _classify(model, linears, shapes, grid)
    _CACHE[model] = (signature, probe)
    return probe


@torch.no_grad()
def _run_probe(model: nn.Module, linears: dict, shape) -> tuple[dict, tuple[int, int] | None]:
    """Input shape of every linear layer and the patch grid, from one blank image in eval mode."""
    seen, grid, first_token_input = {}, [None], [False]

    def on_conv(module, args, output):
        if not first_token_input[0] and isinstance(output, torch.Tensor) and output.dim() == 4:
            grid[0] = tuple(output.shape[-2:])

    def on_linear(name):
        def hook(module, args):
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = tuple(args[0].shape)
                if args[0].dim() == 3:
                    first_token_input[0] = True

        return hook

    handles = [m.register_forward_pre_hook(on_linear(n)) for n, m in linears.items()]
    handles += [m.register_forward_hook(on_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    modes = {m: m.training for m in model.modules()}
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    try:
        model.eval()  # BatchNorm statistics untouched, no dropout
        with torch.random.fork_rng(devices=[]):
            model(torch.zeros(1, *shape, device=device, dtype=dtype))
    except (RuntimeError, ValueError, TypeError, AssertionError):
        return {}, None  # the model does not take this input: fall back to the table
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return seen, grid[0]


def _classify(model: nn.Module, linears: dict, shapes: dict, grid) -> TokenProbe:
    token_axis, ambiguous = {}, []
    n = grid[0] * grid[1] if grid is not None else None
    table = _table_kinds(model, linears)
    for name, layer in linears.items():
        shape = shapes.get(name)
        if n is None or shape is None or len(shape) != 3:
            if table.get(name) == "spatial":  # not probed: the table is all there is
                token_axis[name] = _axis(layer, n)
            continue
        rows = shape[1]
        touches_grid = n in (layer.in_features, layer.out_features)
        if rows == n and touches_grid:
            kind = table.get(name)
            if kind is None:
                ambiguous.append(name)
            elif kind == "spatial":
                token_axis[name] = _axis(layer, n)
        elif rows != n and touches_grid:
            token_axis[name] = _axis(layer, n)
    return TokenProbe(grid=grid, token_axis=token_axis, ambiguous=tuple(ambiguous), probed=bool(shapes))


def _axis(layer: nn.Linear, n: int | None) -> str:
    """Which side of a token-mixing weight (out, in) indexes the patch grid: rows ("in") or columns
    ("out")."""
    if n is not None and layer.in_features != n and layer.out_features == n:
        return "out"
    return "in"


def _table_kinds(model: nn.Module, linears: dict) -> dict[str, str]:
    """``spatial`` / ``channel`` for the linear layers inside a block of :data:`KNOWN_BLOCKS`."""
    kinds = {}
    for block_name, block in model.named_modules():
        entry = KNOWN_BLOCKS.get(block_type(block))
        if entry is None:
            continue
        prefix = f"{block_name}." if block_name else ""
        for name in linears:
            if not name.startswith(prefix):
                continue
            relative = name[len(prefix) :]
            for kind in ("spatial", "channel"):
                if any(relative == p or relative.startswith(p + ".") for p in entry[kind]):
                    kinds.setdefault(name, kind)
    return kinds

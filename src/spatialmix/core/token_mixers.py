"""Which linear layers mix tokens (space) or channels, and which layer is the stem: decided by structure.

A token-mixing MLP (MLP-Mixer's ``mlp_tokens``, ResMLP's ``linear_tokens``, gMLP's spatial gating
projection) is an ``nn.Linear`` like any channel MLP; what makes it a *spatial* mixer is the axis
it is applied along. `probe_token_mixers` finds that axis by running one image through the
model with hooks:

* the patch grid (gh x gw, so N = gh * gw tokens) is the spatial size of the last 4-D activation
  (the patch-embedding conv's output) before the first linear layer sees a 3-D input;
* a linear layer whose input is ``(batch, A, F)`` with A == N is applied once per token: it mixes
  channels. One with A != N that takes N features opens a *token chain*: the linear layers run
  next on the same A rows, each taking the previous one's output size, up to the one that gives N
  features back, are the layers of one token-mixing MLP (49 -> 24 -> 24 -> 49 has three), and all
  mix space. A layer with A != N that only gives N features (tokens from something else) mixes
  space too. Inputs of other ranks (ConvNeXt's channels-last (B, H, W, C), a classifier's (B, C))
  are channel mixing.

The shapes cannot tell the two axes apart when the width of the tensor a layer sees equals N (e.g.
49 channels on a 7 x 7 grid), nor for the layers after the first of a token chain that never gives
N features back. Those layers are looked up in `KNOWN_BLOCKS`, a small table of published
block types and which of their children mix tokens; a layer that is ambiguous and not in the table
makes `spatialmix.core.mixing.classify_layers` refuse with a line that says how to declare it
(``--spatial-pattern`` / ``--channel-pattern``).

The same image finds the *stem*: the first layer with filters it reaches, when that layer takes
the image itself (its channels and size). ``classify_layers`` keeps it trainable in every mode,
whatever its kernel (a 1 x 1 stem is not a channel mixer).

A model whose input size cannot be found (no ``spatialmix_input_shape``, no timm patch
embedding) or whose forward fails on a blank image is classified from the table alone. Its stem is
still found, by a shorter trace (`trace_stem`): blank images of the channel counts the model
names (its ``in_chans``, then its convolutions' input channels) and a few sizes are passed in until
the forward reaches its first layer with filters, and stopped there; the stem is that layer when
it is a convolution that takes the image itself. Every trace runs in eval mode, without gradients,
with the random generators forked, and leaves the modes, parameters and buffers as it found them.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
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
    """What the probe found: the patch grid, per token-mixing linear which side indexes the grid, the stem."""

    grid: tuple[int, int] | None = None
    # layer name -> "in" (rows over the grid), "out" (columns) or "hidden" (neither: inside a token MLP)
    token_axis: dict = field(default_factory=dict)
    ambiguous: tuple[str, ...] = ()  # linear layers neither shapes nor table could place
    probed: bool = False  # False: no forward pass, table only
    stem: str | None = None  # the first layer with filters the image reaches (None: not known)


def has_filters(module: nn.Module) -> bool:
    """A layer with filters: a weight of 2 or more dimensions (convs, linear layers)."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() >= 2


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
    """Classify the model's linear layers (other than ``head``) by the axis they act on, and find its
    stem; cached per model."""
    shape = input_shape(model)
    signature = (shape, tuple((name, id(m)) for name, m in model.named_modules()))
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    filters = {name: m for name, m in model.named_modules() if has_filters(m) and m is not head}
    linears = {name: m for name, m in filters.items() if isinstance(m, nn.Linear)}
    if shape is not None and filters:
        found = _run_probe(model, filters, linears, shape)
    else:  # no image size: the linear layers go by the table, the stem by a trace of guessed inputs
        found = _Found(stem=trace_stem(model, filters) if filters else None)
    token_axis, ambiguous = _classify(model, linears, found.calls, found.grid)
    probe = TokenProbe(found.grid, token_axis, tuple(ambiguous), bool(found.calls), found.stem)
    _CACHE[model] = (signature, probe)
    return probe


@dataclass
class _Found:
    """What one blank image showed: every linear call (name, input shape) in order, the grid, the stem."""

    calls: list = field(default_factory=list)
    grid: tuple[int, int] | None = None
    stem: str | None = None
    stem_seen: bool = False
    token_input_seen: bool = False


class _StemFound(Exception):
    """Stops the forward pass at the stem when there are no linear layers to watch."""


@contextmanager
def _blank_forward(model: nn.Module):
    """Where a probe runs the model: eval mode (BatchNorm statistics untouched, no dropout), no
    gradients, the random generators forked; every module's mode restored after. Yields a function
    that passes one blank image of a (channels, height, width) shape through the model."""
    modes = {m: m.training for m in model.modules()}
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(device)):
            yield lambda shape: model(torch.zeros(1, *shape, device=device, dtype=dtype))
    finally:
        for m, mode in modes.items():
            m.training = mode


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


# The sizes a stem trace tries when the model records none: small first (cheap), then ImageNet's.
GUESSED_SIZES = (32, 64, 224)


def trace_stem(model: nn.Module, filters: dict | None = None) -> str | None:
    """The stem of a model that records no input size: the first layer with filters a blank image
    reaches, when it is a convolution taking that image's channels and size (None: not found).

    The channels tried are the model's ``in_chans``, then its convolutions' input channels in
    order; the sizes `GUESSED_SIZES`. Each forward stops at the first layer with filters,
    before it runs (nothing past the stem is computed).
    """
    if filters is None:
        filters = {name: m for name, m in model.named_modules() if has_filters(m)}
    reached: list = []

    def on_filter(name):
        def hook(module, args):
            reached.append((name, module, args[0] if args and isinstance(args[0], torch.Tensor) else None))
            raise _StemFound

        return hook

    handles = [m.register_forward_pre_hook(on_filter(n)) for n, m in filters.items()]
    try:
        with _blank_forward(model) as run:
            for channels in _channel_guesses(model):
                shape = _first_taken_shape(run, channels, reached)
                if shape is None:
                    continue
                name, module, x = reached[0]
                if (
                    isinstance(module, nn.modules.conv._ConvNd)
                    and module.in_channels == channels
                    and x is not None
                    and tuple(x.shape[1:]) == shape
                ):
                    return name
    finally:
        for h in handles:
            h.remove()
    return None


def _first_taken_shape(run, channels: int, reached: list) -> tuple[int, int, int] | None:
    """The first shape of `GUESSED_SIZES` with which a blank image of ``channels`` reaches a
    layer with filters (recorded in ``reached``); None when none does."""
    for size in GUESSED_SIZES:
        reached.clear()
        try:
            run((channels, size, size))
        except _StemFound:
            return channels, size, size
        except Exception:  # whatever a model raises for an input it does not take: try the next size
            continue
        return None  # the forward ran through without a layer with filters
    return None


def _channel_guesses(model: nn.Module) -> list[int]:
    """The input channel counts a stem trace tries: ``model.in_chans``, then each convolution's."""
    guesses = [getattr(model, "in_chans", None)]
    guesses += [m.in_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return list(dict.fromkeys(g for g in guesses if isinstance(g, int) and not isinstance(g, bool) and g > 0))


def _run_probe(model: nn.Module, filters: dict, linears: dict, shape) -> _Found:
    """The linear calls, the patch grid and the stem, from one blank image in eval mode. Without
    linear layers only the stem is wanted, and the pass stops there."""
    found = _Found()

    def on_conv(module, args, output):
        if not found.token_input_seen and isinstance(output, torch.Tensor) and output.dim() == 4:
            found.grid = tuple(output.shape[-2:])

    def on_filter(name):
        def hook(module, args):
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if not found.stem_seen:
                found.stem_seen = True
                found.stem = name if x is not None and tuple(x.shape[1:]) == shape else None
                if not linears:
                    raise _StemFound
            if name in linears and x is not None:
                found.calls.append((name, tuple(x.shape)))
                found.token_input_seen |= x.dim() == 3

        return hook

    handles = [m.register_forward_pre_hook(on_filter(n)) for n, m in filters.items()]
    handles += [m.register_forward_hook(on_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with _blank_forward(model) as run:
            run(shape)
    except _StemFound:
        pass
    except (RuntimeError, ValueError, TypeError, AssertionError):
        return _Found(stem=found.stem)  # the model does not take this input: fall back to the table
    finally:
        for h in handles:
            h.remove()
    return found


def _classify(model: nn.Module, linears: dict, calls: list, grid) -> tuple[dict, list]:
    """Token axis of each token-mixing linear layer, and the layers that could be either."""
    n = grid[0] * grid[1] if grid is not None else None
    table = _table_kinds(model, linears)
    verdicts: dict[str, set] = {}
    for name, verdict in _call_verdicts(linears, calls, n) if n is not None else ():
        verdicts.setdefault(name, set()).add(verdict)
    token_axis, ambiguous = {}, []
    for name, layer in linears.items():
        found = verdicts.get(name, set()) - {_UNKNOWN} or {_UNKNOWN}
        verdict = found.pop() if len(found) == 1 else _AMBIGUOUS  # a layer called twice, two ways
        if verdict in (_UNKNOWN, _AMBIGUOUS):
            kind = table.get(name)
            if kind == "spatial":
                token_axis[name] = _axis(layer, n)
            elif kind is None and verdict == _AMBIGUOUS:
                ambiguous.append(name)
        elif verdict != _CHANNEL:
            token_axis[name] = verdict
    return token_axis, ambiguous


_CHANNEL, _AMBIGUOUS, _UNKNOWN = "channel", "ambiguous", "unknown"  # and the token axes "in", "out", "hidden"


def _call_verdicts(linears: dict, calls: list, n: int):
    """(name, verdict) for each linear call: channel, a token axis, ambiguous, or unknown (not 3-D).

    Follows token chains (see the module docstring): ``chain`` holds the rows, the current feature
    size and the members of the one being followed.
    """
    chain = None
    for name, shape in calls:
        layer = linears[name]
        if len(shape) != 3:
            yield from _end_chain(chain, n, closed=False)
            chain = None
            yield name, _UNKNOWN
            continue
        rows = shape[1]
        if chain is not None and rows == chain[0] and layer.in_features == chain[1]:
            chain = (rows, layer.out_features, chain[2] + [name])
        else:
            yield from _end_chain(chain, n, closed=False)
            chain = (rows, layer.out_features, [name]) if layer.in_features == n else None
            if chain is None:
                if layer.out_features == n:  # gives N features from something else
                    yield name, _AMBIGUOUS if rows == n else "out"
                else:
                    yield name, _CHANNEL
                continue
        if layer.out_features == n:
            yield from _end_chain(chain, n, closed=True)
            chain = None
    yield from _end_chain(chain, n, closed=False)


def _end_chain(chain, n: int, closed: bool):
    """Verdicts for the members of a token chain: token mixers when it ends on the N tokens; only its
    first layer when it does not; ambiguous throughout when its rows are N too (width == tokens)."""
    if chain is None:
        return
    rows, _, members = chain
    for i, name in enumerate(members):
        if rows == n or (i > 0 and not closed):
            yield name, _AMBIGUOUS
        else:
            yield name, "in" if i == 0 else "out" if i == len(members) - 1 else "hidden"


def _axis(layer: nn.Linear, n: int | None) -> str:
    """Which side of a token-mixing weight (out, in) indexes the patch grid: rows ("in"), columns
    ("out"), or neither ("hidden", a layer inside a token MLP)."""
    if n is None or layer.in_features == n:
        return "in"
    return "out" if layer.out_features == n else "hidden"


def _table_kinds(model: nn.Module, linears: dict) -> dict[str, str]:
    """``spatial`` / ``channel`` for the linear layers inside a block of `KNOWN_BLOCKS`."""
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

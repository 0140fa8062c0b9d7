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
their structure, not their name. Spatial mixers are depthwise k x k convolutions and token-mixing
linear layers (MLP-Mixer, ResMLP, gMLP; every layer of a token MLP, found by the axis it acts on,
see `spatialmix.core.token_mixers`); channel mixers are 1 x 1 convolutions and the other
linear layers. The stem (the first layer the image reaches, a 1 x 1 conv too) is neither: it is
learned in every mode. A `LayerSelector` (``apply_mixing(..., spatial=..., channel=...)``, or
``--spatial-pattern`` / ``--channel-pattern``) overrides that for any layer, so the mixers of an
architecture spatialmix does not know can be declared in one line.

Smoothing a frozen token-mixing matrix (``smooth_sigma`` > 0) blurs, for each output token, its
weights over the input tokens as a 2-D map over the patch grid (sigma in patches), with zero
padding, and rescales it to its L2 norm: exactly what smoothing does to a depthwise filter, whose
k x k window is a row of the equivalent token-mixing matrix. Where the grid indexes the output
side only (MLP-Mixer's second token layer, hidden -> tokens) each column is smoothed instead.

Whose init the mixers start from (`mixer_inits`): the init asked for, in every mode; else the
one the model declares (``model.spatialmix_mixer_init``: spatialmix's built-in models declare
``default``, drawn per layer in every mode, so Full and Chans runs with one seed start from the
same model); else the model's own where the mixers are learned (it is part of the architecture:
gMLP's near-identity gate) and ``default`` where the mode freezes them.

Frozen tensors get ``requires_grad=False``; `trainable_parameters` and the optimizer built
by `spatialmix.engine.train` only ever see trainable ones, so frozen tensors receive no gradient, no
optimizer state and no weight decay, and `frozen_fingerprint` proves they did not move.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from spatialmix.core.inits import InitSpec, initialize_layers
from spatialmix.core.token_mixers import has_filters, probe_token_mixers
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.names import MODES

SPATIAL = "spatial"
"""The kind of a spatial mixer (`classify_layers`, `layers_of_kind`): the layers frozen in mode `chans`."""
CHANNEL = "channel"
"""The kind of a channel mixer (`classify_layers`, `layers_of_kind`): the layers frozen in mode `space`."""
STEM_OR_FULL, NORM, HEAD, OTHER = "full-conv", "norm", "head", "other"
KINDS = (SPATIAL, CHANNEL, STEM_OR_FULL, NORM, HEAD, OTHER)
_FROZEN_KIND = {"full": None, "chans": SPATIAL, "space": CHANNEL}
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
MODEL_OWN = "model's own"  # what a run records for mixers whose init was left as the model made it


def is_spatial_mixer(module: nn.Module) -> bool:
    """A depthwise conv: one (or a few) k x k filters per input channel, k > 1 (token mixers: see
    `classify_layers`)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.in_channels > 1
        and module.groups == module.in_channels
        and max(module.kernel_size) > 1
    )


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
    """The classifier: ``model.head`` / ``get_classifier()`` / ``fc`` / ``classifier``, else the last
    Linear."""
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


# --------------------------------------------------------------------------- user overrides

Matcher = str | tuple | list | Callable[[str, nn.Module], bool] | None


@dataclass(frozen=True)
class LayerSelector:
    """Layers the user declares spatial or channel mixers, overriding the automatic classification.

    Each side is a glob pattern over qualified layer names (``"blocks.*.mlp_tokens"``; several
    separated by commas, or a list), or a predicate ``(name, module) -> bool``. A pattern matches
    a layer when it matches the layer's name or the name of a module containing it, so naming a
    block's token MLP covers its linear layers. Only layers with filters (a weight of 2 or more
    dimensions) are reclassified: a matched container's norms keep their kind.
    """

    spatial: Matcher = None
    channel: Matcher = None

    @staticmethod
    def of(spatial: Matcher = None, channel: Matcher = None) -> LayerSelector | None:
        spatial, channel = _normalize(spatial), _normalize(channel)
        return None if spatial is None and channel is None else LayerSelector(spatial, channel)

    def matches(self, side: str, name: str, module: nn.Module) -> bool:
        matcher = getattr(self, side)
        if matcher is None:
            return False
        if callable(matcher):
            return bool(matcher(name, module))
        parts = name.split(".")
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatchcase(p, pattern) for pattern in matcher for p in prefixes)

    def describe(self, side: str) -> str:
        matcher = getattr(self, side)
        return getattr(matcher, "__name__", "predicate") if callable(matcher) else ",".join(matcher)


def _normalize(matcher: Matcher):
    if matcher is None or callable(matcher):
        return matcher
    items = matcher.split(",") if isinstance(matcher, str) else [str(m) for m in matcher]
    patterns = tuple(p.strip() for p in items if p.strip())
    return patterns or None


def _selected(model: nn.Module, selector: LayerSelector | None, head) -> dict[str, str]:
    """Layer name -> SPATIAL / CHANNEL for the filter layers the selector matches (never the head)."""
    if selector is None:
        return {}
    chosen = {}
    for name, module in model.named_modules():
        if module is head or not has_filters(module):
            continue
        spatial, channel = (
            selector.matches("spatial", name, module),
            selector.matches("channel", name, module),
        )
        if spatial and channel:
            raise SpatialmixError(
                f"layer {name!r} matches both --spatial-pattern {selector.describe('spatial')!r} "
                f"and --channel-pattern {selector.describe('channel')!r}; make the patterns disjoint"
            )
        if spatial or channel:
            chosen[name] = SPATIAL if spatial else CHANNEL
    for side, kind in (("spatial", SPATIAL), ("channel", CHANNEL)):
        if getattr(selector, side) is not None and kind not in chosen.values():
            examples = ", ".join(
                [n for n, m in model.named_modules() if has_filters(m) and m is not head][:4]
            )
            raise SpatialmixError(
                f"--{side}-pattern {selector.describe(side)!r} matches no layer with filters; "
                f"layer names look like: {examples}"
            )
    return chosen


def model_selector(model: nn.Module) -> LayerSelector | None:
    """The selector `apply_mixing` recorded on ``model`` (None: automatic classification only)."""
    return getattr(model, "spatialmix_selector", None)


def classify_layers(model: nn.Module, selector: LayerSelector | None = None) -> dict[str, str]:
    """Map each parameter-owning layer's qualified name to its kind (see ``KINDS``).

    ``selector`` (default: the one `apply_mixing` recorded on the model) overrides the
    automatic classification. The stem is ``full-conv`` whatever its kernel (unless it is a depthwise
    conv, a spatial mixer), found with or without a recorded image size. A linear layer whose
    axis the shapes cannot tell (width equal to the token count, a hidden layer of a token chain
    that never maps back to the tokens) and that no known block type or selector places is refused.
    """
    selector = selector if selector is not None else model_selector(model)
    head = find_head(model)
    chosen = _selected(model, selector, head)
    probe = probe_token_mixers(model, head)
    unplaced = [name for name in probe.ambiguous if name not in chosen]
    if unplaced:
        grid = f"{probe.grid[0]} x {probe.grid[1]}" if probe.grid else "?"
        raise SpatialmixError(
            f"cannot tell whether {unplaced[0]!r} (and {len(unplaced) - 1} other linear layers) mix tokens "
            f"or channels: on the {grid} patch grid their shapes fit both (a width equal to the token "
            "count, or a layer inside a token MLP that does not map back to the tokens); declare them with "
            "--spatial-pattern / --channel-pattern (e.g. --spatial-pattern 'blocks.*.token_mixer')"
        )
    kinds = {}
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if name in chosen:
            kinds[name] = chosen[name]
        elif module is head:
            kinds[name] = HEAD
        elif name == probe.stem and not is_spatial_mixer(module):
            # learned in every mode, whatever its kernel; a depthwise conv on the image mixes space
            kinds[name] = STEM_OR_FULL
        elif is_spatial_mixer(module) or name in probe.token_axis:
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


def layers_of_kind(
    model: nn.Module, kind: str, selector: LayerSelector | None = None
) -> list[tuple[str, nn.Module]]:
    """The `(name, module)` pairs of `model`'s layers of one kind (`SPATIAL`, `CHANNEL`, ...), in the
    model's order, as `classify_layers` finds them (with `selector`'s overrides)."""
    kinds = classify_layers(model, selector)
    modules = dict(model.named_modules())
    return [(name, modules[name]) for name, k in kinds.items() if k == kind]


# --------------------------------------------------------------------------- modes


def frozen_kind(mode: str) -> str | None:
    if mode not in MODES:
        raise unknown_name("mode", mode, MODES)
    return _FROZEN_KIND[mode]


def mixer_inits(
    model: nn.Module, mode: str, spatial_init: InitSpec | None = None, channel_init: InitSpec | None = None
) -> dict[str, InitSpec | None]:
    """The init each mixer kind starts from in ``mode`` (None: the model's own; see the module docstring)."""
    declared = getattr(model, "spatialmix_mixer_init", None)
    frozen = frozen_kind(mode)
    inits = {}
    for kind, asked in ((SPATIAL, spatial_init), (CHANNEL, channel_init)):
        if asked is not None:
            inits[kind] = asked
        elif declared is not None:
            inits[kind] = InitSpec(declared)
        else:
            inits[kind] = InitSpec() if kind == frozen else None
    return inits


def apply_mixing(
    model: nn.Module,
    mode: str,
    spatial_init: InitSpec | None = None,
    channel_init: InitSpec | None = None,
    seed: int = 0,
    *,
    spatial: Matcher = None,
    channel: Matcher = None,
) -> nn.Module:
    """Initialize the mixers and freeze the kind that ``mode`` says, in place.

    ``spatial_init`` / ``channel_init``: the init of the spatial / channel mixers, drawn in every
    mode (Full too); None (not asked for) resolves as `mixer_inits` says, and what each kind
    got is recorded on the model (`applied_inits`). Each layer is drawn from its own generator
    seeded by (``seed``, layer name), so runs with one seed start from the same filters.
    ``spatial`` / ``channel``: glob patterns over layer names or predicates ``(name, module) ->
    bool`` declaring layers spatial or channel mixers (see `LayerSelector`); the selector
    is recorded on the model, so later calls (`summarize`, the analysis) see the same kinds.

    Raises a clear error when the mode needs a kind of layer the model does not have.
    """
    kind_to_freeze = frozen_kind(mode)
    if channel_init is not None and channel_init.name.startswith("covariance"):
        raise SpatialmixError(
            f"--channel-init {channel_init.name} is for spatial mixers (depthwise k x k "
            f"filters); use default, gaussian or uniform for the channel mixers"
        )
    selector = LayerSelector.of(spatial, channel)
    kinds = classify_layers(model, selector)  # validates the selector before anything changes
    inits = mixer_inits(model, mode, spatial_init, channel_init)
    modules = dict(model.named_modules())
    layers = {kind: [(n, modules[n]) for n, k in kinds.items() if k == kind] for kind in (SPATIAL, CHANNEL)}
    targets = layers.get(kind_to_freeze)
    if targets == []:
        what = "depthwise (spatial-mixing)" if kind_to_freeze == SPATIAL else "pointwise (channel-mixing)"
        raise SpatialmixError(
            f"mode {mode!r} freezes the {what} convolutions, but this model has none; "
            "use --mode full, a separable model (e.g. resnet18-sep, convmixer, mlpmixer) or declare its "
            "mixers "
            f"with --spatial-pattern / --channel-pattern"
        )
    model.spatialmix_selector = selector
    probe = probe_token_mixers(model, find_head(model))
    for kind, offset in ((SPATIAL, 0), (CHANNEL, 1)):
        if inits[kind] is not None:
            initialize_layers(layers[kind], inits[kind], seed + offset, probe if kind == SPATIAL else None)
    model.spatialmix_inits = {
        kind: MODEL_OWN if spec is None else spec.describe() for kind, spec in inits.items()
    }
    for _, module in targets or ():
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
    return model


def applied_inits(model: nn.Module) -> dict[str, str] | None:
    """Which init each mixer kind got from `apply_mixing` (``{"spatial": "default", "channel":
    "model's own"}``); None when it never ran on ``model``."""
    return getattr(model, "spatialmix_inits", None)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of `model` that training updates (`requires_grad`): what the optimizer is given,
    without the frozen mixers."""
    return [p for p in model.parameters() if p.requires_grad]


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
        lines.append(
            f"{'total':<10} {sum(r['layers'] for r in self.rows):>6} {self.trainable:>12,} {self.frozen:>12,}"
        )
        return "\n".join(lines)


def summarize(model: nn.Module, selector: LayerSelector | None = None) -> MixingSummary:
    """How many parameters of each kind are trainable and frozen."""
    kinds = classify_layers(model, selector)
    modules = dict(model.named_modules())
    layers, trainable, frozen = Counter(), Counter(), Counter()
    for name, kind in kinds.items():
        layers[kind] += 1
        for p in modules[name].parameters(recurse=False):
            (trainable if p.requires_grad else frozen)[kind] += p.numel()
    rows = [
        dict(kind=k, layers=layers[k], trainable=trainable[k], frozen=frozen[k]) for k in KINDS if layers[k]
    ]
    return MixingSummary(rows)


def spatial_mixer_counts(model: nn.Module, selector: LayerSelector | None = None) -> dict[str, int]:
    """How many spatial mixers are depthwise convolutions, token-mixing linear layers, or other layers."""
    modules = dict(model.named_modules())
    counts = Counter()
    for name, _ in layers_of_kind(model, SPATIAL, selector):
        module = modules[name]
        if isinstance(module, nn.Conv2d) and is_spatial_mixer(module):
            counts["depthwise convolutions"] += 1
        elif isinstance(module, nn.Linear):
            counts["token-mixing linear layers"] += 1
        else:
            counts["other layers"] += 1
    return {k: counts[k] for k in ("depthwise convolutions", "token-mixing linear layers", "other layers")}

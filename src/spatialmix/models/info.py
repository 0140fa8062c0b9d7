"""What ``spatialmix models`` tells about a model: its mixers of each kind and the modes it can train in.

`describe_model` builds a model by name and answers; `supported_modes` is the rule
(a mode that freezes one kind of mixer needs at least one layer of that kind).
"""

from __future__ import annotations

from dataclasses import dataclass

from spatialmix.core.mixing import (
    CHANNEL,
    SPATIAL,
    LayerSelector,
    MixingSummary,
    frozen_kind,
    spatial_mixer_counts,
    summarize,
)
from spatialmix.models.factory import count_parameters, create_model, list_models
from spatialmix.models.registry import MODEL_REGISTRY
from spatialmix.names import MODES

WHAT_TO_FREEZE = {SPATIAL: "depthwise convolutions", CHANNEL: "1 x 1 convolutions"}


def model_catalog() -> list[tuple[str, str]]:
    """Every model name with its one-line description."""
    return [
        (
            name,
            MODEL_REGISTRY[name].description
            if name in MODEL_REGISTRY
            else "any model of that library, by name",
        )
        for name in list_models()
    ]


def supported_modes(summary: MixingSummary) -> dict[str, str | None]:
    """Each mode -> None when the model can train in it, else why not (it has no layer of the kind it
    freezes)."""
    layers = {row["kind"]: row["layers"] for row in summary.rows}
    modes = {}
    for mode in MODES:
        kind = frozen_kind(mode)
        missing = kind is not None and not layers.get(kind)
        modes[mode] = f"{mode} needs {WHAT_TO_FREEZE[kind]} to freeze" if missing else None
    return modes


@dataclass
class ModelInfo:
    """What `describe_model` found: the parameter count, the layers of each kind (`summary`), the
    spatial mixers by what they are, and each mode with None where the model can train in it, else why
    not."""

    name: str
    parameters: int
    summary: MixingSummary
    spatial_counts: dict[str, int]  # spatial mixers by what they are (depthwise convolutions, ...)
    modes: dict[str, str | None]  # see supported_modes

    def layers(self, kind: str) -> int:
        """How many layers of one kind (`SPATIAL`, `CHANNEL`, ...) the model has."""
        return next((row["layers"] for row in self.summary.rows if row["kind"] == kind), 0)


def describe_model(
    name: str,
    in_chans: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    patch_size: int | None = None,
    spatial_pattern: str | None = None,
    channel_pattern: str | None = None,
) -> ModelInfo:
    """Build model ``name`` and count its parameters and its mixers of each kind (patterns as in
    TrainConfig)."""
    model = create_model(
        name, in_chans=in_chans, num_classes=num_classes, image_size=image_size, patch_size=patch_size
    )
    selector = LayerSelector.of(spatial_pattern, channel_pattern)
    summary = summarize(model, selector)
    return ModelInfo(
        name,
        count_parameters(model),
        summary,
        spatial_mixer_counts(model, selector),
        supported_modes(summary),
    )

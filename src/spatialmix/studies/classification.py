"""The classification study (claim 1): Full, Chans and Space trained on the same seeds, per model family.

The paper states claim 1 for classical (ResNet) and modern (ConvMixer) models, so the study trains
the preset's own model and each other family of `Preset.options["classification"]["families"]`
(name -> the training settings that make it, e.g. the quick preset's separable ResNet) in every
mode, with the same seeds (`Preset.seed_counts` may give a family fewer, by its name). The preset's
own model keeps the run folders `classification/<mode>-seed<k>` that the robustness, smoothing and
init studies reuse; another family's runs are `classification/<name>-<mode>-seed<k>`. The verdicts
get 1a and 1b per family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from spatialmix.analysis.families import PREFIX, Family, families_data
from spatialmix.engine.config import MODEL_SHAPE_FIELDS, TrainConfig
from spatialmix.errors import SpatialmixError
from spatialmix.io.study_results import StudyResult
from spatialmix.report.tables import classification_table
from spatialmix.studies.context import StudyContext, classification_run_dir, train_all

# What names a model: a family sets these, and the overrides of `reproduce` (--model, --width, ...)
# change the preset's own model only (a --width meant for ConvMixer is not a ResNet's width).
MODEL_FIELDS = ("model", *MODEL_SHAPE_FIELDS)


@dataclass(frozen=True)
class ModelFamily:
    """One model the study trains in every mode: its name (the verdicts' scope, e.g.
    `convmixer-64/4`), its key in the preset ("" for the preset's own model) and the settings of
    its runs (mode and seed aside)."""

    name: str
    key: str
    config: TrainConfig

    @property
    def prefix(self) -> str:
        """What its run folders' names begin with: `resnet-` (the preset's own model: nothing)."""
        return f"{self.key}-" if self.key else ""

    def seed_keys(self, mode: str) -> tuple[str, ...]:
        """The keys of `Preset.seed_counts` that limit its seeds in `mode`: the study's, the mode's
        and its own (e.g. `{"resnet": 4}`)."""
        return ("classification", mode, *([self.key] if self.key else []))


@dataclass(frozen=True)
class ClassificationJob:
    family: str  # a ModelFamily's name
    config: TrainConfig
    run_dir: Path


def model_label(config: TrainConfig) -> str:
    """A model's name with its width and depth where they are set: `convmixer-64/4`."""
    if config.width is not None and config.depth is not None:
        return f"{config.model}-{config.width}/{config.depth}"
    return config.model


def model_families(ctx: StudyContext) -> list[ModelFamily]:
    """The preset's own model (with every override), then each other family of the preset (with the
    overrides that do not name a model)."""
    own = ModelFamily(model_label(ctx.config()), "", ctx.config())
    families = [own]
    listed = ctx.preset.options.get("classification", {}).get("families", {})
    general = {k: v for k, v in ctx.overrides.items() if k not in MODEL_FIELDS}
    unsized = ctx.preset.base.replace(**{name: None for name in MODEL_SHAPE_FIELDS})
    for key, changes in listed.items():
        if not PREFIX.fullmatch(f"{key}-"):
            raise SpatialmixError(
                f"preset family {key!r}: its name begins run folder names; use letters, digits and _"
            )
        wrong = sorted(set(changes) - {f.name for f in dataclasses.fields(TrainConfig)})
        if wrong:
            raise SpatialmixError(
                f"preset family {key}: {wrong[0]!r} is not a training setting (the fields of TrainConfig)"
            )
        config = unsized.replace(**{**general, **changes}).validate()
        name = model_label(config)
        taken = name in {f.name for f in families}  # (the same width and depth, another patch size)
        families.append(ModelFamily(f"{name} ({key})" if taken else name, key, config))
    return families


def classification_jobs(ctx: StudyContext) -> list[ClassificationJob]:
    """Every run the study trains (or reuses): per seed, each family in each mode that seed is for."""
    families = model_families(ctx)
    return [
        ClassificationJob(
            family.name,
            family.config.replace(mode=mode, seed=seed),
            classification_run_dir(ctx.out_dir, mode, seed, family.prefix),
        )
        for seed in ctx.seeds_for("classification")
        for family in families
        for mode in ctx.preset.modes
        if seed in ctx.seeds_for(*family.seed_keys(mode))
    ]


def classification_study(ctx: StudyContext) -> StudyResult:
    """Claim 1: each model family, with the same seeds, trained in Full, Chans and Space mode."""
    families = model_families(ctx)
    jobs = classification_jobs(ctx)
    summaries = {family.name: {mode: [] for mode in ctx.preset.modes} for family in families}
    for job, summary in zip(jobs, train_all(ctx, "classification", [(j.config, j.run_dir) for j in jobs])):
        summaries[job.family][job.config.mode].append(summary)
    tables = [
        classification_table(
            summaries[family.name],
            title=f"Classification ({family.config.dataset}, {family.name}, {_seeds_text(ctx, family)})",
        )
        for family in families
    ]
    data = families_data([Family(f.name, f.prefix, summaries[f.name]) for f in families])
    return StudyResult("classification", tables, data, section="classification")


def _seeds_text(ctx: StudyContext, family: ModelFamily) -> str:
    counts = {mode: len(ctx.seeds_for(*family.seed_keys(mode))) for mode in ctx.preset.modes}
    if len(set(counts.values())) == 1:
        return f"{counts[ctx.preset.modes[0]]} seed(s)"
    return "seeds: " + ", ".join(f"{mode} {n}" for mode, n in counts.items())

"""Planning a sweep: many training configurations, each an independent job with its own run folder.

A sweep is a list of configurations, each with its own run directory. It comes from

* a grid file (YAML): every combination of the listed values is one configuration:

      preset: quick            # optional: start from a study preset's training config
      base:                    # optional: TrainConfig fields shared by every configuration
        epochs: 2
      grid:                    # TrainConfig field -> the values to try
        model: [convmixer-128/6, "timm:convnext_atto"]
        mode: [full, chans, space]
        seed: [0, 1, 2]

  whose runs land in ``OUT/runs/model=...,mode=...,seed=...``; or
* a study preset: the runs of the classification study of ``spatialmix reproduce`` (every mode
  and seed), in the folders ``reproduce`` uses, so its tables (and the later studies, with
  ``spatialmix reproduce --out OUT``) are made from runs trained elsewhere.

Each configuration is one job, which trains its run, resumes it from its last checkpoint, or
reads it back when it finished. Jobs run one after another in this process (``local``, the
default), each in its own process on this machine through submitit (``submitit-local``), or one
Slurm job per configuration through submitit (``slurm``; GPUs, time and partition per job; a job
that runs out of time or is preempted is requeued and resumes): see `spatialmix.sweep.slurm`, and
`spatialmix.sweep.settings` for the settings and each job's resources. A finished configuration is never
run again, so a sweep that was interrupted continues when it is started again. When every job has
finished, the results are gathered into the same tables as a local run (``results.md``,
``results.json`` in the sweep folder).
"""

from __future__ import annotations

import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from spatialmix.engine.config import MODEL_SHAPE_FIELDS, TrainConfig
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.models.factory import model_kwargs
from spatialmix.models.registry import MODEL_REGISTRY
from spatialmix.studies.classification import classification_jobs
from spatialmix.studies.context import PRESETS, StudyContext
from spatialmix.sweep.settings import SweepSettings, check_max_running

GRID_KEYS = ("preset", "base", "grid")
# The most configurations one grid may expand to: a sweep of more is surely a mistake in the file
# (expanding 1.6e9 took minutes, then memory ran out).
MAX_CONFIGURATIONS = 10_000
# The longest folder name most file systems take (a configuration's folder is named after its values).
NAME_MAX = 255


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (yaml keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges another mapping in; its keys may be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:
                continue  # an unhashable key: the safe loader's own error names it
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


@dataclass
class SweepJob:
    """One configuration of a sweep and where its run lives."""

    name: str
    config: TrainConfig
    run_dir: Path
    labels: dict  # the values that set this configuration apart (grid values, or mode and seed)


@dataclass
class Sweep:
    out_dir: Path
    jobs: list[SweepJob]
    title: str
    preset: str | None = None  # a study sweep: the study's own code gathers the results
    seeds: tuple[int, ...] | None = None
    overrides: dict = field(default_factory=dict)
    varying: tuple[str, ...] = ()  # the grid's keys, in file order


# --------------------------------------------------------------------------- planning


def load_grid_file(path: str | Path) -> dict:
    """Read a grid file (YAML), checking its shape; a key given twice in one mapping is refused (YAML
    kept the last value silently)."""
    path = Path(path)
    if not path.is_file():
        raise SpatialmixError(f"grid file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpatialmixError(
            f"{path} is not a grid file: byte {err.start} is not UTF-8 text (YAML or JSON); pass a grid "
            f"file (see `spatialmix sweep --help`)"
        ) from None
    try:
        spec = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SpatialmixError(f"{path} is not valid YAML{at}: {getattr(err, 'problem', err)}") from None
    if not isinstance(spec, dict):
        raise SpatialmixError(
            f"{path} must be a mapping with the keys {', '.join(GRID_KEYS)} (see `spatialmix sweep --help`)"
        )
    return spec


def grid_sweep(spec: dict, out_dir: str | Path, **overrides) -> Sweep:
    """The sweep of a grid (see the module doc); ``overrides`` change ``base`` for every configuration."""

    unknown = set(spec) - set(GRID_KEYS)
    if unknown:
        raise SpatialmixError(
            f"unknown keys {sorted(unknown)} in the grid file; valid ones: {', '.join(GRID_KEYS)}"
        )
    base = TrainConfig()
    if spec.get("preset") is not None:
        if spec["preset"] not in PRESETS:
            raise unknown_name("preset", spec["preset"], PRESETS)
        base = PRESETS[spec["preset"]].base
    grid = spec.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise SpatialmixError(
            "the grid file needs a `grid:` mapping of TrainConfig fields to lists of values"
        )
    base_values = spec.get("base") or {}
    if not isinstance(base_values, dict):
        raise SpatialmixError("`base:` in the grid file must be a mapping of TrainConfig fields to values")
    _check_fields({**base_values, **grid, **overrides})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpatialmixError(f"grid entry {key!r} must be a non-empty list of values, got {values!r}")
    count = math.prod(len(values) for values in grid.values())
    if count > MAX_CONFIGURATIONS:
        sizes = " x ".join(str(len(values)) for values in grid.values())
        raise SpatialmixError(
            f"the grid has {count:,} configurations ({sizes}), more than the {MAX_CONFIGURATIONS:,} a sweep "
            f"may have; list fewer values, or split it into several grid files"
        )
    base_values = _typed(base_values)
    grid = {key: [_typed({key: v})[key] for v in values] for key, values in grid.items()}
    for key, values in grid.items():
        if len(set(map(repr, values))) != len(values):
            raise SpatialmixError(f"grid entry {key!r} lists a value twice: {values}")
    clash = (set(base_values) | set(overrides)) & set(grid)
    if clash:
        raise SpatialmixError(
            f"{', '.join(sorted(clash))} is both swept in `grid:` and fixed (in `base:` or on the "
            f"command line); keep one"
        )
    out_dir = Path(out_dir)
    jobs = []
    for values in itertools.product(*grid.values()):
        labels = dict(zip(grid, values))
        name = run_name(labels)
        if len(name.encode()) > NAME_MAX:
            raise SpatialmixError(
                f"configuration {name[:60]}...: its folder name is {len(name.encode())} bytes, more than "
                f"the {NAME_MAX} a folder name may have; use shorter values or fewer grid keys"
            )
        config = configuration(base, {**base_values, **overrides, **labels})
        jobs.append(SweepJob(name, _validated(config, name), out_dir / "runs" / name, labels))
    return Sweep(out_dir, jobs, title=f"Sweep {out_dir.name}", overrides=dict(overrides), varying=tuple(grid))


def configuration(base: TrainConfig, given: dict) -> TrainConfig:
    """``base`` (a preset's config) with the values a configuration gives. A configuration that names
    another model keeps none of the base's model sizes (they were for the base's model): ``model:
    convmixer-128/6`` over the quick preset is ConvMixer-128/6, not the preset's 64/4."""
    if "model" in given and given["model"] != base.model:
        base = base.replace(**{name: None for name in MODEL_SHAPE_FIELDS})
    return base.replace(**given)


def resolved_model(config: TrainConfig) -> str:
    """The model a configuration trains, with its sizes as they will be built: ``convmixer-128/6
    (width 128, depth 6, kernel 5, patch 2)``."""
    given = {name: getattr(config, name) for name in MODEL_SHAPE_FIELDS}
    sizes = model_kwargs(config.model, **given) if config.model in MODEL_REGISTRY else given
    shown = {"width": "width", "depth": "depth", "kernel_size": "kernel", "patch_size": "patch"}
    parts = [f"{label} {sizes[name]}" for name, label in shown.items() if sizes.get(name) is not None]
    return f"{config.model} ({', '.join(parts)})" if parts else config.model


def study_sweep(preset: str, out_dir: str | Path, seeds: tuple[int, ...] | None = None, **overrides) -> Sweep:
    """The training runs of the classification study of ``preset`` (every mode and seed it trains) as a
    sweep."""

    if preset not in PRESETS:
        raise unknown_name("preset", preset, PRESETS)
    _check_fields(overrides)
    if {"mode", "seed"} & set(overrides):
        raise SpatialmixError(
            "a study sweep runs every mode and seed of the preset; choose seeds with --seeds"
        )
    p = PRESETS[preset]
    ctx = StudyContext(p, Path(out_dir), tuple(seeds or p.seeds), overrides, seeds_given=bool(seeds))
    seeds = ctx.seeds
    jobs = []
    for job in classification_jobs(ctx):  # every model family of the preset, as reproduce trains them
        name = job.run_dir.name
        labels = {"mode": job.config.mode, "seed": job.config.seed}
        jobs.append(SweepJob(name, _validated(job.config, name), job.run_dir, labels))
    return Sweep(
        Path(out_dir),
        jobs,
        title=f"Study {preset}",
        preset=preset,
        seeds=seeds,
        overrides=dict(overrides),
        varying=("mode", "seed"),
    )


def plan_sweep(settings: SweepSettings, **overrides) -> Sweep:
    """The sweep ``settings`` name: a grid file's (folder ``runs/sweep-GRID`` by default) or a study preset's
    classification runs (folder ``runs/reproduce``); ``overrides`` are TrainConfig fields for every run.
    Every setting is checked here, so a dry run refuses what the sweep itself would."""
    check_max_running(settings.max_running)
    if (settings.grid is None) == (settings.preset is None):
        raise SpatialmixError("give either a grid file or --preset (a study's runs), not both or neither")
    if settings.grid is not None:
        if settings.seeds:
            raise SpatialmixError("--seeds is for --preset sweeps; put `seed: [...]` in the grid file")
        out = settings.out or f"runs/sweep-{Path(settings.grid).stem}"
        return grid_sweep(load_grid_file(settings.grid), out, **overrides)
    return study_sweep(
        settings.preset,
        settings.out or "runs/reproduce",
        seeds=tuple(settings.seeds or ()) or None,
        **overrides,
    )


_PATH_UNSAFE = re.compile(r"[/:\s]+")


def run_name(labels: dict) -> str:
    """A folder name for a configuration: ``key=value`` pairs, with path separators replaced."""
    return ",".join(f"{k}={_PATH_UNSAFE.sub('-', str(v))}" for k, v in labels.items())


def _check_fields(values: dict) -> None:
    known = {f for f in TrainConfig().to_dict()}
    bad = set(values) - known
    if bad:
        raise SpatialmixError(
            f"unknown training settings {sorted(bad)}; valid ones are the fields of TrainConfig "
            f"(the options of `spatialmix train`, with _ for -)"
        )


def _typed(values: dict) -> dict:
    """YAML reads ``1e-3`` as a string and ``1`` as an int: float fields get floats, as on the command
    line."""
    hints = typing.get_type_hints(TrainConfig)
    typed = {}
    for name, value in values.items():
        kinds = [a for a in typing.get_args(hints[name]) if a is not type(None)] or [hints[name]]
        if kinds == [float] and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                value = float(value)
            except ValueError:
                pass  # validate() names the configuration and the bad value
        typed[name] = value
    return typed


def _validated(config: TrainConfig, name: str) -> TrainConfig:
    try:
        return config.validate()
    except SpatialmixError as err:
        raise SpatialmixError(f"configuration {name}: {err}") from None
    except TypeError as err:
        raise SpatialmixError(f"configuration {name}: a value has the wrong type ({err})") from None

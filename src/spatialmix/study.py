"""The studies of the paper, run by ``spatialmix reproduce``.

A study is a function ``(StudyContext) -> StudyResult`` registered with :func:`register_study`;
``reproduce`` runs the registered studies in order and gathers their tables. The classification
study (claim 1: Full vs Chans vs Space) lives here; the robustness, un-shuffling and report
steps register themselves from their own modules.

Every run of a study lives in its own run directory below the study folder; a finished run is
read back instead of retrained and an interrupted one is resumed, so ``reproduce`` can be
killed and started again at any point without losing work.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import runs
from .distributed import is_main
from .errors import SpatialmixError, unknown_name
from .mixing import MODES
from .reporting import ResultTable, console, mean_std
from .train import TrainConfig, train


@dataclass
class Preset:
    """A named set of study settings: the base training config plus what each study sweeps."""

    name: str
    description: str
    base: TrainConfig
    seeds: tuple[int, ...] = (0,)
    modes: tuple[str, ...] = MODES
    options: dict = field(default_factory=dict)   # per-study settings, keyed by study name


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "quick", "Fashion-MNIST, ConvMixer-96/4 (kernel 5, patch 4), 2 epochs: minutes on 2 CPU cores",
        TrainConfig(dataset="fashion-mnist", model="convmixer", width=96, depth=4, kernel_size=5, patch_size=4,
                    epochs=2, batch_size=128, lr=0.01, weight_decay=0.01),
        # Full-resolution un-shuffling is ~15x the cost per image of the classifier: a smaller share.
        options={"unshuffle": {"train_subset": 3000, "epochs": 2}}),
    "paper": Preset(
        "paper", "CIFAR-10, ConvMixer-256/8 (kernel 5, patch 2), the ConvMixer CIFAR recipe, 100 epochs (GPU)",
        TrainConfig(dataset="cifar10", model="convmixer-256/8", epochs=100, batch_size=512, lr=0.01,
                    weight_decay=0.01), seeds=(0, 1, 2)),
}


@dataclass
class StudyContext:
    preset: Preset
    out_dir: Path
    seeds: tuple[int, ...]
    overrides: dict
    results: dict = field(default_factory=dict)   # name -> StudyResult of the studies already run

    def config(self, **changes) -> TrainConfig:
        return self.preset.base.replace(**{**self.overrides, **changes})


@dataclass
class StudyResult:
    name: str
    tables: list[ResultTable]
    data: dict                                    # JSON-serializable raw results
    files: list[str] = field(default_factory=list)


StudyFn = Callable[[StudyContext], StudyResult]
STUDIES: dict[str, StudyFn] = {}
# Modules that register further studies, in the order they run (the report comes last).
STUDY_MODULES: list[str] = ["spatialmix.robustness", "spatialmix.unshuffle", "spatialmix.report"]


def load_studies() -> dict[str, StudyFn]:
    import importlib

    for module in STUDY_MODULES:
        importlib.import_module(module)
    # Run in the order of STUDY_MODULES (the report last) whatever order they were imported in.
    order = [__name__] + STUDY_MODULES
    ranked = sorted(STUDIES.items(), key=lambda item: order.index(item[1].__module__)
                    if item[1].__module__ in order else len(order))
    STUDIES.clear()
    STUDIES.update(ranked)
    return STUDIES


def register_study(name: str):
    def decorator(fn: StudyFn) -> StudyFn:
        STUDIES[name] = fn
        return fn
    return decorator


def train_or_reuse(config: TrainConfig, run_dir: Path) -> dict:
    """Train ``config`` in ``run_dir``: reuse it when finished, resume it when interrupted."""
    run_dir = Path(run_dir)
    if (run_dir / runs.SUMMARY).is_file() and runs.read_json(run_dir / runs.STATUS, "run").get("state") == "finished":
        return runs.read_json(run_dir / runs.SUMMARY, "run summary")
    return train(config, run_dir, resume=runs.is_run_dir(run_dir))


def classification_run_dir(out_dir: Path, mode: str, seed: int) -> Path:
    return Path(out_dir) / "classification" / f"{mode}-seed{seed}"


@register_study("classification")
def classification_study(ctx: StudyContext) -> StudyResult:
    """Claim 1: the same model and seed trained in Full, Chans and Space mode."""
    summaries = {mode: [] for mode in ctx.preset.modes}
    for seed in ctx.seeds:
        for mode in ctx.preset.modes:
            config = ctx.config(mode=mode, seed=seed)
            console.print(f"[bold]classification[/]: {mode} seed {seed} -> "
                          f"{classification_run_dir(ctx.out_dir, mode, seed)}", highlight=False)
            summaries[mode].append(train_or_reuse(config, classification_run_dir(ctx.out_dir, mode, seed)))
    table = classification_table(summaries, title=f"Classification ({ctx.preset.base.dataset}, "
                                                  f"{ctx.config().model}, {len(ctx.seeds)} seed(s))")
    return StudyResult("classification", [table], {"runs": summaries})


def classification_table(summaries: dict[str, list[dict]], title: str) -> ResultTable:
    table = ResultTable(title, [("mode", "mode", ""), ("trainable", "trainable params", ","),
                                ("frozen", "frozen params", ","), ("test_acc", "test acc", ".4f"),
                                ("best_acc", "best acc", ".4f"), ("train_time", "train time (s)", ".1f"),
                                ("images_per_s", "images/s", ".0f"), ("seeds", "seeds", "")])
    for mode, rows in summaries.items():
        if not rows:
            continue
        table.add(mode=mode.capitalize(), trainable=rows[0]["trainable_params"], frozen=rows[0]["frozen_params"],
                  test_acc=mean_std([r["test_acc"] for r in rows]), best_acc=mean_std([r["best_acc"] for r in rows]),
                  train_time=mean_std([r["train_time"] for r in rows]),
                  images_per_s=mean_std([r["images_per_s"] for r in rows]), seeds=len(rows))
    return table


def reproduce(preset: str = "quick", out_dir: str | Path = "runs/reproduce", seeds: tuple[int, ...] | None = None,
              studies: list[str] | None = None, **overrides) -> dict[str, StudyResult]:
    """Run the studies of ``preset`` (all registered ones by default) and save their tables.

    ``overrides`` replace fields of the preset's training config (e.g. ``epochs=1``).
    Writes ``results.json`` and ``results.md`` in ``out_dir``.
    """
    if preset not in PRESETS:
        raise unknown_name("preset", preset, PRESETS)
    load_studies()
    chosen = list(STUDIES) if studies is None else studies
    for name in chosen:
        if name not in STUDIES:
            raise unknown_name("study", name, STUDIES)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(overrides) - known
    if bad:
        raise SpatialmixError(f"unknown training settings {sorted(bad)}; valid ones are the fields of TrainConfig")
    ctx = StudyContext(PRESETS[preset], Path(out_dir), tuple(seeds or PRESETS[preset].seeds),
                       {k: v for k, v in overrides.items() if v is not None})
    ctx.config().validate()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        result = STUDIES[name](ctx)
        ctx.results[name] = result
        if is_main():   # under torchrun every rank runs the studies; rank 0 prints and writes
            for table in result.tables:
                table.print()
            save_results(ctx)
    return ctx.results


def save_results(ctx: StudyContext) -> None:
    """Write results.json / results.md, keeping the entries of studies run by earlier calls."""
    path = ctx.out_dir / "results.json"
    previous = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if old.get("preset") == ctx.preset.name:
                previous = old.get("studies", {})
        except (json.JSONDecodeError, OSError):
            previous = {}   # unreadable: replaced by this call's results
    studies = {**previous, **{name: study_entry(r) for name, r in ctx.results.items()}}
    payload = {"preset": ctx.preset.name, "seeds": list(ctx.seeds), "overrides": ctx.overrides, "studies": studies}
    runs.atomic_write_bytes(path, json.dumps(payload, indent=2, default=str).encode())
    markdown = "\n".join(entry.get("markdown", "") for entry in studies.values())
    runs.atomic_write_bytes(ctx.out_dir / "results.md", markdown.encode())


def study_entry(result: StudyResult) -> dict:
    return {"data": result.data, "files": result.files, "tables": [t.rows for t in result.tables],
            "table_titles": [t.title for t in result.tables],
            "table_columns": [[list(c) for c in t.columns] for t in result.tables],
            "markdown": "\n".join(t.to_markdown() for t in result.tables)}

"""The studies of the paper, run by ``spatialmix reproduce``.

A study is a function ``(StudyContext) -> StudyResult``. :data:`STUDIES` is the one table of
them, in the order ``reproduce`` runs them (the verdicts and the report last); :data:`PRESETS`
is the one table of presets. The classification study (claim 1: Full vs Chans vs Space) lives
here; the others live in their own modules and are imported only when they run.

Every run of a study lives in its own run directory below the study folder; a finished run is
read back instead of retrained and an interrupted one is resumed, so ``reproduce`` can be
killed and started again at any point without losing work. Independent trainings run side by
side (:func:`train_all`, one process per core with one thread each).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import runs
from .config import TrainConfig
from .display import ResultTable, console, mean_std
from .distributed import is_main
from .errors import SpatialmixError, unknown_name
from .mixing import MODES
from .resume import prepare_run_dir
from .study_result import StudyResult, study_entry
from .tasks import ClassificationTask
from .train import train


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
        "quick", "Fashion-MNIST, ConvMixer-64/4 (kernel 5, patch 2), 45,000 images x 1 epoch without "
                 "augmentation, 3 seeds: about 10 minutes on 2 CPU cores",
        # Patch 2 leaves 14 x 14 tokens for the spatial mixers to work on (patch 4's 7 x 7 leaves little).
        # Measured (Full, seed 0, one epoch, lr 0.04 at batch 64): flip augmentation costs a single epoch
        # 2.5 points (0.846 with it, 0.872 without on 30,000 images); without it, 45,000 images reach
        # 0.883 and 0.885 (seeds 0, 1), all 60,000 0.889. Label smoothing 0, batch 32 / lr 0.02, lr 0.06
        # and kernel 7 did no better on 30,000. 45,000 keeps the study within about 10 minutes.
        TrainConfig(dataset="fashion-mnist", model="convmixer", width=64, depth=4, kernel_size=5, patch_size=2,
                    epochs=1, batch_size=64, lr=0.04, weight_decay=0.01, train_subset=45000, augment="none"),
        seeds=(0, 1, 2),
        options={
            # 500 fixed images, APGD-CE-10 + APGD-T-10 on one target, on the examples still standing; the
            # 100-step reference and the masking checks on 25 of them. 1/255 left out: at the quick
            # models' robustness it costs a third of the time and decides nothing 2/255 does not.
            "robustness": {"eps": (0.0, 2 / 255, 4 / 255, 8 / 255), "n_examples": 500, "targets": 1,
                           "reference_examples": 25, "reference_targets": 1, "square_queries": 300},
            # Two sigmas: the slope is the paired difference of sigma 2 and the classification study's
            # Chans runs (sigma 0, reused); a third sigma cost two minutes and decided nothing more.
            "smoothing": {"sigmas": (0.0, 2.0)},
            # Full-resolution un-shuffling costs ~15x the classifier per image: a small share, without
            # the kernel-1 reference (the verdicts use the scrambled-input floor; the `hour` preset of
            # `spatialmix unshuffle` answers claim 3 properly).
            "unshuffle": {"train_subset": 2000, "epochs": 2, "references": False}}),
    "paper": Preset(
        "paper", "CIFAR-10, ConvMixer-256/8 (kernel 5, patch 2), the ConvMixer CIFAR recipe, 100 epochs (GPU)",
        TrainConfig(dataset="cifar10", model="convmixer-256/8", epochs=100, batch_size=512, lr=0.01,
                    weight_decay=0.01), seeds=(0, 1, 2),
        # A GPU affords the full evaluation: 1,000 images, 3 targets, the reference on all of them.
        options={"robustness": {"n_examples": 1000, "batch_size": 1000, "targets": 3, "reference_examples": None,
                                "reference_targets": 9, "square_queries": 5000}}),
}


@dataclass
class StudyContext:
    preset: Preset
    out_dir: Path
    seeds: tuple[int, ...]
    overrides: dict
    results: dict = field(default_factory=dict)   # name -> StudyResult of the studies already run
    processes: int = 1                            # independent jobs run side by side in this many processes
    threads: int | None = None                    # torch threads of each (None: torch's default)

    def config(self, **changes) -> TrainConfig:
        return self.preset.base.replace(**{**self.overrides, **changes})


StudyFn = Callable[[StudyContext], StudyResult]
# Every study, in the order `reproduce` runs them, as "module:function" so that reading this
# table imports nothing (the robustness, un-shuffling and report modules are heavy).
STUDIES: dict[str, str] = {
    "classification": "spatialmix.study:classification_study",    # claim 1
    "robustness": "spatialmix.robustness:robustness_study",        # claim 2
    "smoothing": "spatialmix.robustness:smoothing_study",          # claim 2, smoothed filters
    "init": "spatialmix.init_study:init_study",                    # the prior of the random filters
    "unshuffle": "spatialmix.unshuffle_study:unshuffle_reproduce_study",  # claim 3
    "verdicts": "spatialmix.verdicts:verdicts_study",              # one verdict per claim
    "report": "spatialmix.report:report_study",                    # report.html, last
}
# Run only when asked for (`--studies ...,init`): not part of `make reproduce`'s time budget.
ON_REQUEST: frozenset[str] = frozenset({"init"})


def study_function(name: str) -> StudyFn:
    """The function of study ``name`` (imports its module)."""
    import importlib

    if name not in STUDIES:
        raise unknown_name("study", name, STUDIES)
    module, function = STUDIES[name].split(":")
    return getattr(importlib.import_module(module), function)


def check_job(config: TrainConfig, run_dir: Path) -> None:
    """Raise now what :func:`train_or_reuse` would refuse for this job (a run in ``run_dir`` made
    with another config, finished or not), so a study refuses before it trains anything."""
    if runs.Run(run_dir).finished_summary(config) is None:
        prepare_run_dir(Path(run_dir), config, resume=True, task=ClassificationTask())


def train_or_reuse(config: TrainConfig, run_dir: Path) -> dict:
    """Train ``config`` in ``run_dir``: reuse it when it finished with this config, resume it when
    interrupted; a run that finished with another config is an error (see :meth:`runs.Run.finished_summary`).
    The run folder stays locked from the check to the end of training."""
    summary = runs.Run(run_dir).finished_summary(config)
    if summary is not None:   # a finished run is only read: no lock, nothing in its folder changes
        return summary
    with runs.locked(run_dir) as run:
        summary = run.finished_summary(config)
        if summary is not None:
            return summary
        return train(config, run.path, resume=True)


def classification_run_dir(out_dir: Path, mode: str, seed: int) -> Path:
    return Path(out_dir) / "classification" / f"{mode}-seed{seed}"


def classification_study(ctx: StudyContext) -> StudyResult:
    """Claim 1: the same model and seed trained in Full, Chans and Space mode."""
    jobs = [(ctx.config(mode=mode, seed=seed), classification_run_dir(ctx.out_dir, mode, seed))
            for seed in ctx.seeds for mode in ctx.preset.modes]
    summaries = {mode: [] for mode in ctx.preset.modes}
    for (config, _), summary in zip(jobs, train_all(ctx, "classification", jobs)):
        summaries[config.mode].append(summary)
    table = classification_table(summaries, title=f"Classification ({ctx.preset.base.dataset}, "
                                                  f"{ctx.config().model}, {len(ctx.seeds)} seed(s))")
    return StudyResult("classification", [table], {"runs": summaries}, section="classification")


def _run_description(config: TrainConfig) -> str:
    sigma = f" σ={config.smooth_sigma:g}" if config.smooth_sigma else ""
    init = f" {config.spatial_init} init" if config.spatial_init != "default" else ""
    return f"{config.mode}{sigma}{init} seed {config.seed}"


def train_all(ctx: StudyContext, study: str, jobs: list[tuple[TrainConfig, Path]]) -> list[dict]:
    """Train (or reuse, or resume) every ``(config, run_dir)`` job; return their summaries in order.

    The jobs run side by side in ``ctx.processes`` processes with ``ctx.threads`` threads each;
    with more than one process the progress bars give way to one line per finished run.
    """
    for config, run_dir in jobs:   # every refusal before the first job starts: nothing half done
        check_job(config, run_dir)
    side_by_side = ctx.processes > 1 and len(jobs) > 1
    work = []
    for config, run_dir in jobs:
        config = config.replace(threads=ctx.threads, progress=config.progress and not side_by_side)
        work.append((train_or_reuse, (config, Path(run_dir))))
        if not side_by_side:
            console.print(f"[bold]{study}[/]: {_run_description(config)} -> {run_dir}", highlight=False)

    def done(i: int, summary: dict) -> None:
        if side_by_side:
            config, run_dir = jobs[i]
            score = summary.get("test_acc", summary.get("test_psnr"))
            console.print(f"[bold]{study}[/] {i + 1}/{len(jobs)}: {_run_description(config)} -> {run_dir}: "
                          f"test {score:.4f}, {summary.get('train_time', 0):.0f} s", highlight=False)

    from .parallel import run_side_by_side

    if not side_by_side:   # here, keeping torch's default threads unless ctx.threads says otherwise
        return [fn(*args) for fn, args in work]
    return run_side_by_side(work, processes=ctx.processes, threads=ctx.threads or 1, on_done=done)


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
              studies: list[str] | None = None, processes: int | None = None, threads: int | None = None,
              **overrides) -> dict[str, StudyResult]:
    """Run the studies of ``preset`` (by default every one of :data:`STUDIES` but those run
    :data:`ON_REQUEST`) and save their tables.

    ``overrides`` replace fields of the preset's training config (e.g. ``epochs=1``).
    ``processes`` independent trainings and evaluations run side by side (default: one per
    available core) with ``threads`` torch threads each (default: 1 when side by side, else
    torch's default). Writes ``results.json`` and ``results.md`` in ``out_dir``; prints the time
    each study took.
    """
    if preset not in PRESETS:
        raise unknown_name("preset", preset, PRESETS)
    chosen = [s for s in STUDIES if s not in ON_REQUEST] if studies is None else list(studies)
    for name in chosen:
        if name not in STUDIES:
            raise unknown_name("study", name, STUDIES)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(overrides) - known
    if bad:
        raise SpatialmixError(f"unknown training settings {sorted(bad)}; valid ones are the fields of TrainConfig")
    processes, threads = resolve_parallelism(processes, threads)
    ctx = StudyContext(PRESETS[preset], Path(out_dir), tuple(seeds or PRESETS[preset].seeds),
                       {k: v for k, v in overrides.items() if v is not None}, processes=processes, threads=threads)
    ctx.config().validate()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.perf_counter()
    for name in chosen:
        t0 = time.perf_counter()
        result = study_function(name)(ctx)
        timings[name] = time.perf_counter() - t0
        result.data = {**result.data, "time_s": timings[name]}
        ctx.results[name] = result
        if is_main():   # under torchrun every rank runs the studies; rank 0 prints and writes
            for table in result.tables:
                table.print()
            console.print(f"[bold]{name}[/] took {timings[name]:.0f} s", highlight=False)
            save_results(ctx)
    if is_main():
        console.print("time per study: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
                      + f"; total {time.perf_counter() - start:.0f} s", highlight=False)
    return ctx.results


def resolve_parallelism(processes: int | None, threads: int | None) -> tuple[int, int | None]:
    """``processes`` default: one per available core (1 under torchrun, whose ranks share each job);
    ``threads`` default: 1 when jobs run side by side, else torch's default."""
    from .distributed import launched_world_size
    from .speed import available_cores

    for name, value in (("processes", processes), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SpatialmixError(f"--{name} must be a whole number of at least 1, got {value!r}")
    if processes is None:
        processes = 1 if launched_world_size() > 1 else available_cores()
    if threads is None and processes > 1:
        threads = 1
    return processes, threads


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
    studies = {**previous, **{name: study_entry(r, ctx.out_dir) for name, r in ctx.results.items()}}
    payload = {"preset": ctx.preset.name, "seeds": list(ctx.seeds), "overrides": ctx.overrides, "studies": studies}
    runs.atomic_write_bytes(path, json.dumps(payload, indent=2, default=str).encode())
    markdown = "\n".join(entry.get("markdown", "") for entry in studies.values())
    runs.atomic_write_bytes(ctx.out_dir / "results.md", markdown.encode())


"""``spatialmix reproduce``: the studies of the paper, one after the other, and their results.

`STUDIES` is the one table of them, in the order ``reproduce`` runs them; each study lives
in its own module of `spatialmix.studies`. Every run lives in its own run directory below the
study folder; a finished run is read back instead of retrained and an interrupted one is resumed,
so ``reproduce`` can be killed and started again at any point without losing work.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from spatialmix.accel.speed import available_cores
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.distributed import is_main, launched_world_size
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.io import storage
from spatialmix.io.environment import machine_stamp
from spatialmix.io.study_results import StudyResult, study_entry
from spatialmix.io.untrusted import read_json
from spatialmix.options import option_words
from spatialmix.studies.classification import classification_study
from spatialmix.studies.context import PRESETS, StudyContext
from spatialmix.studies.init import init_study
from spatialmix.studies.robustness import robustness_study, smoothing_study
from spatialmix.studies.steps import report_study, verdicts_study
from spatialmix.studies.unshuffle import unshuffle_reproduce_study
from spatialmix.ui.display import say

StudyFn = Callable[[StudyContext], StudyResult]


# Every study, in the order `reproduce` runs them (the verdicts and the report read what the others wrote).
STUDIES: dict[str, StudyFn] = {
    "classification": classification_study,  # claim 1
    "robustness": robustness_study,  # claim 2
    "smoothing": smoothing_study,  # claim 2, smoothed filters
    "init": init_study,  # the prior of the random filters
    "unshuffle": unshuffle_reproduce_study,  # claim 3
    "verdicts": verdicts_study,  # one verdict per claim
    "report": report_study,  # report.html, last
}
"""Every study `reproduce` can run, by name, in the order it runs them."""
# Studies that add no data to a claim: running them alone keeps an --until-decided record.
KEEP_SEQUENTIAL: frozenset[str] = frozenset({"verdicts", "report", "init"})


def default_studies(preset: str) -> list[str]:
    """The studies `reproduce` runs for ``preset`` when none are named: all of `STUDIES` but the
    preset's `Preset.on_request` ones."""
    return [s for s in STUDIES if s not in PRESETS[preset].on_request]


def study_function(name: str) -> StudyFn:
    """The function of study ``name``."""
    if name not in STUDIES:
        raise unknown_name("study", name, STUDIES)
    return STUDIES[name]


def reproduce(
    preset: str = "quick",
    out_dir: str | Path = "runs/reproduce",
    seeds: tuple[int, ...] | None = None,
    studies: list[str] | None = None,
    processes: int | None = None,
    threads: int | None = None,
    sequential: dict | None = None,
    **overrides,
) -> dict[str, StudyResult]:
    """Run the studies of ``preset`` (by default every one of `STUDIES` but those run
    the preset's `Preset.on_request` ones, `default_studies`) and save their tables.

    ``overrides`` replace fields of the preset's training config (e.g. ``epochs=1``).
    ``processes`` independent trainings and evaluations run side by side (default: one per
    available core) with ``threads`` torch threads each (default: 1 when side by side, else
    torch's default). Writes ``results.json`` and ``results.md`` in ``out_dir``; prints the time
    each study took. ``sequential``: the record `spatialmix.studies.sequential.reproduce_until_decided`
    keeps in results.json (each study's look and confidence level).
    """
    if preset not in PRESETS:
        raise unknown_name("preset", preset, PRESETS)
    check_seeds(seeds)
    chosen = default_studies(preset) if studies is None else list(studies)
    for name in chosen:
        if name not in STUDIES:
            raise unknown_name("study", name, STUDIES)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(overrides) - known
    if bad:
        raise SpatialmixError(
            f"unknown training settings {sorted(bad)}; valid ones are the fields of TrainConfig"
        )
    command = reproduce_command(preset, out_dir, seeds, studies, processes, threads, overrides)
    processes, threads = resolve_parallelism(processes, threads)
    ctx = StudyContext(
        PRESETS[preset],
        Path(out_dir),
        tuple(seeds or PRESETS[preset].seeds),
        {k: v for k, v in overrides.items() if v is not None},
        processes=processes,
        threads=threads,
        sequential=sequential,
        seeds_given=seeds is not None,
    )
    ctx.config().validate()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.perf_counter()
    for name in chosen:
        t0 = time.perf_counter()
        result = study_function(name)(ctx)
        timings[name] = time.perf_counter() - t0
        # where and with what it ran: `spatialmix publish` stamps the published numbers with it
        stamp = machine_stamp(command, processes, threads)
        result.data = {**result.data, "time_s": timings[name], "machine": stamp}
        ctx.results[name] = result
        if is_main():  # under torchrun every rank runs the studies; rank 0 prints and writes
            for table in result.tables:
                table.print()
            say(f"[bold]{name}[/] took {timings[name]:.0f} s")
            save_results(ctx)
    if is_main():
        say(
            "time per study: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
            + f"; total {time.perf_counter() - start:.0f} s"
        )
    return ctx.results


def reproduce_command(
    preset: str,
    out_dir: str | Path,
    seeds: tuple[int, ...] | None,
    studies: list[str] | None,
    processes: int | None,
    threads: int | None,
    overrides: dict,
) -> str:
    """The `spatialmix reproduce` command line of a call of `reproduce` (what a stamp names)."""
    given = {"seeds": seeds, "studies": studies, "processes": processes, "threads": threads}
    words = ["spatialmix", "reproduce", "--preset", preset, "--out", str(out_dir)]
    return shlex.join(words + option_words({**given, **dict(sorted(overrides.items()))}))


def check_seeds(seeds) -> None:
    """Refuse a seed given twice: its runs would share one folder (found only after training)."""
    seen = set()
    for seed in seeds or ():
        if seed in seen:
            listed = " ".join(str(s) for s in seeds)
            raise SpatialmixError(f"--seeds repeats seed {seed} ({listed}); give each seed once")
        seen.add(seed)


def check_count(name: str, value) -> None:
    """Refuse anything but a whole number of at least 1 for the option ``--name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        flag = "--" + name.replace("_", "-")
        raise SpatialmixError(f"{flag} must be a whole number of at least 1, got {value!r}")


def resolve_parallelism(processes: int | None, threads: int | None) -> tuple[int, int | None]:
    """``processes`` default: one per available core (1 under torchrun, whose ranks share each job);
    ``threads`` default: 1 when jobs run side by side, else torch's default."""

    for name, value in (("processes", processes), ("threads", threads)):
        if value is not None:
            check_count(name, value)
    if processes is None:
        processes = 1 if launched_world_size() > 1 else available_cores()
    if threads is None and processes > 1:
        threads = 1
    return processes, threads


def save_results(ctx: StudyContext) -> None:
    """Write results.json / results.md, keeping the entries of studies run by earlier calls.

    The ``sequential`` record of an ``--until-decided`` run stays while later calls only run the
    closing steps (verdicts, report: their levels still apply); a call that runs a study of the
    claims again replaces it (that study's data is then a fixed design, at 95%)."""
    path = ctx.out_dir / "results.json"
    previous, sequential = {}, ctx.sequential
    if path.is_file():
        try:  # bounded and inside the study folder (results.json is untrusted)
            old = read_json(path, "study results")
            if old.get("preset") == ctx.preset.name:
                previous = old.get("studies", {})
                if sequential is None and set(ctx.results) <= KEEP_SEQUENTIAL:
                    sequential = old.get("sequential")
        except (SpatialmixError, AttributeError):
            previous = {}  # unreadable: replaced by this call's results
    studies = {**previous, **{name: study_entry(r, ctx.out_dir) for name, r in ctx.results.items()}}
    payload = {
        "preset": ctx.preset.name,
        "seeds": list(ctx.seeds),
        "overrides": ctx.overrides,
        "studies": studies,
        **({"sequential": sequential} if sequential is not None else {}),
    }
    storage.atomic_write_bytes(path, json.dumps(payload, indent=2, default=str).encode())
    markdown = "\n".join(entry.get("markdown", "") for entry in studies.values())
    storage.atomic_write_bytes(ctx.out_dir / "results.md", markdown.encode())

"""What a sweep depends on: where its configurations come from, how they run, what each job asks for.

`SweepSettings` (a grid file or a study preset, the folder, the executor) and
`JobResources` (a submitit / Slurm job's GPUs, nodes, time, ...), with their validation.
``spatialmix sweep`` generates its options from both. Imports nothing heavy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from spatialmix.errors import SpatialmixError
from spatialmix.options import option

EXECUTORS = ("local", "submitit-local", "slurm")
# TrainConfig fields a sweep sets per configuration: not options of `spatialmix sweep` (its --threads
# are each job's threads).
SWEEP_SKIP = ("mode", "seed")


def parse_time(text: str) -> int:
    """A Slurm time limit in minutes. Slurm's formats: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not match:
        raise SpatialmixError(
            f"--time {text!r} is not a Slurm time limit; write minutes (90), H:M:S (1:30:00) "
            f"or D-H:M (1-12:00)"
        )
    days, *parts = match.groups()
    parts = [int(p) for p in parts if p is not None]
    if days is None:
        # M, M:S or H:M:S
        units = {1: (1,), 2: (1, 1 / 60), 3: (60, 1, 1 / 60)}[len(parts)]
    else:
        # D-H, D-H:M or D-H:M:S
        units = {1: (60,), 2: (60, 1), 3: (60, 1, 1 / 60)}[len(parts)]
    minutes = int(days or 0) * 1440 + sum(p * u for p, u in zip(parts, units))
    if minutes <= 0:
        raise SpatialmixError(f"--time {text!r} is not a positive time limit")
    return max(1, math.ceil(minutes))


def parse_slurm_options(items) -> dict:
    """``["account=abc", "qos=high"]`` -> ``{"account": "abc", "qos": "high"}`` (sbatch option names, _ for
    -)."""
    options = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise SpatialmixError(f"--slurm-option {item!r} is not KEY=VALUE (e.g. account=abc)")
        options[key.strip().lstrip("-").replace("-", "_")] = value
    return options


def check_max_running(value: int | None) -> None:
    """None (every job at once) or a whole number of at least 1."""
    if value is not None and (not isinstance(value, int) or value < 1):
        raise SpatialmixError(f"max running must be a positive whole number, got {value!r}")


@dataclass(frozen=True)
class JobResources:
    """What each submitit job asks for. ``gpus`` > 1 starts one process per GPU (DDP) in the job."""

    gpus: int = option(0, "GPUs per job (slurm; one DDP process per GPU)")
    nodes: int = option(1, "nodes per job (slurm)")
    time_min: int = option(
        60,
        "time limit per job: minutes or H:M:S (D-H:M also)",
        flags=("--time",),
        parse=parse_time,
        metavar="TIME",
    )
    partition: str | None = option(None, "Slurm partition")
    cpus: int | None = option(None, "CPUs per process of a job")
    mem_gb: float | None = option(None, "memory per node of a job, in GB")
    slurm_options: dict = option(
        {},
        "any other sbatch option, e.g. account=abc or qos=high (repeatable)",
        flags=("--slurm-option",),
        action="append",
        parse=parse_slurm_options,
        metavar="KEY=VALUE",
        default_help="none",
    )

    def validate(self) -> JobResources:
        """Reject impossible requests with one clear line, before anything is submitted."""
        for name in ("gpus", "cpus"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise SpatialmixError(f"--{name} must be 0 or more, got {value}")
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise SpatialmixError(f"--nodes must be 1 or more, got {self.nodes}")
        if not isinstance(self.time_min, int) or self.time_min < 1:
            raise SpatialmixError(
                f"the time limit must be a whole number of minutes of at least 1, got {self.time_min}"
            )
        if self.mem_gb is not None and not (self.mem_gb > 0 and math.isfinite(self.mem_gb)):
            raise SpatialmixError(f"--mem-gb must be a positive number, got {self.mem_gb}")
        return self

    def check_for(self, executor: str) -> None:
        """Several GPUs or nodes per configuration make a DDP job, which only Slurm starts."""
        if executor == "local" and (self.gpus > 1 or self.nodes > 1):
            raise SpatialmixError(
                "--gpus/--nodes above 1 ask for a DDP job per configuration: use --executor "
                "slurm; to use several GPUs of this machine, start the sweep itself under torchrun"
            )

    def executor_parameters(self, name: str) -> dict:
        """The submitit AutoExecutor parameters (generic ones, and ``slurm_*`` used only on Slurm)."""
        tasks = max(1, self.gpus)
        params = {
            "name": name,
            "timeout_min": self.time_min,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus,
            "tasks_per_node": tasks,
            "cpus_per_task": self.cpus,
            "mem_gb": self.mem_gb,
            "slurm_partition": self.partition,
        }
        if self.slurm_options:
            params["slurm_additional_parameters"] = dict(self.slurm_options)
        return {k: v for k, v in params.items() if v is not None}


@dataclass(frozen=True)
class SweepSettings:
    """Where a sweep's configurations come from (a grid file or a study preset) and how they run."""

    grid: str | None = option(
        None, "grid file (or use --preset)", positional=True, nargs="?", metavar="GRID.yaml"
    )
    preset: str | None = option(
        None, "sweep the classification runs of this study preset (quick, standard, paper) instead"
    )
    seeds: tuple[int, ...] | None = option(None, "with --preset: the seeds (default: the preset's)")
    out: str | None = option(None, "sweep folder (default: runs/sweep-GRID, or runs/reproduce with --preset)")
    executor: str = option(
        "local",
        "local: here, one after another; submitit-local: a process per job on this "
        "machine; slurm: a Slurm job per configuration",
        choices=EXECUTORS,
    )
    max_running: int | None = option(None, "submit at most this many jobs at a time (default: all)")
    dry_run: bool = option(False, "list the configurations and their state; run nothing")

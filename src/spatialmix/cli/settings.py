"""The settings of the commands that are not a training, attack or un-shuffling setting.

Each dataclass holds what one command adds to the library's own settings (where a run goes,
which runs to read, ...); the command line generates its options from them
(`spatialmix.options`). Imports nothing heavy.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from spatialmix.engine.config import TrainConfig
from spatialmix.options import option, option_like, parse_duration

THREADS_HELP = "torch threads of this process (default: torch's own, one per physical core)"


def _threads(help_text: str = THREADS_HELP):
    return option(None, help_text, minimum=1)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def _none_or_path(text: str) -> str | None:
    return None if str(text).strip().lower() == "none" else str(text)


def _trust_code():
    return option(
        False,
        "import and run the code of a model of your own: the module:function of --model, or the one a "
        "run's config.json names; only for code and runs you trust (a run folder never imports anything "
        "without it)",
    )


def _rebuild_model():
    return option(
        None,
        "module:function that rebuilds runs trained with a model of your own (with --trust-code; default: "
        "the one each run's config.json names)",
        metavar="MODULE:FUNCTION",
    )


@dataclass(frozen=True)
class TrainCommand:
    """``spatialmix train``: the TrainConfig options, and these."""

    HELP_GROUPS: typing.ClassVar[dict[str, str]] = {"run folder": "out"}

    out: str | None = option(None, "run directory (default: runs/DATASET-MODEL-MODE-seedS)")
    resume: bool = option(
        False,
        "continue the run in --out with its saved config from its newest complete "
        "checkpoint (or start it with the options given if nothing was saved); options "
        "given with it must match, except --epochs (to extend), --device, --progress, --workers, "
        "and --lr/--amp after a divergence",
    )
    trust_code: bool = _trust_code()
    log: tuple[str, ...] | None = option(
        None,
        "also log to these, comma-separated: tensorboard (event files in RUN/logs/tensorboard), wandb "
        "(Weights & Biases, offline in RUN/logs; pip install wandb)",
        parse=_comma_list,
    )


# TrainConfig fields the studies set per run: not options of `spatialmix reproduce`.
REPRODUCE_SKIP = ("mode", "seed", "threads")


@dataclass(frozen=True)
class ReproduceSettings:
    """``spatialmix reproduce``: the arguments of `spatialmix.studies.reproduce.reproduce` but
    the training overrides."""

    preset: str = option(
        "quick",
        "quick (Fashion-MNIST, CPU minutes), standard (Fashion-MNIST, about an hour) "
        "or paper (CIFAR-10, GPU)",
    )
    out: str = option("runs/reproduce", "study folder")
    seeds: tuple[int, ...] | None = option(
        None, "seeds to repeat each run with (mean and std; default: the preset's)"
    )
    studies: tuple[str, ...] | None = option(
        None,
        "comma-separated subset of the studies to run (default: every one but those run on request)",
        parse=_comma_list,
    )
    processes: int | None = option(
        None,
        "independent trainings and attack evaluations run side by side in this "
        "many processes (default: one per available core)",
    )
    threads: int | None = _threads("torch threads of each process (default: 1 when side by side)")
    until_decided: bool = option(
        False,
        "add seeds in rounds to the studies whose claims are still open, until each is decided, "
        "--max-seeds is reached or the next round would overrun --budget (intervals spend the error "
        "rate over the looks, so stopping early keeps them valid)",
    )
    budget: float | None = option(
        None, "with --until-decided: wall-time limit, e.g. 30m, 1h30m (default: none)", parse=parse_duration
    )
    max_seeds: int | None = option(
        None,
        "with --until-decided: the most seeds per configuration (default: 4 x the first round's)",
        minimum=1,
    )
    seed_step: int | None = option(
        None, "with --until-decided: seeds added per round (default: 2)", minimum=1
    )


@dataclass(frozen=True)
class ModelQuery:
    """``spatialmix models [NAME]``: which model to build and describe."""

    name: str | None = option(
        None,
        "a model name (also timm:NAME, torchvision:NAME); none: list the names",
        positional=True,
        nargs="?",
    )
    in_chans: int = option(3, "input channels")
    num_classes: int = option(10, "classes")
    image_size: int = option(32, "image size in pixels")
    patch_size: int | None = option(
        None, "patch size / stem stride (timm models that take one, and convmixer)"
    )
    spatial_pattern: str | None = option_like(TrainConfig, "spatial_pattern")
    channel_pattern: str | None = option_like(TrainConfig, "channel_pattern")


@dataclass(frozen=True)
class AttackOutput:
    """``spatialmix attack RUN_DIR ...``: which runs, where their test set is, where the results go."""

    run_dirs: tuple[str, ...] = option(
        (), "run directories (spatialmix train / reproduce)", positional=True, nargs="+", metavar="RUN_DIR"
    )
    data_dir: str | None = option(
        None,
        "folder holding the test set (default: $SPATIALMIX_DATA, the OS package, "
        "the download cache; never the run's own config)",
    )
    out_name: str = option("robustness", "results go to RUN_DIR/OUT_NAME.json and the plot to OUT_NAME.png")
    model: str | None = _rebuild_model()
    trust_code: bool = _trust_code()
    plot: str | None = option(
        "auto",
        "where to draw robust accuracy vs eps (default: OUT_NAME.png in the run "
        "directory, or in the runs' common parent folder); 'none' to skip",
        parse=_none_or_path,
        metavar="PATH",
    )
    progress: bool = option(True, "progress bar")
    threads: int | None = _threads()


@dataclass(frozen=True)
class ReportSettings:
    """``spatialmix report PATH ... -o report.html``."""

    paths: tuple[str, ...] = option(
        (),
        "run directories (spatialmix train) and study folders (spatialmix reproduce)",
        positional=True,
        nargs="+",
        metavar="RUN_DIR_OR_STUDY_DIR",
    )
    out: str = option(
        "report.html",
        "the HTML file to write; the Markdown tables go beside it as .md",
        flags=("-o", "--out"),
    )
    fft_size: int = option(32, "zero-pad each spatial filter to this size before its DFT")
    model: str | None = _rebuild_model()
    trust_code: bool = _trust_code()
    threads: int | None = _threads()


@dataclass(frozen=True)
class PublishSettings:
    """``spatialmix publish RUN_DIR``: a finished study folder into the repository's results/."""

    run_dir: str = option(
        "",
        "the folder `spatialmix reproduce --out` wrote (its studies finished)",
        positional=True,
        metavar="RUN_DIR",
    )
    results: str = option("results", "the published results' folder (results/PRESET/CPU_TAG/ is written)")
    tag: str | None = option(
        None, "name of the folder below results/PRESET/ (default: the CPU the studies ran on)"
    )
    note: str | None = option(None, "a line shown with the stamp (e.g. what makes the run a placeholder)")


@dataclass(frozen=True)
class RenderDocsSettings:
    """``spatialmix render-docs``: the published tables of README.md and docs/*.md, from results/."""

    root: str = option(".", "the repository's root (README.md, docs/)")
    results: str | None = option(None, "the published results' folder (default: ROOT/results)")
    check: bool = option(
        False, "write nothing; exit 1 when a table differs from what the stored results render"
    )

"""What every study of the paper shares: the presets, the context a study runs in, its training jobs.

A study is a function ``(StudyContext) -> StudyResult`` (the table of them is
`spatialmix.studies.reproduce.STUDIES`); `PRESETS` is the one table of presets.

Every run of a study lives in its own run directory below the study folder; a finished run is
read back instead of retrained and an interrupted one is resumed, so ``reproduce`` can be
killed and started again at any point without losing work. Independent trainings run side by
side (`train_all`, one process per core with one thread each).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from spatialmix.engine.classification import ClassificationTask
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.parallel import run_side_by_side
from spatialmix.engine.resume import prepare_run_dir
from spatialmix.engine.train import fit
from spatialmix.io import runs
from spatialmix.names import MODES
from spatialmix.ui.display import say


@dataclass
class Preset:
    """A named set of study settings: the base training config plus what each study sweeps."""

    name: str
    description: str
    base: TrainConfig
    seeds: tuple[int, ...] = (0,)
    modes: tuple[str, ...] = MODES
    options: dict = field(default_factory=dict)  # per-study settings, keyed by study name
    # How many of `seeds` a study, a mode or a model family of the classification study uses when no
    # seeds are given (e.g. {"space": 3}): the claims need different numbers of seeds, and seeds are
    # the whole cost.
    seed_counts: dict[str, int] = field(default_factory=dict)
    # Studies `reproduce` runs only when `--studies` names them (those that decide nothing at this scale).
    on_request: frozenset[str] = frozenset({"init"})


# 500 fixed images at the standard strength (AttackSettings' defaults: APGD-CE-10 + APGD-T-10 on one
# target on the examples still standing, then 30-step APGD-CE + APGD-T on 4 targets for the 50 nearest
# the decision boundary; within 1 point of 100-step AutoAttack at every budget on these models,
# benchmarks/attack_standard.py, boundary_targets.py); the 100-step reference on the 25 survivors
# nearest the boundary after those, the masking checks on the first 25. 1/255 left out: at the quick
# models' robustness it costs a third of the time and decides nothing 2/255 does not.
ATTACK_OPTIONS = {
    "eps": (0.0, 2 / 255, 4 / 255, 8 / 255),
    "n_examples": 500,
    "strength": "standard",
    "reference_examples": 25,
    "reference_targets": 1,
    "square_queries": 300,
}

QUICK = Preset(
    "quick",
    "Fashion-MNIST, ConvMixer-64/4 (kernel 5, patch 2) and the separable ResNet-32/1 (stem stride 2), "
    "45,000 images x 1 epoch without augmentation; Full and Chans 4 seeds, Space 3; un-shuffling 3 "
    "seeds: about 10 minutes on 2 CPU cores",
    # Patch 2 leaves 14 x 14 tokens for the spatial mixers to work on (patch 4's 7 x 7 leaves little).
    # Measured (Full, seed 0, one epoch, lr 0.04 at batch 64): flip augmentation costs a single epoch
    # 2.5 points (0.846 with it, 0.872 without on 30,000 images); without it, 45,000 images reach
    # 0.883 and 0.885 (seeds 0, 1), all 60,000 0.889. Label smoothing 0, batch 32 / lr 0.02, lr 0.06
    # and kernel 7 did no better on 30,000. 45,000 keeps the study within about 10 minutes.
    TrainConfig(
        dataset="fashion-mnist",
        model="convmixer",
        width=64,
        depth=4,
        kernel_size=5,
        patch_size=2,
        epochs=1,
        batch_size=64,
        lr=0.04,
        weight_decay=0.01,
        train_subset=45000,
        augment="none",
    ),
    # Seeds by what each claim needs (benchmarks/seed_variance.py): Space is 1.8 (ConvMixer) and 3.8
    # (ResNet) points behind Full, so 3 seeds decide 1b. The ResNet's Chans - Full was -0.20, +0.41,
    # +0.52 points on seeds 0-2 (SD 0.39, 1.24 points from the 1a margin): 4 seeds detect 0.84 points
    # at 80% power, 3 only 1.23. ConvMixer's Chans - Full sits 0.4-0.6 points from the margin with
    # the test set's share added, which takes 8-10 seeds: 6 seeds left it open and cost 100 s of
    # `make reproduce` (680 s with them on an idle 2-core Xeon), so the quick preset trains 4 and the
    # standard preset's 24 decide it.
    seeds=(0, 1, 2, 3),
    seed_counts={"space": 3, "robustness": 3, "smoothing": 3, "unshuffle": 3, "init": 3},
    # Claim 2 is the standard preset's: 3 seeds of one epoch decide no claim-2 line (below), and its
    # attacks would take `make reproduce` past 10 minutes on 2 cores. `--studies ...,robustness,smoothing`
    # still runs them at this scale.
    on_request=frozenset({"init", "robustness", "smoothing"}),
    options={
        # Claim 1 on a classical family too: the separable ResNet of He et al.'s small-image layout
        # (stem stride 2: 14 x 14 like ConvMixer's patch 2; stages of 32, 64, 128 channels, one block
        # each). Measured (seed 0, one thread, CPU seconds of a whole run beside other work on a
        # 2-core Xeon): Full / Chans / Space cost 41 / 55 / 29 s at 0.885 / 0.883 / 0.847 test
        # accuracy, against ConvMixer-64/4's 72 / 66 / 59 s at 0.881 / 0.879 / 0.857 (Chans's 55 s were
        # oneDNN's bf16 gradient of its frozen stride-2 depthwise convs, now computed in fp32:
        # `spatialmix.accel.speed`). Width 16 at stride 1 cost 57 s for 0.875, two blocks per stage
        # 66 s for 0.886 (Full).
        "classification": {
            "families": {
                "resnet": {"model": "resnet-sep", "width": 32, "depth": 1, "patch_size": 2},
            }
        },
        # Claim 2 at 2/255 only: at one epoch ConvMixer's Chans - Full robust accuracy spreads 2.1 / 5.4
        # / 9.7 points from seed to seed at 2 / 4 / 8 of 255 (the ResNet's was -1.8, -0.2, +0.2 points
        # at 2/255 on seeds 0-2). 2/255, the budget with the least spread, costs 44% of the four
        # budgets' attack time (45 of 102 CPU s on a Full ConvMixer, 21 of 52 on a Full ResNet, one
        # thread). The standard preset attacks there too, on 24 seeds.
        "robustness": {**ATTACK_OPTIONS, "eps": (0.0, 2 / 255)},
        # Two sigmas: the slope is the paired difference of sigma 2 and the classification study's
        # Chans runs (sigma 0, reused); a third sigma cost two minutes and decided nothing more.
        "smoothing": {"sigmas": (0.0, 2.0)},
        # Full-resolution un-shuffling costs ~15x the classifier per image: a small share, without
        # the kernel-1 reference (the verdicts use the scrambled-input floor; the `hour` preset of
        # `spatialmix unshuffle` answers claim 3 properly).
        # Full and Chans only: claims 3a and 3b compare those two (Space's share, 36 of the study's
        # 108 s, would take `make reproduce` past 10 minutes; the standard preset trains all three).
        "unshuffle": {"train_subset": 2000, "epochs": 2, "references": False, "modes": ("full", "chans")},
    },
)

# Claims 1a and 2 at the scale that bounds them (benchmarks/seed_variance.py, docs/claims.md "How many
# seeds a claim needs"; one thread of a 2-core Intel Xeon). Per seed, Chans - Full robust accuracy at
# 2/255 spreads about as much after one epoch as after three (SD 0.9-2.1 points against 1.1-1.9),
# the 500 attacked images add less after one (test-set standard error 0.18 points against 0.43), and
# a seed costs half as much: so the quick preset's one-epoch ConvMixer is the cheapest recipe for an
# interval of +-1 point at 2/255. 24 seeds give that at a seed SD of up to 2.1 points (t with 23
# degrees of freedom, the test set's share added), and decide 1a on the same runs. At 4/255 and
# 8/255 the seeds spread 2.6-5.7 points around differences near 0: +-1 point there needs about
# 100-200 seeds at either length, so those budgets are not attacked. Three epochs' 8 seeds
# (results/standard/ as published at commit e83fb49) decided nothing at 2/4/8 of 255 in 50 minutes.
# Space is trained for 1b but not attacked (no claim compares its robustness); the ResNet family
# and claim 3 are the quick preset's.
STANDARD = replace(
    QUICK,
    name="standard",
    description="the quick preset's ConvMixer (one epoch): Full and Chans on 24 seeds, attacked at 2/255, "
    "Space on 3, Chans smoothed at sigma 0, 1 and 2 on 6 seeds: about 50 minutes on 2 CPU cores",
    seeds=tuple(range(48)),
    seed_counts={
        "classification": 24,
        "robustness": 24,
        "smoothing": 6,
        "space": 3,
        "unshuffle": 3,
        "init": 3,
    },
    on_request=frozenset({"init", "unshuffle"}),
    options={
        **QUICK.options,
        "classification": {"families": {}},
        "robustness": {**QUICK.options["robustness"], "modes": ("full", "chans")},
        # three sigmas: a slope through two points cannot show that it bends
        "smoothing": {"sigmas": (0.0, 1.0, 2.0)},
        "unshuffle": {**QUICK.options["unshuffle"], "modes": ("full", "chans", "space")},
    },
)

PRESETS: dict[str, Preset] = {
    "quick": QUICK,
    "standard": STANDARD,
    "paper": Preset(
        "paper",
        "CIFAR-10, ConvMixer-256/8 (kernel 5, patch 2), the ConvMixer CIFAR recipe, 100 epochs (GPU)",
        TrainConfig(
            dataset="cifar10", model="convmixer-256/8", epochs=100, batch_size=512, lr=0.01, weight_decay=0.01
        ),
        seeds=(0, 1, 2),
        # A GPU affords the full evaluation: 1,000 images, 3 targets, the boundary stage on the 100
        # nearest the boundary (the standard strength's share of the examples), the reference on every
        # survivor after it.
        options={
            "robustness": {
                "n_examples": 1000,
                "batch_size": 1000,
                "targets": 3,
                "strength": "standard",
                "boundary_examples": 100,
                "reference_examples": None,
                "reference_targets": 9,
                "square_queries": 5000,
            }
        },
    ),
}
"""The study presets by name (`quick`, `standard`, `paper`, ...): the data, model and training
recipe, the seeds and the attack settings a `reproduce` run uses."""


@dataclass
class StudyContext:
    preset: Preset
    out_dir: Path
    seeds: tuple[int, ...]
    overrides: dict
    results: dict = field(default_factory=dict)  # name -> StudyResult of the studies already run
    processes: int = 1  # independent jobs run side by side in this many processes
    threads: int | None = None  # torch threads of each (None: torch's default)
    sequential: dict | None = None  # --until-decided: each study's look and level (results.json keeps it)
    seeds_given: bool = False  # the seeds were given: every study and mode uses all of them

    def config(self, **changes) -> TrainConfig:
        return self.preset.base.replace(**{**self.overrides, **changes})

    def seeds_for(self, *keys: str) -> tuple[int, ...]:
        """The seeds of a study or a mode (``keys``: study and mode names): all of ``seeds``, or when
        the preset's own seeds are used, the first ``preset.seed_counts[key]`` of them (the fewest of
        the keys)."""
        counts = [self.preset.seed_counts[k] for k in keys if k in self.preset.seed_counts]
        return self.seeds if self.seeds_given or not counts else self.seeds[: min(counts)]


def check_job(config: TrainConfig, run_dir: Path) -> None:
    """Raise now what `train_or_reuse` would refuse for this job (a run in ``run_dir`` made
    with another config, finished or not), so a study refuses before it trains anything."""
    if runs.Run(run_dir).finished_summary(config) is None:
        prepare_run_dir(Path(run_dir), config, resume=True, task=ClassificationTask())


def train_or_reuse(config: TrainConfig, run_dir: Path) -> dict:
    """Train ``config`` in ``run_dir``: reuse it when it finished with this config, resume it when
    interrupted; a run that finished with another config is an error (see `runs.Run.finished_summary`).
    The run folder stays locked from the check to the end of training."""
    summary = runs.Run(run_dir).finished_summary(config)
    if summary is not None:  # a finished run is only read: no lock, nothing in its folder changes
        return summary
    with runs.locked(run_dir) as run:
        summary = run.finished_summary(config)
        if summary is not None:
            return summary
        return fit(config, run.path, resume=True)


def classification_run_dir(out_dir: Path, mode: str, seed: int, prefix: str = "") -> Path:
    """The run folder of the classification study's `mode` run of `seed`: the preset's own model's
    (reused by the robustness, smoothing and init studies), or with `prefix` another family's (see
    `spatialmix.studies.classification.model_families`)."""
    return Path(out_dir) / "classification" / f"{prefix}{mode}-seed{seed}"


def _run_description(config: TrainConfig) -> str:
    sigma = f" σ={config.smooth_sigma:g}" if config.smooth_sigma else ""
    init = f" {config.spatial_init} init" if config.spatial_init not in (None, "default") else ""
    return f"{config.mode}{sigma}{init} seed {config.seed}"


def train_all(ctx: StudyContext, study: str, jobs: list[tuple[TrainConfig, Path]]) -> list[dict]:
    """Train (or reuse, or resume) every ``(config, run_dir)`` job; return their summaries in order.

    The jobs run side by side in ``ctx.processes`` processes with ``ctx.threads`` threads each;
    with more than one process the progress bars give way to one line per finished run.
    """
    for config, run_dir in jobs:  # every refusal before the first job starts: nothing half done
        check_job(config, run_dir)
    side_by_side = ctx.processes > 1 and len(jobs) > 1
    work = []
    for config, run_dir in jobs:
        config = config.replace(threads=ctx.threads, progress=config.progress and not side_by_side)
        work.append((train_or_reuse, (config, Path(run_dir))))
        if not side_by_side:
            say(f"[bold]{study}[/]: {_run_description(config)} -> {run_dir}")

    def done(i: int, summary: dict) -> None:
        if side_by_side:
            config, run_dir = jobs[i]
            score = summary.get("test_acc", summary.get("test_psnr"))
            say(
                f"[bold]{study}[/] {i + 1}/{len(jobs)}: {_run_description(config)} -> {run_dir}: "
                f"test {score:.4f}, {summary.get('train_time', 0):.0f} s"
            )

    if not side_by_side:  # here, keeping torch's default threads unless ctx.threads says otherwise
        return [fn(*args) for fn, args in work]
    return run_side_by_side(work, processes=ctx.processes, threads=ctx.threads or 1, on_done=done)

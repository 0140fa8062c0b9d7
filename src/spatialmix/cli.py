"""The ``spatialmix`` command line: parses arguments, calls the library, prints.

Every command is a function of the library (``spatialmix.train.train``,
``spatialmix.study.reproduce``, ...); nothing here computes anything. Bad input raises
:class:`~spatialmix.errors.SpatialmixError`, printed as one line with exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from .errors import SpatialmixError

CONFIG_HELP = {
    "dataset": "fashion-mnist, mnist, cifar10, cifar100, imagefolder (an ImageNet-layout folder: --data-dir)",
    "data_dir": "folder holding the data set files (default: $SPATIALMIX_DATA, the OS package, download)",
    "download": "allow torchvision to download a data set that is not on this machine",
    "train_subset": "train on a fixed seeded subset of this many images",
    "test_subset": "evaluate on a fixed seeded subset of this many images",
    "augment": "none, flip, crop, crop-flip (default: the data set's usual one)",
    "model": "a name from `spatialmix models`, or timm:NAME / torchvision:NAME",
    "mode": "full (learn everything), chans (freeze spatial mixers), space (freeze channel mixers)",
    "spatial_init": "random init of the spatial mixers: default (PyTorch's), gaussian, uniform, covariance "
                    "(Trockman et al. 2023, closed form), covariance-from (a trained run's filters, see --init-from)",
    "channel_init": "random init of the pointwise filters: default, gaussian, uniform",
    "init_from": "with --spatial-init covariance-from: the trained Full run whose per-layer filter covariance is the prior",
    "spatial_pattern": "comma-separated globs of layer names to treat as spatial mixers (e.g. 'blocks.*.mlp_tokens')",
    "channel_pattern": "comma-separated globs of layer names to treat as channel mixers",
    "token_hidden": "mlpmixer: hidden size of the token-mixing MLPs (default: width / 2)",
    "channel_hidden": "mlpmixer: hidden size of the channel-mixing MLPs (default: 4 x width)",
    "init_std": "std of the gaussian init / half-width of the uniform init",
    "smooth_sigma": "Gaussian-smooth the random spatial filters with this sigma in pixels (0: off)",
    "init_seed": "seed of the random filters (default: --seed)",
    "amp": "mixed precision: auto (bf16 where native), bf16, none",
    "device": "auto, cpu, cuda",
    "sync_bn": "SyncBatchNorm across processes under torchrun",
    "image_size": "imagefolder: crop size in pixels (default: the first training image's smaller side, at most 224)",
    "workers": "imagefolder: DataLoader processes decoding images (default: the CPU cores available)",
    "threads": "torch threads of this process (default: torch's own, one per physical core; use 1 on a busy machine)",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) with exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)   # `--mode` must never be read as `--model`
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _field_type(field: dataclasses.Field):
    hint = typing.get_type_hints(_config_cls())[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _config_cls():
    from .config import TrainConfig

    return TrainConfig


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per field of TrainConfig (so the CLI and the library never drift apart)."""
    defaults = _config_cls()()
    for field in dataclasses.fields(_config_cls()):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _field_type(field)
        default = getattr(defaults, field.name)
        help_text = CONFIG_HELP.get(field.name, "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {default})")
        else:
            parser.add_argument(flag, type=kind, default=None, metavar=field.name.upper(),
                                help=f"{help_text} (default: {default})")


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads must be a whole number of at least 1, got {text!r}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_threads, default=None, help=CONFIG_HELP["threads"])


def config_overrides(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(_config_cls())
            if f.name not in skip and getattr(args, f.name, None) is not None}


# --------------------------------------------------------------------------- commands

def cmd_train(args) -> None:
    from .distributed import is_main
    from .train import TrainConfig, resume_config, train

    if args.out == "":
        raise SpatialmixError("--out is an empty string; pass a folder name such as runs/my-run")
    overrides = config_overrides(args)
    config = TrainConfig(**overrides)
    out = Path(args.out or f"runs/{config.dataset}-{config.model.replace('/', '-').replace(':', '-')}-"
                          f"{config.mode}-seed{config.seed}")
    if args.resume:   # the run's saved config, with the options given again (only those that may change)
        config = resume_config(out, overrides)
    summary = train(config, out, resume=args.resume)
    if not is_main():   # under torchrun: one line, from rank 0
        return
    print(f"run saved in {out}: test acc {summary['test_acc']:.4f} (best {summary['best_acc']:.4f}), "
          f"{summary['trainable_params']:,} trainable / {summary['frozen_params']:,} frozen params, "
          f"{summary['images_per_s']:.0f} img/s")


REPRODUCE_SKIP = ("mode", "seed", "threads")   # set per run by the studies


def cmd_reproduce(args) -> None:
    from .study import reproduce

    seeds = tuple(args.seeds) if args.seeds else None
    studies = args.studies.split(",") if args.studies else None
    reproduce(args.preset, args.out, seeds=seeds, studies=studies, processes=args.processes, threads=args.threads,
              **config_overrides(args, skip=REPRODUCE_SKIP))
    print(f"results saved in {args.out}/results.json and {args.out}/results.md")


def cmd_models(args) -> None:
    from .mixing import summarize
    from .models import MODEL_REGISTRY, create_model, list_models

    if not args.name:
        for name in list_models():
            info = MODEL_REGISTRY.get(name)
            print(f"{name:<22} {info.description if info else 'any model of that library, by name'}")
        return
    model = create_model(args.name, in_chans=args.in_chans, num_classes=args.num_classes,
                         image_size=args.image_size, patch_size=args.patch_size)
    print(f"{args.name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    from .mixing import LayerSelector, spatial_mixer_counts

    selector = LayerSelector.of(args.spatial_pattern, args.channel_pattern)
    summary = summarize(model, selector)
    print(summary)
    print(mixer_counts_line(summary, spatial_mixer_counts(model, selector)))


def mixer_counts_line(summary, spatial_counts: dict | None = None) -> str:
    """How many mixers of each kind a model has, and which modes it can train in."""
    from .mixing import CHANNEL, MODES, SPATIAL, frozen_kind

    layers = {row["kind"]: row["layers"] for row in summary.rows}
    missing = [m for m in MODES if frozen_kind(m) is not None and not layers.get(frozen_kind(m))]
    modes = ", ".join(m for m in MODES if m not in missing)
    why = "".join(f"; {m} needs {'depthwise' if frozen_kind(m) == SPATIAL else '1 x 1'} convolutions to freeze"
                  for m in missing)
    counts = spatial_counts or {}
    parts = [f"{n} {what}" for what, n in counts.items() if n and what != "depthwise convolutions"]
    spatial_what = ("depthwise convolutions" if not parts else
                    ", ".join(([f"{counts['depthwise convolutions']} depthwise convolutions"]
                               if counts.get("depthwise convolutions") else []) + parts))
    return (f"{layers.get(SPATIAL, 0)} spatial mixers ({spatial_what}), {layers.get(CHANNEL, 0)} channel "
            f"mixers (1 x 1 convolutions and linear layers); modes: {modes}{why}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="spatialmix", description="Which parts of a vision network need to be learned?")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    p = sub.add_parser("train", help="train one configuration")
    add_config_arguments(p)
    p.add_argument("--out", help="run directory (default: runs/DATASET-MODEL-MODE-seedS)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its saved config from its newest complete checkpoint (or "
                        "start it if nothing was saved); options given with it must match, except --epochs (to "
                        "extend), --device, --progress, --workers, and --lr/--amp after a divergence")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="run the paper's studies (default: the quick Fashion-MNIST preset)")
    p.add_argument("--preset", default="quick", help="quick (Fashion-MNIST, CPU minutes) or paper (CIFAR-10, GPU)")
    p.add_argument("--out", default="runs/reproduce", help="study folder (default: runs/reproduce)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to repeat each run with (mean and std)")
    p.add_argument("--studies", help="comma-separated subset of the studies to run")
    p.add_argument("--processes", type=int, help="independent trainings and attack evaluations run side by side in "
                                                 "this many processes (default: one per available core)")
    p.add_argument("--threads", type=int, help="torch threads of each process (default: 1 when side by side)")
    add_config_arguments(p, skip=REPRODUCE_SKIP)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("models", help="list model names, or show a model's spatial and channel mixers")
    p.add_argument("name", nargs="?", help="a model name (also timm:NAME, torchvision:NAME)")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--spatial-pattern", default=None, help=CONFIG_HELP["spatial_pattern"])
    p.add_argument("--channel-pattern", default=None, help=CONFIG_HELP["channel_pattern"])
    p.add_argument("--patch-size", type=int, default=None,
                   help="patch size / stem stride (timm models that take one, and convmixer)")
    p.set_defaults(func=cmd_models)

    add_attack_command(sub)
    add_unshuffle_command(sub)
    add_report_command(sub)
    add_sweep_command(sub)
    return parser


# --------------------------------------------------------------------------- attack (robustness study)

def add_attack_command(sub) -> None:
    """`spatialmix attack RUN_DIR ...`: robust accuracy of saved runs."""
    from .attack_settings import ATTACKS, AttackSettings

    d = AttackSettings()
    p = sub.add_parser("attack", help="clean and robust accuracy of saved runs (APGD-CE, APGD-T; PGD, FGSM), "
                                      "checked against a strong reference and for gradient masking")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (spatialmix train / reproduce)")
    p.add_argument("--eps", default="0,1/255,2/255,4/255,8/255",
                   help="comma-separated budgets in [0, 1], fractions allowed (default: 0,1/255,2/255,4/255,8/255)")
    p.add_argument("--norm", default=d.norm, help="Linf or L2 (default: Linf)")
    p.add_argument("--attacks", default=",".join(d.attacks),
                   help=f"comma-separated white-box attacks run at every budget on the examples still standing: "
                        f"{', '.join(ATTACKS)} (default: {','.join(d.attacks)})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"steps of each iterative attack (default: {d.steps})")
    p.add_argument("--targets", type=int, default=d.targets,
                   help=f"APGD-T's target classes, the ones the model ranks next (default: {d.targets})")
    p.add_argument("--restarts", type=int, default=d.restarts, help=f"random restarts (default: {d.restarts})")
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="start each budget's attacks at random points, not at the previous budget's best ones")
    p.add_argument("--n-examples", default=str(d.n_examples), metavar="N",
                   help=f"a fixed seeded subset of the test set, or 'all' (default: {d.n_examples})")
    p.add_argument("--reference-examples", default=str(d.reference_examples), metavar="N",
                   help=f"the strong reference and the masking checks run on the first N examples; 'all', or 0 "
                        f"for none (default: {d.reference_examples})")
    p.add_argument("--reference-steps", type=int, default=d.reference_steps,
                   help=f"steps of the reference's APGD-CE and APGD-T (default: {d.reference_steps})")
    p.add_argument("--reference-targets", type=int, default=d.reference_targets,
                   help=f"the reference's APGD-T target classes (default: {d.reference_targets})")
    p.add_argument("--square-queries", type=int, default=d.square_queries, metavar="Q",
                   help=f"queries of the black-box Square check (default: {d.square_queries})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the subset and the attacks (default: 0)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"examples attacked at once (default: {d.batch_size})")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda (default: auto)")
    p.add_argument("--data-dir", default=None, help="folder holding the test set (default: $SPATIALMIX_DATA, the OS "
                                                    "package, the download cache; never the run's own config)")
    p.add_argument("--out-name", default="robustness",
                   help="results go to RUN_DIR/OUT_NAME.json and the plot to OUT_NAME.png (default: robustness)")
    p.add_argument("--plot", default="auto", metavar="PATH",
                   help="where to draw robust accuracy vs eps (default: OUT_NAME.png in the run directory, or in "
                        "the runs' common parent folder); 'none' to skip")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_threads_argument(p)
    p.set_defaults(func=cmd_attack)


def cmd_attack(args) -> None:
    from .attacks import AttackSettings, attack_runs, parse_eps_list, robustness_table
    from .reporting import console

    n_examples = None if args.n_examples.lower() == "all" else _parse_int("--n-examples", args.n_examples)
    reference = None if args.reference_examples.lower() == "all" else _parse_int("--reference-examples",
                                                                                 args.reference_examples)
    settings = AttackSettings(eps=parse_eps_list(args.eps), norm=args.norm, attacks=args.attacks, steps=args.steps,
                              targets=args.targets, restarts=args.restarts, warm_start=args.warm_start,
                              n_examples=n_examples, reference_examples=reference,
                              reference_steps=args.reference_steps, reference_targets=args.reference_targets,
                              square_queries=args.square_queries, seed=args.seed, batch_size=args.batch_size,
                              device=args.device).validate()
    plot = None if args.plot.lower() == "none" else args.plot
    results = attack_runs(args.run_dirs, settings, out_name=args.out_name, plot=plot, progress=args.progress,
                          data_dir=args.data_dir)
    robustness_table(results).print()
    for result in results:
        for warning in result["warnings"]:
            console.print(f"[yellow]warning[/] ({result['label']}): {warning}", highlight=False)
    saved = ", ".join(str(Path(r["run"]) / f"{args.out_name}.json") for r in results)
    print(f"results saved in {saved}" + (f"; plot in {results[0]['plot']}" if plot else ""))


def _parse_int(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SpatialmixError(f"{flag} must be a whole number or 'all', got {text!r}") from None


# --------------------------------------------------------------------------- unshuffle (pixel un-shuffling)

def add_unshuffle_command(sub) -> None:
    """`spatialmix unshuffle`: reconstruct pixel-shuffled images in Full / Chans / Space."""
    p = sub.add_parser("unshuffle", help="learn to un-shuffle pixel-scrambled images in Full / Chans / Space, "
                                         "with the scrambled input and a kernel-1 model as references")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, mnist, cifar10, cifar100 "
                                                               "(default: fashion-mnist)")
    p.add_argument("--preset", default="small", help="small (UnshuffleNet-32/8, kernel 7, CPU minutes), hour "
                                                     "(UnshuffleNet-64/8, about an hour on 2 CPU cores) or large "
                                                     "(UnshuffleNet-512/16, kernel 7, as in the paper; GPU)")
    p.add_argument("--modes", default="full,chans,space", help="comma-separated modes (default: full,chans,space)")
    p.add_argument("--window", type=int, default=None, metavar="PIXELS",
                   help="permute only within PIXELS x PIXELS tiles (must divide the image; default: whole image)")
    p.add_argument("--loss", default="mse", help="mse or l1 (default: mse)")
    p.add_argument("--perm-seed", type=int, default=0, help="seed of the pixel permutation (default: 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    preset_default = "(default: the preset's)"
    for flag, kind, what in (("--epochs", int, f"epochs {preset_default}"),
                             ("--train-subset", int, f"training images {preset_default}"),
                             ("--test-subset", int, f"test images {preset_default}"),
                             ("--batch-size", int, f"batch size {preset_default}"),
                             ("--lr", float, f"peak learning rate {preset_default}"),
                             ("--width", int, f"channels {preset_default}"),
                             ("--depth", int, f"blocks {preset_default}"),
                             ("--kernel-size", int, f"depthwise kernel size {preset_default}"),
                             ("--amp", str, CONFIG_HELP["amp"] + " (default: auto)"),
                             ("--device", str, CONFIG_HELP["device"] + " (default: auto)"),
                             ("--data-dir", str, CONFIG_HELP["data_dir"])):
        p.add_argument(flag, type=kind, default=None, help=what)
    p.add_argument("--no-references", dest="references", action="store_false",
                   help="skip the kernel-1 reference model (the scrambled-input floor is always shown)")
    p.add_argument("--figure-images", type=int, default=8, help="test images in the figure (default: 8)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--out", default="runs/unshuffle", help="study folder (default: runs/unshuffle)")
    p.add_argument("--processes", type=int, default=1,
                   help="trainings run side by side in this many processes (default: 1)")
    add_threads_argument(p)
    p.set_defaults(func=cmd_unshuffle)


UNSHUFFLE_SETTINGS = ("dataset", "epochs", "train_subset", "test_subset", "batch_size", "lr", "width", "depth",
                      "kernel_size", "amp", "device", "data_dir")


def cmd_unshuffle(args) -> None:
    from .unshuffle import FIGURE_FILE, TABLE_FILES, unshuffle_study

    overrides = {k: getattr(args, k) for k in UNSHUFFLE_SETTINGS if getattr(args, k) is not None}
    table = unshuffle_study(args.out, preset=args.preset, modes=[m for m in args.modes.split(",") if m],
                            window=args.window, loss=args.loss, perm_seed=args.perm_seed, seeds=tuple(args.seeds),
                            references=args.references, figure_images=args.figure_images,
                            progress=args.progress, processes=args.processes, threads=args.threads,
                            **overrides)
    table.print()
    out = Path(args.out)
    print(f"table saved in {out / TABLE_FILES[0]} (also .csv, .json), figure in {out / FIGURE_FILE}")


# --------------------------------------------------------------------------- report (filter analysis)

def add_report_command(sub) -> None:
    """`spatialmix report RUN_OR_STUDY_DIR ... -o report.html`."""
    p = sub.add_parser("report", help="one self-contained HTML page (and Markdown tables) of runs and studies")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_STUDY_DIR",
                   help="run directories (spatialmix train) and study folders (spatialmix reproduce)")
    p.add_argument("-o", "--out", default="report.html",
                   help="the HTML file to write; the Markdown tables go beside it as .md (default: report.html)")
    p.add_argument("--fft-size", type=int, default=32,
                   help="zero-pad each spatial filter to this size before its DFT (default: 32)")
    add_threads_argument(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> None:
    from .report import write_report

    files = write_report(args.paths, args.out, fft_size=args.fft_size)
    for table in files.verdicts:   # the answer first, as on the page
        table.print()
    absent = f"; left out (no results): {', '.join(files.absent)}" if files.absent else ""
    print(f"report written to {files.html} (tables in {files.markdown}); sections: {', '.join(files.present)}"
          f"{absent}")


# --------------------------------------------------------------------------- sweep (scale out)

def add_sweep_command(sub) -> None:
    """`spatialmix sweep GRID.yaml`: independent jobs, locally or on Slurm."""
    p = sub.add_parser(
        "sweep", help="many configurations as independent jobs (a grid file or a study), here or on Slurm",
        description="Run every configuration of a grid file (YAML: `preset:`, `base:` fields, `grid:` field -> list "
                    "of values) or of a study preset's classification runs as independent jobs, then gather the "
                    "result tables. Started again, a sweep skips the configurations that finished.")
    p.add_argument("grid", nargs="?", metavar="GRID.yaml", help="grid file (or use --preset)")
    p.add_argument("--preset", help="sweep the classification runs of this study preset (quick, paper) instead")
    p.add_argument("--seeds", type=int, nargs="+", help="with --preset: the seeds (default: the preset's)")
    p.add_argument("--out", help="sweep folder (default: runs/sweep-GRID, or runs/reproduce with --preset)")
    p.add_argument("--executor", default="local", choices=("local", "submitit-local", "slurm"),
                   help="local: here, one after another (default); submitit-local: a process per job on this "
                        "machine; slurm: a Slurm job per configuration")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per job (slurm; one DDP process per GPU)")
    p.add_argument("--nodes", type=int, default=1, help="nodes per job (slurm)")
    p.add_argument("--time", default="60", help="time limit per job: minutes or H:M:S (default: 60)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--cpus", type=int, help="CPUs per process of a job")
    p.add_argument("--mem-gb", type=float, help="memory per node of a job, in GB")
    p.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. account=abc or qos=high (repeatable)")
    p.add_argument("--max-running", type=int, help="submit at most this many jobs at a time (default: all)")
    p.add_argument("--dry-run", action="store_true", help="list the configurations and their state; run nothing")
    add_config_arguments(p, skip=("mode", "seed"))   # (--threads among them: each job's threads)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> None:
    from .distributed import is_main
    from .sweep import (JobResources, grid_sweep, job_states, load_grid_file, parse_time, run_sweep,
                        study_sweep)

    overrides = config_overrides(args, skip=("mode", "seed"))
    if (args.grid is None) == (args.preset is None):
        raise SpatialmixError("give either a grid file or --preset (a study's runs), not both or neither")
    if args.grid is not None:
        if args.seeds:
            raise SpatialmixError("--seeds is for --preset sweeps; put `seed: [...]` in the grid file")
        sweep = grid_sweep(load_grid_file(args.grid), args.out or f"runs/sweep-{Path(args.grid).stem}", **overrides)
    else:
        sweep = study_sweep(args.preset, args.out or "runs/reproduce", seeds=tuple(args.seeds or ()) or None,
                            **overrides)
    if args.dry_run:
        for job, state in job_states(sweep):
            print(f"{state:<9} {job.name:<40} {job.run_dir}")
        return
    options = {}
    for item in args.slurm_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpatialmixError(f"--slurm-option {item!r} is not KEY=VALUE (e.g. account=abc)")
        options[key.strip().lstrip("-").replace("-", "_")] = value
    for name in ("gpus", "cpus"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise SpatialmixError(f"--{name} must be 0 or more, got {getattr(args, name)}")
    if args.nodes < 1:
        raise SpatialmixError(f"--nodes must be 1 or more, got {args.nodes}")
    resources = JobResources(gpus=args.gpus, nodes=args.nodes, time_min=parse_time(args.time),
                             partition=args.partition, cpus=args.cpus, mem_gb=args.mem_gb, slurm_options=options)
    try:
        outcome = run_sweep(sweep, args.executor, resources, max_running=args.max_running)
    except KeyboardInterrupt:
        print("spatialmix: sweep interrupted; run the same command again to continue", file=sys.stderr)
        raise SystemExit(130) from None
    if is_main():
        print(f"sweep {sweep.out_dir}: {len(outcome.skipped)} configuration(s) finished before, "
              f"{len(outcome.ran)} now"
              + (f"; results in {sweep.out_dir}/results.md" if outcome.tables else ""))
    if outcome.failed:
        names = ", ".join(outcome.failed)
        raise SpatialmixError(f"{len(outcome.failed)} of {len(sweep.jobs)} configurations failed ({names}); the "
                              f"first: {next(iter(outcome.failed.values()))}; fix it and run the sweep again")


def _raise_terminated(signum, frame):
    from .errors import Terminated

    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from .errors import Terminated

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("train", "reproduce") and getattr(args, "threads", None):
        from .speed import set_threads   # (train and reproduce set threads per run)

        set_threads(args.threads)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a cluster's preemption) stops like Ctrl-C: files stay consistent, status.json says so.
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        args.func(args)
    except SpatialmixError as err:
        print(f"spatialmix: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        out = getattr(args, "out", None)
        how = f"`spatialmix train --resume --out {out}`" if args.command == "train" and out else "the same command"
        print(f"spatialmix: terminated (SIGTERM); every saved checkpoint is complete: continue with {how}",
              file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        how = (f"`spatialmix train --resume --out {out}`" if args.command == "train" and out
               else "the same command (finished runs are reused, interrupted ones continue)")
        print(f"spatialmix: interrupted; every saved checkpoint is complete: continue with {how}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())

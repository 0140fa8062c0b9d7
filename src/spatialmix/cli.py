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
    "dataset": "fashion-mnist, mnist, cifar10, cifar100",
    "data_dir": "folder holding the data set files (default: $SPATIALMIX_DATA, the OS package, download)",
    "download": "allow torchvision to download a data set that is not on this machine",
    "train_subset": "train on a fixed seeded subset of this many images",
    "test_subset": "evaluate on a fixed seeded subset of this many images",
    "augment": "none, flip, crop, crop-flip (default: the data set's usual one)",
    "model": "a name from `spatialmix models`, or timm:NAME / torchvision:NAME",
    "mode": "full (learn everything), chans (freeze spatial mixers), space (freeze channel mixers)",
    "spatial_init": "random init of the depthwise filters: default (PyTorch's), gaussian, uniform",
    "channel_init": "random init of the pointwise filters: default, gaussian, uniform",
    "init_std": "std of the gaussian init / half-width of the uniform init",
    "smooth_sigma": "Gaussian-smooth the random spatial filters with this sigma in pixels (0: off)",
    "init_seed": "seed of the random filters (default: --seed)",
    "amp": "mixed precision: auto (bf16 where native), bf16, none",
    "device": "auto, cpu, cuda",
    "sync_bn": "SyncBatchNorm across processes under torchrun",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) with exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _field_type(field: dataclasses.Field):
    hint = typing.get_type_hints(_config_cls())[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _config_cls():
    from .train import TrainConfig

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


def config_overrides(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(_config_cls())
            if f.name not in skip and getattr(args, f.name, None) is not None}


# --------------------------------------------------------------------------- commands

def cmd_train(args) -> None:
    from .train import TrainConfig, train

    config = TrainConfig(**config_overrides(args))
    out = Path(args.out or f"runs/{config.dataset}-{config.model.replace('/', '-').replace(':', '-')}-"
                          f"{config.mode}-seed{config.seed}")
    summary = train(config, out, resume=args.resume)
    print(f"run saved in {out}: test acc {summary['test_acc']:.4f} (best {summary['best_acc']:.4f}), "
          f"{summary['trainable_params']:,} trainable / {summary['frozen_params']:,} frozen params, "
          f"{summary['images_per_s']:.0f} img/s")


def cmd_reproduce(args) -> None:
    from .study import reproduce

    seeds = tuple(args.seeds) if args.seeds else None
    studies = args.studies.split(",") if args.studies else None
    reproduce(args.preset, args.out, seeds=seeds, studies=studies, **config_overrides(args, skip=("mode", "seed")))
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
                         image_size=args.image_size)
    print(f"{args.name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    print(summarize(model))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="spatialmix", description="Which parts of a vision network need to be learned?")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    p = sub.add_parser("train", help="train one configuration")
    add_config_arguments(p)
    p.add_argument("--out", help="run directory (default: runs/DATASET-MODEL-MODE-seedS)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="run the paper's studies (default: the quick Fashion-MNIST preset)")
    p.add_argument("--preset", default="quick", help="quick (Fashion-MNIST, CPU minutes) or paper (CIFAR-10, GPU)")
    p.add_argument("--out", default="runs/reproduce", help="study folder (default: runs/reproduce)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to repeat each run with (mean and std)")
    p.add_argument("--studies", help="comma-separated subset of the studies to run")
    add_config_arguments(p, skip=("mode", "seed"))
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("models", help="list model names, or show a model's spatial and channel mixers")
    p.add_argument("name", nargs="?", help="a model name (also timm:NAME, torchvision:NAME)")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.set_defaults(func=cmd_models)

    add_attack_command(sub)
    add_unshuffle_command(sub)
    add_report_command(sub)
    add_sweep_command(sub)
    return parser


# --------------------------------------------------------------------------- attack (robustness study)

def add_attack_command(sub) -> None:
    """`spatialmix attack RUN_DIR ...`: robust accuracy of saved runs."""


# --------------------------------------------------------------------------- unshuffle (pixel un-shuffling)

def add_unshuffle_command(sub) -> None:
    """`spatialmix unshuffle`: reconstruct pixel-shuffled images in Full / Chans / Space."""


# --------------------------------------------------------------------------- report (filter analysis)

def add_report_command(sub) -> None:
    """`spatialmix report RUN_OR_STUDY_DIR ... -o report.html`."""


# --------------------------------------------------------------------------- sweep (scale out)

def add_sweep_command(sub) -> None:
    """`spatialmix sweep GRID.yaml`: independent jobs, locally or on Slurm."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except SpatialmixError as err:
        print(f"spatialmix: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spatialmix: interrupted; the last checkpoint is kept, continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

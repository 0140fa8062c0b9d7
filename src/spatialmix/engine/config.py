"""What a training run depends on: `TrainConfig`, saved as ``config.json`` in its folder.

Imports nothing heavy (no torch), so the command line can build its options and answer ``--help``
at once; the names it validates against (data sets, models, modes) are looked up when a config
is validated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spatialmix.errors import SpatialmixError, check_positive, unknown_name
from spatialmix.io.limits import SIZE_LIMITS, SPEED_FIELDS, out_of_range
from spatialmix.names import AUGMENTATIONS, DATASETS, INITS, LIBRARY_PREFIXES, MODELS, MODES
from spatialmix.options import option

if TYPE_CHECKING:
    from spatialmix.core.inits import InitSpec

AMP_CHOICES = ("auto", "bf16", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
# Fields that may change between an interrupted run and its resumption (epochs: to extend a run).
RESUMABLE_FIELDS = frozenset(SPEED_FIELDS | {"epochs"})

# ... and, for a run that diverged (status "failed"), what its advice tells the user to change.
DIVERGED_RESUMABLE_FIELDS = frozenset({"lr", "amp"})
# torch's generators take seeds from 0 to 2**64 - 1 (a larger one was an OverflowError traceback).
SEED_LIMIT = 2**64
# More torch threads than any machine has cores: 100,000 crashed the process (MemoryError or a
# segmentation fault) instead of being refused. A constant, not this machine's core count, so a
# config.json valid on one machine stays valid on another.
MAX_THREADS = 1024


# The sizes of a model that override its named configuration's (None: the model's own).
MODEL_SHAPE_FIELDS = (
    "width",
    "depth",
    "kernel_size",
    "patch_size",
    "activation",
    "token_hidden",
    "channel_hidden",
)


def check_seed(flag: str, value) -> None:
    """Refuse a seed torch's generators cannot take (negative, 2**64 or more, not a whole number)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise SpatialmixError(f"{flag} must be a whole number from 0 to 2**64 - 1, got {value!r}")


def check_threads(flag: str, value) -> None:
    """Refuse a thread count below 1 or above `MAX_THREADS`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise SpatialmixError(
            f"{flag} must be a whole number from 1 to {MAX_THREADS}, got {value!r}; use at most the "
            f"cores of the machine ({os.cpu_count()} here)"
        )


# A model of your own is named by the function (or class) that builds it: ``mypkg.models:build``.
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
USER_REFERENCE = re.compile(rf"{_DOTTED}:{_DOTTED}")
# Sizes of the built-in models: a model of your own has its own, so these must stay unset for it.
BUILT_IN_SIZE_FIELDS = (
    "width",
    "depth",
    "kernel_size",
    "patch_size",
    "activation",
    "token_hidden",
    "channel_hidden",
)


# A built-in model named with its sizes: ``convmixer-256/8`` is the ConvMixer of width 256, depth 8.
SIZED_NAME = re.compile(r"(?P<family>[a-z][a-z0-9]*)-(?P<width>\d+)/(?P<depth>\d+)")
FAMILY_NAME = re.compile(r"[a-z][a-z0-9]*")


def is_user_reference(model: str) -> bool:
    """Whether a config's ``model`` names code of your own (``module:function``) rather than a built-in
    model or a timm / torchvision one."""
    return isinstance(model, str) and ":" in model and not model.startswith(LIBRARY_PREFIXES)


def check_reference(reference: str) -> str:
    """``reference`` if it is ``dotted.module:dotted.name`` (identifiers separated by dots, one colon)."""
    if not isinstance(reference, str) or not USER_REFERENCE.fullmatch(reference):
        raise SpatialmixError(
            f"--model {reference!r} is not a reference to a model factory; write it as "
            f"module:function, e.g. mypkg.models:build (identifiers separated by dots, one colon)"
        )
    return reference


@dataclass
class TrainConfig:
    """Everything a training run depends on. Saved as ``config.json`` in the run directory."""

    # The option groups of `spatialmix train --help`: title -> the field each starts at.
    HELP_GROUPS: typing.ClassVar[dict[str, str]] = {
        "data": "dataset",
        "model": "model",
        "mixing (what is frozen, how it is initialized)": "mode",
        "optimization": "seed",
        "speed and devices": "amp",
    }

    # data
    dataset: str = option(
        "fashion-mnist",
        "fashion-mnist, mnist, cifar10, cifar100, imagefolder (an ImageNet-layout folder: --data-dir)",
    )
    data_dir: str | None = option(
        None, "folder holding the data set files (default: $SPATIALMIX_DATA, the OS package, download)"
    )
    download: bool = option(True, "allow torchvision to download a data set that is not on this machine")
    train_subset: int | None = option(None, "train on a fixed seeded subset of this many images (quick runs)")
    test_subset: int | None = option(None, "evaluate on a fixed seeded subset of this many images")
    augment: str | None = option(None, "none, flip, crop, crop-flip (default: the data set's usual one)")
    # model
    model: str = option(
        "convmixer-128/6",
        "a name from `spatialmix models`, timm:NAME / torchvision:NAME, or module:function building a "
        "model of your own (with --trust-code)",
    )
    width: int | None = option(None, "channels (overrides the named model's; default: the model's)")
    depth: int | None = option(None, "blocks (default: the model's)")
    kernel_size: int | None = option(None, "spatial kernel size, odd (default: the model's)")
    patch_size: int | None = option(None, "patch size / stem stride (default: the model's)")
    activation: str | None = option(None, "gelu, relu, silu (default: the model's)")
    token_hidden: int | None = option(
        None, "mlpmixer: hidden size of the token-mixing MLPs (default: width / 2)"
    )
    channel_hidden: int | None = option(
        None, "mlpmixer: hidden size of the channel-mixing MLPs (default: 4 x width)"
    )
    # mixing: what is frozen and how it is initialized
    mode: str = option(
        "full", "full (learn everything), chans (freeze spatial mixers), space (freeze channel mixers)"
    )
    spatial_init: str | None = option(
        None,
        "init of the spatial mixers, in every mode: default (PyTorch's), gaussian, "
        "uniform, covariance (Trockman et al. 2023, closed form), covariance-from "
        "(a trained run's filters, see --init-from); not given: the model's own where they "
        "learn, default where frozen (the built-in models: default)",
    )
    channel_init: str | None = option(
        None, "init of the channel mixers: default, gaussian, uniform (not given: as for --spatial-init)"
    )
    init_std: float = option(0.1, "std of the gaussian init / half-width of the uniform init")
    smooth_sigma: float = option(
        0.0, "Gaussian-smooth the random spatial filters with this sigma in pixels (0: off)"
    )
    init_seed: int | None = option(None, "seed of the random filters (default: --seed)")
    init_from: str | None = option(
        None,
        "with --spatial-init covariance-from: the trained Full run whose per-layer "
        "filter covariance is the prior",
    )
    spatial_pattern: str | None = option(
        None, "comma-separated globs of layer names to treat as spatial mixers (e.g. 'blocks.*.mlp_tokens')"
    )
    channel_pattern: str | None = option(
        None, "comma-separated globs of layer names to treat as channel mixers"
    )
    # optimization (the ConvMixer CIFAR recipe)
    seed: int = option(0, "seed of the initialization, the data order and the subsets")
    epochs: int = option(
        10, "epochs (the learning rate rises to --lr at 2/5 of them and falls to 0 at the end)"
    )
    batch_size: int = option(
        128, "images per optimizer step: the global batch, split over the processes under torchrun"
    )
    lr: float = option(0.01, "peak learning rate")
    weight_decay: float = option(0.01, "weight decay of the matrices and filters (none for norms and biases)")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy, in [0, 1)")
    clip_grad: float = option(1.0, "clip the gradient norm to this (0: off)")
    ema_decay: float = option(
        0.0,
        "evaluate, save and attack an exponential moving average of the weights with this decay per "
        "step (0: off, the last weights; e.g. 0.999)",
    )
    # speed
    amp: str = option("auto", "mixed precision: auto (bf16 where native), bf16, none", choices=AMP_CHOICES)
    channels_last: bool = option(True, "channels-last memory format (faster convolutions on most hardware)")
    device: str = option("auto", "auto, cpu, cuda", choices=DEVICE_CHOICES)
    sync_bn: bool = option(False, "SyncBatchNorm across processes under torchrun")
    progress: bool = option(True, "progress bars")
    image_size: int | None = option(
        None,
        "imagefolder: crop size in pixels (default: the first training image's smaller side, at most 224)",
    )
    workers: int | None = option(
        None, "imagefolder: DataLoader processes decoding images (default: the CPU cores available)"
    )
    threads: int | None = option(
        None,
        "torch threads of this process (default: torch's own, one per physical "
        "core; use 1 on a busy machine)",
        minimum=1,
    )

    def validate(self) -> TrainConfig:
        """Reject bad values with one clear message before anything is built or written."""
        self.check_types()
        if self.dataset not in DATASETS:
            raise unknown_name("dataset", self.dataset, DATASETS)
        known = [*MODELS, *(f"{prefix}NAME" for prefix in LIBRARY_PREFIXES)]
        if is_user_reference(self.model):
            self._check_user_model()
        elif self.model not in known and not self.model.startswith(LIBRARY_PREFIXES):
            raise unknown_name("model", self.model, known)
        if self.model.startswith(("timm:", "torchvision:")):
            self._check_external_sizes()
        if self.mode not in MODES:
            raise unknown_name("mode", self.mode, MODES)
        for init in (self.spatial_init, self.channel_init):
            if init is not None and init not in INITS:
                raise unknown_name("init", init, INITS)
        if self.channel_init is not None and self.channel_init.startswith("covariance"):
            raise SpatialmixError(
                f"--channel-init {self.channel_init} is for spatial mixers (depthwise k x k filters); "
                f"use default, gaussian or uniform for the channel mixers"
            )
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise unknown_name("augmentation", self.augment, AUGMENTATIONS)
        if self.amp not in AMP_CHOICES:
            raise unknown_name("amp setting", self.amp, AMP_CHOICES)
        if self.device not in DEVICE_CHOICES:
            raise unknown_name("device", self.device, DEVICE_CHOICES)
        check_positive(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        if self.threads is not None:
            check_threads("--threads", self.threads)
        check_seed("--seed", self.seed)
        if self.init_seed is not None:
            check_seed("--init-seed", self.init_seed)
        if self.workers is not None and self.workers < 0:
            raise SpatialmixError(f"workers must be >= 0, got {self.workers}")
        # A seed beyond 64 bits or 10**12 threads is refused here, before torch's C code sees it.
        wrong = out_of_range(self.to_dict())
        if wrong:
            name, value, lowest, highest = wrong
            shown = f"{value:,}" if value.bit_length() <= 256 else f"a number of {value.bit_length():,} bits"
            raise SpatialmixError(
                f"{name.replace('_', ' ')} must be a whole number from {lowest:,} to {highest:,}, got {shown}"
            )
        for name in (
            "width",
            "depth",
            "kernel_size",
            "patch_size",
            "train_subset",
            "test_subset",
            "image_size",
            "token_hidden",
            "channel_hidden",
        ):
            value = getattr(self, name)
            if value is not None:
                check_positive(**{name: value})
            limit = SIZE_LIMITS.get(name)
            if limit is not None and isinstance(value, int) and value > limit:
                raise SpatialmixError(
                    f"--{name.replace('_', '-')} {value:,} is above spatialmix's limit of {limit:,} "
                    f"(a run folder asking for more could not be opened again); use at most {limit:,}"
                )
        for name in ("weight_decay", "label_smoothing", "clip_grad", "init_std", "smooth_sigma"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise SpatialmixError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if self.label_smoothing >= 1:
            raise SpatialmixError(f"label smoothing must be below 1, got {self.label_smoothing}")
        if not (0 <= self.ema_decay < 1):
            raise SpatialmixError(
                f"--ema-decay must be in [0, 1) (0: off; 0.999 averages about the last 1,000 steps), "
                f"got {self.ema_decay}"
            )
        self.spatial_init_spec(), self.channel_init_spec()
        return self

    def _check_user_model(self) -> None:
        """A model of your own: a well-formed reference, and none of the built-in models' sizes."""
        check_reference(self.model)
        for name in BUILT_IN_SIZE_FIELDS:
            if getattr(self, name) is not None:
                raise SpatialmixError(
                    f"--{name.replace('_', '-')} does not apply to a model of your own ({self.model} "
                    f"builds its own layers); drop it and set the size in your factory"
                )

    def check_types(self) -> None:
        """Every field has its declared type (a grid file or a config.json can hold anything)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
            if value is None and type(None) in kinds:
                continue
            for kind, ok, wanted in (
                (bool, lambda v: isinstance(v, bool), "true or false"),
                (int, lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
                (float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
                (str, lambda v: isinstance(v, str), "a string"),
            ):
                if kind in kinds:
                    if not ok(value):
                        optional = " (or null)" if type(None) in kinds else ""
                        raise SpatialmixError(f"{f.name} must be {wanted}{optional}, got {value!r}")
                    break

    def _check_external_sizes(self) -> None:
        """A timm or torchvision model is built as its name says: a size it would ignore is refused
        (config.json would record a width the model never had). ``patch_size`` is checked where the
        model is built (timm's patch stems take it)."""
        sizes = [name for name in MODEL_SHAPE_FIELDS if name != "patch_size"]
        given = [name for name in sizes if getattr(self, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise SpatialmixError(
                f"{flag} does not apply to {self.model}: timm and torchvision models are built as named "
                f"(choose a variant by its name, e.g. timm:convnext_femto); leave {flag} out"
            )

    @staticmethod
    def same_setting(name: str, saved, ours, saved_config: dict) -> bool:
        """Whether a saved value means the run ``ours`` describes: runs made before an init could be
        left unasked saved ``"default"`` for it, which is what no init means for the built-in
        models (they declare the default init). For other models the two differ (their own init
        where they learn)."""
        model = str(saved_config.get("model", ""))
        builtin = ":" not in model
        return name in ("spatial_init", "channel_init") and builtin and {saved, ours} == {None, "default"}

    def spatial_init_spec(self) -> InitSpec | None:
        """The spatial mixers' init asked for (smoothing or --init-from ask for one too); None when none
        was (see `spatialmix.core.mixing.mixer_inits`)."""
        from spatialmix.core.inits import InitSpec

        if self.spatial_init is None and self.smooth_sigma == 0 and self.init_from is None:
            return None
        return InitSpec(
            self.spatial_init or "default", self.init_std, self.smooth_sigma, source=self.init_from
        )

    def channel_init_spec(self) -> InitSpec | None:
        from spatialmix.core.inits import InitSpec

        return None if self.channel_init is None else InitSpec(self.channel_init, self.init_std, 0.0)

    @property
    def resolved_init_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str | os.PathLike | None = None) -> TrainConfig:
        """The config of a dict (a field missing from it takes its default); ``source`` names the file it came
        from, and then every value is validated too (a config.json may come from anyone)."""
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise SpatialmixError(
                f"{where}the training settings must be a JSON object, got {type(d).__name__}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SpatialmixError(
                f"{where}config has unknown fields {sorted(unknown)}: written by another spatialmix version"
            )
        config = cls(**d)
        try:
            config.validate() if source else config.check_types()
        except SpatialmixError as err:
            raise SpatialmixError(f"{where}{err}") from None
        return config

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def model_name(self) -> str:
        """The model this config trains, named with the sizes it is built with: ``convmixer-128/6`` with
        ``width=16, depth=2`` is ``convmixer-16/2``, and so is ``convmixer`` with both; ``model`` itself
        where no size overrides it (or the name carries no sizes: ``resnet18``, ``timm:NAME``)."""
        if self.width is None and self.depth is None:
            return self.model
        named = SIZED_NAME.fullmatch(self.model)
        if named:
            width = self.width if self.width is not None else named["width"]
            depth = self.depth if self.depth is not None else named["depth"]
            return f"{named['family']}-{width}/{depth}"
        if FAMILY_NAME.fullmatch(self.model) and self.width is not None and self.depth is not None:
            return f"{self.model}-{self.width}/{self.depth}"
        return self.model


def default_run_dir(config: TrainConfig) -> str:
    """Where ``spatialmix train`` puts a run given no ``--out``: ``runs/DATASET-MODEL-MODE-seedS``
    (MODEL: ``TrainConfig.model_name``)."""
    model = config.model_name.replace("/", "-").replace(":", "-")
    return f"runs/{config.dataset}-{model}-{config.mode}-seed{config.seed}"


def run_dir_for(out: str | os.PathLike | None, config: TrainConfig) -> str:
    """The run folder of ``config``: ``out``, or `default_run_dir` when none is given."""
    if out is not None and str(out) == "":
        raise SpatialmixError("--out is an empty string; pass a folder name such as runs/my-run")
    return str(out) if out is not None else default_run_dir(config)

"""What a training run depends on: :class:`TrainConfig`, saved as ``config.json`` in its folder.

Imports nothing heavy (no torch), so the command line can build its options and answer ``--help``
at once; the names it validates against (data sets, models, modes) are looked up when a config
is validated.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass

from .errors import SpatialmixError, check_positive, unknown_name

AMP_CHOICES = ("auto", "bf16", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
# How fast a run goes, not what it computes: these may differ between a run and its resumption
# (and between two runs that count as the same config).
SPEED_FIELDS = frozenset({"device", "progress", "workers", "threads", "data_dir", "download"})
# Fields that may change between an interrupted run and its resumption (epochs: to extend a run).
RESUMABLE_FIELDS = frozenset(SPEED_FIELDS | {"epochs"})

# ... and, for a run that diverged (status "failed"), what its advice tells the user to change.
DIVERGED_RESUMABLE_FIELDS = frozenset({"lr", "amp"})


@dataclass
class TrainConfig:
    """Everything a training run depends on. Saved as ``config.json`` in the run directory."""

    # data
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = True
    train_subset: int | None = None   # a fixed seeded subset of the training set (quick runs)
    test_subset: int | None = None
    augment: str | None = None        # None: the data set's default
    # model
    model: str = "convmixer-128/6"
    width: int | None = None          # overrides of the named configuration
    depth: int | None = None
    kernel_size: int | None = None
    patch_size: int | None = None
    activation: str | None = None
    token_hidden: int | None = None   # mlpmixer: hidden sizes of the token and channel MLPs
    channel_hidden: int | None = None
    # mixing: what is frozen and how it is initialized
    mode: str = "full"
    spatial_init: str = "default"
    channel_init: str = "default"
    init_std: float = 0.1
    smooth_sigma: float = 0.0
    init_seed: int | None = None      # None: same as seed
    init_from: str | None = None      # spatial_init covariance-from: the trained run whose filters are the prior
    spatial_pattern: str | None = None   # layer-name globs declared spatial mixers (comma-separated)
    channel_pattern: str | None = None   # ... and channel mixers (override the automatic classification)
    # optimization (the ConvMixer CIFAR recipe)
    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    clip_grad: float = 1.0
    # speed
    amp: str = "auto"                 # auto: bf16 where the hardware computes it natively
    channels_last: bool = True
    device: str = "auto"
    sync_bn: bool = False
    progress: bool = True
    image_size: int | None = None     # imagefolder only: the crop size (default: the images' size, at most 224)
    workers: int | None = None        # imagefolder only: DataLoader processes decoding images (default: the cores)
    threads: int | None = None        # torch intra-op threads (default: torch's own, the physical cores)

    def validate(self) -> "TrainConfig":
        """Reject bad values with one clear message before anything is built or written."""
        from .batches import AUGMENTATIONS
        from .data import DATASETS
        from .mixing import INITS, MODES
        from .models import list_models

        self.check_types()
        if self.dataset not in DATASETS:
            raise unknown_name("dataset", self.dataset, DATASETS)
        known = list_models()
        if self.model not in known and not self.model.startswith(("timm:", "torchvision:")):
            raise unknown_name("model", self.model, known)
        if self.mode not in MODES:
            raise unknown_name("mode", self.mode, MODES)
        for init in (self.spatial_init, self.channel_init):
            if init not in INITS:
                raise unknown_name("init", init, INITS)
        if self.channel_init.startswith("covariance"):
            raise SpatialmixError(f"--channel-init {self.channel_init} is for spatial mixers (depthwise k x k filters); "
                                  f"use default, gaussian or uniform for the channel mixers")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise unknown_name("augmentation", self.augment, AUGMENTATIONS)
        if self.amp not in AMP_CHOICES:
            raise unknown_name("amp setting", self.amp, AMP_CHOICES)
        if self.device not in DEVICE_CHOICES:
            raise unknown_name("device", self.device, DEVICE_CHOICES)
        check_positive(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        if self.threads is not None:
            check_positive(threads=self.threads)
        if self.workers is not None and self.workers < 0:
            raise SpatialmixError(f"workers must be >= 0, got {self.workers}")
        for name in ("width", "depth", "kernel_size", "patch_size", "train_subset", "test_subset", "image_size",
                     "token_hidden", "channel_hidden"):
            value = getattr(self, name)
            if value is not None:
                check_positive(**{name: value})
        for name in ("weight_decay", "label_smoothing", "clip_grad", "init_std", "smooth_sigma"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise SpatialmixError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if self.label_smoothing >= 1:
            raise SpatialmixError(f"label smoothing must be below 1, got {self.label_smoothing}")
        self.spatial_init_spec(), self.channel_init_spec()
        return self

    def check_types(self) -> None:
        """Every field has its declared type (a grid file or a config.json can hold anything)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
            if value is None and type(None) in kinds:
                continue
            for kind, ok, wanted in ((bool, lambda v: isinstance(v, bool), "true or false"),
                                     (int, lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
                                     (float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                                      "a number"),
                                     (str, lambda v: isinstance(v, str), "a string")):
                if kind in kinds:
                    if not ok(value):
                        optional = " (or null)" if type(None) in kinds else ""
                        raise SpatialmixError(f"{f.name} must be {wanted}{optional}, got {value!r}")
                    break

    def spatial_init_spec(self) -> "InitSpec":  # noqa: F821 (imported when called)
        from .mixing import InitSpec

        return InitSpec(self.spatial_init, self.init_std, self.smooth_sigma, source=self.init_from)

    def channel_init_spec(self) -> "InitSpec":  # noqa: F821
        from .mixing import InitSpec

        return InitSpec(self.channel_init, self.init_std, 0.0)

    @property
    def resolved_init_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str | os.PathLike | None = None) -> "TrainConfig":
        """The config of a dict (a field missing from it takes its default); ``source`` names the file it came
        from, and then every value is validated too (a config.json may come from anyone)."""
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise SpatialmixError(f"{where}the training settings must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SpatialmixError(f"{where}config has unknown fields {sorted(unknown)}: written by another "
                                  f"spatialmix version")
        config = cls(**d)
        try:
            config.validate() if source else config.check_types()
        except SpatialmixError as err:
            raise SpatialmixError(f"{where}{err}") from None
        return config

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

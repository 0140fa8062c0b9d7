"""What the un-shuffling study depends on: the keyword arguments of ``unshuffle_study``, as a dataclass.

``spatialmix unshuffle`` generates its options from `UnshuffleSettings` and calls
``unshuffle_study(**settings.study_kwargs())``. Imports nothing heavy (``--help`` stays fast).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from spatialmix.engine.config import TrainConfig
from spatialmix.options import option, option_like

PRESET_DEFAULT = "(default: the preset's)"
# Training settings that override the preset's TrainConfig when given (None: the preset's value).
TRAINING_OVERRIDES = (
    "dataset",
    "epochs",
    "train_subset",
    "test_subset",
    "batch_size",
    "lr",
    "width",
    "depth",
    "kernel_size",
    "amp",
    "device",
    "data_dir",
    "progress",
)


@dataclass(frozen=True)
class UnshuffleSettings:
    """The settings of ``unshuffle_study`` (see `spatialmix.studies.unshuffle.unshuffle_study`)."""

    out: str = option("runs/unshuffle", "study folder")
    preset: str = option(
        "small",
        "small (UnshuffleNet-32/8, kernel 7, CPU minutes), hour (UnshuffleNet-64/8, about "
        "an hour on 2 CPU cores) or large (UnshuffleNet-512/16, kernel 7, as in the paper; "
        "GPU)",
    )
    modes: tuple[str, ...] = option(("full", "chans", "space"), "comma-separated modes")
    window: int | None = option(
        None,
        "permute only within PIXELS x PIXELS tiles (must divide the image; default: whole image)",
        metavar="PIXELS",
    )
    loss: str = option("mse", "mse or l1")
    perm_seed: int = option(0, "seed of the pixel permutation")
    seeds: tuple[int, ...] = option((0,), "training seeds")
    references: bool = option(
        True, "train the kernel-1 reference model too (the scrambled-input floor is always shown)"
    )
    figure_images: int = option(8, "test images in the figure")
    processes: int = option(1, "trainings run side by side in this many processes")
    threads: int | None = option(
        None, "torch threads of each process (default: torch's own, or 1 when side by side)", minimum=1
    )
    # training overrides of the preset (None: the preset's own)
    dataset: str = option("fashion-mnist", "fashion-mnist, mnist, cifar10, cifar100")
    epochs: int | None = option(None, f"epochs {PRESET_DEFAULT}")
    train_subset: int | None = option(None, f"training images {PRESET_DEFAULT}")
    test_subset: int | None = option(None, f"test images {PRESET_DEFAULT}")
    batch_size: int | None = option(None, f"batch size {PRESET_DEFAULT}")
    lr: float | None = option(None, f"peak learning rate {PRESET_DEFAULT}")
    width: int | None = option(None, f"channels {PRESET_DEFAULT}")
    depth: int | None = option(None, f"blocks {PRESET_DEFAULT}")
    kernel_size: int | None = option(None, f"depthwise kernel size {PRESET_DEFAULT}")
    amp: str | None = option_like(TrainConfig, "amp", default_help="auto")
    device: str | None = option_like(TrainConfig, "device", default_help="auto")
    data_dir: str | None = option_like(TrainConfig, "data_dir")
    progress: bool = option_like(TrainConfig, "progress", default=True)

    def study_kwargs(self) -> dict:
        """The keyword arguments of ``unshuffle_study``: the training overrides only where given."""
        values = dataclasses.asdict(self)
        kwargs = {k: v for k, v in values.items() if k not in TRAINING_OVERRIDES and k != "out"}
        kwargs.update({k: values[k] for k in TRAINING_OVERRIDES if values[k] is not None})
        return {"out_dir": self.out, **kwargs}

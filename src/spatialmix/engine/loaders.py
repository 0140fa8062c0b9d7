"""The data of a run and its batches: the loaders training and evaluation read."""

from __future__ import annotations

from pathlib import Path

import torch

from spatialmix.accel import speed
from spatialmix.data.batches import BatchLoader
from spatialmix.data.datasets import DATASETS, ImageData, load_dataset
from spatialmix.data.imagefolder import FolderData, FolderLoader, load_image_folder
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.tasks import saved_config
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs


def load_data_for(config: TrainConfig) -> ImageData | FolderData:
    if config.dataset == "imagefolder":
        data = load_image_folder(
            config.data_dir,
            config.image_size,
            augment=config.augment or DATASETS[config.dataset].default_augment,
        )
    else:
        data = load_dataset(config.dataset, config.data_dir, download=config.download)
    for flag, wanted, available, what in (
        ("--train-subset", config.train_subset, len(data.train_labels), "training"),
        ("--test-subset", config.test_subset, len(data.test_labels), "test"),
    ):
        if wanted is not None and wanted > available:
            # taking all of them instead would train on another data set size than the config says
            raise SpatialmixError(
                f"{flag} {wanted:,} is more than the {available:,} {what} images of {config.dataset} "
                f"in {data.source}; pass at most {available} (or leave {flag} out to use them all)"
            )
    return data.subset(config.train_subset, config.test_subset, seed=config.seed)


def load_evaluation_data(run_dir: str | Path, data_dir: str | None = None) -> ImageData | FolderData:
    """The full data set of a saved run, to evaluate it (attacks, analysis).

    Where the files come from is the user's choice (``data_dir``, ``$SPATIALMIX_DATA``, the system's
    data package, the download cache), never the ``data_dir`` in the run's config.json: a run folder
    may come from anyone, and its config must not point data loading somewhere the user did not choose.
    """
    run = runs.Run(run_dir).check()
    config = saved_config(run).replace(train_subset=None, test_subset=None, data_dir=data_dir)
    try:
        return load_data_for(config)
    except SpatialmixError as err:
        saved = run.record()["train"].get("data_dir")
        hint = (
            (
                f"; the run was trained on data from {saved} (its config.json says so): pass --data-dir "
                f"{saved} "
                f"if you trust it"
            )
            if saved and data_dir is None
            else ""
        )
        raise SpatialmixError(f"{err}{hint}") from None


def resolve_workers(workers: int | None) -> int:
    """Image-folder decoding processes: by default one per core this process may use."""
    return workers if workers is not None else speed.available_cores()


def make_loaders(
    config: TrainConfig, data: ImageData, device: torch.device, rank: int = 0, world_size: int = 1
) -> tuple[BatchLoader, BatchLoader]:
    """Loaders of this rank's shard; ``config.batch_size`` is the global batch, split over the ranks."""
    if config.batch_size % world_size:
        raise SpatialmixError(
            f"batch size {config.batch_size} (the global batch) does not split evenly over "
            f"{world_size} processes; use a multiple of {world_size}"
        )
    augment = config.augment or DATASETS[config.dataset].default_augment
    shard = dict(rank=rank, world_size=world_size)
    if isinstance(data, FolderData):
        folder = dict(
            device=device,
            channels_last=config.channels_last,
            workers=resolve_workers(config.workers),
            **shard,
        )
        train_loader = FolderLoader(
            data.train_set,
            data.train_labels,
            config.batch_size // world_size,
            data.mean,
            data.std,
            train=True,
            augment=augment,
            seed=config.seed,
            **folder,
        )
        test_loader = FolderLoader(
            data.test_set,
            data.test_labels,
            max(256, config.batch_size) // world_size,
            data.mean,
            data.std,
            train=False,
            **folder,
        )
    else:
        train_loader = BatchLoader(
            data.train_images,
            data.train_labels,
            config.batch_size // world_size,
            data.mean,
            data.std,
            train=True,
            augment=augment,
            seed=config.seed,
            device=device,
            channels_last=config.channels_last,
            **shard,
        )
        test_loader = BatchLoader(
            data.test_images,
            data.test_labels,
            max(256, config.batch_size) // world_size,
            data.mean,
            data.std,
            train=False,
            device=device,
            channels_last=config.channels_last,
            **shard,
        )
    if len(train_loader) == 0:
        raise SpatialmixError(
            f"batch size {config.batch_size} is larger than the {len(data.train_labels)} "
            f"training images; lower --batch-size"
        )
    return train_loader, test_loader

"""Image folders in the ImageNet layout (``train/CLASS/*.jpg``, ``val/CLASS/*.jpg``), streamed from disk.

Too many images to hold in memory: DataLoader workers decode and crop each sample (to uint8, so
little crosses between processes), then `FolderLoader` flips and normalizes whole batches
on the device with `BatchLoader`'s interface. Each sample's random
crop is drawn from a seed fixed by ``(seed, epoch)``, so the batches do not depend on the number
of processes or workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from spatialmix.data.batches import BatchLoader, check_augment, random_flip
from spatialmix.data.datasets import DATASETS, ENV_VAR, check_data_dir, seeded_subset
from spatialmix.errors import SpatialmixError


@dataclass
class FolderData:
    """An image-folder data set (``train/CLASS/*.jpg``, ``val/CLASS/*.jpg``), decoded on the fly.

    Images too many to hold in memory are decoded and cropped per sample by DataLoader workers
    (to uint8, so little crosses between processes); flipping and normalization then happen on
    whole batches on the training device, as for the in-memory data sets.
    """

    name: str
    train_set: torch.utils.data.Dataset
    test_set: torch.utils.data.Dataset
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    image_size: int
    source: str = ""
    in_chans: int = 3

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> FolderData:
        def pick(dataset, labels, n):
            idx = seeded_subset(len(labels), n, seed)
            return (
                (dataset, labels)
                if idx is None
                else (torch.utils.data.Subset(dataset, idx.tolist()), labels[idx])
            )

        train = pick(self.train_set, self.train_labels, n_train)
        test = pick(self.test_set, self.test_labels, n_test)
        return replace(self, train_set=train[0], train_labels=train[1], test_set=test[0], test_labels=test[1])


def load_image_folder(
    data_dir: str | os.PathLike | None, image_size: int | None = None, augment: str = "crop-flip"
) -> FolderData:
    """An ImageNet-layout folder: ``DATA_DIR/train/CLASS/...`` and ``DATA_DIR/val/CLASS/...``.

    ``image_size`` defaults to the first training image's smaller side, at most 224 (a folder of
    16 x 16 images is not upscaled). ``augment``: with ``crop`` the training images are random
    resized crops (torchvision's ``RandomResizedCrop``, the ImageNet recipe); without it they are
    resized and center-cropped like the test images. Flips happen on whole batches (FolderLoader).
    """
    # torchvision takes seconds to import: only when an image folder is loaded
    import torchvision.transforms as T

    from spatialmix.data.imagefiles import ImageFiles, read_rgb

    spec = DATASETS["imagefolder"]
    check_augment(augment)
    where = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if not where:
        raise SpatialmixError(f"imagefolder needs a folder: {spec.how_to_get} (or set ${ENV_VAR})")
    root = check_data_dir(where, spec)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise SpatialmixError(f"{root} has no train/ and val/ folders; {spec.how_to_get}")
    try:
        train_set = ImageFiles(str(root / "train"))
        test_set = ImageFiles(str(test_dir))
    except (OSError, RuntimeError) as err:  # no class folder, an empty one, one that cannot be listed
        raise SpatialmixError(f"{root}: {err}; {spec.how_to_get}") from None
    if train_set.classes != test_set.classes:
        raise SpatialmixError(
            f"{root}: train/ and {test_dir.name}/ have different class folders; make them match"
        )
    if len(train_set.classes) < 2:
        raise SpatialmixError(
            f"{root / 'train'} has {len(train_set.classes)} class folder ({', '.join(train_set.classes)}): "
            f"a classifier needs at least 2 classes; add a folder of images per class"
        )
    if image_size is None:
        image_size = min(224, min(read_rgb(train_set.samples[0][0]).size))
    to_uint8 = T.PILToTensor()
    centered = [T.Resize(round(image_size * 256 / 224), antialias=True), T.CenterCrop(image_size), to_uint8]
    train_set.transform = T.Compose(
        [T.RandomResizedCrop(image_size, antialias=True), to_uint8] if "crop" in augment else centered
    )
    test_set.transform = T.Compose(centered)
    return FolderData(
        "imagefolder",
        train_set,
        test_set,
        torch.tensor(train_set.targets),
        torch.tensor(test_set.targets),
        spec.mean,
        spec.std,
        train_set.classes,
        image_size,
        str(root),
    )


class _SeededSamples(torch.utils.data.Dataset):
    """``dataset[i]`` with the random transforms drawn from a seed given with the index: the crops of
    an epoch depend only on (seed, epoch), in the main process or in any worker."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class _SeededOrder(torch.utils.data.Sampler):
    """The (index, seed) pairs of one epoch, given up front (so they depend only on the seed and the
    epoch)."""

    def __init__(self, order: torch.Tensor, seeds: torch.Tensor):
        self.order = list(zip(order.tolist(), seeds.tolist()))

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return len(self.order)


class FolderLoader(BatchLoader):
    """BatchLoader's interface over a FolderData split: workers decode, the device flips and normalizes."""

    def __init__(
        self,
        dataset,
        labels: torch.Tensor,
        batch_size: int,
        mean,
        std,
        *,
        train: bool,
        augment: str = "none",
        seed: int = 0,
        device="cpu",
        channels_last: bool = False,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
    ):
        super().__init__(
            torch.empty(0, dtype=torch.uint8),
            labels,
            batch_size,
            mean,
            std,
            train=train,
            augment=augment,
            seed=seed,
            device="cpu",
            channels_last=channels_last,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        self.device = torch.device(device)
        self.scale, self.shift = self.scale.to(self.device), self.shift.to(self.device)
        self.dataset, self.workers = dataset, workers

    def __iter__(self):
        # One seed per example of the epoch, drawn for every example and then sharded like the order,
        # so a sample's crop is the same whatever the number of processes or workers.
        n = len(self.labels)
        seeds = self._shard(
            torch.randint(0, 2**62, (n,), generator=torch.Generator().manual_seed(self._epoch_seed(2)))
        )
        order = self._indices()
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        loader = torch.utils.data.DataLoader(
            _SeededSamples(self.dataset),
            batch_size=self.batch_size,
            sampler=_SeededOrder(order[:stop], seeds[:stop]),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            # DataLoader draws its workers' base seed from this generator, not from the global one
            generator=torch.Generator().manual_seed(self._epoch_seed(3)),
        )
        generator = torch.Generator().manual_seed(self._epoch_seed(1))
        for x, y in _reraised_in_one_line(loader):
            x = x.to(self.device, non_blocking=True)
            if "flip" in self.augment:  # crops were done by the workers (RandomResizedCrop)
                x = random_flip(x, (torch.rand(len(x), generator=generator) < 0.5).to(self.device))
            yield self.normalize(x), y.to(self.device, non_blocking=True)


def _reraised_in_one_line(batches):
    """The batches of a DataLoader; a SpatialmixError raised in a worker process (an unreadable image)
    comes back as its own one line, not as the worker's traceback DataLoader puts in its message."""
    try:
        yield from batches
    except SpatialmixError as err:
        raise SpatialmixError(_worker_error_line(err)) from None


def _worker_error_line(err: BaseException) -> str:
    """The message of an error as raised: DataLoader re-raises a worker's error with the text
    "Caught X in DataLoader worker process N. Original Traceback ... module.X: message"."""
    text = str(err)
    if "\n" not in text:
        return text
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    last = text.rstrip().splitlines()[-1]
    return last[len(prefix) :] if last.startswith(prefix) else last

"""Data sets held in memory as uint8 tensors, and a batch loader that augments whole batches.

Small data sets (Fashion-MNIST, MNIST, CIFAR) fit in memory many times over, so we keep them as
one uint8 tensor on the training device and do cropping, flipping and normalization on whole
batches there: no per-sample Python, no worker processes, and the same order for the same seed
whatever the hardware. Image folders (ImageNet layout) are decoded by a torchvision DataLoader.

Files are looked for in this order: an explicit ``data_dir``; the ``SPATIALMIX_DATA``
environment variable; the operating system's data package (Debian's ``dataset-fashion-mnist``);
then torchvision's download into ``~/.cache/spatialmix`` (needs internet).
"""
from __future__ import annotations

import gzip
import os
import pickle
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SpatialmixError, unknown_name

ENV_VAR = "SPATIALMIX_DATA"
DOWNLOAD_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spatialmix" / "data"
AUGMENTATIONS = ("none", "flip", "crop", "crop-flip")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str                      # "idx", "cifar" or "folder"
    subdirs: tuple[str, ...]         # where the files sit below a root (torchvision's layouts too)
    system_dirs: tuple[str, ...]     # operating system data packages
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_augment: str
    torchvision_class: str | None
    how_to_get: str
    classes: list[str] = field(default_factory=list)


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "idx", ("", "fashion-mnist", "FashionMNIST/raw"), ("/usr/share/datasets/fashion-mnist",),
        (0.2860,), (0.3530,), "crop-flip", "FashionMNIST",
        "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir DIR with the four IDX files",
        FASHION_CLASSES),
    "mnist": DatasetSpec(
        "mnist", "idx", ("", "mnist", "MNIST/raw"), ("/usr/share/datasets/mnist",), (0.1307,), (0.3081,), "crop",
        "MNIST", "pass --data-dir DIR with the four MNIST IDX files, or run once with internet to download",
        [str(i) for i in range(10)]),
    "cifar10": DatasetSpec(
        "cifar10", "cifar", ("cifar-10-batches-py",), (), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "crop-flip", "CIFAR10", "pass --data-dir DIR holding cifar-10-batches-py/, or run once with internet"),
    "cifar100": DatasetSpec(
        "cifar100", "cifar", ("cifar-100-python",), (), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "crop-flip", "CIFAR100", "pass --data-dir DIR holding cifar-100-python/, or run once with internet"),
    "imagefolder": DatasetSpec(
        "imagefolder", "folder", ("",), (), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "crop-flip", None,
        "pass --data-dir DIR with train/ and val/ folders of class subfolders (ImageNet layout)"),
}


@dataclass
class ImageData:
    """A data set in memory: uint8 images (N, C, H, W) and int64 labels, plus its statistics."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    source: str = ""

    @property
    def in_chans(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> "ImageData":
        """A fixed, seeded random subset (for quick runs and tests); ``None`` keeps everything."""
        def pick(images, labels, n):
            idx = seeded_subset(len(labels), n, seed)
            return (images, labels) if idx is None else (images[idx], labels[idx])

        train = pick(self.train_images, self.train_labels, n_train)
        test = pick(self.test_images, self.test_labels, n_test)
        return ImageData(self.name, *train, *test, self.mean, self.std, self.classes, self.source)


def seeded_subset(n_total: int, n: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a fixed random subset of ``n`` of ``n_total`` examples; ``None`` when all are kept."""
    if n is None or n >= n_total:
        return None
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


# --------------------------------------------------------------------------- file formats

def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format), gzipped or not, into a uint8 tensor."""
    try:
        with _open_maybe_gz(path) as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # a cut-off or damaged download
        raise SpatialmixError(f"{path} is truncated or corrupt ({err}); re-download it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SpatialmixError(f"{path} is not an uint8 IDX file (bad magic number); re-download it")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise SpatialmixError(f"{path} is truncated or corrupt: header says {shape}, "
                              f"found {len(data) - header} of {expected} bytes; re-download it")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy())


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dir(directory: Path) -> tuple[torch.Tensor, ...] | None:
    paths = [_find_idx_file(directory, stem) for split in ("train", "test") for stem in IDX_FILES[split]]
    if any(p is None for p in paths):
        return None
    tr_x, tr_y, te_x, te_y = (read_idx(p) for p in paths)
    for images, labels, split in ((tr_x, tr_y, "train"), (te_x, te_y, "test")):
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise SpatialmixError(f"{directory}: {split} images {tuple(images.shape)} and labels "
                                  f"{tuple(labels.shape)} do not match; re-download the data set")
    return tr_x[:, None], tr_y.long(), te_x[:, None], te_y.long()


class NotACifarBatch(pickle.UnpicklingError):
    """A pickle that asks for more than CIFAR's batches hold (a function to call, Python objects)."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batches without running code: the only globals admitted are those that
    rebuild numpy arrays (and bytes), so a crafted file cannot call anything else."""

    SAFE = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.SAFE:
            raise NotACifarBatch(f"it asks for {module}.{name}")
        return super().find_class(module, name)


def load_cifar_pickle(path: Path) -> dict:
    """One CIFAR batch (a dict of lists, bytes and numpy arrays), read without executing code."""
    with open(path, "rb") as fh:
        entry = _CifarUnpickler(fh, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise NotACifarBatch(f"it holds a {type(entry).__name__}, not a dict")
    for value in entry.values():
        if isinstance(value, np.ndarray) and value.dtype.hasobject:
            raise NotACifarBatch("it holds an array of Python objects")
    return entry


def _load_cifar_dir(directory: Path, name: str) -> tuple[torch.Tensor, ...] | None:
    """Read the python-pickle batches of CIFAR-10/100 (the format torchvision downloads)."""
    if name == "cifar10":
        train_files, test_files, label_key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"
    else:
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
    if not all((directory / f).is_file() for f in train_files + test_files):
        return None

    def load(files):
        images, labels = [], []
        for f in files:
            try:
                entry = load_cifar_pickle(directory / f)
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(int(v) for v in entry[label_key])
            except NotACifarBatch as err:   # a crafted file: nothing of it ran
                raise SpatialmixError(f"{directory / f} is not a CIFAR batch ({err}); refusing to load it: "
                                      f"re-download the data set") from None
            except Exception as err:  # any unreadable batch is a corrupt download
                raise SpatialmixError(f"{directory / f} is corrupt ({type(err).__name__}); re-download it") from None
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)

    return (*load(train_files), *load(test_files))


def _cifar_classes(directory: Path, name: str, num: int) -> list[str]:
    meta = directory / ("batches.meta" if name == "cifar10" else "meta")
    key = "label_names" if name == "cifar10" else "fine_label_names"
    try:
        return [str(c) for c in load_cifar_pickle(meta)[key]]
    except Exception:
        return [str(i) for i in range(num)]


# --------------------------------------------------------------------------- lookup

def candidate_dirs(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> list[Path]:
    """Where we look, in order: --data-dir, $SPATIALMIX_DATA, the OS package, the download cache."""
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    elif os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    dirs = [root / sub if sub else root for root in roots for sub in spec.subdirs]
    if data_dir is None:
        dirs += [Path(d) for d in spec.system_dirs]
        dirs += [DOWNLOAD_ROOT / sub if sub else DOWNLOAD_ROOT for sub in spec.subdirs if sub]
    return dirs


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> ImageData:
    """Load a small data set into memory as uint8 tensors (see the module doc for the search order)."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    spec = DATASETS[name]
    if spec.format == "folder":
        raise SpatialmixError("imagefolder data is streamed from disk; use load_image_folder(data_dir)")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SpatialmixError(f"--data-dir {data_dir} does not exist; {spec.how_to_get}")
    searched = candidate_dirs(spec, data_dir)
    for directory in searched:
        found = _load_from(directory, spec)
        if found is not None:
            return _make_image_data(spec, directory, found)
    if download and data_dir is None:
        directory = _download(spec)
        found = _load_from(directory, spec)
        if found is not None:
            return _make_image_data(spec, directory, found)
    looked = ", ".join(str(d) for d in searched)
    raise SpatialmixError(f"{name} not found (looked in {looked}); {spec.how_to_get}")


def _load_from(directory: Path, spec: DatasetSpec):
    if not directory.is_dir():
        return None
    return _load_idx_dir(directory) if spec.format == "idx" else _load_cifar_dir(directory, spec.name)


def _make_image_data(spec: DatasetSpec, directory: Path, tensors) -> ImageData:
    tr_x, tr_y, te_x, te_y = tensors
    num_classes = int(max(tr_y.max(), te_y.max())) + 1
    classes = spec.classes or (_cifar_classes(directory, spec.name, num_classes) if spec.format == "cifar"
                               else [str(i) for i in range(num_classes)])
    if num_classes > len(classes):
        raise SpatialmixError(f"{directory}: labels go up to {num_classes - 1} but {spec.name} has "
                              f"{len(classes)} classes; the files belong to another data set")
    return ImageData(spec.name, tr_x.contiguous(), tr_y, te_x.contiguous(), te_y, spec.mean, spec.std, classes,
                     str(directory))


def _download(spec: DatasetSpec) -> Path:
    """torchvision's download, for users with internet. Returns the folder the files landed in."""
    import torchvision

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        for train in (True, False):
            cls(str(DOWNLOAD_ROOT), train=train, download=True)
    except Exception as err:
        raise SpatialmixError(f"{spec.name} is not on this machine and the download failed "
                              f"({type(err).__name__}); {spec.how_to_get}") from None
    return DOWNLOAD_ROOT / spec.subdirs[-1]


# --------------------------------------------------------------------------- batches

def check_augment(name: str) -> str:
    if name not in AUGMENTATIONS:
        raise unknown_name("augmentation", name, AUGMENTATIONS)
    return name


class BatchLoader:
    """Iterate over (normalized float images, labels) batches of an in-memory data set.

    The order and the augmentation of epoch ``e`` depend only on ``(seed, e)``, so a resumed run
    sees exactly the batches an uninterrupted one would. For distributed training each of the
    ``world_size`` ranks takes every ``world_size``-th example of the shuffled order.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std, *,
                 train: bool, augment: str = "none", seed: int = 0, device: str | torch.device = "cpu",
                 channels_last: bool = False, drop_last: bool | None = None, rank: int = 0, world_size: int = 1):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.augment = check_augment(augment) if train else "none"
        self.seed = seed
        self.channels_last = channels_last
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self._epoch_seed(0)))
        else:
            order = torch.arange(n)
        return self._shard(order)

    def _shard(self, values: torch.Tensor) -> torch.Tensor:
        """This rank's share of a per-example sequence of the epoch: every ``world_size``-th entry.

        Global batch ``i`` is then the union of the ranks' batches ``i``: the examples one process
        with ``world_size`` times the batch size takes. Training pads by wrapping so every rank takes
        the same number of steps (as DistributedSampler); evaluation does not, so no example counts twice.
        """
        if self.world_size == 1:
            return values
        if self.train:
            per_rank = -(-len(values) // self.world_size)
            values = torch.cat([values, values[: per_rank * self.world_size - len(values)]])
        return values[self.rank::self.world_size]

    def _shard_size(self) -> int:
        n = len(self.labels)
        return -(-n // self.world_size) if self.train else len(range(self.rank, n, self.world_size))

    def _epoch_seed(self, salt: int) -> int:
        return (self.seed * 1_000_003 + self.epoch * 7919 + salt) % (2**63)

    def __len__(self) -> int:
        if self.drop_last:
            # Whole global batches only: the steps per epoch do not depend on the number of processes.
            return len(self.labels) // (self.batch_size * self.world_size)
        return -(-self._shard_size() // self.batch_size)

    def num_examples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self._shard_size()

    def __iter__(self):
        order = self._indices()
        generator = torch.Generator().manual_seed(self._epoch_seed(1))
        # Draw every random number of the epoch up front, on the CPU, for every example of the
        # epoch (then keep this rank's share), so results depend neither on the device nor on the
        # number of processes.
        size = self.images.shape[-1]
        pad = max(1, size // 8)
        n = len(self.labels)
        offsets = self._shard(torch.randint(0, 2 * pad + 1, (n, 2), generator=generator))
        flips = self._shard(torch.rand(n, generator=generator) < 0.5)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(order)), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx.to(self.device)]
            if "crop" in self.augment:
                x = random_crop(x, offsets[start:start + len(idx)].to(self.device), pad)
            if "flip" in self.augment:
                x = random_flip(x, flips[start:start + len(idx)].to(self.device))
            yield self.normalize(x), self.labels[idx.to(self.device)]

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, x_uint8.float(), self.scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def random_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample random translation: zero-pad by ``pad`` and cut the original size at ``offsets``."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    return torch.where(flips[:, None, None, None], x.flip(-1), x)


def to_unit_range(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1] (the input space of attacks)."""
    return x_uint8.float() / 255.0


class Normalize(torch.nn.Module):
    """(x - mean) / std as a module, so a model can take [0, 1] inputs (attacks need that)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------- image folders (ImageNet layout)

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

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> "FolderData":
        def pick(dataset, labels, n):
            idx = seeded_subset(len(labels), n, seed)
            return (dataset, labels) if idx is None else (torch.utils.data.Subset(dataset, idx.tolist()), labels[idx])

        train = pick(self.train_set, self.train_labels, n_train)
        test = pick(self.test_set, self.test_labels, n_test)
        return replace(self, train_set=train[0], train_labels=train[1], test_set=test[0], test_labels=test[1])


def load_image_folder(data_dir: str | os.PathLike | None, image_size: int | None = None,
                      augment: str = "crop-flip") -> FolderData:
    """An ImageNet-layout folder: ``DATA_DIR/train/CLASS/...`` and ``DATA_DIR/val/CLASS/...``.

    ``image_size`` defaults to the first training image's smaller side, at most 224 (a folder of
    16 x 16 images is not upscaled). ``augment``: with ``crop`` the training images are random
    resized crops (torchvision's ``RandomResizedCrop``, the ImageNet recipe); without it they are
    resized and center-cropped like the test images. Flips happen on whole batches (FolderLoader).
    """
    import torchvision
    import torchvision.transforms as T

    spec = DATASETS["imagefolder"]
    check_augment(augment)
    where = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if not where:
        raise SpatialmixError(f"imagefolder needs a folder: {spec.how_to_get} (or set ${ENV_VAR})")
    root = Path(where)
    if not root.is_dir():
        raise SpatialmixError(f"--data-dir {root} does not exist; {spec.how_to_get}")
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise SpatialmixError(f"{root} has no train/ and val/ folders; {spec.how_to_get}")
    rgb = lambda path: torchvision.datasets.folder.default_loader(path).convert("RGB")  # noqa: E731
    try:
        train_set = torchvision.datasets.ImageFolder(str(root / "train"), loader=rgb)
        test_set = torchvision.datasets.ImageFolder(str(test_dir), loader=rgb)
    except (FileNotFoundError, RuntimeError) as err:
        raise SpatialmixError(f"{root}: {err}; {spec.how_to_get}") from None
    if train_set.classes != test_set.classes:
        raise SpatialmixError(f"{root}: train/ and {test_dir.name}/ have different class folders; make them match")
    if image_size is None:
        image_size = min(224, min(rgb(train_set.samples[0][0]).size))
    to_uint8 = T.PILToTensor()
    centered = [T.Resize(round(image_size * 256 / 224), antialias=True), T.CenterCrop(image_size), to_uint8]
    train_set.transform = T.Compose([T.RandomResizedCrop(image_size, antialias=True), to_uint8]
                                    if "crop" in augment else centered)
    test_set.transform = T.Compose(centered)
    return FolderData("imagefolder", train_set, test_set, torch.tensor(train_set.targets),
                      torch.tensor(test_set.targets), spec.mean, spec.std, train_set.classes, image_size, str(root))


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
    """The (index, seed) pairs of one epoch, given up front (so they depend only on the seed and the epoch)."""

    def __init__(self, order: torch.Tensor, seeds: torch.Tensor):
        self.order = list(zip(order.tolist(), seeds.tolist()))

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return len(self.order)


class FolderLoader(BatchLoader):
    """BatchLoader's interface over a FolderData split: workers decode, the device flips and normalizes."""

    def __init__(self, dataset, labels: torch.Tensor, batch_size: int, mean, std, *, train: bool,
                 augment: str = "none", seed: int = 0, device="cpu", channels_last: bool = False,
                 drop_last: bool | None = None, rank: int = 0, world_size: int = 1, workers: int = 0):
        super().__init__(torch.empty(0, dtype=torch.uint8), labels, batch_size, mean, std, train=train,
                         augment=augment, seed=seed, device="cpu", channels_last=channels_last,
                         drop_last=drop_last, rank=rank, world_size=world_size)
        self.device = torch.device(device)
        self.scale, self.shift = self.scale.to(self.device), self.shift.to(self.device)
        self.dataset, self.workers = dataset, workers

    def __iter__(self):
        # One seed per example of the epoch, drawn for every example and then sharded like the order,
        # so a sample's crop is the same whatever the number of processes or workers.
        n = len(self.labels)
        seeds = self._shard(torch.randint(0, 2**62, (n,), generator=torch.Generator().manual_seed(self._epoch_seed(2))))
        order = self._indices()
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        loader = torch.utils.data.DataLoader(
            _SeededSamples(self.dataset), batch_size=self.batch_size, sampler=_SeededOrder(order[:stop], seeds[:stop]),
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            # DataLoader draws its workers' base seed from this generator, not from the global one
            generator=torch.Generator().manual_seed(self._epoch_seed(3)))
        generator = torch.Generator().manual_seed(self._epoch_seed(1))
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            if "flip" in self.augment:   # crops were done by the workers (RandomResizedCrop)
                x = random_flip(x, (torch.rand(len(x), generator=generator) < 0.5).to(self.device))
            yield self.normalize(x), y.to(self.device, non_blocking=True)

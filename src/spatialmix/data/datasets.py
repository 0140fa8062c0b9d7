"""The small data sets: which exist, where their files are found, and the images in memory.

`DATASETS` is the table of data sets (file format, where the files sit, statistics, the
usual augmentation, how to get them). `load_dataset` finds one and holds it in memory as
uint8 tensors (`ImageData`); `spatialmix.data.files` reads the file formats,
`spatialmix.data.batches` turns the tensors into augmented batches, and image folders (too big
for memory) are `spatialmix.data.imagefolder`.

Files are looked for in this order: an explicit ``data_dir``; the ``SPATIALMIX_DATA``
environment variable; the operating system's data package (Debian's ``dataset-fashion-mnist``);
then torchvision's download into ``~/.cache/spatialmix`` (needs internet).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spatialmix.data.files import cifar_classes, load_cifar_dir, load_idx_dir
from spatialmix.errors import SpatialmixError, unknown_name

ENV_VAR = "SPATIALMIX_DATA"
DOWNLOAD_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spatialmix" / "data"

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str  # "idx", "cifar" or "folder"
    subdirs: tuple[str, ...]  # where the files sit below a root (torchvision's layouts too)
    system_dirs: tuple[str, ...]  # operating system data packages
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_augment: str
    torchvision_class: str | None
    how_to_get: str
    classes: list[str] = field(default_factory=list)
    holds: str = "its files"  # what the folder passed as --data-dir holds


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        "idx",
        ("", "fashion-mnist", "FashionMNIST/raw"),
        ("/usr/share/datasets/fashion-mnist",),
        (0.2860,),
        (0.3530,),
        "crop-flip",
        "FashionMNIST",
        "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir DIR with the four IDX "
        "files",
        FASHION_CLASSES,
        holds="the four IDX files",
    ),
    "mnist": DatasetSpec(
        "mnist",
        "idx",
        ("", "mnist", "MNIST/raw"),
        ("/usr/share/datasets/mnist",),
        (0.1307,),
        (0.3081,),
        "crop",
        "MNIST",
        "pass --data-dir DIR with the four MNIST IDX files, or run once with internet to download",
        [str(i) for i in range(10)],
        holds="the four MNIST IDX files",
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        "cifar",
        ("cifar-10-batches-py",),
        (),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "crop-flip",
        "CIFAR10",
        "pass --data-dir DIR holding cifar-10-batches-py/, or run once with internet",
        holds="cifar-10-batches-py/",
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        "cifar",
        ("cifar-100-python",),
        (),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "crop-flip",
        "CIFAR100",
        "pass --data-dir DIR holding cifar-100-python/, or run once with internet",
        holds="cifar-100-python/",
    ),
    "imagefolder": DatasetSpec(
        "imagefolder",
        "folder",
        ("",),
        (),
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        "crop-flip",
        None,
        "pass --data-dir DIR with train/ and val/ folders of class subfolders (ImageNet layout)",
        holds="train/ and val/",
    ),
}
"""Every data set `load_dataset` reads, by name: its file format, where its files are looked for, its
normalization, default augmentation and class names."""


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

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> ImageData:
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


def check_data_dir(data_dir: str | os.PathLike, spec: DatasetSpec) -> Path:
    """``data_dir`` if it is a folder; else one line saying whether it is missing or not a folder."""
    path = Path(data_dir)
    if path.is_dir():
        return path
    if path.exists():
        raise SpatialmixError(
            f"--data-dir {path} is a file, not a folder: pass the folder that holds {spec.holds}"
        )
    raise SpatialmixError(f"--data-dir {path} does not exist; {spec.how_to_get}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> ImageData:
    """Load a small data set into memory as uint8 tensors (see the module doc for the search order)."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    spec = DATASETS[name]
    if spec.format == "folder":
        raise SpatialmixError(
            "imagefolder data is streamed from disk, not held in memory; use "
            "spatialmix.data.imagefolder.load_image_folder(data_dir)"
        )
    if data_dir is not None:
        check_data_dir(data_dir, spec)
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
    return load_idx_dir(directory) if spec.format == "idx" else load_cifar_dir(directory, spec.name)


def _make_image_data(spec: DatasetSpec, directory: Path, tensors) -> ImageData:
    tr_x, tr_y, te_x, te_y = tensors
    num_classes = int(max(tr_y.max(), te_y.max())) + 1
    classes = spec.classes or (
        cifar_classes(directory, spec.name, num_classes)
        if spec.format == "cifar"
        else [str(i) for i in range(num_classes)]
    )
    if num_classes > len(classes):
        raise SpatialmixError(
            f"{directory}: labels go up to {num_classes - 1} but {spec.name} has "
            f"{len(classes)} classes; the files belong to another data set"
        )
    return ImageData(
        spec.name,
        tr_x.contiguous(),
        tr_y,
        te_x.contiguous(),
        te_y,
        spec.mean,
        spec.std,
        classes,
        str(directory),
    )


def _download(spec: DatasetSpec) -> Path:
    """torchvision's download, for users with internet. Returns the folder the files landed in."""
    import torchvision

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        for train in (True, False):
            cls(str(DOWNLOAD_ROOT), train=train, download=True)
    except Exception as err:
        raise SpatialmixError(
            f"{spec.name} is not on this machine and the download failed "
            f"({type(err).__name__}); {spec.how_to_get}"
        ) from None
    return DOWNLOAD_ROOT / spec.subdirs[-1]

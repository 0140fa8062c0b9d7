"""The on-disk formats of the small data sets, read into uint8 tensors with clear errors.

* IDX (MNIST, Fashion-MNIST), gzipped or not: `read_idx`, `load_idx_dir`;
* CIFAR-10/100's python pickles, read by an unpickler that admits only what rebuilds numpy
  arrays, so a crafted file cannot run code: `load_cifar_pickle`, `load_cifar_dir`.

A truncated or damaged file raises `SpatialmixError` saying to
re-download it. Where the files are looked for is `spatialmix.data`'s business.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from spatialmix.errors import SpatialmixError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


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
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise SpatialmixError(
            f"{path} is truncated or corrupt: header says {shape}, "
            f"found {len(data) - header} of {expected} bytes; re-download it"
        )
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy())


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dir(directory: Path) -> tuple[torch.Tensor, ...] | None:
    """Train and test images (N, 1, H, W) and labels from the four IDX files; ``None`` if any is missing."""
    paths = [_find_idx_file(directory, stem) for split in ("train", "test") for stem in IDX_FILES[split]]
    if any(p is None for p in paths):
        return None
    tr_x, tr_y, te_x, te_y = (read_idx(p) for p in paths)
    for images, labels, split in ((tr_x, tr_y, "train"), (te_x, te_y, "test")):
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise SpatialmixError(
                f"{directory}: {split} images {tuple(images.shape)} and labels "
                f"{tuple(labels.shape)} do not match; re-download the data set"
            )
    return tr_x[:, None], tr_y.long(), te_x[:, None], te_y.long()


class NotACifarBatch(pickle.UnpicklingError):
    """A pickle that asks for more than CIFAR's batches hold (a function to call, Python objects)."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batches without running code: the only globals admitted are those that
    rebuild numpy arrays (and bytes), so a crafted file cannot call anything else."""

    SAFE = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

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


def load_cifar_dir(directory: Path, name: str) -> tuple[torch.Tensor, ...] | None:
    """Read the python-pickle batches of CIFAR-10/100 (the format torchvision downloads)."""
    if name == "cifar10":
        train_files, test_files, label_key = (
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            "labels",
        )
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
            except NotACifarBatch as err:  # a crafted file: nothing of it ran
                raise SpatialmixError(
                    f"{directory / f} is not a CIFAR batch ({err}); refusing to load it: "
                    f"re-download the data set"
                ) from None
            except Exception as err:  # any unreadable batch is a corrupt download
                raise SpatialmixError(
                    f"{directory / f} is corrupt ({type(err).__name__}); re-download it"
                ) from None
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)

    return (*load(train_files), *load(test_files))


def cifar_classes(directory: Path, name: str, num: int) -> list[str]:
    """The class names in CIFAR's meta file (numbers when it is missing or unreadable)."""
    meta = directory / ("batches.meta" if name == "cifar10" else "meta")
    key = "label_names" if name == "cifar10" else "fine_label_names"
    try:
        return [str(c) for c in load_cifar_pickle(meta)[key]]
    except Exception:
        return [str(i) for i in range(num)]

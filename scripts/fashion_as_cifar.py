"""Write Fashion-MNIST as CIFAR-10's python batches (32 x 32 RGB), for the CIFAR code path offline.

A GPU machine without internet has no CIFAR-10, and random pixels teach nothing. Fashion-MNIST,
padded by 2 pixels to 32 x 32 and copied into 3 channels, is real, learnable data of CIFAR-10's
shape and file format, so ``--dataset cifar10 --data-dir OUT`` runs the paper preset's whole path
(loader, crop-flip augmentation, 32 x 32 models) end to end. Its accuracies are Fashion-MNIST's,
not CIFAR-10's: never report them as CIFAR-10 numbers.

    python scripts/fashion_as_cifar.py /usr/share/datasets/fashion-mnist OUT
    spatialmix train --dataset cifar10 --data-dir OUT ...
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from spatialmix.data.files import read_idx

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def as_cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 3072) uint8 in CIFAR's row layout (3 planes of 32 x 32)."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1).reshape(len(images), -1)


def write_batch(path: Path, rows: np.ndarray, labels: np.ndarray) -> None:
    with open(path, "wb") as fh:
        pickle.dump({"data": rows, "labels": [int(v) for v in labels]}, fh, protocol=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fashion_dir", type=Path)
    p.add_argument("out", type=Path, help="writes OUT/cifar-10-batches-py/")
    args = p.parse_args(argv)
    read = lambda name: read_idx(next(args.fashion_dir.glob(name + "*"))).numpy()
    train_x, train_y = read("train-images-idx3-ubyte"), read("train-labels-idx1-ubyte")
    test_x, test_y = read("t10k-images-idx3-ubyte"), read("t10k-labels-idx1-ubyte")
    out = args.out / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    train_rows = as_cifar_rows(train_x[:50000])  # CIFAR-10 has 50,000 training images in 5 batches
    for i in range(5):
        part = slice(10000 * i, 10000 * (i + 1))
        write_batch(out / f"data_batch_{i + 1}", train_rows[part], train_y[:50000][part])
    write_batch(out / "test_batch", as_cifar_rows(test_x), test_y)
    with open(out / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CLASSES}, fh, protocol=2)
    print(f"wrote {out}: 50,000 train / {len(test_x):,} test images, 32 x 32 x 3")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

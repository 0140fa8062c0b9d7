"""Shared fixtures: tiny fake data sets in the real file formats, tiny configs, saved runs.

Everything here is small on purpose: the whole suite runs on 2 shared CPU cores.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spatialmix
from spatialmix.data.datasets import ImageData

# Tiny tensors on a 2-core machine shared with other jobs: with two OpenMP threads every op
# spins waiting for a busy core and runs ~100x slower than with one. One thread is also what
# makes runs in-process and in subprocesses comparable bit for bit.
torch.set_num_threads(1)

SRC_DIR = Path(spatialmix.__file__).resolve().parents[1]
SUBPROCESS_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(SRC_DIR),
    "COLUMNS": "200",
    "PYTHONWARNINGS": "ignore",
}
SUBPROCESS_ENV.pop("SPATIALMIX_DATA", None)

IDX_TYPE_UBYTE = 0x08
# Where Debian's dataset-fashion-mnist puts the real data set (tests that need it skip without it).
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) in the IDX format of MNIST: magic 0 0 8 ndim, big-endian sizes, data.

    A name ending in ``.gz`` is gzipped, as the files are distributed.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_TYPE_UBYTE, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def fake_idx_arrays(n_train: int, n_test: int, seed: int, size: int = 28, num_classes: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % num_classes).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % num_classes).astype(np.uint8),
    }


def write_fake_idx_dir(
    directory: Path, n_train: int = 64, n_test: int = 32, seed: int = 0, gz: bool = True, size: int = 28
) -> dict:
    """Four IDX files of random images (labels cycle through the 10 classes); returns the arrays."""
    arrays = fake_idx_arrays(n_train, n_test, seed, size)
    for stem, array in arrays.items():
        write_idx(Path(directory) / (stem + (".gz" if gz else "")), array)
    return arrays


def snapshot_files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` and its exact bytes."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m spatialmix.cli ARGS`` in a fresh process, with the code under test."""
    return subprocess.run(
        [sys.executable, "-m", "spatialmix.cli", *args],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    """Tests decide themselves whether SPATIALMIX_DATA is set; tables are as wide as in a subprocess
    (pytest-xdist's workers inherit COLUMNS=80, a plain run none)."""
    monkeypatch.delenv("SPATIALMIX_DATA", raising=False)
    monkeypatch.setenv("COLUMNS", SUBPROCESS_ENV["COLUMNS"])


@pytest.fixture(scope="session")
def fake_fashion_dir(tmp_path_factory) -> Path:
    """A Fashion-MNIST look-alike (random 28 x 28 images) in gzipped IDX files: fast to load."""
    directory = tmp_path_factory.mktemp("fake-fashion")
    write_fake_idx_dir(directory, n_train=512, n_test=128, seed=1)
    return directory


@pytest.fixture(scope="session")
def tiny_data() -> ImageData:
    """An in-memory 1-channel 28 x 28 data set whose labels are learnable: the class is the bright
    band of rows (unchanged by the default horizontal flips, moved little by the crops)."""
    g = torch.Generator().manual_seed(0)

    def make(n):
        labels = torch.arange(n) % 4
        images = torch.randint(0, 64, (n, 1, 28, 28), generator=g).to(torch.uint8)
        for band in range(4):
            images[labels == band, :, band * 7 : (band + 1) * 7, :] += 150
        return images, labels

    train_x, train_y = make(256)
    test_x, test_y = make(64)
    return ImageData(
        "fashion-mnist",
        train_x,
        train_y,
        test_x,
        test_y,
        (0.3,),
        (0.3,),
        ["a", "b", "c", "d"],
        source="memory",
    )


TINY = dict(
    dataset="fashion-mnist",
    model="convmixer",
    width=16,
    depth=1,
    kernel_size=3,
    patch_size=4,
    epochs=1,
    batch_size=64,
    lr=0.01,
    progress=False,
)


@pytest.fixture
def tiny_config():
    """A factory of tiny TrainConfigs (ConvMixer-16/1, 1 epoch); keyword arguments change fields."""
    from spatialmix.engine.config import TrainConfig

    return lambda **changes: TrainConfig(**{**TINY, **changes})


def config_flags(config) -> list[str]:
    """The ``spatialmix train`` flags that rebuild ``config`` (every field that is not the default)."""
    from spatialmix.engine.config import TrainConfig

    default = TrainConfig()
    flags = []
    for name, value in config.to_dict().items():
        if value == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


class _StopAfterCheckpoint(Exception):
    pass


@pytest.fixture(scope="session")
def interrupted_run(tmp_path_factory, fake_fashion_dir):
    """A run of 2 epochs stopped right after the checkpoint of epoch 1, as a kill would leave it.

    Returns ``(run_dir, config)``; copy it (``run_copy``) before changing anything.
    """
    from spatialmix.engine.config import TrainConfig
    from spatialmix.engine.train import fit
    from spatialmix.io import runs

    config = TrainConfig(**{**TINY, "epochs": 2, "data_dir": str(fake_fashion_dir), "train_subset": 256})
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    real_save = runs.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise _StopAfterCheckpoint

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, "save_checkpoint", save_then_die)
        with pytest.raises(_StopAfterCheckpoint):
            fit(config, run_dir)
    return run_dir, config


@pytest.fixture
def run_copy(interrupted_run, tmp_path):
    """A private copy of the interrupted run: ``(run_dir, config)``."""
    src, config = interrupted_run
    dst = tmp_path / "existing-run"
    shutil.copytree(src, dst)
    return dst, config


class UnderFastKernels:
    """A module called within :class:`spatialmix.accel.speed.FastKernels` (the way training and attacks
    run it); every other attribute is the module's own."""

    def __init__(self, module, attack: bool = False):
        self.module, self.attack = module, attack

    def __call__(self, *args):
        from spatialmix.accel.speed import FastKernels

        with FastKernels(attack=self.attack):
            return self.module(*args)

    def __getattr__(self, name):
        return getattr(self.module, name)

"""Data: the real file formats, where files are looked for, clear errors, and the batch loader."""

from __future__ import annotations

import dataclasses
import gzip
import pickle

import numpy as np
import pytest
import torch

from conftest import SYSTEM_FASHION_MNIST, write_fake_idx_dir, write_idx
from spatialmix.data import datasets as data_mod
from spatialmix.data.batches import BatchLoader, Normalize, random_crop, random_flip, to_unit_range
from spatialmix.data.datasets import DATASETS, ENV_VAR, load_dataset
from spatialmix.data.files import read_idx
from spatialmix.errors import SpatialmixError


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """Point the OS package location and the download cache at empty folders."""
    os_dir = tmp_path / "os-package"
    for name in ("fashion-mnist", "mnist"):
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], system_dirs=(str(os_dir),)))
    monkeypatch.setattr(data_mod, "DOWNLOAD_ROOT", tmp_path / "download-cache")
    return os_dir


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_through_data_dir(tmp_path, gz):
    arrays = write_fake_idx_dir(tmp_path, n_train=30, n_test=12, seed=3, gz=gz)
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert data.train_images.shape == (30, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (12, 1, 28, 28)
    assert np.array_equal(data.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data.test_images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert (data.in_chans, data.image_size, data.num_classes) == (1, 28, 10)
    assert data.classes[0] == "T-shirt/top" and data.source == str(tmp_path)


def test_idx_files_in_torchvision_layout(tmp_path):
    arrays = write_fake_idx_dir(tmp_path / "MNIST" / "raw", n_train=20, n_test=10, seed=4, gz=False)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert np.array_equal(data.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert data.classes == [str(i) for i in range(10)]


def test_read_idx_reads_the_header_shape(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    assert torch.equal(read_idx(write_idx(tmp_path / "a", array)), torch.from_numpy(array))
    assert torch.equal(read_idx(write_idx(tmp_path / "a.gz", array)), torch.from_numpy(array))


def test_lookup_order(tmp_path, monkeypatch, no_system_data):
    # Three complete data sets told apart by their sizes.
    write_fake_idx_dir(no_system_data, n_train=11, n_test=3)
    env_dir, explicit_dir = tmp_path / "env", tmp_path / "explicit"
    write_fake_idx_dir(env_dir, n_train=12, n_test=3)
    write_fake_idx_dir(explicit_dir, n_train=13, n_test=3)

    assert len(load_dataset("fashion-mnist", download=False).train_labels) == 11
    monkeypatch.setenv(ENV_VAR, str(env_dir))
    assert len(load_dataset("fashion-mnist", download=False).train_labels) == 12
    assert len(load_dataset("fashion-mnist", data_dir=explicit_dir, download=False).train_labels) == 13
    # An environment variable naming an empty folder falls through to the OS package.
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "empty"))
    data = load_dataset("fashion-mnist", download=False)
    assert len(data.train_labels) == 11 and data.source == str(no_system_data)


@pytest.mark.skipif(
    not SYSTEM_FASHION_MNIST.is_dir(),
    reason="needs the OS package dataset-fashion-mnist (scripts/setup.sh installs it)",
)
def test_real_fashion_mnist_is_found_at_the_os_location():
    assert "/usr/share/datasets/fashion-mnist" in DATASETS["fashion-mnist"].system_dirs
    data = load_dataset("fashion-mnist", download=False)
    assert data.source == "/usr/share/datasets/fashion-mnist"
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    # The stored statistics are the data set's own.
    x = data.train_images.double() / 255
    assert x.mean().item() == pytest.approx(data.mean[0], abs=5e-4)
    assert x.std().item() == pytest.approx(data.std[0], abs=5e-4)


def test_missing_data_names_where_it_looked(tmp_path, monkeypatch, no_system_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpatialmixError) as err:
        load_dataset("fashion-mnist", data_dir=empty)
    message = str(err.value)
    assert "fashion-mnist not found" in message and str(empty) in message
    assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message

    monkeypatch.setenv(ENV_VAR, str(empty))
    with pytest.raises(SpatialmixError) as err:
        load_dataset("mnist", download=False)
    message = str(err.value)
    assert str(empty) in message and str(no_system_data) in message and "--data-dir" in message

    with pytest.raises(SpatialmixError, match="does not exist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(SpatialmixError) as err:
        load_dataset("svhn")
    assert "unknown dataset 'svhn'" in str(err.value) and "cifar10" in str(err.value)
    with pytest.raises(
        SpatialmixError, match=r"use spatialmix\.data\.imagefolder\.load_image_folder\(data_dir\)"
    ):
        load_dataset("imagefolder", data_dir=empty)


def _complete_then(tmp_path, stem, damage, gz):
    write_fake_idx_dir(tmp_path, n_train=20, n_test=10, gz=gz)
    path = tmp_path / (stem + (".gz" if gz else ""))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SpatialmixError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    return str(err.value)


def test_truncated_idx_file_gives_a_clear_error(tmp_path):
    message = _complete_then(tmp_path, "train-images-idx3-ubyte", lambda b: b[:-100], gz=False)
    assert "truncated or corrupt" in message and "re-download" in message


def test_truncated_gzipped_idx_file_gives_a_clear_error(tmp_path):
    message = _complete_then(tmp_path, "train-images-idx3-ubyte", lambda b: b[: len(b) // 2], gz=True)
    assert "truncated or corrupt" in message


def test_idx_file_that_is_not_gzip_gives_a_clear_error(tmp_path):
    _complete_then(tmp_path, "t10k-labels-idx1-ubyte", lambda b: b"<html>not found</html>", gz=True)


def test_idx_file_with_bad_magic_gives_a_clear_error(tmp_path):
    message = _complete_then(tmp_path, "train-labels-idx1-ubyte", lambda b: b"\x00\x00\x0d" + b[3:], gz=False)
    assert "magic" in message


def test_images_and_labels_of_different_lengths(tmp_path):
    write_fake_idx_dir(tmp_path, n_train=20, n_test=10, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(SpatialmixError, match="do not match"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------- CIFAR pickles


def write_cifar(root, name, n_per_file, seed=0):
    """CIFAR python batches as torchvision downloads them: dicts of data (N, 3072) uint8 + labels."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, key, num = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
            "labels",
            10,
        )
        meta, meta_key = "batches.meta", "label_names"
    else:
        folder, files, key, num = root / "cifar-100-python", ["train", "test"], "fine_labels", 100
        meta, meta_key = "meta", "fine_label_names"
    folder.mkdir(parents=True)
    images = {}
    for f in files:
        x = rng.integers(0, 256, (n_per_file, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num, n_per_file)]
        entry = {
            "batch_label": f,
            "data": x.reshape(n_per_file, 3072),
            key: labels,
            "filenames": [f"img{i}.png" for i in range(n_per_file)],
        }
        if name == "cifar100":
            entry["coarse_labels"] = [v // 5 for v in labels]
        with open(folder / f, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        images[f] = (x, labels)
    with open(folder / meta, "wb") as fh:
        pickle.dump({meta_key: [f"class{i}" for i in range(num)]}, fh, protocol=2)
    return folder, images


def test_cifar10_pickles_load(tmp_path):
    _, batches = write_cifar(tmp_path, "cifar10", 7)
    data = load_dataset("cifar10", data_dir=tmp_path)
    train_x = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_y = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert data.train_images.shape == (35, 3, 32, 32) and data.test_images.shape == (7, 3, 32, 32)
    assert np.array_equal(data.train_images.numpy(), train_x)
    assert data.train_labels.tolist() == train_y
    assert np.array_equal(data.test_images.numpy(), batches["test_batch"][0])
    assert data.test_labels.tolist() == batches["test_batch"][1]
    assert data.classes == [f"class{i}" for i in range(10)] and data.in_chans == 3
    # Channel order: the first 1024 bytes of a row are the red plane.
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        row = pickle.load(f, encoding="latin1")["data"][0]
    assert np.array_equal(data.train_images[0, 0].numpy().ravel(), row[:1024])
    assert np.array_equal(data.train_images[0, 2].numpy().ravel(), row[2048:])


def test_cifar100_pickles_load_fine_labels(tmp_path):
    _, batches = write_cifar(tmp_path, "cifar100", 9)
    data = load_dataset("cifar100", data_dir=tmp_path)
    assert data.train_images.shape == (9, 3, 32, 32)
    assert data.train_labels.tolist() == batches["train"][1]
    assert data.num_classes == 100


def test_corrupt_cifar_batch_gives_a_clear_error(tmp_path):
    folder, _ = write_cifar(tmp_path, "cifar10", 3)
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(SpatialmixError, match="data_batch_3 is corrupt"):
        load_dataset("cifar10", data_dir=tmp_path)


class _MakesAFile:
    """What an attacker pickles: unpickling it calls ``open(path, "w")``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("where", ["batch", "meta", "inside-array"])
def test_a_cifar_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, where):
    folder, _ = write_cifar(tmp_path, "cifar10", 3)
    marker = tmp_path / "pwned"
    if where == "batch":
        entry = {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2], "x": _MakesAFile(marker)}
        target = folder / "data_batch_2"
    elif where == "meta":
        entry = {"label_names": [_MakesAFile(marker)]}
        target = folder / "batches.meta"
    else:
        data = np.empty(1, dtype=object)
        data[0] = _MakesAFile(marker)
        entry = {"data": data, "labels": [0]}
        target = folder / "test_batch"
    with open(target, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)
    if where == "meta":  # class names are optional: the numbers are used instead
        assert load_dataset("cifar10", data_dir=tmp_path).classes == [str(i) for i in range(10)]
    else:
        with pytest.raises(
            SpatialmixError, match=f"{target.name} is not a CIFAR batch .*refusing to load it"
        ):
            load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


# --------------------------------------------------------------------------- subsets


def test_subset_is_seeded(tmp_path):
    write_fake_idx_dir(tmp_path, n_train=50, n_test=20)
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    a, b, c = data.subset(10, 5, seed=1), data.subset(10, 5, seed=1), data.subset(10, 5, seed=2)
    assert len(a.train_labels) == 10 and len(a.test_labels) == 5
    assert torch.equal(a.train_images, b.train_images) and not torch.equal(a.train_images, c.train_images)
    # A subset is made of real examples with their own labels.
    for img, label in zip(a.train_images, a.train_labels):
        hits = (data.train_images == img).flatten(1).all(1).nonzero().flatten()
        assert label in data.train_labels[hits]
    assert data.subset(None, None).train_images is data.train_images


# --------------------------------------------------------------------------- batches


def make_loader(n=50, batch=8, train=True, augment="none", seed=0, chans=1, size=12, **kw):
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (n, chans, size, size), generator=g).to(torch.uint8)
    labels = torch.arange(n)  # labels double as example ids
    mean, std = (0.2, 0.5, 0.7)[:chans], (0.3, 0.25, 0.2)[:chans]
    return BatchLoader(
        images, labels, batch, mean, std, train=train, augment=augment, seed=seed, **kw
    ), images


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_same_seed_and_epoch_give_identical_batches():
    a, _ = make_loader(augment="crop-flip", seed=3)
    b, _ = make_loader(augment="crop-flip", seed=3)
    for (xa, ya), (xb, yb) in zip(epoch_batches(a, 2), epoch_batches(b, 2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = lambda loader, e: torch.cat([y for _, y in epoch_batches(loader, e)])
    assert not torch.equal(order(a, 0), order(a, 1))
    c, _ = make_loader(augment="crop-flip", seed=4)
    assert not torch.equal(order(a, 0), order(c, 0))


def test_training_epoch_is_a_permutation():
    loader, _ = make_loader(n=50, batch=8)
    ids = torch.cat([y for _, y in epoch_batches(loader, 0)])
    # drop_last: 6 whole batches, 48 distinct examples.
    assert len(loader) == 6 and len(ids) == 48 and len(set(ids.tolist())) == 48


def test_eval_loader_covers_every_example_once_in_order():
    loader, images = make_loader(n=50, batch=8, train=False, augment="crop-flip")
    batches = list(loader)
    assert len(loader) == len(batches) == 7 and len(batches[-1][1]) == 2
    ids = torch.cat([y for _, y in batches])
    assert ids.tolist() == list(range(50))
    # Evaluation never augments.
    x = torch.cat([x for x, _ in batches])
    torch.testing.assert_close(x, loader.normalize(images))


def test_normalization_matches_the_formula():
    loader, images = make_loader(n=10, batch=10, train=False, chans=3)
    x, _ = next(iter(loader))
    mean = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.3, 0.25, 0.2], dtype=torch.float64).view(1, 3, 1, 1)
    expected = (images.double() / 255 - mean) / std
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-5)
    # Normalize (inside a model) does the same on [0, 1] inputs.
    torch.testing.assert_close(
        Normalize(mean.flatten().tolist(), std.flatten().tolist())(to_unit_range(images)),
        expected.float(),
        rtol=0,
        atol=1e-5,
    )


def reference_crop(image, dy, dx, pad):
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    padded[:, pad : pad + h, pad : pad + w] = image
    return padded[:, dy : dy + h, dx : dx + w]


def test_random_crop_equals_per_sample_slicing():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 2, 10, 10), generator=g).to(torch.uint8)
    pad = 3
    offsets = torch.randint(0, 2 * pad + 1, (6, 2), generator=g)
    out = random_crop(x, offsets, pad)
    for i in range(6):
        assert torch.equal(out[i], reference_crop(x[i], int(offsets[i, 0]), int(offsets[i, 1]), pad))
    flips = torch.tensor([True, False, True, False, False, True])
    flipped = random_flip(x, flips)
    for i in range(6):
        assert torch.equal(flipped[i], x[i].flip(-1) if flips[i] else x[i])


def test_loader_crops_are_translations_of_the_original():
    loader, images = make_loader(n=16, batch=16, augment="crop", size=16)
    x, ids = next(iter(loader))
    pad = 16 // 8
    # Undo the normalization to get the uint8 pixels back.
    as_uint8 = ((x.double() - loader.shift.double()) / loader.scale.double()).round().to(torch.uint8)
    shifted = 0
    for img, i in zip(as_uint8, ids):
        candidates = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(img, reference_crop(images[i], dy, dx, pad))
        ]
        assert candidates, f"example {i} is not a translated crop"
        shifted += (pad, pad) not in candidates
    assert shifted > 0


def test_channels_last_batches():
    loader, _ = make_loader(chans=3, channels_last=True)
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_unknown_augmentation():
    with pytest.raises(SpatialmixError, match="unknown augmentation 'cutmix'"):
        make_loader(augment="cutmix")


def test_gzip_helper_round_trip(tmp_path):
    # The fixture writer must produce what the real distribution looks like: a gzip stream of IDX.
    array = np.ones((2, 4), np.uint8)
    path = write_idx(tmp_path / "x.gz", array)
    raw = gzip.decompress(path.read_bytes())
    assert raw[:4] == bytes([0, 0, 8, 2]) and raw[4:12] == (2).to_bytes(4, "big") + (4).to_bytes(4, "big")

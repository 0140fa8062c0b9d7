"""Image folders (ImageNet layout): loading, batches, and real training runs on generated PNGs that are
reproducible bit for bit (crops seeded from (seed, epoch), in any worker) and honour --augment."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from spatialmix.data.imagefolder import FolderLoader, load_image_folder
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.train import fit
from spatialmix.errors import SpatialmixError


def write_folder(root, classes=("cat", "dog", "eel"), per_class=(6, 3), size=20):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
                pixels[..., c] = 255  # each class has one saturated colour channel
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_folder_loads_classes_labels_and_crops(tmp_path):
    data = load_image_folder(write_folder(tmp_path), image_size=16)
    assert data.classes == ["cat", "dog", "eel"] and data.num_classes == 3 and data.in_chans == 3
    assert len(data.train_labels) == 18 and len(data.test_labels) == 9
    assert data.train_labels.tolist() == sorted(data.train_labels.tolist())
    image, label = data.test_set[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and label == 0


def test_folder_loader_normalizes_like_the_formula_and_covers_every_example(tmp_path):
    data = load_image_folder(write_folder(tmp_path), image_size=16)
    loader = FolderLoader(data.test_set, data.test_labels, 4, data.mean, data.std, train=False, workers=0)
    xs, ys = zip(*loader)
    assert sorted(torch.cat(ys).tolist()) == sorted(data.test_labels.tolist())
    raw = torch.stack([data.test_set[i][0] for i in range(len(data.test_labels))]).float() / 255
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat(xs), (raw - mean) / std, rtol=1e-5, atol=1e-5)


def test_training_on_an_image_folder_finishes_and_freezes(tmp_path):
    config = TrainConfig(
        dataset="imagefolder",
        data_dir=str(write_folder(tmp_path / "data")),
        image_size=16,
        workers=0,
        model="convmixer",
        width=8,
        depth=1,
        kernel_size=3,
        patch_size=4,
        mode="chans",
        epochs=1,
        batch_size=6,
        progress=False,
    )
    summary = fit(config, tmp_path / "run")
    assert summary["epochs"] == 1 and summary["frozen_params"] == 8 * 9 + 8  # depthwise weight + bias
    assert summary["frozen_unchanged"] is True


@pytest.mark.parametrize("layout", ["missing", "no-val", "empty-classes"])
def test_bad_folders_give_one_clear_error(tmp_path, layout):
    root = tmp_path / "data"
    if layout == "no-val":
        (root / "train" / "a").mkdir(parents=True)
    elif layout == "empty-classes":
        (root / "train" / "a").mkdir(parents=True)
        (root / "val" / "a").mkdir(parents=True)
    with pytest.raises(SpatialmixError) as err:
        load_image_folder(root, 16)
    assert "\n" not in str(err.value) and ("train/" in str(err.value) or "folder" in str(err.value))


# --------------------------------------------------------------------------- reproducible and honest


def folder_config(root, **changes):
    return TrainConfig(
        **{
            **dict(
                dataset="imagefolder",
                data_dir=str(root),
                image_size=16,
                workers=0,
                model="convmixer",
                width=8,
                depth=1,
                kernel_size=3,
                patch_size=4,
                mode="chans",
                epochs=2,
                batch_size=6,
                progress=False,
            ),
            **changes,
        }
    )


def weights_of(run_dir):
    from spatialmix.io import runs

    return load_file(str(runs.latest_checkpoint(run_dir) / runs.MODEL_FILE))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_identical_folder_runs_end_bitwise_equal(tmp_path):
    """Crops came from the process-global generator: two identical runs differed (0.229 vs 0.186)."""
    root = write_folder(tmp_path / "data")
    first = fit(folder_config(root), tmp_path / "a")
    torch.manual_seed(12345)  # whatever the global generator holds, the run is the same
    second = fit(folder_config(root), tmp_path / "b")
    assert first["test_acc"] == second["test_acc"]
    assert_same_weights(weights_of(tmp_path / "a"), weights_of(tmp_path / "b"))


def test_worker_processes_give_the_batches_of_the_main_process(tmp_path):
    data = load_image_folder(write_folder(tmp_path), image_size=16)
    batches = {}
    for workers in (0, 1):
        loader = FolderLoader(
            data.train_set,
            data.train_labels,
            6,
            data.mean,
            data.std,
            train=True,
            augment="crop-flip",
            seed=3,
            workers=workers,
        )
        loader.set_epoch(1)
        batches[workers] = list(loader)
    for (x0, y0), (x1, y1) in zip(batches[0], batches[1], strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_a_killed_folder_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from spatialmix.io import runs

    root = write_folder(tmp_path / "data")
    straight = fit(folder_config(root), tmp_path / "straight")
    real_save = runs.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(runs, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        fit(folder_config(root), tmp_path / "killed")
    monkeypatch.setattr(runs, "save_checkpoint", real_save)
    torch.manual_seed(999)
    resumed = fit(folder_config(root), tmp_path / "killed", resume=True)
    assert resumed["test_acc"] == straight["test_acc"]
    assert_same_weights(weights_of(tmp_path / "straight"), weights_of(tmp_path / "killed"))


@pytest.mark.parametrize(
    "augment,random", [("none", False), ("flip", False), ("crop", True), ("crop-flip", True)]
)
def test_augment_is_honoured_for_folders(tmp_path, augment, random):
    """--augment none used to crop anyway (RandomResizedCrop always)."""
    data = load_image_folder(write_folder(tmp_path), image_size=16, augment=augment)
    draws = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        draws.append(data.train_set[0][0])
    same = all(torch.equal(draws[0], d) for d in draws[1:])
    assert same != random
    if not random:  # resized and center-cropped like the test images
        assert torch.equal(
            draws[0], data.test_set.transform(data.train_set.loader(data.train_set.samples[0][0]))
        )


def test_no_data_dir_never_reads_the_current_folder(tmp_path, monkeypatch):
    write_folder(tmp_path)
    monkeypatch.chdir(tmp_path)  # a folder that would load
    with pytest.raises(SpatialmixError) as err:
        load_image_folder(None, 16)
    assert "--data-dir" in str(err.value) and "SPATIALMIX_DATA" in str(err.value)
    monkeypatch.setenv("SPATIALMIX_DATA", str(tmp_path))
    assert load_image_folder(None, 16).num_classes == 3


def test_default_image_size_is_the_images_own(tmp_path):
    """A folder of 20 x 24 images was silently upscaled to 224."""
    data = load_image_folder(write_folder(tmp_path))
    assert data.image_size == 20 and data.test_set[0][0].shape == (3, 20, 20)


def test_default_workers_are_the_available_cores():
    import os

    from spatialmix.engine.loaders import resolve_workers

    assert TrainConfig().workers is None
    assert resolve_workers(None) == len(os.sched_getaffinity(0))
    assert resolve_workers(3) == 3

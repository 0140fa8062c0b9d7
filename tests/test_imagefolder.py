"""Image folders (ImageNet layout): loading, batches, and a real training run on generated PNGs."""
import numpy as np
import pytest
import torch
from PIL import Image

from spatialmix.data import FolderLoader, load_image_folder
from spatialmix.errors import SpatialmixError
from spatialmix.train import TrainConfig, train


def write_folder(root, classes=("cat", "dog", "eel"), per_class=(6, 3), size=20):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
                pixels[..., c] = 255   # each class has one saturated colour channel
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
    config = TrainConfig(dataset="imagefolder", data_dir=str(write_folder(tmp_path / "data")), image_size=16,
                         workers=0, model="convmixer", width=8, depth=1, kernel_size=3, patch_size=4,
                         mode="chans", epochs=1, batch_size=6, progress=False)
    summary = train(config, tmp_path / "run")
    assert summary["epochs"] == 1 and summary["frozen_params"] == 8 * 9 + 8   # depthwise weight + bias
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

"""Pixel un-shuffling: the permutation, its file, the task in the training loop, metrics, study and CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SUBPROCESS_ENV, snapshot_files
from spatialmix.cli.main import main
from spatialmix.core.mixing import CHANNEL, HEAD, SPATIAL, STEM_OR_FULL, classify_layers, summarize
from spatialmix.data.datasets import ImageData
from spatialmix.data.permutation import PERMUTATION_FILE, PixelPermutation, make_permutation
from spatialmix.engine.tasks import build_model, task_from_dict
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.engine.unshuffle import (
    UNSHUFFLE_PRESETS,
    UnshuffleTask,
    psnr,
    scrambled_floor,
    ssim,
    unshuffle_config,
)
from spatialmix.engine.unshuffle_train import load_run_permutation, train_unshuffle
from spatialmix.errors import SpatialmixError
from spatialmix.io import run_files, runs
from spatialmix.models.unshufflenet import UnshuffleNet
from spatialmix.studies.unshuffle import CURVES_FILE, FIGURE_FILE, TABLE_FILES, unshuffle_study

TINY = dict(width=8, depth=1, kernel_size=3, epochs=1, batch_size=32, lr=0.01, progress=False)


def structured_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """Dark 28 x 28 images with one or two bright rectangles: spatial structure a model could use."""
    images = torch.randint(0, 30, (n, 1, 28, 28), generator=generator).to(torch.uint8)
    for i in range(n):
        for _ in range(1 + i % 2):
            top, left = torch.randint(0, 20, (2,), generator=generator).tolist()
            height, width = torch.randint(4, 9, (2,), generator=generator).tolist()
            images[i, :, top : top + height, left : left + width] = int(
                torch.randint(150, 256, (1,), generator=generator)
            )
    return images


@pytest.fixture(scope="module")
def shapes_data() -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData(
        "fashion-mnist",
        structured_images(512, g),
        torch.arange(512) % 10,
        structured_images(128, g),
        torch.arange(128) % 10,
        (0.15,),
        (0.3,),
        [str(i) for i in range(10)],
        source="memory",
    )


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spatialmix: error: "), err
    return err


# --------------------------------------------------------------------------- the permutation


@pytest.mark.parametrize("size,window", [(28, None), (28, 1), (28, 4), (28, 7), (28, 28), (32, 8)])
def test_permutation_is_a_bijection_with_its_inverse(size, window):
    perm = make_permutation(size, seed=3, window=window)
    n = size * size
    assert torch.equal(torch.sort(perm.source).values, torch.arange(n))
    assert torch.equal(perm.inverse[perm.source], torch.arange(n))
    assert torch.equal(perm.source[perm.inverse], torch.arange(n))
    if window is None:
        assert perm.moved_fraction() > 0.99
    if window == 1:
        assert torch.equal(perm.source, torch.arange(n))


def test_scrambling_then_the_stored_inverse_gives_back_the_image_exactly(tmp_path):
    perm = make_permutation(28, seed=5)
    perm.save(tmp_path / PERMUTATION_FILE)
    stored = load_file(str(tmp_path / PERMUTATION_FILE))
    assert torch.equal(stored["inverse"], torch.argsort(stored["source"]))
    loaded = PixelPermutation.load(tmp_path / PERMUTATION_FILE, image_size=28)
    assert loaded == perm and (loaded.seed, loaded.window) == (5, None)

    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    scrambled = loaded.scramble(images)
    assert not torch.equal(scrambled, images)
    # position i of the scrambled image holds the whole pixel (all channels) from position source[i]
    src = stored["source"]
    for i in (0, 100, 500, 783):
        assert torch.equal(scrambled[:, :, i // 28, i % 28], images[:, :, src[i] // 28, src[i] % 28])
    assert torch.equal(loaded.unscramble(scrambled), images)
    floats = torch.randn(4, 3, 28, 28).contiguous(memory_format=torch.channels_last)
    assert torch.equal(loaded.unscramble(loaded.scramble(floats)), floats)


@pytest.mark.parametrize("window", [2, 4, 7, 14])
def test_windowed_permutations_only_move_pixels_within_their_window(window):
    perm = make_permutation(28, seed=1, window=window)
    target = torch.arange(28 * 28)
    same_tile_row = (perm.source // 28) // window == (target // 28) // window
    same_tile_col = (perm.source % 28) // window == (target % 28) // window
    assert bool((same_tile_row & same_tile_col).all())
    assert perm.moved_fraction() > 1 - 2 / window**2  # most pixels do move


def test_a_window_that_does_not_divide_the_image_is_refused():
    with pytest.raises(
        SpatialmixError,
        match=r"window 5 does not divide the 28 x 28 image; choose one of "
        r"1, 2, 4, 7, 14, 28",
    ):
        make_permutation(28, window=5)
    with pytest.raises(SpatialmixError, match="positive whole number"):
        make_permutation(28, window=0)


def test_a_permutation_file_of_another_image_size_or_damaged_is_refused(tmp_path):
    make_permutation(32, seed=0).save(tmp_path / "p32.safetensors")
    with pytest.raises(SpatialmixError, match=r"scrambles 32 x 32 images but these images are 28 x 28"):
        PixelPermutation.load(tmp_path / "p32.safetensors", image_size=28)
    perm = make_permutation(28)
    runs.save_weights(
        tmp_path / "bad.safetensors",
        {"source": torch.zeros(784, dtype=torch.int64), "inverse": perm.inverse},
        metadata={"format": "spatialmix-pixel-permutation/1", "image_size": "28", "seed": "0", "window": ""},
    )
    with pytest.raises(SpatialmixError, match="not a permutation of 784 pixel positions"):
        PixelPermutation.load(tmp_path / "bad.safetensors")
    with pytest.raises(SpatialmixError, match="not a spatialmix pixel permutation"):
        runs.save_weights(tmp_path / "other.safetensors", {"w": torch.zeros(3)})
        PixelPermutation.load(tmp_path / "other.safetensors")


# --------------------------------------------------------------------------- metrics


def test_psnr_and_ssim_match_values_computed_independently():
    g = torch.Generator().manual_seed(0)
    image = 0.25 + 0.5 * torch.rand(3, 1, 32, 32, generator=g)
    for delta in (1 / 16, 1 / 64):  # +-delta everywhere: MSE is exactly delta^2, no clipping
        signs = torch.randint(0, 2, image.shape, generator=g).float() * 2 - 1
        noisy = image + delta * signs
        assert torch.allclose(psnr(noisy, image), torch.full((3,), 10 * math.log10(1 / delta**2)), atol=1e-3)
    assert torch.allclose(ssim(image, image), torch.ones(3), atol=1e-5)
    light = ssim(image + 0.02 * torch.randn(image.shape, generator=g), image)
    heavy = ssim(image + 0.2 * torch.randn(image.shape, generator=g), image)
    assert bool((heavy < light).all()) and bool((light < 0.999).all())
    # constant images a and b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * range)^2
    a, b, c1 = 0.5, 0.25, 0.01**2
    got = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b))
    assert got.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-5)
    # images smaller than the 11-pixel window still get a value (the window shrinks)
    assert ssim(image[..., :7, :7], image[..., :7, :7]).tolist() == pytest.approx([1.0] * 3, abs=1e-5)


class _Oracle(torch.nn.Module):
    """Undoes the permutation exactly: the best possible model."""

    def __init__(self, perm):
        super().__init__()
        self.perm = perm
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.perm.unscramble(x)


def test_task_evaluation_scores_the_oracle_perfectly_and_the_identity_as_the_floor(shapes_data):
    from spatialmix.engine.loaders import make_loaders

    task = UnshuffleTask(perm_seed=2)
    config = unshuffle_config("small", width=8, depth=1, progress=False)
    _, test_loader = make_loaders(config, shapes_data, torch.device("cpu"))
    perm = task.permutation_for(28)
    oracle = task.evaluate(_Oracle(perm), test_loader, torch.device("cpu"))
    assert oracle["loss"] < 1e-10 and oracle["psnr"] > 90 and oracle["ssim"] == pytest.approx(1, abs=1e-5)
    identity = task.evaluate(torch.nn.Identity(), test_loader, torch.device("cpu"))
    floor = scrambled_floor(shapes_data.test_images, perm)
    assert identity["n"] == floor["n"] == 128
    assert identity["psnr"] == pytest.approx(floor["psnr"], abs=1e-3)
    assert identity["ssim"] == pytest.approx(floor["ssim"], abs=1e-4)
    # each image's PSNR, in test-set order, to 0.01 dB: the same for the identity and the floor
    per_image = identity["per_example"]["test_psnr_per_example"]
    assert len(per_image) == 128 and per_image == floor["psnr_per_example"]
    assert np.mean(per_image) == pytest.approx(identity["psnr"], abs=0.005)


# --------------------------------------------------------------------------- model, presets, task


def test_unshufflenet_keeps_the_resolution_and_presets_apply_the_modes():
    large = UNSHUFFLE_PRESETS["large"].config
    assert (large.depth, large.width, large.kernel_size, large.patch_size, large.augment) == (
        16,
        512,
        7,
        1,
        "none",
    )
    model = build_model(large.replace(mode="chans"), 3, 10, 32, UnshuffleTask())
    assert isinstance(model, UnshuffleNet) and model(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    kinds = classify_layers(model)
    assert (
        list(kinds.values()).count(SPATIAL) == 16
        and kinds["head"] == HEAD
        and kinds["stem.0"] == STEM_OR_FULL
    )
    rows = {r["kind"]: r for r in summarize(model).rows}
    assert rows[SPATIAL]["trainable"] == 0 and rows[SPATIAL]["frozen"] == 16 * 512 * (49 + 1)
    space = build_model(UNSHUFFLE_PRESETS["small"].config.replace(mode="space"), 1, 10, 28, UnshuffleTask())
    rows = {r["kind"]: r for r in summarize(space).rows}
    assert rows[CHANNEL]["trainable"] == 0 and rows[SPATIAL]["frozen"] == 0 and rows[HEAD]["frozen"] == 0
    assert rows[STEM_OR_FULL]["frozen"] == 0  # the 1 x 1 stem is learned in every mode


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: UnshuffleTask(loss="huber"), "unknown loss 'huber'; choose one of: l1, mse"),
        (
            lambda: unshuffle_config("medium"),
            "unknown un-shuffling preset 'medium'; choose one of: hour, large, small",
        ),
        (lambda: unshuffle_config("small", augment="flip"), "un-shuffling fixes ['augment']"),
        (lambda: unshuffle_config("small", colour=1), "unknown training settings ['colour']"),
        (lambda: UnshuffleNet(8, 1, 3, patch_size=2, in_chans=1), "patch size must be 1"),
        (lambda: unshuffle_study("/nonexistent/study", mode="chans"), "pass modes=[...] instead of mode="),
    ],
)
def test_bad_settings_give_one_clear_error(make, message):
    with pytest.raises(SpatialmixError) as info:
        make()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_task_refuses_augmentation_before_writing_anything(shapes_data, tmp_path):
    config = unshuffle_config("small", **TINY).replace(augment="crop-flip")
    with pytest.raises(SpatialmixError, match="augment='none'"):
        fit(config, tmp_path / "run", data=shapes_data, task=UnshuffleTask())
    assert not (tmp_path / "run").exists()


class _RecordingTask(UnshuffleTask):
    """Keeps every (inputs, targets) the loop asks for, and every input the model sees in eval mode."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.train_batches, self.eval_inputs = [], []

    def batch(self, x, y):
        inputs, targets = super().batch(x, y)
        self.train_batches.append((inputs.clone(), targets.clone()))
        return inputs, targets

    def evaluate(self, model, loader, device, amp="none"):
        hook = model.register_forward_pre_hook(lambda m, args: self.eval_inputs.append(args[0].clone()))
        self.batch = super().batch  # evaluation batches are recorded by the hook, not here
        try:
            return super().evaluate(model, loader, device, amp)
        finally:
            hook.remove()
            del self.batch


def test_train_and_test_are_scrambled_by_the_one_stored_permutation(shapes_data, tmp_path):
    task = _RecordingTask(perm_seed=4, window=7)
    config = unshuffle_config("small", **TINY, train_subset=128)
    train_unshuffle(config, tmp_path / "run", task=task, data=shapes_data)
    stored = PixelPermutation.load(tmp_path / "run" / PERMUTATION_FILE, 28)
    assert stored == make_permutation(28, 4, 7) and load_run_permutation(tmp_path / "run") == stored
    mean, std = 0.15, 0.3

    def to_uint8(x):
        return torch.round((x * std + mean) * 255).to(torch.uint8)

    train_set = {bytes(img.numpy().tobytes()) for img in shapes_data.train_images}
    assert len(task.train_batches) == 512 // 32
    for inputs, targets in task.train_batches:
        assert not torch.equal(inputs, targets)
        assert torch.equal(stored.unscramble(inputs), targets)  # target: the exact original
        assert all(bytes(img.numpy().tobytes()) in train_set for img in to_uint8(targets))
    seen = torch.cat(task.eval_inputs)
    assert torch.equal(to_uint8(stored.unscramble(seen)), shapes_data.test_images)


def test_a_new_process_rebuilds_the_same_permutation_and_the_saved_run(shapes_data, tmp_path):
    run_dir = tmp_path / "run"
    config = unshuffle_config("small", **TINY, train_subset=64)
    summary = train_unshuffle(
        config, run_dir, task=UnshuffleTask(perm_seed=9, window=14, loss="l1"), data=shapes_data
    )
    assert {"test_psnr", "test_ssim", "test_loss", "best_psnr"} <= set(summary)
    assert len(summary["test_psnr_per_example"]) == len(shapes_data.test_images)
    assert np.mean(summary["test_psnr_per_example"]) == pytest.approx(summary["test_psnr"], abs=0.005)
    record = runs.read_json(run_dir / runs.CONFIG)
    assert record["task"] == {"name": "unshuffle", "perm_seed": 9, "window": 14, "loss": "l1"}
    assert task_from_dict(record["task"]).to_dict() == record["task"]
    model, _ = load_trained_model(run_dir)
    assert isinstance(model.model, UnshuffleNet)
    # A fresh process (one Python start for both checks: importing torch is the slow part) gives the
    # same permutation for the same seed, and rebuilds the run without importing spatialmix.unshuffle.
    code = (
        "import json, torch; from spatialmix.engine.train import load_trained_model;"
        f"m, r = load_trained_model({str(run_dir)!r});"
        "print(type(m.model).__name__, m(torch.zeros(1, 1, 28, 28)).shape[1:].numel());"
        "from spatialmix.data.permutation import make_permutation;"
        "print(json.dumps(make_permutation(28, 11).source.tolist()));"
        "print(json.dumps(make_permutation(28, 11, 4).source.tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=180
    )
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["UnshuffleNet", "784"], out.stderr
    assert json.loads(lines[1]) == make_permutation(28, 11).source.tolist()
    assert json.loads(lines[2]) == make_permutation(28, 11, 4).source.tolist()
    assert make_permutation(28, 12) != make_permutation(28, 11)
    # resuming with another loss (or permutation) is refused before anything changes
    before = snapshot_files(run_dir)
    with pytest.raises(SpatialmixError, match="cannot resume"):
        train_unshuffle(
            config,
            run_dir,
            task=UnshuffleTask(perm_seed=9, window=14, loss="mse"),
            resume=True,
            data=shapes_data,
        )
    make_permutation(28, 1).save(run_dir / PERMUTATION_FILE)
    with pytest.raises(SpatialmixError, match="holds another permutation"):
        train_unshuffle(
            config,
            run_dir,
            task=UnshuffleTask(perm_seed=9, window=14, loss="l1"),
            resume=True,
            data=shapes_data,
        )
    with pytest.raises(SpatialmixError, match="does not match the run's seed 9"):
        load_run_permutation(run_dir)
    assert {k: v for k, v in snapshot_files(run_dir).items() if k != PERMUTATION_FILE} == {
        k: v for k, v in before.items() if k != PERMUTATION_FILE
    }


def write_unshuffle_record(run_dir, task, **data_changes) -> None:
    """config.json of an un-shuffling run as training writes it (by hand: nothing needs training here)."""
    data = {
        "name": "fashion-mnist",
        "in_chans": 1,
        "num_classes": 10,
        "image_size": 28,
        "mean": [0.286],
        "std": [0.353],
        **data_changes,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(
        run_dir / runs.CONFIG,
        {
            "format_version": run_files.FORMAT_VERSION,
            "task": task,
            "data": data,
            "train": unshuffle_config("small", **TINY).to_dict(),
        },
    )


def test_the_permutation_of_a_run_is_rebuilt_from_its_config(tmp_path):
    write_unshuffle_record(
        tmp_path / "run", {"name": "unshuffle", "perm_seed": 3, "window": 7, "loss": "mse"}
    )
    assert load_run_permutation(tmp_path / "run") == make_permutation(28, 3, 7)


@pytest.mark.parametrize(
    "task, data, expected",
    [
        ({"name": "unshuffle", "perm_seed": "3"}, {}, "permutation seed must be a whole number"),
        ({"name": "unshuffle", "perm_seed": 10**30}, {}, "permutation seed must be a whole number"),
        ({"name": "unshuffle", "perm_seed": -1}, {}, "permutation seed must be a whole number"),
        ({"name": "unshuffle", "window": 5}, {}, "window 5 does not divide the 28 x 28 image"),
        ({"name": "unshuffle", "loss": "huber"}, {}, "unknown loss 'huber'"),
        ({"name": "unshuffle", "colour": 1}, {}, "settings this spatialmix does not know"),
        ({"name": "unshufle"}, {}, "unknown task 'unshufle'"),
        ({"name": "classification"}, {}, "is not an un-shuffling run"),
        ({"name": "unshuffle"}, {"image_size": "28"}, "'image_size' must be a positive whole number"),
        ({"name": "unshuffle"}, {"image_size": None}, "'image_size' must be a positive whole number"),
    ],
)
def test_a_malformed_config_of_an_unshuffling_run_is_one_line_naming_the_file(tmp_path, task, data, expected):
    write_unshuffle_record(tmp_path / "run", task, **data)
    with pytest.raises(SpatialmixError) as err:
        load_run_permutation(tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message and expected in message, message
    assert str(tmp_path / "run" / runs.CONFIG) in message or "is not an un-shuffling run" in message, message


def best_pointwise_psnr(data: ImageData, perm: PixelPermutation) -> float:
    """PSNR of the best function of a pixel's own value, fitted on the training set by a lookup table.

    Without spatial mixing a network is exactly such a function (in eval mode), so it cannot do better
    (up to what the table overfits)."""
    scrambled, original = (
        perm.scramble(data.train_images).flatten().long(),
        data.train_images.flatten().double(),
    )
    sums = torch.bincount(scrambled, weights=original, minlength=256)
    counts = torch.bincount(scrambled, minlength=256)
    table = torch.where(counts > 0, sums / counts.clamp_min(1), original.mean())
    prediction = table[perm.scramble(data.test_images).long()].float() / 255
    return psnr(prediction, data.test_images.float() / 255).mean().item()


def test_without_spatial_mixing_a_model_cannot_beat_the_scrambled_floor_by_much(shapes_data, tmp_path):
    """A kernel-1 network applies one function to every pixel on its own: it cannot know where a pixel
    came from, so the best it can do is shrink values towards the mean (a few dB above the floor).
    With the identity permutation (window 1) the same network and budget do much better, so the
    test tells a model that un-shuffles from one that cannot."""
    config = unshuffle_config(
        "small", width=16, depth=1, kernel_size=1, epochs=3, batch_size=32, lr=0.02, progress=False
    )
    scrambled = train_unshuffle(config, tmp_path / "scrambled", UnshuffleTask(perm_seed=0), data=shapes_data)
    identity = train_unshuffle(
        config, tmp_path / "identity", UnshuffleTask(perm_seed=0, window=1), data=shapes_data
    )
    perm = make_permutation(28, 0)
    floor = scrambled_floor(shapes_data.test_images, perm)
    assert floor["psnr"] < scrambled["test_psnr"] < floor["psnr"] + 4.0
    assert scrambled["test_psnr"] < best_pointwise_psnr(shapes_data, perm) + 0.5
    assert identity["test_psnr"] > scrambled["test_psnr"] + 4.0
    assert identity["test_ssim"] > scrambled["test_ssim"] + 0.3


# --------------------------------------------------------------------------- study and command line


def unshuffle_args(out, data_dir, *extra) -> list[str]:
    return [
        "unshuffle",
        "--data-dir",
        str(data_dir),
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--epochs",
        "1",
        "--width",
        "8",
        "--depth",
        "1",
        "--kernel-size",
        "3",
        "--batch-size",
        "32",
        "--figure-images",
        "3",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_spatialmix_unshuffle_writes_the_table_and_the_figure(fake_fashion_dir, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "study"
    assert main(unshuffle_args(out, fake_fashion_dir)) == 0
    printed = capsys.readouterr().out
    for label in (
        "Scrambled input (floor)",
        "Full",
        "Chans",
        "Space",
        "No spatial mixing (k=1)",
        "PSNR",
        "SSIM",
    ):
        assert label in printed
    payload = json.loads((out / TABLE_FILES[2]).read_text())
    assert [r["mode"] for r in payload["rows"]] == [
        "Scrambled input (floor)",
        "Full",
        "Chans",
        "Space",
        "No spatial mixing (k=1)",
    ]
    for row in payload["rows"][1:]:
        summary = runs.read_json(
            out
            / {"Full": "full", "Chans": "chans", "Space": "space"}.get(row["mode"], "kernel1").__add__(
                "-seed0"
            )
            / runs.SUMMARY
        )
        assert row["psnr"][0] == pytest.approx(summary["test_psnr"])
    assert (out / TABLE_FILES[0]).read_text().count("\n| ") == 6  # header + 5 rows
    assert PixelPermutation.load(out / PERMUTATION_FILE, 28) == make_permutation(28, 0)
    picture = matplotlib.image.imread(out / FIGURE_FILE)
    assert picture.ndim == 3 and picture.shape[0] > 200 and picture.std() > 0.05
    # the curves: each mode's test PSNR / SSIM after every epoch, as its run's metrics.jsonl says
    curves = payload["curves"]
    assert set(curves) == {"Full", "Chans", "Space", "No spatial mixing (k=1)"}
    metrics = runs.read_jsonl(out / "chans-seed0" / runs.METRICS)
    assert curves["Chans"] == {
        "epoch": [m["epoch"] for m in metrics],
        "psnr": [m["test_psnr"] for m in metrics],
        "ssim": [m["test_ssim"] for m in metrics],
    }
    assert matplotlib.image.imread(out / CURVES_FILE).std() > 0.05
    # a second call reuses the finished runs instead of training again
    before = snapshot_files(out / "full-seed0")
    assert main(unshuffle_args(out, fake_fashion_dir)) == 0
    assert snapshot_files(out / "full-seed0") == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loss", "huber"], "unknown loss 'huber'"),
        (["--preset", "medium"], "unknown un-shuffling preset 'medium'"),
        (["--modes", "full,both"], "unknown mode 'both'"),
        (["--window", "5"], "window 5 does not divide the 28 x 28 image"),
    ],
)
def test_bad_command_line_input_is_one_line_and_writes_nothing(
    fake_fashion_dir, tmp_path, capsys, extra, message
):
    out = tmp_path / "study"
    assert main(unshuffle_args(out, fake_fashion_dir, *extra)) == 2
    assert message in error_line(capsys)
    assert not out.exists()


def test_a_permutation_file_for_another_image_size_is_refused_and_kept(fake_fashion_dir, tmp_path, capsys):
    out = tmp_path / "study"
    make_permutation(32, 0).save(out / PERMUTATION_FILE)
    before = snapshot_files(out)
    assert main(unshuffle_args(out, fake_fashion_dir)) == 2
    line = error_line(capsys)
    assert "scrambles 32 x 32 images but these images are 28 x 28" in line and "--out" in line
    assert snapshot_files(out) == before


def test_the_unshuffle_study_runs_inside_reproduce(fake_fashion_dir, tmp_path):
    from spatialmix.studies.context import PRESETS, Preset, StudyContext
    from spatialmix.studies.reproduce import STUDIES, study_function

    order = list(STUDIES)
    assert order.index("unshuffle") < order.index("report")
    preset = Preset(
        "tiny",
        "test",
        PRESETS["quick"].base,
        modes=("full",),
        options={
            "unshuffle": {
                "width": 8,
                "depth": 1,
                "kernel_size": 3,
                "batch_size": 32,
                "modes": ("chans",),
                "figure_images": 2,
            }
        },
    )
    ctx = StudyContext(
        preset,
        tmp_path,
        (0,),
        {
            "data_dir": str(fake_fashion_dir),
            "train_subset": 64,
            "test_subset": 32,
            "epochs": 1,
            "progress": False,
            "lr": 0.5,
        },
    )  # lr is the classifier's: not applied
    result = study_function("unshuffle")(ctx)
    assert [r["mode"] for r in result.tables[0].rows] == [
        "Scrambled input (floor)",
        "Chans",
        "No spatial mixing (k=1)",
    ]
    assert all((tmp_path / "unshuffle" / name).is_file() for name in (FIGURE_FILE, CURVES_FILE, *TABLE_FILES))
    assert [Path(f.file).name for f in result.figures] == [FIGURE_FILE, CURVES_FILE]
    assert (
        runs.read_json(tmp_path / "unshuffle" / "chans-seed0" / runs.CONFIG)["train"]["lr"]
        == UNSHUFFLE_PRESETS["small"].config.lr
    )

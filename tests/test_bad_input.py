"""A catalogue of bad input: each case is one line and exit code 2 from the command line, and
nothing is created or damaged. Every case was a traceback, a crash, or an exit 0 that did something
else than asked (clamped a number, made folders at the file-system root, counted images many
times, kept the last of two values)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import TINY, config_flags
from spatialmix.cli import main as cli
from spatialmix.data.imagefolder import load_image_folder
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.divergence import divergence_reason
from spatialmix.engine.resume import resume_config
from spatialmix.engine.train import fit
from spatialmix.errors import NonFiniteLossError, SpatialmixError, command_line_names
from spatialmix.io import runs
from test_cli import assert_one_error_line, run_main

BEYOND_64_BITS = str(2**64)
LONG_NAME = "x" * 300  # file systems take names of up to 255 bytes


def without_sizes(argv: list) -> list:
    """The tiny run's options less its ConvMixer sizes (a timm model refuses them)."""
    sizes = {"--width", "--depth", "--kernel-size", "--patch-size"}
    return [a for i, a in enumerate(argv) if a not in sizes and (i == 0 or argv[i - 1] not in sizes)]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) below ``root``: what a refusal must leave as it was."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.fixture
def train_flags(fake_fashion_dir):
    """``spatialmix train`` of a valid tiny run on the fake data set (512 training, 128 test images)."""
    config = TrainConfig(**{**TINY, "data_dir": str(fake_fashion_dir)})
    return ["train", *config_flags(config)]


def refused(capsys, argv, root: Path, *expected: str) -> str:
    """Run the command line in this process: one error line holding ``expected``, ``root`` unchanged."""
    before = tree(root)
    code, _, err = run_main(capsys, [str(a) for a in argv])
    line = assert_one_error_line(code, err)
    for text in expected:
        assert text in line, line
    assert tree(root) == before
    return line


# --------------------------------------------------------------------------- options, before any work

# (id, arguments after `spatialmix` given (train flags, tmp_path, a run folder), what the line says)
OPTION_CASES = [
    (
        "threads-100000",
        lambda train, tmp, run: [*train, "--threads", "100000", "--out", tmp / "r"],
        ["--threads must be a whole number from 1 to 1024, got 100000"],
    ),
    (
        "threads-100000-report",
        lambda train, tmp, run: ["report", run, "--threads", "100000", "-o", tmp / "r.html"],
        ["--threads must be a whole number from 1 to 1024"],
    ),
    (
        "seed-beyond-64-bits",
        lambda train, tmp, run: [*train, "--seed", BEYOND_64_BITS, "--out", tmp / "r"],
        [f"--seed must be a whole number from 0 to 2**64 - 1, got {BEYOND_64_BITS}"],
    ),
    (
        "negative-seed",
        lambda train, tmp, run: [*train, "--seed=-1", "--out", tmp / "r"],
        ["--seed must be a whole number from 0 to 2**64 - 1, got -1"],
    ),
    (
        "init-seed-beyond-64-bits",
        lambda train, tmp, run: [*train, "--init-seed", BEYOND_64_BITS, "--out", tmp / "r"],
        ["--init-seed must be a whole number from 0 to 2**64 - 1"],
    ),
    (
        "attack-seed-beyond-64-bits",
        lambda train, tmp, run: ["attack", run, "--seed", BEYOND_64_BITS, "--plot", "none"],
        ["--seed must be a whole number from 0 to 2**64 - 1"],
    ),
    (
        "reproduce-seeds-beyond-64-bits",
        lambda train, tmp, run: ["reproduce", "--seeds", "0", BEYOND_64_BITS, "--out", tmp / "s"],
        ["--seeds must be a whole number from 0 to 2**64 - 1"],
    ),
    (
        "sweep-seeds-beyond-64-bits",
        lambda train, tmp, run: ["sweep", "--preset", "quick", "--seeds", BEYOND_64_BITS, "--out", tmp / "s"],
        ["--seeds must be a whole number from 0 to 2**64 - 1"],
    ),
    (
        "out-name-too-long",
        lambda train, tmp, run: [*train, "--out", tmp / LONG_NAME],
        ["--out: the name xxxxxxxxxxxxxxxxxxxxxxxx... is 300 bytes, more than the 255", "shorter --out"],
    ),
    (
        "out-path-too-long",
        lambda train, tmp, run: [*train, "--out", tmp.joinpath(*["y" * 200] * 21)],
        ["bytes long; a path may have at most 4095 bytes here, 128 of them kept for the files"],
    ),
    (
        "report-name-too-long",
        lambda train, tmp, run: ["report", run, "-o", tmp / f"{LONG_NAME}.html"],
        ["-o: the name", "is 305 bytes", "choose a shorter -o"],
    ),
    (
        "attack-out-name-too-long",
        lambda train, tmp, run: ["attack", run, "--out-name", LONG_NAME, "--plot", "none"],
        ["--out-name: the name", "is 305 bytes"],
    ),
    (
        "report-in-a-missing-folder",
        lambda train, tmp, run: ["report", run, "-o", tmp / "missing" / "dir" / "r.html"],
        ["the folder", "missing/dir of the report file does not exist; create it first or choose another -o"],
    ),
    (
        "attack-plot-in-a-missing-folder",
        lambda train, tmp, run: ["attack", run, "--plot", tmp / "missing" / "dir" / "x.png"],
        ["missing/dir of --plot does not exist; create it first or choose another --plot"],
    ),
    (
        "attack-plot-is-a-folder",
        lambda train, tmp, run: ["attack", run, "--plot", tmp],
        ["is a folder; pass a file name such as"],
    ),
    (
        "train-subset-beyond-the-data",
        lambda train, tmp, run: [*train, "--train-subset", "100000000", "--out", tmp / "r"],
        ["--train-subset 100,000,000 is more than the 512 training images", "pass at most 512"],
    ),
    (
        "test-subset-beyond-the-data",
        lambda train, tmp, run: [*train, "--test-subset", "100000000", "--out", tmp / "r"],
        ["--test-subset 100,000,000 is more than the 128 test images", "pass at most 128"],
    ),
    (
        "n-examples-beyond-the-test-set",
        lambda train, tmp, run: ["attack", run, "--n-examples", "100000000", "--plot", "none"],
        ["--n-examples 100,000,000 is more than the 128 test images", "--n-examples 128 or --n-examples all"],
    ),
    (
        "patch-size-0-timm",
        lambda train, tmp, run: ["models", "timm:convnext_atto", "--patch-size", "0"],
        ["--patch-size must be a whole number of at least 1, got 0"],
    ),
    (
        "patch-size-for-a-timm-model-without-one",
        lambda train, tmp, run: [
            *without_sizes(train),
            "--model",
            "timm:resnet10t",
            "--patch-size",
            "4",
            "--out",
            tmp / "r",
        ],
        ["timm:resnet10t takes no patch size", "leave --patch-size out"],
    ),
    (
        "patch-size-for-a-torchvision-model",
        lambda train, tmp, run: ["models", "torchvision:resnet18", "--patch-size", "4"],
        ["torchvision:resnet18 takes no patch size"],
    ),
]


@pytest.mark.parametrize("case,argv,expected", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_options_are_one_line_and_change_nothing(
    capsys, tmp_path, run_copy, fake_fashion_dir, train_flags, case, argv, expected
):
    run_dir, _ = run_copy  # inside tmp_path: checked unchanged with it
    args = argv(train_flags, tmp_path, run_dir)
    if args[0] == "attack":
        args += ["--data-dir", fake_fashion_dir, "--eps", "0", "--no-progress"]
    refused(capsys, args, tmp_path, *expected)


# (id, arguments as for OPTION_CASES, the exact line): inputs that were accepted (exit 0) or misnamed
EDGE_CASES = [
    (
        "eps-trailing-comma",
        lambda train, tmp, run: ["attack", run, "--eps", "0,"],
        "--eps '0,' has an empty budget (a comma too many?); give budgets like 0,2/255,8/255",
    ),
    (
        "eps-empty-item",
        lambda train, tmp, run: ["attack", run, "--eps", "0,,8/255"],
        "--eps '0,,8/255' has an empty budget (a comma too many?); give budgets like 0,2/255,8/255",
    ),
    (
        "eps-twice",
        lambda train, tmp, run: ["attack", run, "--eps", "8/255,8/255"],
        "--eps '8/255,8/255' gives the budget 8/255 twice; give each budget once",
    ),
    (
        "out-with-a-newline",
        lambda train, tmp, run: [*train, "--out", f"{tmp}/a\nb"],
        "--out holds a control character (a newline) in 'a\\nb'; choose a name without one",
    ),
    (
        "report-with-a-tab",
        lambda train, tmp, run: ["report", run, "-o", f"{tmp}/r\t.html"],
        "-o holds a control character (a tab) in 'r\\t.html'; choose a name without one",
    ),
    (
        "train-data-dir-a-file",
        lambda train, tmp, run: [*train, "--data-dir", run / runs.CONFIG, "--out", tmp / "r"],
        "--data-dir {run}/config.json is a file, not a folder: pass the folder that holds the four IDX files",
    ),
    (
        "attack-data-dir-a-file",
        lambda train, tmp, run: ["attack", run, "--eps", "0", "--data-dir", run / runs.CONFIG],
        "--data-dir {run}/config.json is a file, not a folder: pass the folder that holds the four IDX files",
    ),
    (
        "imagefolder-data-dir-a-file",
        lambda train, tmp, run: [*folder_flags(run / runs.CONFIG, 0), "--out", tmp / "r"],
        "--data-dir {run}/config.json is a file, not a folder: pass the folder that holds train/ and val/",
    ),
]


@pytest.mark.parametrize("case,argv,expected", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_edge_inputs_are_refused_in_one_exact_line(
    capsys, tmp_path, run_copy, fake_fashion_dir, train_flags, case, argv, expected
):
    run_dir, _ = run_copy
    args = argv(train_flags, tmp_path, run_dir)
    if args[0] == "attack" and "--data-dir" not in args:
        args += ["--data-dir", fake_fashion_dir, "--n-examples", "4", "--no-progress", "--plot", "none"]
    line = refused(capsys, args, tmp_path)
    assert line == "spatialmix: error: " + expected.format(run=run_dir)


def test_a_dry_run_refuses_what_the_sweep_refuses(capsys, tmp_path):
    """`sweep --dry-run --max-running 0` listed the configurations (exit 0); the sweep refused it."""
    sweep = ["sweep", "--preset", "quick", "--max-running", "0", "--out", tmp_path / "sweep"]
    lines = {refused(capsys, [*sweep, *dry], tmp_path) for dry in ([], ["--dry-run"])}
    assert lines == {"spatialmix: error: max running must be a positive whole number, got 0"}


def test_no_folder_is_made_at_the_file_system_root(capsys, run_copy):
    """`--plot /nonexistent/dir/x.png` made /nonexistent/dir (as root): the parent must exist."""
    run_dir, _ = run_copy
    missing = Path("/") / f"spatialmix-missing-{os.getpid()}"
    assert not missing.exists()
    for argv in (
        ["attack", run_dir, "--plot", missing / "dir" / "x.png", "--eps", "0"],
        ["report", run_dir, "-o", missing / "dir" / "r.html"],
    ):
        code, _, err = run_main(capsys, [str(a) for a in argv])
        assert "does not exist; create it first" in assert_one_error_line(code, err)
        assert not missing.exists()


# --------------------------------------------------------------------------- grid files


GRIDS = [
    ("random-bytes", None, ["is not a grid file: byte", "is not UTF-8 text (YAML or JSON)"]),
    (
        "duplicate-key",
        "grid:\n  mode: [full]\n  seed: [0, 1]\n  mode: [chans]\n",
        ["at line 4: key 'mode' is given twice in one mapping; keep one"],
    ),
    (
        "duplicate-key-in-base",
        "base:\n  epochs: 1\n  epochs: 2\ngrid:\n  seed: [0]\n",
        ["at line 3: key 'epochs' is given twice"],
    ),
    (
        "1.6e9-configurations",
        "grid:\n"
        + "".join(
            f"  {k}: {list(range(1, 71))}\n" for k in ("seed", "init_seed", "epochs", "width", "depth")
        ),
        ["the grid has 1,680,700,000 configurations (70 x 70 x 70 x 70 x 70), more than the 10,000"],
    ),
    (
        "folder-name-too-long",
        f"grid:\n  data_dir: [{'d' * 300}]\n",
        ["its folder name is 309 bytes, more than the 255"],
    ),
]


@pytest.mark.parametrize("case,text,expected", GRIDS, ids=[g[0] for g in GRIDS])
def test_bad_grid_files_are_one_line(capsys, tmp_path, case, text, expected):
    grid = tmp_path / "grid.yaml"
    if text is None:
        grid.write_bytes(bytes(np.random.default_rng(0).integers(128, 256, 4000, dtype=np.uint8)))
    else:
        grid.write_text(text)
    refused(capsys, ["sweep", grid, "--dry-run", "--out", tmp_path / "sweep"], tmp_path, *expected)


# --------------------------------------------------------------------------- image folders


def image_folder(root: Path, classes=("a", "b"), per_class=(6, 3)) -> Path:
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def folder_flags(root: Path, workers: int) -> list:
    return ["train", "--dataset", "imagefolder", "--data-dir", root, "--image-size", "16",
            "--workers", workers, "--model", "convmixer", "--width", "8", "--depth", "1",
            "--kernel-size", "3", "--patch-size", "4", "--epochs", "1", "--batch-size", "6",
            "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("content", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_a_file_pil_cannot_read_is_one_line_naming_it(capsys, tmp_path, workers, content):
    root = image_folder(tmp_path / "data")
    bad = root / "train" / "b" / "broken.png"
    bad.write_bytes(content)
    data = tree(root)
    code, _, err = run_main(
        capsys, [str(a) for a in folder_flags(root, workers) + ["--out", tmp_path / "run"]]
    )
    line = assert_one_error_line(code, err)
    assert line.startswith(f"spatialmix: error: {bad} is not an image PIL can read (")
    assert line.endswith("remove it from the folder or replace it with a readable image")
    assert tree(root) == data
    assert runs.read_json(tmp_path / "run" / runs.STATUS)["state"] == "interrupted"


def test_a_folder_of_one_class_is_refused(capsys, tmp_path):
    root = image_folder(tmp_path / "data", classes=("only",))
    refused(
        capsys,
        folder_flags(root, 0) + ["--out", tmp_path / "run"],
        tmp_path,
        f"{root / 'train'} has 1 class folder (only): a classifier needs at least 2 classes",
    )


def test_a_link_loop_counts_each_image_once(tmp_path):
    """`train/a/up -> ..` turned 12 training images into 492 (os.walk follows the loop)."""
    root = image_folder(tmp_path / "data")
    os.symlink("..", root / "train" / "a" / "up")
    os.symlink(".", root / "train" / "b" / "here")
    os.symlink("0.png", root / "train" / "b" / "same.png")  # a second name for one image
    data = load_image_folder(root, 16)
    assert len(data.train_labels) == 12 and data.train_labels.tolist() == [0] * 6 + [1] * 6
    assert len({os.path.realpath(path) for path, _ in data.train_set.samples}) == 12
    assert len(data.test_labels) == 6


def test_an_image_reached_from_two_classes_is_refused(tmp_path):
    root = image_folder(tmp_path / "data")
    os.symlink(root / "train" / "b", root / "train" / "a" / "sub")
    with pytest.raises(SpatialmixError) as err:
        load_image_folder(root, 16)
    assert "is reached from the class folders 'a' and 'b'" in str(err.value) and "\n" not in str(err.value)


def test_linked_class_folders_elsewhere_still_load(tmp_path):
    """A class folder that is a link to a folder outside the data set is a common layout: kept."""
    elsewhere = image_folder(tmp_path / "elsewhere")
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for name in ("a", "b"):
            os.symlink(elsewhere / split / name, root / split / name)
    assert len(load_image_folder(root, 16).train_labels) == 12


# --------------------------------------------------------------------------- divergence advice


def assert_it_learns(run_dir: Path, summary: dict) -> None:
    """The run finished, and its training loss fell epoch after epoch."""
    losses = [m["train_loss"] for m in runs.read_jsonl(run_dir / runs.METRICS)]
    assert summary["epochs"] == len(losses) == 3
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


def test_a_huge_init_is_blamed_on_the_init_and_the_advice_trains(tiny_data, tiny_config, tmp_path):
    """--init-std 1e30 made the statistics infinite in the first forward pass; the advice was to divide
    the learning rate by 10."""
    config = tiny_config(spatial_init="gaussian", init_std=1e30)
    with pytest.raises(NonFiniteLossError) as err:
        fit(config, tmp_path / "run", data=tiny_data)
    message = str(err.value)
    assert "running_var became non-finite at epoch 1, step 1, before any update" in message
    assert "not the learning rate" in message and "lr=" not in message
    # (a Python caller is told the parameters; the command line, its flags: see below)
    assert "the likely cause is the init's scale, init_std=1e+30 with spatial_init='gaussian'" in message
    assert "train again with init_std=0.1 and another run_dir" in message
    assert runs.read_json(tmp_path / "run" / runs.STATUS)["reason"] in message
    fresh = tmp_path / "run-2"
    assert_it_learns(fresh, fit(config.replace(init_std=0.1, epochs=3), fresh, data=tiny_data))


def test_a_huge_learning_rate_gets_a_rate_that_trains(tiny_data, tiny_config, tmp_path):
    """From --lr 1e20 dividing by 10 took 17 tries; the advice goes to the default at once."""
    run_dir = tmp_path / "run"
    config = tiny_config(lr=1e20, epochs=3)
    with pytest.raises(NonFiniteLossError) as err, command_line_names(cli.FLAG_NAMES):  # as the CLI runs it
        fit(config, run_dir, data=tiny_data)
    message = str(err.value)
    assert "the learning rate is the likely cause" in message and "1e+20 is far above it" in message
    args = shlex.split(message.split("`")[1])
    assert args[:6] == ["spatialmix", "train", "--resume", "--out", str(run_dir), "--lr"]
    assert float(args[6]) == TrainConfig().lr
    resumed = resume_config(run_dir, {"lr": float(args[6])})
    assert_it_learns(run_dir, fit(resumed, run_dir, resume=True, data=tiny_data))
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "finished"


def test_a_small_learning_rate_is_not_blamed(tiny_data, tiny_config, tmp_path, monkeypatch):
    import spatialmix.engine.train as train_mod

    real_build = train_mod.build_model
    steps_per_epoch = len(tiny_data.train_labels) // TINY["batch_size"]

    def nan_in_epoch_2(*args, **kwargs):
        model = real_build(*args, **kwargs)
        calls = {"n": 0}

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > steps_per_epoch:
                    return output * float("nan")

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_mod, "build_model", nan_in_epoch_2)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        fit(tiny_config(lr=1e-6, epochs=2), run_dir, data=tiny_data)
    message = str(err.value)
    assert "lr=1e-06 is already small, so the learning rate is unlikely the cause" in message
    assert "the loss went non-finite while the statistics and the weights are finite" in message
    assert message.endswith(
        f"`sm.train(sm.resume_config({str(run_dir)!r}), {str(run_dir)!r}, resume=True, amp='none')`"
    )
    monkeypatch.undo()
    summary = fit(resume_config(run_dir, {"amp": "none"}), run_dir, resume=True, data=tiny_data)
    assert summary["epochs"] == 2


@pytest.mark.parametrize(
    "poison, first",
    [
        ("weight", "the weights went non-finite (0.weight)"),
        (
            "running_var",
            "the batch-norm statistics went non-finite (1.running_var) while the weights are finite "
            "(the largest is 3)",
        ),
        (None, "the loss went non-finite while the statistics and the weights are finite (the largest is 3)"),
    ],
)
def test_the_reason_names_what_went_non_finite_first(tmp_path, poison, first):
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -3.0], [0.5, 2.0]]))
        if poison == "weight":
            model[0].weight[0, 0] = float("nan")
        elif poison == "running_var":
            model[1].running_var[1] = float("inf")
    reason = divergence_reason(tmp_path, 3, 100, "loss became nan", TrainConfig(), model)
    assert reason.startswith(f"loss became nan; {first}; the last good checkpoint (epoch 3) is kept in")
    assert (
        f"`sm.train(sm.resume_config({str(tmp_path)!r}), {str(tmp_path)!r}, resume=True, lr=0.001)`" in reason
    )
    with command_line_names(cli.FLAG_NAMES):
        reason = divergence_reason(tmp_path, 3, 100, "loss became nan", TrainConfig(), model)
    assert f"`spatialmix train --resume --out {tmp_path} --lr 0.001` (--amp none may help too)" in reason


def test_divergence_through_the_command_line_is_one_line(capsys, tmp_path, train_flags):
    run_dir = tmp_path / "run"
    code, _, err = run_main(
        capsys, [*train_flags, "--channel-init", "gaussian", "--init-std", "1e30", "--out", str(run_dir)]
    )
    line = assert_one_error_line(code, err)
    assert "before any update" in line and "--init-std 1e+30 with --channel-init gaussian" in line

"""The command line: bad input gives one clear line and exit code 2, and never damages a run."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from spatialmix import cli, runs
from spatialmix.models import count_parameters, create_model

from conftest import config_flags, run_cli, snapshot_files


def run_main(capsys, argv) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:     # argparse errors exit from parse_args
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, prefix="spatialmix: error:") -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    return lines[0]


# (id, arguments, substrings the message must contain). The base command is a valid tiny run.
# The first ones are checked from the options alone, before any run folder is looked at.
BAD_INPUTS = [
    ("unknown-model", ["--model", "convmixer-42/7"], ["unknown model 'convmixer-42/7'", "convmixer-256/8",
                                                      "resnet18-sep"]),
    ("unknown-mode", ["--mode", "spatial"], ["unknown mode 'spatial'", "chans, full, space"]),
    ("unknown-dataset", ["--dataset", "svhn"], ["unknown dataset 'svhn'", "cifar10", "fashion-mnist", "mnist"]),
    ("unknown-spatial-init", ["--spatial-init", "kaiming"], ["unknown init 'kaiming'", "default, gaussian, uniform"]),
    ("unknown-channel-init", ["--channel-init", "xavier"], ["unknown init 'xavier'", "default, gaussian, uniform"]),
    ("even-kernel", ["--kernel-size", "4"], ["kernel size 4 is even", "3 or 5"]),
    ("patch-too-large", ["--patch-size", "29"], ["patch size 29 is larger than the 28 x 28 image"]),
    ("zero-epochs", ["--epochs", "0"], ["epochs must be a positive number, got 0"]),
    ("negative-epochs", ["--epochs=-3"], ["epochs must be a positive number, got -3"]),
    ("zero-width", ["--width", "0"], ["width must be a positive number, got 0"]),
    ("negative-depth", ["--depth=-1"], ["depth must be a positive number, got -1"]),
    ("zero-batch", ["--batch-size", "0"], ["batch size must be a positive number, got 0"]),
    ("negative-batch", ["--batch-size=-8"], ["batch size must be a positive number, got -8"]),
    ("nan-lr", ["--lr", "nan"], ["lr must be a positive number, got nan"]),
    ("inf-lr", ["--lr", "inf"], ["lr must be a positive number, got inf"]),
    ("nan-init-std", ["--init-std", "nan"], ["init std must be >= 0, got nan"]),
    # These need the data or the model: for an existing run, the differing field is named instead.
    ("batch-larger-than-data", ["--batch-size", "100000"], ["larger than the", "lower --batch-size"]),
]
NEEDS_MODEL = {"even-kernel": "kernel_size", "patch-too-large": "patch_size", "batch-larger-than-data": "batch_size"}


@pytest.fixture
def base_flags(interrupted_run):
    """Flags of a valid tiny run on the fake data set (the same config as the saved run)."""
    return config_flags(interrupted_run[1])


@pytest.mark.parametrize("case,args,expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_into_a_new_run(capsys, tmp_path, base_flags, case, args, expected):
    out = tmp_path / "new-run"
    code, stdout, err = run_main(capsys, ["train", *base_flags, *args, "--out", str(out)])
    line = assert_one_error_line(code, err)
    for text in expected:
        assert text in line
    assert not out.exists(), "a failed start must not leave a run directory behind"


@pytest.mark.parametrize("case,args,expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "no-resume"])
def test_bad_input_leaves_an_existing_run_untouched(capsys, run_copy, case, args, expected, resume):
    run_dir, config = run_copy
    before = snapshot_files(run_dir)
    argv = ["train", *config_flags(config), *args, "--out", str(run_dir)] + (["--resume"] if resume else [])
    code, _, err = run_main(capsys, argv)
    line = assert_one_error_line(code, err)
    # Names and signs are checked before anything else; a problem that needs the model or the data
    # is reported as the field that differs from the saved run (resume) or as an existing run.
    if case in NEEDS_MODEL:
        expected = ["different config", f"{NEEDS_MODEL[case]}="] if resume else ["already holds a run"]
    for text in expected:
        assert text in line
    assert snapshot_files(run_dir) == before


def test_missing_data_directory(capsys, tmp_path, base_flags, run_copy):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "new-run"
    code, _, err = run_main(capsys, ["train", *base_flags, "--data-dir", str(empty), "--out", str(out)])
    line = assert_one_error_line(code, err)
    assert "fashion-mnist not found" in line and str(empty) in line and "--data-dir" in line
    assert not out.exists()
    # Resuming an existing run with the data gone: the same message, the run untouched.
    run_dir, config = run_copy
    before = snapshot_files(run_dir)
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--data-dir", str(empty), "--out",
                                     str(run_dir), "--resume"])
    assert "fashion-mnist not found" in assert_one_error_line(code, err)
    assert snapshot_files(run_dir) == before


@pytest.mark.parametrize("damage", ["model-junk", "model-truncated", "state-junk", "config-junk"])
def test_corrupt_checkpoint_on_resume(capsys, run_copy, damage):
    run_dir, config = run_copy
    folder = runs.latest_checkpoint(run_dir)
    if damage == "model-junk":
        (folder / runs.MODEL_FILE).write_bytes(b"this is not a safetensors file" * 10)
    elif damage == "model-truncated":
        data = (folder / runs.MODEL_FILE).read_bytes()
        (folder / runs.MODEL_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "state-junk":
        (folder / runs.STATE_FILE).write_bytes(b"\x00junk")
    elif damage == "config-junk":
        (run_dir / runs.CONFIG).write_text("{not json")
    before = snapshot_files(run_dir)
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--out", str(run_dir), "--resume"])
    line = assert_one_error_line(code, err)
    expected = {"model-junk": "not a readable safetensors file", "model-truncated": "not a readable safetensors",
                "state-junk": "train_state.pt is corrupt", "config-junk": "corrupt (not JSON)"}[damage]
    assert expected in line
    assert snapshot_files(run_dir) == before
    if damage == "config-junk":
        return
    # The advice works: following it, the same command trains the run from the beginning.
    assert f"delete {run_dir / runs.CKPT_DIR} and resume" in line
    import shutil

    shutil.rmtree(run_dir / runs.CKPT_DIR)
    code, out, err = run_main(capsys, ["train", "--out", str(run_dir), "--resume"])
    assert code == 0, err
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "finished"
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]


def test_latest_naming_a_missing_folder_falls_back_to_the_newest_complete_checkpoint(capsys, run_copy):
    run_dir, _ = run_copy
    runs.atomic_write_json(run_dir / runs.CKPT_DIR / runs.LATEST, {"folder": "epoch-0099", "epoch": 99})
    code, out, err = run_main(capsys, ["train", "--out", str(run_dir), "--resume"])
    assert code == 0, err
    assert "epoch-0099, which is missing; continuing from the newest complete checkpoint, epoch-0001" in err
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]
    assert runs.read_json(run_dir / runs.CKPT_DIR / runs.LATEST) == {"folder": "epoch-0002", "epoch": 2}


def test_checkpoint_of_another_model_on_resume(capsys, run_copy):
    """Weights that load as safetensors but belong to another model."""
    run_dir, config = run_copy
    folder = runs.latest_checkpoint(run_dir)
    save_file({"head.weight": torch.zeros(3, 3)}, str(folder / runs.MODEL_FILE))
    before = snapshot_files(run_dir)
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--out", str(run_dir), "--resume"])
    assert "does not match this run's model" in assert_one_error_line(code, err)
    assert snapshot_files(run_dir) == before


def test_resume_with_a_different_config(capsys, run_copy):
    run_dir, config = run_copy
    before = snapshot_files(run_dir)
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--lr", "0.5", "--out", str(run_dir),
                                     "--resume"])
    line = assert_one_error_line(code, err)
    assert "different config" in line and "lr=0.01 (saved) vs 0.5" in line
    assert snapshot_files(run_dir) == before


def test_start_into_an_existing_run_without_resume(capsys, run_copy, tmp_path):
    run_dir, config = run_copy
    before = snapshot_files(run_dir)
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--out", str(run_dir)])
    assert "already holds a run; pass --resume" in assert_one_error_line(code, err)
    assert snapshot_files(run_dir) == before
    # A folder with someone else's files is not a run, and not ours to fill either.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--out", str(other)])
    assert "already holds a run" in assert_one_error_line(code, err)
    assert snapshot_files(other) == {"todo.txt": b"keep me"}


def test_resume_of_something_that_is_not_a_run(capsys, tmp_path, base_flags):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    code, _, err = run_main(capsys, ["train", *base_flags, "--out", str(tmp_path / "notes"), "--resume"])
    assert "is not a spatialmix run" in assert_one_error_line(code, err)
    assert snapshot_files(tmp_path / "notes") == {"todo.txt": b"keep me"}


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "restart"])
@pytest.mark.parametrize("state", ["missing", "empty", "cut-short-config", "lock-only"])
def test_resume_starts_a_run_when_nothing_was_saved(capsys, tmp_path, base_flags, state, resume):
    """Killed before its first file (or while writing config.json): the run starts, with or without --resume."""
    out = tmp_path / "run"
    if state != "missing":
        out.mkdir()
    if state == "cut-short-config":
        (out / ".config.json.x7.tmp").write_text('{"format_ver')
    if state == "lock-only":
        (out / runs.LOCK).write_text("")
    code, stdout, err = run_main(capsys, ["train", *base_flags, "--out", str(out)] + (["--resume"] if resume else []))
    assert code == 0, err
    assert runs.read_json(out / runs.STATUS)["state"] == "finished"
    assert not list(out.glob(".*.tmp"))


def test_resume_through_the_cli_finishes_the_run(capsys, run_copy):
    run_dir, config = run_copy
    code, out, err = run_main(capsys, ["train", *config_flags(config), "--out", str(run_dir), "--resume"])
    assert code == 0, err
    assert f"run saved in {run_dir}" in out
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "finished"
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]


def test_non_finite_loss_through_the_cli(capsys, tmp_path, base_flags):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", *base_flags, "--lr", "1e30", "--out", str(out)])
    line = assert_one_error_line(code, err)
    assert "training stopped: loss became" in line and "lower --lr" in line
    assert runs.read_json(out / runs.STATUS)["state"] == "failed"


def test_argparse_errors_are_one_line(capsys, base_flags, tmp_path):
    code, _, err = run_main(capsys, ["train", *base_flags, "--epochs", "two", "--out", str(tmp_path / "r")])
    line = assert_one_error_line(code, err, prefix="spatialmix")
    assert "error:" in line and "invalid int value: 'two'" in line
    code, _, err = run_main(capsys, ["fly"])
    assert "invalid choice: 'fly'" in assert_one_error_line(code, err, prefix="spatialmix")


def test_models_command(capsys):
    code, out, _ = run_main(capsys, ["models"])
    assert code == 0 and "convmixer-256/8" in out and "resnet18-sep" in out
    code, out, _ = run_main(capsys, ["models", "convmixer-256/8", "--num-classes", "10", "--image-size", "32"])
    n = count_parameters(create_model("convmixer-256/8", in_chans=3, num_classes=10, image_size=32))
    assert code == 0 and f"{n:,} parameters" in out
    code, _, err = run_main(capsys, ["models", "convmixer-1/1"])
    assert "unknown model" in assert_one_error_line(code, err)


@pytest.mark.slow
def test_bad_input_in_a_real_process(tmp_path):
    """What a user sees: no traceback, no warnings, one line, exit code 2."""
    proc = run_cli(["train", "--model", "nosuch", "--out", str(tmp_path / "r")])
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("spatialmix: error: unknown model 'nosuch'; choose one of:")
    assert "Traceback" not in proc.stderr and proc.stdout == ""

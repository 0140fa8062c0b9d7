"""Runs stopped at any moment continue with one obvious command; a NaN never reaches a checkpoint;
errors that used to escape as tracebacks are one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import spatialmix as sm
from conftest import SUBPROCESS_ENV, TINY, config_flags, snapshot_files
from spatialmix.cli import main as cli
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.resume import resume_config
from spatialmix.engine.tasks import saved_config
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.errors import NonFiniteLossError, SpatialmixError
from spatialmix.io import runs, storage


def run_main(capsys, argv) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spatialmix: error:") and "Traceback" not in err, err
    return lines[0]


class _Stop(Exception):
    pass


def stop_after_checkpoint(monkeypatch, epoch: int, exc=_Stop):
    real_save = runs.save_checkpoint

    def save(run_dir, e, *args, **kwargs):
        folder = real_save(run_dir, e, *args, **kwargs)
        if e == epoch:
            raise exc()
        return folder

    monkeypatch.setattr(runs, "save_checkpoint", save)
    return real_save


# --------------------------------------------------------------------------- --resume in every state


def test_resume_with_only_out_continues_with_the_saved_config(capsys, run_copy):
    """`spatialmix train --resume --out RUN`: the advice printed everywhere, without repeating options."""
    run_dir, config = run_copy
    before = runs.read_json(run_dir / runs.CONFIG)
    code, out, err = run_main(capsys, ["train", "--resume", "--out", str(run_dir)])
    assert code == 0, err
    assert runs.read_json(run_dir / runs.STATUS) == {"state": "finished", "epoch": 2}
    assert runs.read_json(run_dir / runs.CONFIG) == before
    assert TrainConfig.from_dict(before["train"]) == config


def test_an_option_that_differs_on_resume_is_named(capsys, run_copy):
    run_dir, _ = run_copy
    before = snapshot_files(run_dir)
    code, _, err = run_main(
        capsys, ["train", "--resume", "--out", str(run_dir), "--mode", "space", "--lr", "0.5"]
    )
    line = one_error_line(code, err)
    assert "mode='full' (saved) vs 'space'" in line and "lr=0.01 (saved) vs 0.5" in line
    assert "only data_dir, device, epochs, progress, workers may change" in line
    assert snapshot_files(run_dir) == before


def test_resume_with_more_epochs_extends_a_finished_run(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    config = TrainConfig(**TINY)
    fit(config, run_dir, data=tiny_data)
    extended = resume_config(run_dir, {"epochs": 2, "device": "cpu"})
    assert extended == config.replace(epochs=2, device="cpu")
    summary = fit(extended, run_dir, resume=True, data=tiny_data)
    assert summary["epochs"] == 2
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]
    assert saved_config(runs.Run(run_dir)).epochs == 2  # what it now is, for later comparisons
    with pytest.raises(SpatialmixError, match="epochs may only grow"):
        resume_config(run_dir, {"epochs": 1})


def test_interrupted_status_names_the_saved_epoch(tiny_data, tmp_path, monkeypatch):
    """After Ctrl-C, status.json said `running, epoch 0` although two epochs were saved."""
    run_dir = tmp_path / "run"
    stop_after_checkpoint(monkeypatch, 2, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(**{**TINY, "epochs": 3}), run_dir, data=tiny_data)
    status = runs.read_json(run_dir / runs.STATUS)
    assert status["state"] == "interrupted" and status["epoch"] == 2


def test_kill_between_summary_and_status_is_finished_after_resume(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    config = TrainConfig(**TINY)
    summary = fit(config, run_dir, data=tiny_data)
    runs.atomic_write_json(run_dir / runs.STATUS, {"state": "running", "epoch": 1})
    assert fit(config, run_dir, resume=True, data=tiny_data) == summary
    assert runs.read_json(run_dir / runs.STATUS) == {"state": "finished", "epoch": 1}


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_data, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    config = TrainConfig(**{**TINY, "epochs": 3})
    real_save = stop_after_checkpoint(monkeypatch, 2)
    with pytest.raises(_Stop):
        fit(config, run_dir, data=tiny_data)
    monkeypatch.setattr(runs, "save_checkpoint", real_save)
    (run_dir / runs.CKPT_DIR / "epoch-0002" / runs.STATE_FILE).write_bytes(b"\x00junk")
    summary = fit(config, run_dir, resume=True, data=tiny_data)
    assert "continuing from the newest complete checkpoint, epoch-0001" in capsys.readouterr().err
    straight = fit(config, tmp_path / "straight", data=tiny_data)
    assert summary["test_acc"] == straight["test_acc"]
    a = load_file(str(runs.latest_checkpoint(run_dir) / runs.MODEL_FILE))
    b = load_file(str(runs.latest_checkpoint(tmp_path / "straight") / runs.MODEL_FILE))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2, 3]


@pytest.mark.slow
def test_sigterm_leaves_a_consistent_checkpoint_a_clear_line_and_a_run_that_resumes(
    fake_fashion_dir, tmp_path
):
    config = TrainConfig(**{**TINY, "data_dir": str(fake_fashion_dir), "train_subset": 256, "epochs": 3})
    run_dir = tmp_path / "run"
    latest = run_dir / runs.CKPT_DIR / runs.LATEST
    proc = subprocess.Popen(
        [sys.executable, "-m", "spatialmix.cli", "train", *config_flags(config), "--out", str(run_dir)],
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not latest.is_file():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [
        f"spatialmix: terminated (SIGTERM); every saved checkpoint is complete: continue with "
        f"`spatialmix train --resume --out {run_dir}`"
    ]
    status = runs.read_json(run_dir / runs.STATUS)
    epoch = runs.read_json(latest)["epoch"]
    assert status["state"] == "interrupted" and status["epoch"] == epoch
    load_trained_model(run_dir)  # the checkpoint it names is complete
    resumed = subprocess.run(
        [sys.executable, "-m", "spatialmix.cli", "train", "--resume", "--out", str(run_dir)],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert runs.read_json(run_dir / runs.STATUS) == {"state": "finished", "epoch": 3}


# --------------------------------------------------------------------------- NaN never reaches a checkpoint


def _poison_batchnorm_in_epoch(monkeypatch, steps_per_epoch: int, epoch: int):
    """BatchNorm's running mean becomes NaN during ``epoch`` while every training loss stays finite
    (training normalizes with the batch's statistics): only a check of the weights catches it."""
    import spatialmix.engine.train as train_mod

    real_build = train_mod.build_model

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        calls = {"n": 0}

        def hook(module, inputs):
            if module.training:
                calls["n"] += 1
                if calls["n"] > steps_per_epoch * (epoch - 1):
                    with torch.no_grad():
                        module.running_mean.fill_(float("nan"))

        bn.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(train_mod, "build_model", build)


def test_non_finite_batchnorm_statistics_are_never_saved(tiny_data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _poison_batchnorm_in_epoch(monkeypatch, len(tiny_data.train_labels) // TINY["batch_size"], epoch=2)
    with pytest.raises(NonFiniteLossError) as err:
        fit(TrainConfig(**{**TINY, "epochs": 3}), run_dir, data=tiny_data)
    assert "running_mean" in str(err.value) and "non-finite in epoch 2" in str(err.value)
    assert runs.read_json(run_dir / runs.CKPT_DIR / runs.LATEST)["epoch"] == 1
    assert not (run_dir / runs.CKPT_DIR / "epoch-0002").exists()
    weights = load_file(str(runs.latest_checkpoint(run_dir) / runs.MODEL_FILE))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    status = runs.read_json(run_dir / runs.STATUS)
    assert status["state"] == "failed" and status["epoch"] == 1
    text = (run_dir / runs.METRICS).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert [json.loads(line)["epoch"] for line in text.splitlines()] == [1]


def test_metrics_are_strict_json(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with pytest.raises(SpatialmixError, match="non-finite number"):
        storage.append_jsonl(path, {"epoch": 1, "test_loss": float("nan")})
    assert not path.exists() or path.read_text() == ""


def test_the_advice_after_a_divergence_works(tiny_data, tmp_path, monkeypatch):
    """The failed run's message names a call; following it (a lower lr) continues the run."""
    run_dir = tmp_path / "run"
    config = TrainConfig(**{**TINY, "epochs": 2})
    _poison_batchnorm_in_epoch(monkeypatch, len(tiny_data.train_labels) // TINY["batch_size"], epoch=2)
    with pytest.raises(NonFiniteLossError) as err:
        fit(config, run_dir, data=tiny_data)
    monkeypatch.undo()
    call = str(err.value).split("`")[1]
    lr = config.lr / 10
    assert call == f"sm.train(sm.resume_config({str(run_dir)!r}), {str(run_dir)!r}, resume=True, lr={lr!r})"
    summary = sm.train(sm.resume_config(run_dir), run_dir, resume=True, lr=lr, data=tiny_data).summary
    assert summary["epochs"] == 2
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "finished"
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]


def test_lr_may_not_change_on_resume_of_a_run_that_did_not_diverge(run_copy):
    run_dir, _ = run_copy
    with pytest.raises(SpatialmixError, match="lr=0.01 \\(saved\\) vs 0.001"):
        resume_config(run_dir, {"lr": 0.001})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_lr_nan_and_inf_are_rejected_up_front(capsys, tmp_path, value):
    code, _, err = run_main(capsys, ["train", f"--lr={value}", "--out", str(tmp_path / "r")])
    assert f"lr must be a positive number, got {float(value)}" in one_error_line(code, err)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- errors that were tracebacks


def test_out_that_is_a_file_under_a_file_or_empty(capsys, tmp_path, run_copy):
    _, config = run_copy
    flags = config_flags(config)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, expected in (
        (a_file, "is a file, not a run folder"),
        (a_file / "run", "lies below a file"),
        ("", "--out is an empty string"),
    ):
        code, _, err = run_main(capsys, ["train", *flags, "--out", str(out)])
        assert expected in one_error_line(code, err)
    assert a_file.read_text() == "x"


def test_out_on_a_read_only_mount(capsys, tmp_path, run_copy, monkeypatch):
    _, config = run_copy
    real_mkdir = os.mkdir
    read_only = tmp_path / "ro"

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(read_only)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--out", str(read_only / "run")])
    assert "cannot write in" in (line := one_error_line(code, err)) and "Read-only file system" in line


@pytest.mark.parametrize("where", ["weights", "state"])
def test_a_full_disk_is_one_line_and_the_status_says_it_stopped(tiny_data, tmp_path, monkeypatch, where):
    run_dir = tmp_path / "run"
    calls = {"n": 0}
    if where == "weights":
        from spatialmix.io import storage

        real = storage.save_file

        def save_file(tensors, path, metadata=None):
            calls["n"] += 1
            if calls["n"] > 1:  # init.safetensors is written; the first checkpoint's weights are not
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(tensors, path, metadata=metadata)

        monkeypatch.setattr(storage, "save_file", save_file)
    else:

        def torch_save(*args, **kwargs):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\n"
                "PytorchStreamWriter failed writing file data/0: file write failed"
            )

        monkeypatch.setattr(torch, "save", torch_save)
    with pytest.raises(SpatialmixError) as err:
        fit(TrainConfig(**TINY), run_dir, data=tiny_data)
    # ENOSPC says so; torch's words for a short write are given as they are (the disk is not full here)
    said = "no space left on device while writing" if where == "weights" else "cannot write"
    assert "\n" not in str(err.value) and said in str(err.value)
    advice = f"`sm.train(sm.resume_config({str(run_dir)!r}), {str(run_dir)!r}, resume=True)`"
    assert str(err.value).endswith(f"free space and resume with {advice}")
    status = runs.read_json(run_dir / runs.STATUS)
    assert status["state"] == "interrupted" and status["epoch"] == 0 and said in status["reason"]
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.parametrize(
    "value,expected",
    [
        (1.5, "epochs must be a whole number, got 1.5"),
        ("ten", "epochs must be a whole number, got 'ten'"),
        (True, "epochs must be a whole number, got True"),
    ],
)
def test_sweep_grid_values_of_the_wrong_type_fail_the_dry_run(tmp_path, value, expected):
    from spatialmix.sweep.plan import grid_sweep

    with pytest.raises(SpatialmixError) as err:
        grid_sweep({"base": {"epochs": value}, "grid": {"mode": ["full", "chans"]}}, tmp_path / "sweep")
    assert expected in str(err.value) and "configuration mode=full" in str(err.value)


def test_importing_the_library_leaves_the_process_alone(tmp_path):
    """No process-wide state changes on import: the umask is never touched (flipping it, even for
    an instant, changes the mode of files other threads create meanwhile), and files the library
    writes get 0666 less the user's umask, as any file the user makes."""
    script = (
        "import os, sys\n"
        "calls = []\n"
        "real = os.umask\n"
        "os.umask = lambda mask: calls.append(mask) or real(mask)\n"
        "import spatialmix.api\n"
        "from spatialmix.io import storage, lock\n"
        "os.umask = real\n"
        "print(calls)\n"
        "real(0o027)\n"
        f"storage.atomic_write_json(__import__('pathlib').Path({str(tmp_path / 'x.json')!r}), {{'a': 1}})\n"
        f"with lock.locked({str(tmp_path / 'run')!r}):\n"
        f"    print(oct(os.stat({str(tmp_path / 'run' / 'run.lock')!r}).st_mode & 0o777))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "0o640"]  # no umask call; the lock file 0666 less the umask
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o640

"""Training: the run directory, resume after a kill, non-finite losses, the schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import SUBPROCESS_ENV, config_flags, snapshot_files
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.optim import piecewise_linear_lr
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.errors import NonFiniteLossError, SpatialmixError
from spatialmix.io import runs


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(runs.latest_checkpoint(run_dir) / runs.MODEL_FILE))


def test_run_directory_contents(tiny_config, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(epochs=2, mode="chans")
    summary = fit(config, run_dir, data=tiny_data)

    record = runs.read_json(run_dir / runs.CONFIG)
    assert TrainConfig.from_dict(record["train"]) == config
    assert record["data"]["mean"] == [0.3] and record["data"]["num_classes"] == 4
    metrics = runs.read_jsonl(run_dir / runs.METRICS)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [m["step"] for m in metrics] == [4, 8]  # 256 images / batch 64
    assert all(0 <= m["test_acc"] <= 1 and m["train_loss"] > 0 for m in metrics)
    assert runs.read_json(run_dir / runs.STATUS) == {"state": "finished", "epoch": 2}
    assert runs.read_json(run_dir / runs.SUMMARY) == summary
    assert summary["test_acc"] == metrics[-1]["test_acc"]
    assert summary["best_acc"] == max(m["test_acc"] for m in metrics)
    assert runs.read_json(run_dir / runs.CKPT_DIR / runs.LATEST) == {"epoch": 2, "folder": "epoch-0002"}

    model, loaded_record = load_trained_model(run_dir)
    assert loaded_record == record and not model.training
    saved = final_weights(run_dir)
    assert model.model.state_dict().keys() == saved.keys()  # the network inside is the checkpoint's
    assert all(torch.equal(v, saved[k]) for k, v in model.model.state_dict().items())
    total = sum(p.numel() for p in model.parameters())
    assert summary["trainable_params"] + summary["frozen_params"] == total
    init_model, _ = load_trained_model(run_dir, weights="init")
    init = load_file(str(run_dir / runs.INIT))
    assert all(torch.equal(v, init[k]) for k, v in init_model.model.state_dict().items())


def test_piecewise_linear_schedule():
    total, lr = 1000, 0.05
    assert piecewise_linear_lr(0, total, lr) == 0
    assert piecewise_linear_lr(400, total, lr) == pytest.approx(lr)
    assert piecewise_linear_lr(200, total, lr) == pytest.approx(lr / 2)
    assert piecewise_linear_lr(800, total, lr) == pytest.approx(lr / 20)
    assert piecewise_linear_lr(600, total, lr) == pytest.approx((lr + lr / 20) / 2)
    assert piecewise_linear_lr(1000, total, lr) == pytest.approx(0)


def test_existing_run_is_not_overwritten(tiny_config, tiny_data, run_copy):
    run_dir, _ = run_copy
    before = snapshot_files(run_dir)
    with pytest.raises(SpatialmixError, match="already holds a run"):
        fit(tiny_config(), run_dir, data=tiny_data)
    assert snapshot_files(run_dir) == before


# --------------------------------------------------------------------------- resume

RESUME_CONFIG = dict(
    dataset="fashion-mnist",
    model="convmixer",
    width=32,
    depth=2,
    kernel_size=5,
    patch_size=2,
    epochs=3,
    batch_size=64,
    progress=False,
    seed=3,
    train_subset=256,
)


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(fake_fashion_dir, tmp_path):
    config = TrainConfig(**RESUME_CONFIG, data_dir=str(fake_fashion_dir))
    cli = [sys.executable, "-m", "spatialmix.cli", "train", *config_flags(config)]
    killed = tmp_path / "killed"
    latest = killed / runs.CKPT_DIR / runs.LATEST

    proc = subprocess.Popen(
        [*cli, "--out", str(killed)],
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not latest.is_file():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "no checkpoint after epoch 1"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The kill came in the middle of the run: not finished, at least the epoch-1 checkpoint.
    assert runs.read_json(killed / runs.STATUS)["state"] == "running"
    assert not (killed / runs.SUMMARY).exists()
    killed_at = runs.read_json(latest)["epoch"]
    assert 1 <= killed_at < 3

    resumed = subprocess.run(
        [*cli, "--out", str(killed), "--resume"],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "run saved in" in resumed.stdout

    straight = tmp_path / "straight"
    summary = fit(config, straight)  # same process settings as the subprocesses: 1 thread

    a, b = final_weights(killed), final_weights(straight)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ma, mb = runs.read_jsonl(killed / runs.METRICS), runs.read_jsonl(straight / runs.METRICS)
    assert [m["epoch"] for m in ma] == [1, 2, 3]
    for x, y in zip(ma, mb, strict=True):
        assert (x["step"], x["train_loss"], x["test_acc"], x["test_loss"]) == (
            y["step"],
            y["train_loss"],
            y["test_acc"],
            y["test_loss"],
        )
    resumed_summary = runs.read_json(killed / runs.SUMMARY)
    assert resumed_summary["test_acc"] == summary["test_acc"]
    assert resumed_summary["frozen_fingerprint"] == summary["frozen_fingerprint"]


class _Killed(Exception):
    pass


def test_kill_between_metrics_line_and_checkpoint_does_not_duplicate_epochs(
    tiny_config, tiny_data, tmp_path, monkeypatch
):
    """A kill after epoch 2's metrics line but before its checkpoint: resume redoes epoch 2 once."""
    config = tiny_config(epochs=3)
    run_dir = tmp_path / "run"
    real_save = runs.save_checkpoint

    def die_before_epoch_2(run_dir_, epoch, *args, **kwargs):
        if epoch == 2:
            raise _Killed
        return real_save(run_dir_, epoch, *args, **kwargs)

    monkeypatch.setattr(runs, "save_checkpoint", die_before_epoch_2)
    with pytest.raises(_Killed):
        fit(config, run_dir, data=tiny_data)
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]
    monkeypatch.setattr(runs, "save_checkpoint", real_save)
    fit(config, run_dir, resume=True, data=tiny_data)
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2, 3]

    straight = tmp_path / "straight"
    fit(config, straight, data=tiny_data)
    assert runs.read_jsonl(run_dir / runs.METRICS) == [
        {**m, "epoch_time": m2["epoch_time"], "images_per_s": m2["images_per_s"]}
        for m, m2 in zip(runs.read_jsonl(straight / runs.METRICS), runs.read_jsonl(run_dir / runs.METRICS))
    ]


def test_kill_after_last_checkpoint_before_summary(tiny_config, tiny_data, tmp_path):
    """Killed after the final checkpoint but before summary.json: resume writes the summary."""
    run_dir = tmp_path / "run"
    config = tiny_config(epochs=1)
    summary = fit(config, run_dir, data=tiny_data)
    (run_dir / runs.SUMMARY).unlink()
    runs.atomic_write_json(run_dir / runs.STATUS, {"state": "running", "epoch": 1})
    assert fit(config, run_dir, resume=True, data=tiny_data) == summary
    assert runs.read_json(run_dir / runs.SUMMARY) == summary
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "finished"


def test_kill_before_the_first_checkpoint_resumes_from_the_config_alone(tiny_config, tiny_data, tmp_path):
    """Killed after config.json but before init.safetensors (or any checkpoint): --resume starts over."""
    config = tiny_config(epochs=1)
    reference = fit(config, tmp_path / "reference", data=tiny_data)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.CONFIG).write_bytes((tmp_path / "reference" / runs.CONFIG).read_bytes())
    summary = fit(config, run_dir, resume=True, data=tiny_data)
    assert (run_dir / runs.INIT).read_bytes() == (tmp_path / "reference" / runs.INIT).read_bytes()
    assert summary["test_acc"] == reference["test_acc"]
    for name, tensor in final_weights(tmp_path / "reference").items():
        assert torch.equal(final_weights(run_dir)[name], tensor), name


def test_resume_of_a_finished_run_changes_nothing(tiny_config, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    summary = fit(tiny_config(), run_dir, data=tiny_data)
    before = snapshot_files(run_dir)
    assert fit(tiny_config(), run_dir, resume=True, data=tiny_data) == summary
    assert snapshot_files(run_dir) == before


def test_resume_with_another_config_is_refused(run_copy):
    run_dir, config = run_copy
    before = snapshot_files(run_dir)
    with pytest.raises(SpatialmixError) as err:
        fit(config.replace(lr=0.5), run_dir, resume=True)
    assert "different config" in str(err.value) and "lr=0.01 (saved) vs 0.5" in str(err.value)
    assert snapshot_files(run_dir) == before


# --------------------------------------------------------------------------- non-finite loss


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tiny_config, tiny_data, tmp_path, monkeypatch):
    import spatialmix.engine.train as train_mod

    steps_per_epoch = len(tiny_data.train_labels) // 64
    real_build = train_mod.build_model

    def model_that_turns_nan_in_epoch_2(*args, **kwargs):
        model = real_build(*args, **kwargs)
        calls = {"train": 0}

        def hook(module, inputs, output):
            if module.training:
                calls["train"] += 1
                if calls["train"] > steps_per_epoch:
                    return output * float("nan")

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_mod, "build_model", model_that_turns_nan_in_epoch_2)

    snapshots = {}
    real_save = runs.save_checkpoint

    def save_and_snapshot(run_dir, epoch, *args, **kwargs):
        folder = real_save(run_dir, epoch, *args, **kwargs)
        snapshots[epoch] = snapshot_files(run_dir / runs.CKPT_DIR)
        return folder

    monkeypatch.setattr(runs, "save_checkpoint", save_and_snapshot)

    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        fit(tiny_config(epochs=3), run_dir, data=tiny_data)
    message = str(err.value)
    assert "loss became nan at epoch 2, step 1" in message and "epoch 1" in message and "\n" not in message
    assert list(snapshots) == [1]
    assert snapshot_files(run_dir / runs.CKPT_DIR) == snapshots[1]
    status = runs.read_json(run_dir / runs.STATUS)
    assert status["state"] == "failed" and status["epoch"] == 1 and "nan" in status["reason"]
    assert not (run_dir / runs.SUMMARY).exists()
    assert len(runs.read_jsonl(run_dir / runs.METRICS)) == 1
    model, _ = load_trained_model(run_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_huge_learning_rate_gives_non_finite_loss(tiny_config, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="lower lr: continue with `sm.train"):
        fit(tiny_config(lr=1e30, epochs=2), run_dir, data=tiny_data)
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "failed"
    assert runs.latest_checkpoint(run_dir) is None
    # The weights at initialization are still there and finite.
    assert all(torch.isfinite(v).all() for v in load_file(str(run_dir / runs.INIT)).values())


def test_config_round_trip_and_validation(tiny_config):
    config = tiny_config(mode="space", smooth_sigma=0.5, init_seed=4)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(SpatialmixError, match="unknown fields"):
        TrainConfig.from_dict({**config.to_dict(), "warmup": 3})
    for bad, pattern in [
        (dict(epochs=0), "epochs must be a positive"),
        (dict(lr=-1), "lr must be"),
        (dict(label_smoothing=1.0), "below 1"),
        (dict(amp="fp8"), "unknown amp setting"),
        (dict(augment="mixup"), "unknown augmentation"),
        (dict(device="tpu"), "unknown device"),
    ]:
        with pytest.raises(SpatialmixError, match=pattern):
            tiny_config(**bad).validate()


def test_training_from_python_leaves_the_process_alone(tiny_data, tiny_config, tmp_path, monkeypatch):
    """A library call changes no process-wide setting it was not asked to: glibc's allocator is
    tuned by the command line only, and torch's threads only when the config names a count."""
    from spatialmix.accel import speed
    from spatialmix.cli import main as cli

    tuned = []
    monkeypatch.setattr(speed, "tune_allocator", lambda: tuned.append(1) or True)
    threads = torch.get_num_threads()
    fit(tiny_config(), tmp_path / "run", data=tiny_data)
    assert tuned == [] and torch.get_num_threads() == threads
    assert cli.main(["models", "convmixer"]) == 0 and tuned == [1]

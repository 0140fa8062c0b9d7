"""Callbacks at run, step and epoch; the TensorBoard and Weights & Biases loggers; ``--log``."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import spatialmix as sm
from spatialmix.cli import main as cli
from spatialmix.engine import callbacks


class Recorder(sm.Callback):
    def __init__(self):
        self.events = []

    def on_run_start(self, run_dir, config, step):
        self.events.append(("start", Path(run_dir), config, step))

    def on_step_end(self, step, loss):
        self.events.append(("step", step, loss.item()))

    def on_epoch_end(self, epoch, metrics):
        self.events.append(("epoch", epoch, dict(metrics)))

    def on_run_end(self, summary):
        self.events.append(("end", summary))


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_callbacks_see_every_step_and_epoch_and_the_summary(tmp_path, tiny_data, tiny_config):
    recorder = Recorder()
    config = tiny_config(epochs=2)
    run = sm.train(config, tmp_path / "run", data=tiny_data, callbacks=[recorder])
    steps_per_epoch = len(tiny_data.train_labels) // config.batch_size
    kinds = [e[0] for e in recorder.events]
    assert kinds == [
        "start",
        *["step"] * steps_per_epoch,
        "epoch",
        *["step"] * steps_per_epoch,
        "epoch",
        "end",
    ]
    assert recorder.events[0] == ("start", tmp_path / "run", config, 0)
    assert [e[1] for e in recorder.events if e[0] == "step"] == list(range(1, 2 * steps_per_epoch + 1))
    assert [e[2] for e in recorder.events if e[0] == "epoch"] == metrics_lines(run.path)
    assert recorder.events[-1] == ("end", run.summary)
    # The mean of the step losses of an epoch is the epoch's train loss (equal batches).
    first = [e[2] for e in recorder.events[1 : steps_per_epoch + 1]]
    assert np.mean(first) == pytest.approx(metrics_lines(run.path)[0]["train_loss"], rel=1e-5)


def test_a_resumed_run_starts_its_callbacks_at_the_saved_step(tmp_path, tiny_data, tiny_config):
    config = tiny_config(epochs=2)
    sm.train(config, tmp_path / "run", data=tiny_data, max_steps=6)  # 4 steps an epoch: stops in epoch 2
    recorder = Recorder()
    sm.train(config, tmp_path / "run", data=tiny_data, resume=True, callbacks=[recorder])
    assert recorder.events[0][3] == 4  # resumed from the checkpoint of epoch 1
    assert [e[1] for e in recorder.events if e[0] == "step"] == [5, 6, 7, 8]
    assert [e[1] for e in recorder.events if e[0] == "epoch"] == [2]


def test_a_run_stopped_early_ends_its_callbacks_without_a_summary(tmp_path, tiny_data, tiny_config):
    recorder = Recorder()
    sm.train(tiny_config(), tmp_path / "run", data=tiny_data, max_steps=2, callbacks=[recorder])
    assert [e[0] for e in recorder.events] == ["start", "step", "step", "end"]
    assert recorder.events[-1] == ("end", None)


def test_a_callback_error_reaches_the_caller_and_leaves_the_run_resumable(tmp_path, tiny_data, tiny_config):
    class Failing(sm.Callback):
        def on_epoch_end(self, epoch, metrics):
            raise ValueError(f"no room for epoch {epoch}")

    recorder = Recorder()
    with pytest.raises(ValueError, match="no room for epoch 1"):
        sm.train(tiny_config(epochs=2), tmp_path / "run", data=tiny_data, callbacks=[Failing(), recorder])
    assert recorder.events[-1] == ("end", None)  # the others are told the run ended
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["reason"] == "no room for epoch 1"
    run = sm.train(tiny_config(epochs=2), tmp_path / "run", data=tiny_data, resume=True)
    assert run.summary["epochs"] == 2


def test_callbacks_run_on_rank_0_only(monkeypatch):
    recorder = Recorder()
    monkeypatch.setenv("RANK", "1")
    assert callbacks.for_this_rank([recorder]) == []
    monkeypatch.setenv("RANK", "0")
    assert callbacks.for_this_rank([recorder]) == [recorder]


# --------------------------------------------------------------------------- TensorBoard


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_logs_the_metrics_of_every_epoch(tmp_path, tiny_data, tiny_config):
    run = sm.train(
        tiny_config(epochs=2),
        tmp_path / "run",
        data=tiny_data,
        callbacks=[sm.TensorBoardLogger(every_n_steps=1)],
    )
    logged = scalars(run.path / "logs" / "tensorboard")
    lines = metrics_lines(run.path)
    for name in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        # float32 in the event file: the value of metrics.jsonl rounded to float32, at the epoch's last step
        assert logged[name] == [(m["step"], float(np.float32(m[name]))) for m in lines], name
    assert [step for step, _ in logged["train_loss_step"]] == list(range(1, lines[-1]["step"] + 1))
    assert logged["epoch"] == [(m["step"], float(m["epoch"])) for m in lines]


def test_tensorboard_writes_where_it_is_told_and_resumes_without_repeating_steps(
    tmp_path, tiny_data, tiny_config
):
    config = tiny_config(epochs=2)
    straight = tmp_path / "straight-logs"
    sm.train(config, tmp_path / "straight", data=tiny_data, callbacks=[sm.TensorBoardLogger(straight, 1)])
    folder = tmp_path / "elsewhere"
    for resume, max_steps in ((False, 6), (True, None)):  # 4 steps an epoch: killed in epoch 2, resumed
        logger = sm.TensorBoardLogger(folder, every_n_steps=1)
        sm.train(
            config, tmp_path / "run", data=tiny_data, resume=resume, max_steps=max_steps, callbacks=[logger]
        )
    assert not (tmp_path / "run" / "logs").exists()
    # Steps 5 and 6 ran twice: the first values are hidden, so the curves are the uninterrupted run's
    # (all but the timings).
    timings = ("epoch_time", "images_per_s")
    logged, reference = scalars(folder), scalars(straight)
    assert {k: v for k, v in logged.items() if k not in timings} == {
        k: v for k, v in reference.items() if k not in timings
    }
    assert [step for step, _ in logged["train_loss_step"]] == list(range(1, 9))


def test_a_log_folder_that_leads_out_of_the_run_is_refused(tmp_path, tiny_data, tiny_config):
    (tmp_path / "outside").mkdir()
    sm.train(tiny_config(), tmp_path / "run", data=tiny_data, max_steps=1)
    (tmp_path / "run" / "logs").symlink_to(tmp_path / "outside")
    with pytest.raises(sm.SpatialmixError, match="points outside its run folder"):
        sm.train(
            tiny_config(), tmp_path / "run", data=tiny_data, resume=True, callbacks=[sm.TensorBoardLogger()]
        )
    assert list((tmp_path / "outside").iterdir()) == []


# --------------------------------------------------------------------------- Weights & Biases


def test_wandb_not_installed_is_one_line_saying_how_to_get_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an absent package looks like to import
    with pytest.raises(sm.SpatialmixError, match="needs the wandb package: pip install wandb"):
        sm.WandbLogger()
    assert cli.main(["train", "--log", "wandb", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "spatialmix: error: logging to Weights & Biases needs the wandb package: pip install wandb"
    ]
    assert not (tmp_path / "run").exists()


class FakeWandb(types.ModuleType):
    """What spatialmix calls of wandb, recorded."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        fake = self

        class Summary(dict):
            def update(self, values):
                fake.calls.append(("summary", dict(values)))

        class FakeRun:
            summary = Summary()

            def log(self, values, step):
                fake.calls.append(("log", dict(values), step))

            def finish(self):
                fake.calls.append(("finish",))

        return FakeRun()


def test_wandb_gets_the_config_every_epochs_metrics_and_the_summary(
    monkeypatch, tmp_path, tiny_data, tiny_config
):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = tiny_config(epochs=2)
    run = sm.train(config, tmp_path / "run", data=tiny_data, callbacks=[sm.WandbLogger(every_n_steps=3)])
    (_, init), *rest = fake.calls
    assert init == {
        "project": "spatialmix",
        "mode": "offline",
        "dir": str(tmp_path / "run" / "logs"),
        "name": "run",
        "config": config.to_dict(),
    }
    logs = [c for c in rest if c[0] == "log"]
    epochs = [(values, step) for _, values, step in logs if "test_acc" in values]
    lines = metrics_lines(run.path)
    assert epochs == [({k: v for k, v in m.items() if k != "step"}, m["step"]) for m in lines]
    assert [step for _, values, step in logs if "train_loss_step" in values] == [3, 6]
    summary = {k: v for k, v in run.summary.items() if k != "test_correct_bits"}
    assert rest[-2:] == [("summary", summary), ("finish",)]
    steps = [step for _, _, step in logs]
    assert steps == sorted(steps)  # wandb refuses a step that goes back


@pytest.mark.parametrize(
    "environment, given, mode",
    [
        (None, None, "offline"),
        ("disabled", None, "disabled"),
        ("online", None, "online"),
        ("disabled", "online", "online"),
    ],
)
def test_wandb_mode_is_wandbs_own_environment_variable_unless_given(
    monkeypatch, tmp_path, environment, given, mode
):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)  # (wandb itself need not be installed)
    if environment is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", environment)
    logger = sm.WandbLogger() if given is None else sm.WandbLogger(mode=given)
    logger.on_run_start(tmp_path / "run", sm.TrainConfig(), 0)
    (_, init), *_ = fake.calls
    assert init["mode"] == mode


# --------------------------------------------------------------------------- --log


def test_log_on_the_command_line(tmp_path, capsys, fake_fashion_dir):
    base = ["train", "--model", "convmixer", "--width", "8", "--depth", "1", "--patch-size", "4"]
    base += ["--data-dir", str(fake_fashion_dir), "--train-subset", "128", "--epochs", "1", "--no-progress"]
    assert cli.main([*base, "--log", "tensorbord", "--out", str(tmp_path / "typo")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "spatialmix: error: unknown logger 'tensorbord'; did you mean 'tensorboard'? choose one of: "
        "tensorboard, wandb"
    ]
    assert not (tmp_path / "typo").exists()
    assert cli.main([*base, "--log", "tensorboard", "--out", str(tmp_path / "run")]) == 0
    logged = scalars(tmp_path / "run" / "logs" / "tensorboard")
    assert logged["test_acc"] == [
        (m["step"], float(np.float32(m["test_acc"]))) for m in metrics_lines(tmp_path / "run")
    ]

"""``sm.train`` returns a Run you can hold, and ``sm.Run.open`` gives the same for any run folder."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import spatialmix as sm
from conftest import TINY
from spatialmix.io import runs
from spatialmix.workflow.handle import Run


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_data):
    """A finished 2-epoch run and the config it was trained with."""
    config = sm.TrainConfig(**{**TINY, "epochs": 2, "mode": "chans"})
    run_dir = tmp_path_factory.mktemp("handle") / "run"
    return sm.train(config, run_dir, data=tiny_data), config


def test_train_returns_the_run_with_its_config_metrics_summary_and_checkpoints(finished):
    run, config = finished
    assert isinstance(run, Run) and sm.Run is Run
    assert run.config == config and run.status == "finished"
    assert run.summary == json.loads((run.path / "summary.json").read_text())
    lines = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert isinstance(run.metrics, pd.DataFrame) and len(run.metrics) == 2
    assert run.metrics.to_dict("records") == lines  # one row per epoch, every column of metrics.jsonl
    assert [p.name for p in run.checkpoints] == ["epoch-0001", "epoch-0002"]


def test_model_loads_the_newest_checkpoint_or_the_init_weights_in_eval_mode(finished):
    run, _ = finished
    for weights, path in (
        ("latest", run.checkpoints[-1] / "model.safetensors"),
        ("init", run.path / "init.safetensors"),
    ):
        model = run.model(weights)
        saved = load_file(path)
        assert not model.training and set(saved) == set(model.model.state_dict())
        assert all(torch.equal(model.model.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(sm.SpatialmixError, match="unknown weights 'best'"):
        run.model("best")


def test_open_reads_an_unfinished_run(interrupted_run):
    run_dir, config = interrupted_run
    run = sm.Run.open(run_dir)
    assert run.summary is None and run.config == config and len(run.metrics) == 1
    assert [p.name for p in run.checkpoints] == ["epoch-0001"]
    assert run.status == runs.Run(run_dir).status().get("state")
    assert run.model().model.state_dict().keys() == load_file(run.checkpoints[0] / "model.safetensors").keys()


def test_a_run_with_nothing_recorded_yet_has_empty_metrics_and_no_status(tmp_path, tiny_data, tiny_config):
    sm.train(tiny_config(), tmp_path / "run", data=tiny_data, max_steps=1)
    (tmp_path / "run" / "status.json").unlink()
    run = sm.Run.open(tmp_path / "run")
    assert run.status is None and run.metrics.empty and run.checkpoints == [] and run.summary is None
    with pytest.raises(sm.SpatialmixError, match="has no checkpoint yet"):
        run.model()


def test_open_refuses_what_is_not_a_run_in_one_line(tmp_path):
    with pytest.raises(sm.SpatialmixError, match="does not exist"):
        sm.Run.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sm.SpatialmixError, match="is not a spatialmix run"):
        sm.Run.open(tmp_path / "empty")


def test_robustness_is_none_until_an_attack_saved_it_then_the_saved_result(
    finished, tmp_path, fake_fashion_dir
):
    run = sm.train(
        sm.TrainConfig(**{**TINY, "data_dir": str(fake_fashion_dir), "train_subset": 128}), tmp_path / "run"
    )
    assert run.robustness() is None
    sm.attack_runs(
        [run.path], eps=(0, 8 / 255), n_examples=8, steps=2, reference_examples=0, plot=None, progress=False
    )
    assert run.robustness() == json.loads((run.path / "robustness.json").read_text())


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.pop("clean_acc"), "clean_acc"),
        (lambda r: r.update(budgets="all"), "budgets"),
        (lambda r: r["budgets"][0].update(robust_acc="high"), "robust_acc"),
    ],
)
def test_a_damaged_robustness_result_is_one_line_naming_the_file_and_field(finished, tmp_path, change, field):
    run_dir = tmp_path / "run"
    shutil.copytree(finished[0].path, run_dir)
    result = {"clean_acc": 0.5, "budgets": [{"eps": 0.0, "robust_acc": 0.5}]}
    change(result)
    (run_dir / "robustness.json").write_text(json.dumps(result))
    with pytest.raises(sm.SpatialmixError) as err:
        sm.Run.open(run_dir).robustness()
    assert str(err.value).startswith(f"{run_dir / 'robustness.json'}: field {field!r}")
    assert len(str(err.value).splitlines()) == 1


def test_train_refuses_a_mistyped_setting_with_a_suggestion(tmp_path, tiny_data, tiny_config):
    with pytest.raises(sm.SpatialmixError, match="unknown setting 'epoch'; did you mean 'epochs'"):
        sm.train(tiny_config(), tmp_path / "run", data=tiny_data, epoch=2)
    assert not (tmp_path / "run").exists()


def test_train_changes_the_fields_given_as_keywords(tmp_path, tiny_data, tiny_config):
    run = sm.train(tiny_config(), tmp_path / "run", data=tiny_data, mode="space", seed=3)
    assert (run.config.mode, run.config.seed) == ("space", 3) and run.summary["mode"] == "space"


def test_train_given_a_models_name_points_to_the_config_that_names_it(tmp_path):
    with pytest.raises(sm.SpatialmixError) as err:
        sm.train("timm:resnet18", tmp_path / "run", epochs=1)
    message = str(err.value)
    assert "pass TrainConfig(model='timm:resnet18')" in message
    assert "sm.train(sm.TrainConfig(model='timm:resnet18'), run_dir)" in message
    assert len(message.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_errors_name_parameters_to_python_callers_and_flags_on_the_command_line(
    tmp_path, tiny_data, tiny_config, capsys
):
    from spatialmix.cli import main as cli

    run_dir = tmp_path / "run"
    sm.train(tiny_config(), run_dir, data=tiny_data, max_steps=1)  # stopped before its first checkpoint
    with pytest.raises(sm.SpatialmixError) as err:
        sm.train(tiny_config(), run_dir, data=tiny_data)
    assert str(err.value) == (
        f"{run_dir} already holds a run; pass resume=True to continue it or choose another run_dir"
    )
    with pytest.raises(sm.SpatialmixError) as err:
        sm.Run.open(run_dir).model()
    advice = f"`sm.train(sm.resume_config({str(run_dir)!r}), {str(run_dir)!r}, resume=True)`"
    assert str(err.value).endswith(f"train it first with {advice}")
    # ... and the advice, followed, finishes the run
    assert sm.train(sm.resume_config(run_dir), run_dir, resume=True, data=tiny_data).status == "finished"
    capsys.readouterr()
    assert cli.main(["train", "--model", "convmixer", "--width", "16", "--out", str(run_dir)]) == 2
    assert capsys.readouterr().err == (
        f"spatialmix: error: {run_dir} already holds a run; pass --resume to continue it or choose "
        f"another --out\n"
    )
    with pytest.raises(sm.SpatialmixError, match="pass resume=True to continue it"):  # (Python's again)
        sm.train(tiny_config(), run_dir, data=tiny_data)

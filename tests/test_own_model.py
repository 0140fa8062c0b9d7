"""Training a model of your own: a factory or a module goes in, the run folder records how to rebuild it,
and reopening it (attack, report, resume) needs the factory again or an explicit trust in its code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import spatialmix as sm
from conftest import SUBPROCESS_ENV
from spatialmix.cli import main as cli
from spatialmix.engine.config import BUILT_IN_SIZE_FIELDS, TrainConfig
from spatialmix.engine.tasks import build_model
from spatialmix.engine.user_model import UserModel, import_reference
from spatialmix.io import runs
from spatialmix.robustness.run_attacks import select_examples

SETTINGS = dict(mode="chans", epochs=1, batch_size=64, progress=False)
CHEAP_ATTACK = dict(eps=(0, 8 / 255), n_examples=8, steps=2, reference_examples=0, progress=False)
CLI_ATTACK = ["--eps", "0,8/255", "--n-examples", "8", "--steps", "2", "--reference-examples", "0"]


def build(in_chans, num_classes, width=8):
    """A tiny separable network: a patch stem, a depthwise 3 x 3 (spatial) and a 1 x 1 (channel) mixer."""
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 4, stride=4),
        nn.GELU(),
        nn.BatchNorm2d(width),
        nn.Conv2d(width, width, 3, padding=1, groups=width),
        nn.GELU(),
        nn.BatchNorm2d(width),
        nn.Conv2d(width, width, 1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def build_wider(in_chans, num_classes):
    return build(in_chans, num_classes, width=12)


FACTORY_MODULE = """
from pathlib import Path
from torch import nn

with open(Path(__file__).with_name("imported.txt"), "a") as marker:   # proves an import happened
    marker.write("imported\\n")


def build(in_chans, num_classes):
    return nn.Sequential(
        nn.Conv2d(in_chans, 8, 4, stride=4), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )
"""


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A module of your own in a folder of its own (importable from there), with a fresh name; returns
    ``(folder, name)``. Importing it appends a line to ``folder/imported.txt``."""
    folder = tmp_path / "code"
    folder.mkdir()
    name = f"own_net_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield folder, name
    sys.modules.pop(name, None)


def imported(folder: Path) -> bool:
    return (folder / "imported.txt").exists()


def shapes(model: nn.Module) -> dict:
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def one_error_line(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# --------------------------------------------------------------------------- training and recording


def test_a_factory_trains_in_chans_mode_and_config_json_records_how_to_rebuild_it(tmp_path, tiny_data):
    run = sm.train(build, tmp_path / "run", data=tiny_data, **SETTINGS)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"]["model"] == "test_own_model:build"
    reference = build(1, 4)
    assert record["model_source"] == {
        "kind": "factory",
        "reference": "test_own_model:build",
        "class": "torch.nn.modules.container:Sequential",
        "tensors": shapes(reference),
        "unused_fields": list(BUILT_IN_SIZE_FIELDS),
    }
    depthwise = 8 * 3 * 3 + 8  # the one spatial mixer, frozen in Chans mode
    total = sum(p.numel() for p in reference.parameters())
    assert (run.summary["frozen_params"], run.summary["trainable_params"]) == (depthwise, total - depthwise)
    model = run.model()
    latest = load_file(run.checkpoints[-1] / "model.safetensors")
    init = load_file(tmp_path / "run" / "init.safetensors")
    assert all(torch.equal(model.model.state_dict()[k], latest[k]) for k in latest) and not model.training
    assert torch.equal(latest["3.weight"], init["3.weight"])  # frozen: it never moved
    assert not torch.equal(latest["6.weight"], init["6.weight"])  # the channel mixer learned


def test_the_factory_gets_the_arguments_it_takes_under_the_runs_seed(tiny_data):
    calls = []

    def takes_two(num_classes, image_size):
        calls.append({"num_classes": num_classes, "image_size": image_size})
        return build(1, num_classes)

    def takes_any(**kwargs):
        calls.append(kwargs)
        return build(kwargs["in_chans"], kwargs["num_classes"])

    config = TrainConfig(model="x:y", mode="chans")
    build_model(config, 1, 4, 28, user=UserModel(takes_two))
    build_model(config, 1, 4, 28, user=UserModel(takes_any))
    assert calls == [
        {"num_classes": 4, "image_size": 28},
        {"in_chans": 1, "num_classes": 4, "image_size": 28},
    ]

    before = torch.get_rng_state()
    first = build_model(config, 1, 4, 28, user=UserModel(build)).state_dict()
    assert torch.equal(torch.get_rng_state(), before)  # construction does not move the global generator
    again = build_model(config, 1, 4, 28, user=UserModel(build)).state_dict()
    other = build_model(config.replace(seed=1), 1, 4, 28, user=UserModel(build)).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["0.weight"], other["0.weight"])  # the stem too is a function of the seed


def test_something_that_is_not_a_model_is_refused_in_one_line(tmp_path, tiny_data):
    with pytest.raises(sm.SpatialmixError, match="must be an nn.Module or a function returning one, got int"):
        sm.train(3, tmp_path / "run", data=tiny_data)
    with pytest.raises(sm.SpatialmixError, match="returned str, not an nn.Module"):
        sm.train(lambda: "model", tmp_path / "run", data=tiny_data, **SETTINGS)
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_model_that_cannot_take_the_images_is_refused_before_training(tmp_path, tiny_data):
    def too_coarse(in_chans, num_classes):  # a 32 x 32 kernel on 28 x 28 images
        return nn.Sequential(nn.Conv2d(in_chans, 4, 32), nn.Flatten(), nn.Linear(4, num_classes))

    with pytest.raises(sm.SpatialmixError) as err:
        sm.train(too_coarse, tmp_path / "run", data=tiny_data, **SETTINGS)
    message = str(err.value)
    assert message.startswith("the model test_own_model:too_coarse cannot take 1 x 28 x 28 images (")
    assert "build it for the data" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("field, value", [("width", 8), ("depth", 2), ("kernel_size", 3), ("patch_size", 2)])
def test_the_built_in_models_sizes_are_refused_for_a_model_of_your_own(tmp_path, tiny_data, field, value):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(sm.SpatialmixError, match=f"{flag} does not apply to a model of your own"):
        sm.train(build, tmp_path / "run", data=tiny_data, **{**SETTINGS, field: value})
    assert not (tmp_path / "run").exists()
    with pytest.raises(sm.SpatialmixError, match=f"{flag} does not apply"):
        TrainConfig(model="mypkg.models:build", **{field: value}).validate()


@pytest.mark.parametrize("reference", ["a:b:c", "a.:b", "1a:b", "a:b()", "a/b:c", "a:", ":b", "a b:c"])
def test_a_malformed_reference_is_refused_before_anything_is_imported(reference):
    with pytest.raises(
        sm.SpatialmixError, match="is not a reference to a model factory; write it as module:f"
    ):
        TrainConfig(model=reference).validate()
    with pytest.raises(sm.SpatialmixError, match="is not a reference to a model factory"):
        import_reference(reference)


def test_a_lambda_trains_and_reopens_only_when_given_again(tmp_path, tiny_data):
    factory = lambda: build(1, 4)
    run = sm.train(factory, tmp_path / "run", data=tiny_data, **SETTINGS)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"]["model"] == "test_own_model:lambda" and record["model_source"]["reference"] is None
    assert isinstance(run.model().model, nn.Sequential)  # the handle train returned holds the factory
    with pytest.raises(
        sm.SpatialmixError, match="was trained with a model passed from Python .*pass it again"
    ):
        sm.Run.open(tmp_path / "run").model(trust_code=True)
    reopened = sm.Run.open(tmp_path / "run").model(model=factory)
    assert all(torch.equal(reopened.state_dict()[k], v) for k, v in run.model().state_dict().items())


def test_a_module_trains_as_it_is_and_reopens_with_a_module_of_the_same_tensors(tmp_path, tiny_data):
    net = build(1, 4)
    run = sm.train(net, tmp_path / "run", data=tiny_data, **SETTINGS)
    source = json.loads((tmp_path / "run" / "config.json").read_text())["model_source"]
    assert (source["kind"], source["reference"], source["tensors"]) == ("module", None, shapes(build(1, 4)))
    latest = load_file(run.checkpoints[-1] / "model.safetensors")
    assert all(torch.equal(net.state_dict()[k].cpu(), latest[k]) for k in latest)  # the module you passed
    loaded = run.model(weights="init")
    assert loaded.model is not net and torch.equal(
        net.state_dict()["6.weight"].cpu(), latest["6.weight"]
    )  # untouched
    for given in (build(1, 4), build):  # a module of the same tensors, or a factory of it
        model = sm.Run.open(tmp_path / "run").model(model=given)
        assert all(torch.equal(model.model.state_dict()[k], latest[k]) for k in latest)
    with pytest.raises(sm.SpatialmixError) as err:
        sm.Run.open(tmp_path / "run").model(model=build_wider)
    assert "is not the one it was trained with ('0.bias' is [12] here, [8] in the run)" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_model_given_for_a_run_of_a_built_in_model_is_refused(tmp_path, tiny_data, tiny_config):
    sm.train(tiny_config(), tmp_path / "run", data=tiny_data)
    with pytest.raises(
        sm.SpatialmixError, match="trained with the built-in model convmixer; open it without"
    ):
        sm.Run.open(tmp_path / "run").model(model=build)


# --------------------------------------------------------------------------- resume


def test_resume_with_the_factory_continues_to_the_weights_of_an_uninterrupted_run(tmp_path, tiny_data):
    settings = {**SETTINGS, "epochs": 2}
    straight = sm.train(build, tmp_path / "straight", data=tiny_data, **settings)
    sm.train(build, tmp_path / "killed", data=tiny_data, max_steps=5, **settings)  # 4 steps an epoch
    assert sm.Run.open(tmp_path / "killed").summary is None
    resumed = sm.train(build, tmp_path / "killed", data=tiny_data, resume=True)  # the saved config
    a, b = straight.model().state_dict(), resumed.model().state_dict()
    assert resumed.summary["epochs"] == 2 and all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(
        sm.SpatialmixError, match="trained with the model test_own_model:build, not test_own_mo"
    ):
        sm.train(build_wider, tmp_path / "killed", data=tiny_data, resume=True, epochs=3)
    with pytest.raises(sm.SpatialmixError, match="trained with user code test_own_model:build; pass --trust"):
        sm.train(sm.resume_config(tmp_path / "killed"), tmp_path / "killed", data=tiny_data, resume=True)


def test_resume_refuses_a_module_whose_tensors_differ_from_the_recorded_ones(tmp_path, tiny_data):
    sm.train(build(1, 4), tmp_path / "run", data=tiny_data, max_steps=2, **SETTINGS)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(sm.SpatialmixError, match="is not the one it was trained with"):
        sm.train(build(1, 4, width=12), tmp_path / "run", data=tiny_data, resume=True)
    after = {
        p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file() and p.name != "run.lock"
    }
    assert after == {k: v for k, v in before.items() if k != "run.lock"}


# --------------------------------------------------------------------------- attack and report


@pytest.fixture(scope="module")
def own_run(tmp_path_factory, fake_fashion_dir):
    """A finished run of ``build`` on the fake Fashion-MNIST files (so attacks find the test set)."""
    run_dir = tmp_path_factory.mktemp("own") / "run"
    sm.train(build, run_dir, data_dir=str(fake_fashion_dir), train_subset=128, **SETTINGS)
    return run_dir


def test_evaluate_run_with_the_factory_attacks_the_trained_weights(own_run, fake_fashion_dir):
    data = sm.load_dataset("fashion-mnist", data_dir=str(fake_fashion_dir))
    result = sm.evaluate_run(own_run, model=build, data=data, **CHEAP_ATTACK)
    images, labels = select_examples(data, 8, 0)
    model = sm.Run.open(own_run).model(model=build)
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    with torch.no_grad():
        clean = (model((images - mean) / std).argmax(1) == labels).float().mean().item()
    assert result["clean_acc"] == pytest.approx(clean)
    assert result["budgets"][0]["robust_acc"] == pytest.approx(clean)  # eps 0: the clean answers


def test_attack_and_report_refuse_a_run_of_user_code_until_given_its_factory(
    own_run, fake_fashion_dir, tmp_path
):
    run_dir = tmp_path / "run"
    shutil.copytree(own_run, run_dir)
    message = (
        f"{run_dir} was trained with user code test_own_model:build; pass --trust-code to import and run it"
    )
    with pytest.raises(sm.SpatialmixError, match=message):
        sm.attack_runs([run_dir], data_dir=str(fake_fashion_dir), **CHEAP_ATTACK)
    with pytest.raises(sm.SpatialmixError, match=message):
        sm.write_report([run_dir], tmp_path / "report.html")
    assert not (run_dir / "robustness.json").exists() and not (tmp_path / "report.html").exists()

    results = sm.attack_runs(
        [run_dir], model=build, data_dir=str(fake_fashion_dir), plot=None, **CHEAP_ATTACK
    )
    assert sm.Run.open(run_dir).robustness()["clean_acc"] == results[0]["clean_acc"]
    files = sm.write_report([run_dir], tmp_path / "report.html", model=build)
    assert "filters" in files.present  # the spatial filters of the rebuilt model
    assert sm.attack_runs(
        [run_dir], trust_code=True, data_dir=str(fake_fashion_dir), plot=None, **CHEAP_ATTACK
    )


# --------------------------------------------------------------------------- the command line and trust


@pytest.fixture
def received_run(factory_module, tmp_path, fake_fashion_dir):
    """A run trained with the factory of ``factory_module``, as someone would send it: the module that
    imports with a visible effect sits importable beside it, and nothing has imported it yet."""
    folder, name = factory_module
    run_dir = tmp_path / "received"
    sm.train(
        import_reference(f"{name}:build"),
        run_dir,
        data_dir=str(fake_fashion_dir),
        train_subset=128,
        **SETTINGS,
    )
    sys.modules.pop(name)
    (folder / "imported.txt").unlink()
    return run_dir, folder, name


def test_a_received_run_imports_nothing_without_trust_code(received_run, tmp_path, capsys, fake_fashion_dir):
    run_dir, folder, name = received_run
    before = {str(p): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "run.lock"}
    expected = (
        f"spatialmix: error: {run_dir} was trained with user code {name}:build; pass --trust-code to import "
        f"and run it, only for runs you trust"
    )
    for argv in (
        ["attack", str(run_dir), "--data-dir", str(fake_fashion_dir), *CLI_ATTACK],
        ["report", str(run_dir), "-o", str(tmp_path / "report.html")],
        ["train", "--resume", "--out", str(run_dir), "--epochs", "2"],
    ):
        assert one_error_line(capsys, argv).startswith(expected), argv
    with pytest.raises(sm.SpatialmixError, match="pass --trust-code"):
        sm.load_trained_model(run_dir)
    assert not imported(folder) and name not in sys.modules
    after = {str(p): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "run.lock"}
    assert after == before

    # The same commands with --trust-code import it and work.
    assert (
        cli.main(["attack", str(run_dir), "--data-dir", str(fake_fashion_dir), *CLI_ATTACK, "--trust-code"])
        == 0
    )
    assert imported(folder) and (run_dir / "robustness.json").is_file()
    assert cli.main(["train", "--resume", "--out", str(run_dir), "--epochs", "2", "--trust-code"]) == 0
    assert sm.Run.open(run_dir).summary["epochs"] == 2
    assert cli.main(["report", str(run_dir), "-o", str(tmp_path / "r.html"), "--trust-code"]) == 0


def test_a_module_planted_in_a_received_run_folder_is_not_imported_by_a_real_process(received_run):
    run_dir, folder, name = received_run
    (run_dir / f"{name}.py").write_text((folder / f"{name}.py").read_text())  # beside config.json
    (folder / f"{name}.py").unlink()  # only the planted copy is left to import
    process = subprocess.run(
        [sys.executable, "-m", "spatialmix.cli", "attack", ".", "--n-examples", "8"],
        cwd=run_dir,  # `python -m` puts the current folder first on sys.path
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        timeout=300,
    )
    assert process.returncode == 2, process.stderr
    assert "was trained with user code" in process.stderr and "Traceback" not in process.stderr
    assert not (run_dir / "imported.txt").exists() and not imported(folder)


def test_the_command_line_trains_a_factory_named_with_trust_code(
    factory_module, tmp_path, capsys, fake_fashion_dir
):
    folder, name = factory_module
    out = tmp_path / "run"
    common = ["--data-dir", str(fake_fashion_dir), "--train-subset", "128", "--epochs", "1", "--no-progress"]
    common += ["--mode", "chans", "--out", str(out)]
    line = one_error_line(capsys, ["train", "--model", f"{name}:build", *common])
    assert line == (
        f"spatialmix: error: --model {name}:build imports and runs your code; add --trust-code to allow it "
        f"(only for code you trust)"
    )
    assert not out.exists() and not imported(folder)
    assert "is not a reference" in one_error_line(capsys, ["train", "--model", f"{name}:build()", *common])
    assert cli.main(["train", "--model", f"{name}:build", "--trust-code", *common]) == 0
    assert "run saved in" in capsys.readouterr().out
    run = sm.Run.open(out)
    assert run.config.model == f"{name}:build" and run.status == "finished" and imported(folder)
    assert json.loads((out / runs.CONFIG).read_text())["model_source"]["reference"] == f"{name}:build"


def test_attack_takes_a_factory_for_a_run_trained_from_python(
    tmp_path, capsys, factory_module, fake_fashion_dir
):
    """A module passed from Python records no reference: --model names the code that rebuilds it."""
    folder, name = factory_module
    net = import_reference(f"{name}:build")(1, 10)
    sm.train(net, tmp_path / "run", data_dir=str(fake_fashion_dir), train_subset=128, **SETTINGS)
    attack = ["attack", str(tmp_path / "run"), "--data-dir", str(fake_fashion_dir), *CLI_ATTACK]
    assert "passed from Python" in one_error_line(capsys, [*attack, "--trust-code"])
    assert "add --trust-code" in one_error_line(capsys, [*attack, "--model", f"{name}:build"])
    assert cli.main([*attack, "--model", f"{name}:build", "--trust-code", "--plot", "none"]) == 0
    saved = json.loads((tmp_path / "run" / "robustness.json").read_text())
    assert saved["n_examples"] == 8 and saved["weights"]["checkpoint"] == "epoch-0001"

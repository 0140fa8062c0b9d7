"""Every model spatialmix hands out takes images in [0, 1] and normalizes them itself (RobustBench's
convention): ``Run.model()``, ``load_trained_model`` and what ``train`` returns. So an attack of any
library, run on ``run.model()``, sees what ``spatialmix attack`` sees."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

import spatialmix as sm
from conftest import TINY
from spatialmix.data.batches import to_unit_range
from spatialmix.robustness.results import examples_digest
from spatialmix.robustness.run_attacks import select_examples

EPS = 8 / 255
# What ``spatialmix attack --attacks fgsm|pgd --strength fast --reference-examples 0 --eps 0,8/255
# --n-examples all`` runs: one attack at one budget, no boundary stage, no checks.
ONE_ATTACK = dict(eps=(0, EPS), strength="fast", reference_examples=0, n_examples=None, steps=10)


def band_data(n_train: int, n_test: int) -> sm.ImageData:
    """1-channel 28 x 28 images whose class (0-3) is the bright band of rows: learnable in 2 epochs."""
    g = torch.Generator().manual_seed(0)

    def make(n):
        labels = torch.arange(n) % 4
        images = torch.randint(0, 64, (n, 1, 28, 28), generator=g).to(torch.uint8)
        for band in range(4):
            images[labels == band, :, band * 7 : (band + 1) * 7, :] += 150
        return images, labels

    (train_x, train_y), (test_x, test_y) = make(n_train), make(n_test)
    # mean and std far from (0, 1): a model that skipped its normalization would be far off
    return sm.ImageData(
        "fashion-mnist", train_x, train_y, test_x, test_y, (0.3,), (0.3,), list("abcd"), source="memory"
    )


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A finished run that learned its data (well above the 25% of chance), and that data."""
    data = band_data(512, 128)
    config = sm.TrainConfig(**{**TINY, "epochs": 2, "lr": 0.02, "augment": "none"})
    run = sm.train(config, tmp_path_factory.mktemp("input-space") / "run", data=data)
    assert run.summary["test_acc"] > 0.6
    return run, data


def correct_bits(model, images, labels) -> str:
    with torch.no_grad():
        hits = model(images).argmax(1) == labels
    return "".join("1" if hit else "0" for hit in hits.tolist())


def test_the_model_of_a_run_scores_its_test_accuracy_on_images_in_0_1(learned):
    run, data = learned
    model = run.model()
    bits = correct_bits(model, to_unit_range(data.test_images), data.test_labels)
    # example by example what training measured on the same images, normalized by its loader
    assert bits == run.summary["test_correct_bits"]
    assert bits.count("1") / len(bits) == run.summary["test_acc"]
    loaded, record = sm.load_trained_model(run.path)
    assert correct_bits(loaded, to_unit_range(data.test_images), data.test_labels) == bits
    assert isinstance(model, sm.InputSpaceModel) and isinstance(loaded, sm.InputSpaceModel)
    assert model.normalize.mean.flatten().tolist() == pytest.approx(record["data"]["mean"])
    assert model.normalize.std.flatten().tolist() == pytest.approx(record["data"]["std"])


def test_the_saved_run_holds_the_network_alone_and_its_normalization_comes_from_config_json(
    learned, tmp_path
):
    """The checkpoints are those of the trained network (as every run folder holds them), so a run saved
    before the models took [0, 1] inputs opens the same way; the mean and std are config.json's."""
    run, data = learned
    saved = load_file(run.checkpoints[-1] / "model.safetensors")
    assert not any(key.startswith("normalize") for key in saved)
    assert run.model().model.state_dict().keys() == saved.keys()
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    record = json.loads((copy / "config.json").read_text())
    record["data"]["mean"], record["data"]["std"] = [0.5], [0.25]
    (copy / "config.json").write_text(json.dumps(record))
    model = sm.Run.open(copy).model()
    x = to_unit_range(data.test_images[:8])
    with torch.no_grad():
        assert torch.equal(model(x), model.model((x - 0.5) / 0.25))


def fgsm(model, x, y, eps):
    """FGSM written out (Goodfellow et al. 2015): one signed-gradient step of the cross-entropy."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def robust_bits(model, x, y, adv) -> str:
    """RobustBench's robust accuracy, per example: correct on the clean image and on its adversarial one."""
    with torch.no_grad():
        robust = (model(x).argmax(1) == y) & (model(adv).argmax(1) == y)
    return "".join("1" if r else "0" for r in robust.tolist())


def test_fgsm_on_the_runs_model_breaks_exactly_what_spatialmix_attack_breaks(learned):
    run, data = learned
    result = sm.evaluate_run(run.path, data=data, attacks=("fgsm",), progress=False, **ONE_ATTACK)
    x, y = select_examples(data, None, 0)
    assert examples_digest(x, y) == result["examples_sha256"]  # the same images, in the same order
    model = run.model()
    ours = robust_bits(model, x, y, fgsm(model, x, y, EPS))
    assert result["budgets"][0]["robust_acc"] == run.summary["test_acc"]
    assert result["budgets"][1]["robust_bits"] == ours
    assert 0 < ours.count("1") < run.summary["test_correct_bits"].count("1")  # it broke some, not all


def test_torchattacks_on_the_runs_model_agrees_with_spatialmix_attack(learned):
    """torchattacks' FGSM is the same attack: the same examples break. Its PGD differs from spatialmix's
    in the random start (drawn from another generator) and in counting an example broken only where
    its last step is (spatialmix: at any step), so the two may differ by an example or two of 128;
    a model that missed its normalization is off by far more (on these images its clean accuracy is
    chance)."""
    torchattacks = pytest.importorskip("torchattacks")
    run, data = learned
    model = run.model()
    x, y = select_examples(data, None, 0)
    for name, attack in (
        ("fgsm", torchattacks.FGSM(model, eps=EPS)),
        ("pgd", torchattacks.PGD(model, eps=EPS, alpha=2.5 * EPS / 10, steps=10)),
    ):
        result = sm.evaluate_run(run.path, data=data, attacks=(name,), progress=False, **ONE_ATTACK)
        torch.manual_seed(0)  # torchattacks draws PGD's start from the global generator
        theirs = robust_bits(model, x, y, attack(x, y))
        ours = result["budgets"][1]["robust_bits"]
        if name == "fgsm":
            assert ours == theirs
        else:
            assert abs(ours.count("1") - theirs.count("1")) <= 2, (name, ours, theirs)

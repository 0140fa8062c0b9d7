"""Any timm or torchvision model by name: built for the data set, frozen through the same mixing call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spatialmix.cli.main import main
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.errors import SpatialmixError
from spatialmix.models.factory import create_model

# Depthwise convolutions by the architectures' published layouts: ConvNeXt-atto has stage depths
# (2, 2, 6, 2), one 7 x 7 depthwise conv per block; MobileNetV2 has 17 inverted-residual blocks, one
# 3 x 3 depthwise conv each.
EXTERNAL = [("timm:convnext_atto", {"patch_size": 1}, 2 + 2 + 6 + 2), ("torchvision:mobilenet_v2", {}, 17)]


def depthwise_convs(model: nn.Module) -> list[nn.Conv2d]:
    """Counted here from the modules, not with spatialmix.mixing: one k x k filter per channel."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
        and max(m.kernel_size) > 1
    ]


@pytest.mark.parametrize("name,overrides,published", EXTERNAL)
def test_external_model_trains_in_chans_mode_with_its_depthwise_convs_frozen(
    name, overrides, published, tmp_path
):
    config = TrainConfig(
        dataset="fashion-mnist",
        model=name,
        mode="chans",
        train_subset=32,
        test_subset=16,
        batch_size=16,
        epochs=1,
        progress=False,
        device="cpu",
        amp="none",
        **overrides,
    )
    summary = fit(config, tmp_path / "run")  # 2 steps on real Fashion-MNIST
    model, record = load_trained_model(tmp_path / "run")
    init, _ = load_trained_model(tmp_path / "run", weights="init")
    depthwise = depthwise_convs(model)
    assert len(depthwise) == published
    own = {m: list(m.parameters(recurse=False)) for m in model.modules()}
    frozen_layers = [m for m, params in own.items() if params and not any(p.requires_grad for p in params)]
    assert len(frozen_layers) == len(depthwise) and all(a is b for a, b in zip(frozen_layers, depthwise))
    frozen_numel = sum(p.numel() for m in depthwise for p in m.parameters())
    assert summary["frozen_params"] == frozen_numel
    assert summary["trainable_params"] == sum(p.numel() for p in model.parameters()) - frozen_numel
    (spatial,) = [row for row in record["params"]["by_kind"] if row["kind"] == "spatial"]
    assert spatial["layers"] == published and spatial["frozen"] == frozen_numel and spatial["trainable"] == 0
    # Built for the data: 1 input channel, 10 classes; frozen filters still at their init, the rest moved.
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    init_state, final_state = init.state_dict(), model.state_dict()
    for pname, p in model.named_parameters():
        assert torch.equal(final_state[pname], init_state[pname]) == (not p.requires_grad), pname


@pytest.mark.parametrize("name,overrides,published", EXTERNAL)
def test_models_command_shows_the_mixers(name, overrides, published, capsys):
    assert main(["models", name, "--in-chans", "1", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert f"{published} spatial mixers (depthwise convolutions)" in out
    assert "modes: full, chans, space" in out


def test_model_without_depthwise_convs_is_told_which_modes_it_has(tmp_path, capsys):
    assert main(["models", "torchvision:resnet18", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert (
        "0 spatial mixers" in out
        and "modes: full, space; chans needs depthwise convolutions to freeze" in out
    )
    run_dir = tmp_path / "resnet"
    assert (
        main(
            [
                "train",
                "--model",
                "torchvision:resnet18",
                "--mode",
                "chans",
                "--train-subset",
                "32",
                "--no-progress",
                "--out",
                str(run_dir),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith(
            "spatialmix: error: mode 'chans' freezes the depthwise (spatial-mixing) convolutions, "
            "but this model has none"
        )
        and err.count("\n") == 1
    )
    assert not run_dir.exists()


def test_image_too_small_for_the_model_is_a_clear_error():
    with pytest.raises(SpatialmixError, match="cannot take 28 x 28 images .*--patch-size"):
        create_model("timm:convnext_atto", in_chans=1, num_classes=10, image_size=28)
    # --patch-size goes to timm models that take one, and is refused for those that do not (it was
    # ignored without a word).
    assert create_model("timm:convnext_atto", in_chans=1, num_classes=10, image_size=28, patch_size=1).stem[
        0
    ].stride == (1, 1)
    for name in ("timm:resnet10t", "torchvision:resnet18"):
        with pytest.raises(SpatialmixError, match=f"^{name} takes no patch size.*leave --patch-size out$"):
            create_model(name, in_chans=1, num_classes=10, image_size=28, patch_size=4)


@pytest.mark.parametrize(
    ("flag", "value"), [("--width", "8"), ("--depth", "2"), ("--kernel-size", "3"), ("--activation", "relu")]
)
def test_a_size_an_external_model_would_ignore_is_refused(flag, value, tmp_path, capsys):
    """`--width 8` with a timm model was ignored while config.json recorded "width": 8."""
    from spatialmix.cli.main import main

    out = tmp_path / "run"
    code = main(["train", "--model", "timm:convnext_atto", flag, value, "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{flag} does not apply to timm:convnext_atto" in err and f"leave {flag} out" in err
    assert not out.exists()

"""Structured random filters: the closed-form covariance init and the covariance of
a trained run's filters."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import spatialmix as sm
from spatialmix.core.inits import InitSpec
from spatialmix.core.mixing import apply_mixing
from spatialmix.core.priors import GROWTH, SIGMA0, closed_form_covariance, depth_sigma, nearest_layer
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.init_source import empirical_prior
from spatialmix.engine.tasks import build_model
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs

# Sample statistics of n draws are compared with the construction entry by entry within Z standard errors:
# the standard error of a sample covariance entry is sqrt((S_ii S_jj + S_ij^2) / n), of a mean sqrt(S_ii / n).
Z = 5.0


def depthwise_stack(width: int, depth: int, kernel: int) -> nn.Sequential:
    """Only depthwise convs: many filters per layer cost little (no channel mixers)."""
    return nn.Sequential(
        *[nn.Conv2d(width, width, kernel, groups=width, padding=kernel // 2) for _ in range(depth)]
    )


def flat_filters(conv: nn.Conv2d) -> np.ndarray:
    k = conv.kernel_size[0]
    return conv.weight.detach().double().reshape(-1, k * k).numpy()


def assert_matches_gaussian(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> None:
    n = x.shape[0]
    sample_mean, sample_cov = x.mean(0), np.cov(x, rowvar=False)
    var = np.diag(cov)
    assert np.all(np.abs(sample_mean - mean) <= Z * np.sqrt(var / n) + 1e-12)
    se = np.sqrt((np.outer(var, var) + cov**2) / n)
    assert np.all(np.abs(sample_cov - cov) <= Z * se + 1e-12), np.max(np.abs(sample_cov - cov) / se)


# --------------------------------------------------------------------------- the closed form


def test_closed_form_covariance_entries():
    k, sigma = 5, 0.8
    cov = closed_form_covariance(k, sigma).numpy()
    v = 1 / (3 * k * k)  # PyTorch's default depthwise init: uniform in +-1/k
    # Weight (r, c) is entry r * k + c of a flattened filter.
    for (r1, c1), (r2, c2) in [((0, 0), (0, 0)), ((2, 2), (2, 3)), ((1, 0), (3, 4)), ((4, 4), (0, 0))]:
        expected = v * math.exp(-((r1 - r2) ** 2 + (c1 - c2) ** 2) / (2 * sigma**2))
        assert cov[r1 * k + c1, r2 * k + c2] == pytest.approx(expected, rel=1e-12)
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > -1e-12  # a valid covariance
    # Each block (the covariance of one weight with all others) is a bump centred on that weight.
    block = cov[2 * k + 1].reshape(k, k)
    assert np.unravel_index(block.argmax(), block.shape) == (2, 1)
    # Wider in deeper layers.
    assert (
        depth_sigma(0, 4) == SIGMA0 and depth_sigma(3, 4) == SIGMA0 + GROWTH and depth_sigma(0, 1) == SIGMA0
    )
    assert depth_sigma(1, 4) < depth_sigma(2, 4)


def test_covariance_init_draws_filters_with_the_constructed_covariance():
    model = depthwise_stack(width=30000, depth=2, kernel=5)
    apply_mixing(model, "chans", InitSpec("covariance"), seed=0)
    for index, conv in enumerate(model):
        cov = closed_form_covariance(5, depth_sigma(index, 2)).numpy()
        assert_matches_gaussian(flat_filters(conv), np.zeros(25), cov)
    # The layers differ: the second one's neighbours are more correlated than the first one's.
    first, second = (np.corrcoef(flat_filters(c)[:, [12, 13]], rowvar=False)[0, 1] for c in model)
    assert second > first + 0.1
    assert all(not p.requires_grad for p in model.parameters())


def test_covariance_init_is_seeded_and_refuses_other_layers():
    a, b, c = (depthwise_stack(8, 2, 3) for _ in range(3))
    for model, seed in ((a, 1), (b, 1), (c, 2)):
        apply_mixing(model, "chans", InitSpec("covariance"), seed=seed)
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(a, b))
    assert not torch.equal(a[0].weight, c[0].weight)
    with pytest.raises(
        SpatialmixError, match="defined for square depthwise k x k filters.*token|defined for square"
    ):
        apply_mixing(
            nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
            "chans",
            InitSpec("covariance"),
            spatial="0",
        )
    with pytest.raises(SpatialmixError, match="--channel-init covariance is for spatial mixers"):
        TrainConfig(channel_init="covariance").validate()
    with pytest.raises(SpatialmixError, match="covariance-from needs --init-from"):
        TrainConfig(spatial_init="covariance-from").validate()
    with pytest.raises(SpatialmixError, match="--init-from goes only with covariance-from"):
        TrainConfig(init_from="runs/x").validate()


# --------------------------------------------------------------------------- from a trained run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A trained Full ConvMixer-12/2 (kernel 3) on learnable 28 x 28 data; returns its folder."""
    from conftest import TINY

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(256) % 4
    images = torch.randint(0, 64, (256, 1, 28, 28), generator=g).to(torch.uint8)
    for band in range(4):
        images[labels == band, :, band * 7 : (band + 1) * 7, :] += 150
    from spatialmix.data.datasets import ImageData

    data = ImageData(
        "fashion-mnist",
        images,
        labels,
        images[:64],
        labels[:64],
        (0.3,),
        (0.3,),
        list("abcd"),
        source="memory",
    )
    config = TrainConfig(
        **{
            **TINY,
            "width": 12,
            "depth": 2,
            "kernel_size": 3,
            "epochs": 2,
            "mode": "full",
            "device": "cpu",
            "amp": "none",
        }
    )
    run_dir = tmp_path_factory.mktemp("cov") / "full"
    fit(config, run_dir, data=data)
    return run_dir, data


def run_filters(run_dir) -> list[np.ndarray]:
    """Each spatial layer's trained filters, read straight from the checkpoint (ConvMixer layout)."""
    state = load_file(str(runs.latest_checkpoint(run_dir) / runs.MODEL_FILE))
    return [state[f"blocks.{i}.0.fn.0.weight"].double().reshape(-1, 9).numpy() for i in range(2)]


def test_covariance_from_a_run_draws_each_layer_from_the_nearest_trained_layer(full_run):
    run_dir, _ = full_run
    source = run_filters(run_dir)
    model = depthwise_stack(width=20000, depth=4, kernel=3)  # wider and deeper than the run
    apply_mixing(model, "chans", spec(run_dir), seed=0)
    # 4 layers from 2: relative depths 0, 1/3, 2/3, 1 -> source layers 0, 0, 1, 1.
    assert [nearest_layer(i, 4, 2) for i in range(4)] == [0, 0, 1, 1]
    for conv, src in zip(model, [0, 0, 1, 1]):
        x = source[src]
        assert_matches_gaussian(flat_filters(conv), x.mean(0), np.cov(x, rowvar=False))
    # The two source layers differ enough that the test can tell them apart.
    assert np.abs(np.cov(source[0], rowvar=False) - np.cov(source[1], rowvar=False)).max() > 0.01
    assert nearest_layer(0, 1, 5) == 2 and nearest_layer(2, 3, 1) == 0


def test_covariance_from_trains_with_frozen_filters_bitwise_and_rebuilds(full_run, tmp_path):
    run_dir, data = full_run
    config = TrainConfig(
        dataset="fashion-mnist",
        model="convmixer",
        width=24,
        depth=3,
        kernel_size=3,
        patch_size=4,
        mode="chans",
        spatial_init="covariance-from",
        init_from=str(run_dir),
        epochs=1,
        batch_size=64,
        progress=False,
        device="cpu",
        amp="none",
    )
    fit(config, tmp_path / "chans", data=data)
    init = load_file(str(tmp_path / "chans" / runs.INIT))
    final = load_file(str(runs.latest_checkpoint(tmp_path / "chans") / runs.MODEL_FILE))
    for i in range(3):
        for p in ("weight", "bias"):
            name = f"blocks.{i}.0.fn.0.{p}"
            assert torch.equal(init[name], final[name]), name
    assert not torch.equal(init["blocks.0.1.weight"], final["blocks.0.1.weight"])
    assert json.loads((tmp_path / "chans" / runs.CONFIG).read_text())["train"]["init_from"] == str(run_dir)
    # The config rebuilds the same frozen filters (and the same with the closed form).
    rebuilt = build_model(config, 1, 4, 28).state_dict()
    assert torch.equal(rebuilt["blocks.2.0.fn.0.weight"], init["blocks.2.0.fn.0.weight"])
    closed = config.replace(spatial_init="covariance", init_from=None, depth=2)
    assert torch.equal(
        build_model(closed, 1, 4, 28).state_dict()["blocks.1.0.fn.0.weight"],
        build_model(closed, 1, 4, 28).state_dict()["blocks.1.0.fn.0.weight"],
    )
    model, _ = load_trained_model(tmp_path / "chans")
    assert torch.equal(model.model.state_dict()["blocks.1.0.fn.0.weight"], final["blocks.1.0.fn.0.weight"])


def spec(path) -> InitSpec:
    return InitSpec("covariance-from", source=str(path), prior=empirical_prior(path))


def test_covariance_from_untrusted_folders_fails_with_one_clear_line(full_run, tmp_path):
    run_dir, data = full_run
    model = lambda k=3: depthwise_stack(4, 2, k)
    cases = []
    with pytest.raises(SpatialmixError, match="does not exist") as err:
        apply_mixing(model(), "chans", spec(tmp_path / "missing"))
    cases.append(err)
    with pytest.raises(
        SpatialmixError, match="has 3 x 3 filters but this model's are 5 x 5.*--kernel-size 3"
    ) as err:
        apply_mixing(model(5), "chans", spec(run_dir))
    cases.append(err)
    # Weights of the wrong shape where the config says a depthwise layer is.
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    weights = runs.latest_checkpoint(damaged) / runs.MODEL_FILE
    state = load_file(str(weights))
    state["blocks.1.0.fn.0.weight"] = torch.zeros(12, 9)
    save_file(state, str(weights))
    with pytest.raises(
        SpatialmixError,
        match=r"blocks.1.0.fn.0.weight should be depthwise filters \(C, 1, k, k\), "
        r"found \(12, 9\)",
    ) as err:
        apply_mixing(model(), "chans", spec(damaged))
    cases.append(err)
    # Not a learned prior: a Chans run's spatial filters never trained.
    chans = tmp_path / "chans"
    shutil.copytree(run_dir, chans)
    record = json.loads((chans / runs.CONFIG).read_text())
    record["train"]["mode"] = "chans"
    (chans / runs.CONFIG).write_text(json.dumps(record))
    with pytest.raises(SpatialmixError, match="is a Chans run") as err:
        apply_mixing(model(), "chans", spec(chans))
    cases.append(err)
    (tmp_path / "notarun").mkdir()
    with pytest.raises(SpatialmixError, match="not a spatialmix run") as err:
        apply_mixing(model(), "chans", spec(tmp_path / "notarun"))
    cases.append(err)
    assert all("\n" not in str(e.value) for e in cases)


def test_covariance_from_without_its_prior_says_how_and_the_advice_works(full_run):
    """From Python, InitSpec('covariance-from') needs the fitted prior; the error names the call that
    makes it, and following it draws the filters."""
    run_dir, _ = full_run
    bare = InitSpec("covariance-from", source=str(run_dir))
    with pytest.raises(SpatialmixError, match=r"pass prior=sm\.empirical_prior\(") as err:
        apply_mixing(depthwise_stack(4, 2, 3), "chans", bare, seed=0)
    assert str(run_dir) in str(err.value) and len(str(err.value).splitlines()) == 1
    advised = InitSpec("covariance-from", source=str(run_dir), prior=sm.empirical_prior(str(run_dir)))
    model = apply_mixing(depthwise_stack(4, 2, 3), "chans", advised, seed=0)
    assert sm.frozen_fingerprint(model) == sm.frozen_fingerprint(
        apply_mixing(depthwise_stack(4, 2, 3), "chans", spec(run_dir), seed=0)
    )

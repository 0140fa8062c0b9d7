"""Mixing: what each mode freezes, that frozen tensors never move, and how random filters are drawn."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from conftest import SUBPROCESS_ENV
from spatialmix.core.inits import InitSpec, gaussian_kernel, smooth_filters
from spatialmix.core.mixing import (
    CHANNEL,
    SPATIAL,
    STEM_OR_FULL,
    applied_inits,
    apply_mixing,
    classify_layers,
    frozen_fingerprint,
    layers_of_kind,
    summarize,
)
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.optim import make_optimizer
from spatialmix.engine.tasks import build_model
from spatialmix.engine.train import fit
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.models.convmixer import ConvMixer
from spatialmix.models.factory import create_model
from spatialmix.names import MODES

WIDTH, DEPTH, KERNEL = 16, 2, 5


def tiny_convmixer(seed_for_torch: int = 0) -> ConvMixer:
    torch.manual_seed(seed_for_torch)
    return ConvMixer(WIDTH, DEPTH, kernel_size=KERNEL, patch_size=4, in_chans=1, num_classes=10)


def expected_frozen(mode: str) -> set[str]:
    """The frozen tensors of the tiny ConvMixer, named from its layout (not from spatialmix.mixing)."""
    spatial = {f"blocks.{i}.0.fn.0.{p}" for i in range(DEPTH) for p in ("weight", "bias")}
    channel = {f"blocks.{i}.1.{p}" for i in range(DEPTH) for p in ("weight", "bias")}
    return {"full": set(), "chans": spatial, "space": channel}[mode]


def frozen_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def optimizer_param_ids(optimizer) -> list[int]:
    return [id(p) for group in optimizer.param_groups for p in group["params"]]


def train_a_few_steps(model, optimizer, x, y, steps=3):
    model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("mode", ["full", "chans", "space"])
@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_mode_freezes_exactly_the_right_tensors(mode, weight_decay, tiny_config):
    model = apply_mixing(tiny_convmixer(), mode, seed=3)
    frozen = expected_frozen(mode)
    assert frozen_names(model) == frozen
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in params}

    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    F.cross_entropy(model(x), y).backward()
    for name, p in params.items():
        if name in frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name

    optimizer = make_optimizer(model, tiny_config(weight_decay=weight_decay, lr=0.05))
    ids = optimizer_param_ids(optimizer)
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for n, p in params.items() if n not in frozen}
    # Weight decay only on trainable conv/linear weights, never on 1-d tensors.
    for group in optimizer.param_groups:
        if group["weight_decay"] > 0:
            assert all(p.ndim > 1 for p in group["params"])

    train_a_few_steps(model, optimizer, x, y)
    frozen_ids = {id(params[n]) for n in frozen}
    assert not any(id(p) in frozen_ids for p in optimizer.state)
    for name, p in params.items():
        if name in frozen:
            assert torch.equal(p, before[name]), name
        else:
            assert not torch.equal(p, before[name]), name


@pytest.mark.parametrize("mode", ["full", "chans", "space"])
def test_training_run_keeps_frozen_tensors_bitwise(mode, tiny_config, tiny_data, tmp_path):
    """Real steps through spatialmix.engine.train.fit: compare the checkpoint with init.safetensors."""
    config = tiny_config(mode=mode, depth=DEPTH, width=WIDTH, kernel_size=KERNEL, epochs=1, batch_size=64)
    summary = fit(config, tmp_path / "run", data=tiny_data)
    init = load_file(str(tmp_path / "run" / runs.INIT))
    final = load_file(str(runs.latest_checkpoint(tmp_path / "run") / runs.MODEL_FILE))
    frozen = expected_frozen(mode)
    param_names = {n for n, _ in tiny_convmixer().named_parameters()}
    for name in param_names:
        if name in frozen:
            assert torch.equal(init[name], final[name]), name
        else:
            assert not torch.equal(init[name], final[name]), f"trainable {name} did not change"
    assert summary["frozen_params"] == sum(init[n].numel() for n in frozen)
    assert summary["trainable_params"] == sum(init[n].numel() for n in param_names - frozen)
    assert summary["frozen_unchanged"] is True
    # Which init each mixer kind got: the built-in ConvMixer draws PyTorch's default in every mode.
    record = json.loads((tmp_path / "run" / runs.CONFIG).read_text())
    assert record["inits"] == {"spatial": "default", "channel": "default"}


def depthwise_convs(model) -> set[str]:
    return {
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 and max(m.kernel_size) > 1
    }


def channel_mixers(model, head_name) -> set[str]:
    return {
        n
        for n, m in model.named_modules()
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
        or (isinstance(m, nn.Linear) and n != head_name)
    }


@pytest.mark.parametrize(
    "name,head_name", [("timm:convnext_atto", "head.fc"), ("torchvision:mobilenet_v2", "classifier.1")]
)
@pytest.mark.parametrize("mode", ["chans", "space"])
def test_mixing_on_library_models(name, head_name, mode):
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=10)
    expected_layers = depthwise_convs(model) if mode == "chans" else channel_mixers(model, head_name)
    assert expected_layers
    apply_mixing(model, mode, seed=0)
    modules = dict(model.named_modules())
    frozen_layers = {n.rsplit(".", 1)[0] for n in frozen_names(model)}
    assert frozen_layers == expected_layers
    expected_tensors = sum(1 for n in expected_layers for _ in modules[n].parameters(recurse=False))
    assert len(frozen_names(model)) == expected_tensors
    if mode == "chans":
        assert summarize(model).frozen == sum(
            p.numel() for n in expected_layers for p in modules[n].parameters(recurse=False)
        )

    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = make_optimizer(model, TrainConfig(lr=0.01))
    assert set(optimizer_param_ids(optimizer)) == {id(p) for p in params.values() if p.requires_grad}
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    train_a_few_steps(model, optimizer, x, y, steps=2)
    for n, p in params.items():
        if not p.requires_grad:
            assert torch.equal(p, before[n]) and p.grad is None, n
    assert not torch.equal(params[head_name + ".weight"], before[head_name + ".weight"])
    assert not any(not p.requires_grad for p in optimizer.state)


def test_chans_needs_a_separable_model():
    with pytest.raises(SpatialmixError, match="has none"):
        apply_mixing(create_model("resnet18", in_chans=1, num_classes=10, image_size=28), "chans")
    with pytest.raises(SpatialmixError) as err:
        apply_mixing(tiny_convmixer(), "spatial")
    assert "unknown mode 'spatial'" in str(err.value) and "chans, full, space" in str(err.value)


def test_classify_layers_on_convmixer():
    kinds = classify_layers(tiny_convmixer())
    assert kinds["stem.0"] == "full-conv" and kinds["head"] == "head"
    assert kinds["stem.2"] == "norm"
    for i in range(DEPTH):
        assert kinds[f"blocks.{i}.0.fn.0"] == SPATIAL
        assert kinds[f"blocks.{i}.1"] == CHANNEL


def test_summary_counts_trainable_and_frozen():
    model = apply_mixing(tiny_convmixer(), "chans")
    summary = summarize(model)
    total = sum(p.numel() for p in model.parameters())
    frozen = DEPTH * (WIDTH * KERNEL * KERNEL + WIDTH)
    assert summary.frozen == frozen and summary.trainable == total - frozen
    rows = {r["kind"]: r for r in summary.rows}
    assert rows[SPATIAL] == dict(kind=SPATIAL, layers=DEPTH, trainable=0, frozen=frozen)
    assert rows[CHANNEL]["trainable"] == DEPTH * (WIDTH * WIDTH + WIDTH)
    assert f"{total - frozen:,}" in str(summary) and f"{frozen:,}" in str(summary)


# --------------------------------------------------------------------------- seeds


def spatial_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".0.fn.0." in n}


def test_same_seed_rebuilds_identical_frozen_filters():
    a = apply_mixing(tiny_convmixer(seed_for_torch=1), "chans", InitSpec("gaussian", 0.2, 1.0), seed=7)
    b = apply_mixing(tiny_convmixer(seed_for_torch=2), "chans", InitSpec("gaussian", 0.2, 1.0), seed=7)
    c = apply_mixing(tiny_convmixer(seed_for_torch=1), "chans", InitSpec("gaussian", 0.2, 1.0), seed=8)
    sa, sb, sc = spatial_state(a), spatial_state(b), spatial_state(c)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert frozen_fingerprint(a) == frozen_fingerprint(b) != frozen_fingerprint(c)
    assert all(not torch.equal(sa[n], sc[n]) for n in sa)
    # Full and Chans with the same seed start from the same spatial filters.
    full = apply_mixing(tiny_convmixer(seed_for_torch=3), "full", InitSpec("gaussian", 0.2, 1.0), seed=7)
    assert all(torch.equal(sa[n], v) for n, v in spatial_state(full).items())
    # A layer's filters depend on its name, not on how many other layers there are.
    deeper = ConvMixer(WIDTH, DEPTH + 1, kernel_size=KERNEL, patch_size=4, in_chans=1, num_classes=10)
    sd = spatial_state(apply_mixing(deeper, "chans", InitSpec("gaussian", 0.2, 1.0), seed=7))
    assert all(torch.equal(sa[n], sd[n]) for n in sa)


def test_build_model_is_a_function_of_the_config(tiny_config):
    config = tiny_config(mode="chans", spatial_init="gaussian", init_std=0.3, smooth_sigma=0.7, seed=5)
    torch.manual_seed(123)
    first = build_model(config, 1, 10, 28).state_dict()
    torch.manual_seed(456)
    second = build_model(config, 1, 10, 28).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = build_model(config.replace(init_seed=6), 1, 10, 28).state_dict()
    assert not torch.equal(first["blocks.0.0.fn.0.weight"], other["blocks.0.0.fn.0.weight"])


NEW_PROCESS_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from spatialmix.core.inits import InitSpec
from spatialmix.core.mixing import apply_mixing
from spatialmix.models.convmixer import ConvMixer
torch.manual_seed(999)  # a different global RNG state than the test process
model = ConvMixer(16, 2, kernel_size=5, patch_size=4, in_chans=1, num_classes=10)
apply_mixing(model, "chans", InitSpec("gaussian", 0.2, 1.0), seed=7)
frozen = {n: p.detach().contiguous() for n, p in model.named_parameters() if not p.requires_grad}
save_file(frozen, sys.argv[1])
"""


@pytest.mark.slow
def test_same_seed_rebuilds_identical_filters_in_a_new_process(tmp_path):
    out = tmp_path / "frozen.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", NEW_PROCESS_SCRIPT, str(out)],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    theirs = load_file(str(out))
    ours = apply_mixing(tiny_convmixer(seed_for_torch=0), "chans", InitSpec("gaussian", 0.2, 1.0), seed=7)
    mine = {n: p.detach() for n, p in ours.named_parameters() if not p.requires_grad}
    assert theirs.keys() == mine.keys() and len(mine) == 2 * DEPTH
    assert all(torch.equal(theirs[n], mine[n]) for n in mine)


# --------------------------------------------------------------------------- init distributions


def wide_depthwise(kernel=7, width=512) -> nn.Conv2d:
    return nn.Conv2d(width, width, kernel, groups=width, padding=kernel // 2)


def test_default_init_draws_within_pytorch_bound():
    conv = wide_depthwise()
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(conv.weight)
    bound = 1 / math.sqrt(fan_in)
    assert bound == pytest.approx(1 / 7)
    (conv.weight.data.zero_(), conv.bias.data.zero_())
    apply_mixing(nn.Sequential(conv), "chans", InitSpec("default"), seed=0)
    w, b = conv.weight.detach(), conv.bias.detach()
    assert w.abs().max() <= bound and b.abs().max() <= bound
    # Uniform over the whole interval: extremes near the bound, mean ~0, variance bound^2 / 3.
    assert w.abs().max() > 0.99 * bound
    assert abs(w.mean()) < 5 * bound / math.sqrt(3 * w.numel())
    assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.05)
    # The channel mixers' default follows their own fan-in (width for a 1 x 1 conv).
    pointwise = nn.Conv2d(256, 256, 1)
    apply_mixing(
        nn.Sequential(wide_depthwise(3, 8), pointwise),
        "space",
        InitSpec("default"),
        channel_init=InitSpec("default"),
        seed=0,
    )
    assert pointwise.weight.abs().max() <= 1 / 16 and pointwise.weight.abs().max() > 0.99 / 16


@pytest.mark.parametrize("std", [0.02, 0.5])
def test_gaussian_init_has_the_requested_std(std):
    conv = wide_depthwise()
    apply_mixing(nn.Sequential(conv), "chans", InitSpec("gaussian", std=std), seed=1)
    w = conv.weight.detach().double().flatten()
    n = w.numel()
    # Standard error of a sample std is std / sqrt(2n); allow 5 of them.
    assert abs(w.std().item() - std) < 5 * std / math.sqrt(2 * n)
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n)
    # Roughly 68% within one std: it is a normal, not a uniform of that std.
    assert (w.abs() < std).double().mean().item() == pytest.approx(0.6827, abs=0.02)


def test_uniform_init_range():
    conv = wide_depthwise()
    apply_mixing(nn.Sequential(conv), "chans", InitSpec("uniform", std=0.3), seed=1)
    w = conv.weight.detach()
    assert w.abs().max() <= 0.3 and w.abs().max() > 0.29
    assert w.var().item() == pytest.approx(0.09 / 3, rel=0.05)


def test_init_spec_rejects_bad_values():
    with pytest.raises(SpatialmixError) as err:
        InitSpec("kaiming")
    assert "default, gaussian, uniform" in str(err.value)
    with pytest.raises(SpatialmixError, match="std"):
        InitSpec("gaussian", std=-1)
    with pytest.raises(SpatialmixError, match="sigma"):
        InitSpec("gaussian", smooth_sigma=float("nan"))


def high_frequency_fraction(filters: torch.Tensor, cutoff: float = 0.25, pad: int = 32) -> torch.Tensor:
    """Fraction of each k x k filter's energy above ``cutoff`` cycles/pixel (zero-padded FFT)."""
    spectrum = torch.fft.fft2(filters.double(), s=(pad, pad)).abs() ** 2
    f = torch.fft.fftfreq(pad, dtype=torch.float64)
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    high = spectrum[..., radius > cutoff].sum(-1)
    return high / spectrum.flatten(-2).sum(-1)


def test_smoothing_keeps_the_norm_and_removes_high_frequencies():
    raw_conv, smooth_conv = wide_depthwise(7, 256), wide_depthwise(7, 256)
    apply_mixing(nn.Sequential(raw_conv), "chans", InitSpec("gaussian", 0.1, 0.0), seed=4)
    apply_mixing(nn.Sequential(smooth_conv), "chans", InitSpec("gaussian", 0.1, 1.0), seed=4)
    raw, smooth = raw_conv.weight.detach()[:, 0], smooth_conv.weight.detach()[:, 0]
    assert not torch.equal(raw, smooth)
    torch.testing.assert_close(smooth.flatten(1).norm(dim=1), raw.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
    hf_raw, hf_smooth = high_frequency_fraction(raw), high_frequency_fraction(smooth)
    assert (hf_smooth < hf_raw).all()
    # White noise has ~80% of its energy above 0.25 cycles/pixel; sigma 1 leaves about a quarter of that
    # (not less: the blurred filter is cut back to its 7 x 7 support).
    assert hf_smooth.mean() < 0.5 * hf_raw.mean()
    # More smoothing, fewer high frequencies.
    smoother = wide_depthwise(7, 256)
    apply_mixing(nn.Sequential(smoother), "chans", InitSpec("gaussian", 0.1, 2.0), seed=4)
    assert high_frequency_fraction(smoother.weight.detach()[:, 0]).mean() < hf_smooth.mean()


def test_smooth_filters_matches_a_direct_blur():
    """Blur by the definition (sum over the k x k support of w * Gaussian), then rescale the norm.

    The Gaussian is cut at 3 sigma (rounded up), as any discrete blur kernel is.
    """
    torch.manual_seed(0)
    weight = torch.randn(3, 1, 5, 5, dtype=torch.float64)
    sigma = 0.8
    radius = math.ceil(3 * sigma)
    out = smooth_filters(weight, sigma)
    coords = torch.arange(5, dtype=torch.float64)
    for f in range(3):
        w = weight[f, 0]
        ref = torch.zeros(5, 5, dtype=torch.float64)
        for i in range(5):
            for j in range(5):
                di, dj = coords[:, None] - i, coords[None, :] - j
                g = torch.exp(-(di**2 + dj**2) / (2 * sigma**2))
                g = g * ((di.abs() <= radius) & (dj.abs() <= radius))
                ref[i, j] = (w * g).sum()
        ref *= w.norm() / ref.norm()
        torch.testing.assert_close(out[f, 0], ref)
    kernel = gaussian_kernel(1.0, 7)
    assert kernel.sum().item() == pytest.approx(1.0) and torch.equal(kernel, kernel.T)
    assert torch.equal(smooth_filters(weight, 0.0), weight)


def test_layers_of_kind_finds_every_mixer():
    model = tiny_convmixer()
    assert [n for n, _ in layers_of_kind(model, SPATIAL)] == [f"blocks.{i}.0.fn.0" for i in range(DEPTH)]
    assert [n for n, _ in layers_of_kind(model, CHANNEL)] == [f"blocks.{i}.1" for i in range(DEPTH)]


# --------------------------------------------------------------------------- stems


def test_a_one_by_one_stem_stays_trainable_in_every_mode():
    """UnshuffleNet's stem is a 1 x 1 conv: the stem, not a channel mixer, so Space does not freeze it."""
    model = create_model("unshufflenet", in_chans=1, num_classes=10, image_size=28, width=8, depth=2)
    kinds = classify_layers(model)
    assert kinds["stem.0"] == STEM_OR_FULL and kinds["head"] == "head"
    assert {n for n, k in kinds.items() if k == CHANNEL} == {f"blocks.{i}.1" for i in range(2)}
    apply_mixing(model, "space", seed=0)
    assert frozen_names(model) == {f"blocks.{i}.1.{p}" for i in range(2) for p in ("weight", "bias")}


def test_a_timm_model_with_a_one_by_one_patch_stem_keeps_it_trainable():
    torch.manual_seed(0)
    model = create_model("timm:convnext_atto", in_chans=1, num_classes=10, image_size=28, patch_size=1)
    assert model.stem[0].kernel_size == (1, 1)
    assert classify_layers(model)["stem.0"] == STEM_OR_FULL
    apply_mixing(model, "space", seed=0)
    assert model.stem[0].weight.requires_grad and model.stem[0].bias.requires_grad
    assert not model.stages[0].blocks[0].mlp.fc1.weight.requires_grad


class LateStem(nn.Module):
    """A stem registered after the blocks: the stem is the first layer the image goes through."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1))
        self.stem = nn.Conv2d(1, 8, 1)
        self.head = nn.Linear(8, 10)
        self.spatialmix_input_shape = (1, 8, 8)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_the_stem_is_the_first_layer_the_image_reaches():
    kinds = classify_layers(LateStem())
    assert kinds == {"blocks.0": SPATIAL, "blocks.1": CHANNEL, "stem": STEM_OR_FULL, "head": "head"}


class OneByOneStem(nn.Module):
    """A user's network with a 1 x 1 stem registered after its blocks, a batch norm and a random
    draw before the stem, taking only sizes that are multiples of 64, and no image size recorded."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1)
        )
        self.input_norm = nn.BatchNorm2d(3)
        self.stem = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        if x.shape[-1] % 64:
            raise ValueError("this network takes sizes that are multiples of 64")
        x = self.input_norm(x + 0 * torch.rand_like(x))
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def one_by_one_user_model(image_size):
    model = OneByOneStem()
    if image_size is not None:
        model.spatialmix_input_shape = (3, image_size, image_size)
    return model


ONE_BY_ONE_STEMS = {
    "convmixer": lambda size: create_model(
        "convmixer",
        in_chans=3,
        num_classes=10,
        image_size=size,
        width=32,
        depth=2,
        kernel_size=3,
        patch_size=1,
    ),
    "unshufflenet": lambda size: create_model(
        "unshufflenet", in_chans=1, num_classes=10, image_size=size, width=8, depth=2
    ),
    "timm:convnext_atto": lambda size: create_model(
        "timm:convnext_atto", in_chans=1, num_classes=10, image_size=size, patch_size=1
    ),
    "a user's module": one_by_one_user_model,
}


@pytest.mark.parametrize("name", ONE_BY_ONE_STEMS)
def test_a_one_by_one_stem_is_found_without_an_image_size(name):
    """Built without an image size, the 1 x 1 stem is still the stem: the classification is the
    one the model gets with an image size, and Space keeps the stem trainable."""
    build = ONE_BY_ONE_STEMS[name]
    size = 64 if name == "a user's module" else 28
    torch.manual_seed(0)
    model = build(None)
    assert not hasattr(model, "spatialmix_input_shape")
    kinds = classify_layers(model)
    assert kinds == classify_layers(build(size))
    stem = "stem" if name == "a user's module" else "stem.0"
    assert kinds[stem] == STEM_OR_FULL
    apply_mixing(model, "space", seed=0)
    stem_layer = dict(model.named_modules())[stem]
    assert stem_layer.weight.requires_grad and stem_layer.bias.requires_grad
    assert frozen_names(model) == {
        f"{n}.{p}" for n, k in kinds.items() if k == CHANNEL for p in ("weight", "bias")
    }


def test_finding_the_stem_without_an_image_size_changes_nothing_in_the_model():
    """The trace leaves every parameter and buffer bit for bit, the modes, the random generator and
    no hook behind, even with a batch norm and a random draw before the stem, in training mode."""
    model = one_by_one_user_model(None).train()
    model.blocks[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    assert classify_layers(model)["stem"] == STEM_OR_FULL
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("image_size", [None, 16])
def test_a_depthwise_conv_on_the_image_is_a_spatial_mixer_not_the_stem(image_size):
    """The first layer the image reaches is the stem unless it mixes space alone (depthwise k x k)."""
    model = nn.Sequential(wide_depthwise(3, 8), nn.Conv2d(8, 8, 1))
    if image_size is not None:
        model.spatialmix_input_shape = (8, image_size, image_size)
    assert classify_layers(model) == {"0": SPATIAL, "1": CHANNEL}


# --------------------------------------------------------------------------- whose init


@pytest.mark.parametrize("mode", MODES)
def test_built_in_models_draw_the_default_init_as_when_it_is_asked_for(mode, tiny_config):
    """The built-in models' own init is spatialmix's per-layer default draw: not asking for an init
    builds the same model bit for bit as asking for ``default`` (what every preset ran with)."""
    config = tiny_config(mode=mode)
    assert config.spatial_init is None and config.channel_init is None
    built = build_model(config, 1, 10, 28).state_dict()
    asked = build_model(
        config.replace(spatial_init="default", channel_init="default"), 1, 10, 28
    ).state_dict()
    assert built.keys() == asked.keys() and all(torch.equal(built[k], asked[k]) for k in built)


def test_full_and_chans_with_one_seed_start_from_the_same_model(tiny_config):
    full = build_model(tiny_config(mode="full"), 1, 10, 28).state_dict()
    chans = build_model(tiny_config(mode="chans"), 1, 10, 28).state_dict()
    assert all(torch.equal(full[k], chans[k]) for k in full)


def test_an_init_is_asked_for_by_naming_it_or_by_smoothing():
    assert TrainConfig().spatial_init_spec() is None and TrainConfig().channel_init_spec() is None
    assert TrainConfig(smooth_sigma=1.0).spatial_init_spec() == InitSpec("default", 0.1, 1.0)
    assert TrainConfig(spatial_init="gaussian", init_std=0.2).spatial_init_spec() == InitSpec("gaussian", 0.2)
    assert TrainConfig(channel_init="uniform").channel_init_spec() == InitSpec("uniform", 0.1)
    with pytest.raises(SpatialmixError, match="needs --init-from"):
        TrainConfig(spatial_init="covariance-from").validate()
    with pytest.raises(SpatialmixError, match="goes only with covariance-from"):
        TrainConfig(init_from="runs/full").validate()


def test_applied_inits_say_which_init_each_kind_got():
    model = apply_mixing(tiny_convmixer(), "chans", InitSpec("gaussian", 0.2, 1.0), seed=7)
    assert applied_inits(model) == {"spatial": "gaussian (std 0.2), smoothed (sigma 1)", "channel": "default"}
    plain = nn.Sequential(wide_depthwise(3, 8), nn.Conv2d(8, 8, 1))
    apply_mixing(plain, "space", channel_init=InitSpec("uniform", std=0.3), seed=0)
    assert applied_inits(plain) == {"spatial": "model's own", "channel": "uniform (±0.3)"}
    assert applied_inits(nn.Linear(2, 2)) is None  # apply_mixing never ran


def test_a_run_saved_with_the_old_default_init_is_the_same_run_for_built_in_models(tmp_path):
    """Runs made when an unasked init was saved as "default" are reused and resumed as before for
    the built-in models, which declare that init; for a timm model the two differ."""
    from spatialmix.engine.config import TrainConfig
    from spatialmix.io import run_files, runs

    config = TrainConfig(model="convmixer", width=8, depth=1)
    assert config.spatial_init is None and config.channel_init is None
    run = runs.Run(tmp_path / "run")
    run.path.mkdir()
    data = {"in_chans": 1, "num_classes": 10, "image_size": 28, "mean": [0.5], "std": [0.25]}

    def save(train: dict) -> None:
        record = {"format_version": run_files.FORMAT_VERSION, "train": train, "data": data}
        runs.atomic_write_json(run.file(runs.CONFIG), record)

    old = {**config.to_dict(), "spatial_init": "default", "channel_init": "default"}
    save(old)
    assert run.config_differences(config) == []
    save({**old, "model": "timm:convnext_atto"})
    timm = config.replace(model="timm:convnext_atto")
    assert {k for k, _, _ in run.config_differences(timm)} == {"spatial_init", "channel_init"}

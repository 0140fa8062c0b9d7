"""Token-mixing MLPs as spatial mixers (MLP-Mixer, ResMLP, gMLP, the built-in mlpmixer),
the selector, smoothing."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from spatialmix.cli.main import main
from spatialmix.core.inits import InitSpec, smooth_token_mixer
from spatialmix.core.mixing import CHANNEL, SPATIAL, applied_inits, apply_mixing, classify_layers, summarize
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.optim import make_optimizer
from spatialmix.engine.tasks import build_model
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.models.factory import create_model


def timm_small(kind: str, embed_dim: int = 32, blocks: int = 2, img: int = 32, patch: int = 8):
    """Small models of timm's MLP-Mixer family: the same block classes as the published names."""
    from timm.layers import GatedMlp
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock, SpatialGatingBlock

    torch.manual_seed(0)
    extra = {
        "mixer": {},
        "resmlp": dict(mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine),
        "gmlp": dict(mlp_ratio=6, block_layer=SpatialGatingBlock, mlp_layer=GatedMlp),
    }[kind]
    return MlpMixer(
        num_classes=10,
        img_size=img,
        in_chans=1,
        patch_size=patch,
        num_blocks=blocks,
        embed_dim=embed_dim,
        **extra,
    )


def expected_layers(kind: str, blocks: int) -> tuple[set[str], set[str]]:
    """Token- and channel-mixing linear layers by the published block layouts (not by spatialmix)."""
    if kind == "mixer":
        spatial = {f"blocks.{i}.mlp_tokens.fc{j}" for i in range(blocks) for j in (1, 2)}
        channel = {f"blocks.{i}.mlp_channels.fc{j}" for i in range(blocks) for j in (1, 2)}
    elif kind == "resmlp":
        spatial = {f"blocks.{i}.linear_tokens" for i in range(blocks)}
        channel = {f"blocks.{i}.mlp_channels.fc{j}" for i in range(blocks) for j in (1, 2)}
    elif kind == "gmlp":
        spatial = {f"blocks.{i}.mlp_channels.gate.proj" for i in range(blocks)}
        channel = {f"blocks.{i}.mlp_channels.fc{j}" for i in range(blocks) for j in (1, 2)}
    else:  # the built-in mlpmixer
        spatial = {f"blocks.{i}.token_mlp.fc{j}" for i in range(blocks) for j in (1, 2)}
        channel = {f"blocks.{i}.channel_mlp.{j}" for i in range(blocks) for j in (0, 2)}
    return spatial, channel


def of_kind(model, kind) -> set[str]:
    return {n for n, k in classify_layers(model).items() if k == kind}


def builtin_mixer(width=24, depth=2, image=28, patch=4):
    torch.manual_seed(0)
    return create_model(
        "mlpmixer", in_chans=1, num_classes=10, image_size=image, width=width, depth=depth, patch_size=patch
    )


MODELS = {
    "mixer": lambda: timm_small("mixer"),
    "resmlp": lambda: timm_small("resmlp"),
    "gmlp": lambda: timm_small("gmlp"),
    "builtin": builtin_mixer,
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_token_mixers_are_spatial_and_channel_mlps_are_channel(kind):
    model = MODELS[kind]()
    spatial, channel = expected_layers(kind, 2)
    assert of_kind(model, SPATIAL) == spatial
    assert of_kind(model, CHANNEL) == channel


@pytest.mark.parametrize(
    "name,kind,blocks",
    [
        ("timm:mixer_s16_224", "mixer", 8),
        ("timm:resmlp_12_224", "resmlp", 12),
        ("timm:gmlp_s16_224", "gmlp", 30),
    ],
)
def test_published_timm_models_by_name(name, kind, blocks, capsys):
    """The published depths: Mixer-S/16 8 blocks, ResMLP-12 12, gMLP-S 30."""
    model = create_model(name, in_chans=1, num_classes=10, image_size=32)
    spatial, channel = expected_layers(kind, blocks)
    assert of_kind(model, SPATIAL) == spatial and of_kind(model, CHANNEL) == channel
    assert main(["models", name, "--in-chans", "1"]) == 0
    out = capsys.readouterr().out
    assert (
        f"{len(spatial)} spatial mixers ({len(spatial)} token-mixing linear layers), {len(channel)} channel"
        in out
    )
    assert "modes: full, chans, space" in out


def frozen_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("mode", ["full", "chans", "space"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_modes_freeze_token_or_channel_mlps_and_frozen_stay_bitwise(kind, mode):
    model = MODELS[kind]()
    spatial, channel = expected_layers(kind, 2)
    apply_mixing(model, mode, seed=1)
    frozen_layers = {"full": set(), "chans": spatial, "space": channel}[mode]
    modules = dict(model.named_modules())
    assert frozen_names(model) == {
        f"{layer}.{p}" for layer in frozen_layers for p, _ in modules[layer].named_parameters(recurse=False)
    }
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = make_optimizer(model, TrainConfig(lr=0.01))
    x, y = (
        torch.randn(4, 1, 32 if kind != "builtin" else 28, 32 if kind != "builtin" else 28),
        torch.arange(4),
    )
    model.train()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for n, p in params.items():
        if not p.requires_grad:
            assert torch.equal(p, before[n]) and p.grad is None, n
    assert not torch.equal(params["head.weight"], before["head.weight"])
    trainable_mixer = next(iter(channel if mode == "chans" else spatial))
    assert not torch.equal(params[f"{trainable_mixer}.weight"], before[f"{trainable_mixer}.weight"])


@pytest.mark.parametrize("mode", ["chans", "space"])
def test_builtin_mlpmixer_trains_with_frozen_tensors_bitwise_at_init(mode, tiny_data, tmp_path):
    config = TrainConfig(
        dataset="fashion-mnist",
        model="mlpmixer",
        width=16,
        depth=2,
        patch_size=7,
        token_hidden=8,
        channel_hidden=32,
        mode=mode,
        epochs=1,
        batch_size=64,
        progress=False,
        device="cpu",
        amp="none",
    )
    summary = fit(config, tmp_path / "run", data=tiny_data)
    init = load_file(str(tmp_path / "run" / runs.INIT))
    final = load_file(str(runs.latest_checkpoint(tmp_path / "run") / runs.MODEL_FILE))
    spatial, channel = expected_layers("builtin", 2)
    frozen = {
        f"{layer}.{p}" for layer in (spatial if mode == "chans" else channel) for p in ("weight", "bias")
    }
    for name in init:
        assert torch.equal(init[name], final[name]) == (name in frozen), name
    # Sizes from the options: 16 patches, token MLP 16 -> 8 -> 16, channel MLP 16 -> 32 -> 16.
    assert init["blocks.0.token_mlp.fc1.weight"].shape == (8, 16)
    assert init["blocks.0.channel_mlp.0.weight"].shape == (32, 16)
    assert summary["frozen_params"] == sum(init[n].numel() for n in frozen)
    model, _ = load_trained_model(tmp_path / "run")
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 4)


def test_mlpmixer_runs_on_28_and_32_pixel_images():
    for size, tokens in ((28, 49), (32, 64)):
        model = create_model(
            "mlpmixer-128/6", in_chans=3 if size == 32 else 1, num_classes=10, image_size=size
        )
        assert model.num_tokens == tokens and model.blocks[0].token_mlp.fc1.in_features == tokens
        assert model(torch.zeros(2, 3 if size == 32 else 1, size, size)).shape == (2, 10)
    with pytest.raises(SpatialmixError, match="larger than the 28 x 28 image"):
        create_model("mlpmixer", in_chans=1, num_classes=10, image_size=28, patch_size=32)
    with pytest.raises(SpatialmixError, match="does not take these options"):
        create_model("mlpmixer", in_chans=1, num_classes=10, image_size=28, depths=(2, 2))
    # The quick preset's ConvMixer kernel size does not stop `reproduce --model mlpmixer`: it does not apply.
    a = create_model("mlpmixer", in_chans=1, num_classes=10, image_size=28, kernel_size=5, activation="relu")
    assert not any(
        isinstance(m, (nn.Conv2d, nn.ReLU)) and getattr(m, "kernel_size", (4, 4)) == (5, 5)
        for m in a.modules()
    ) and not any(isinstance(m, nn.ReLU) for m in a.modules())


# --------------------------------------------------------------------------- width equal to the token count


class OwnMixerBlock(nn.Module):
    """A mixer block of a type spatialmix does not know."""

    def __init__(self, width, tokens):
        super().__init__()
        self.tok = nn.Linear(tokens, tokens)
        self.chan = nn.Linear(width, width)

    def forward(self, x):
        x = x + self.tok(x.transpose(1, 2)).transpose(1, 2)
        return x + self.chan(x)


class OwnMixer(nn.Module):
    def __init__(self, width, grid=4):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 28 // grid, stride=28 // grid)
        self.blocks = nn.Sequential(OwnMixerBlock(width, grid * grid), OwnMixerBlock(width, grid * grid))
        self.head = nn.Linear(width, 10)
        self.spatialmix_input_shape = (1, 28, 28)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


def test_unknown_block_found_by_structure_when_width_differs_from_token_count():
    model = OwnMixer(width=24)  # 16 tokens
    assert of_kind(model, SPATIAL) == {"blocks.0.tok", "blocks.1.tok"}
    assert of_kind(model, CHANNEL) == {"blocks.0.chan", "blocks.1.chan"}


def test_ambiguous_unknown_model_is_refused_with_a_clear_line_and_can_be_declared():
    model = OwnMixer(width=16)  # 16 channels, 16 tokens: the shapes cannot tell
    with pytest.raises(SpatialmixError) as err:
        apply_mixing(model, "chans")
    message = str(err.value)
    assert (
        "cannot tell whether 'blocks.0.tok'" in message
        and "--spatial-pattern" in message
        and "\n" not in message
    )
    assert all(p.requires_grad for p in model.parameters())  # refused before anything changed
    apply_mixing(model, "chans", spatial="blocks.*.tok", channel="blocks.*.chan")
    assert frozen_names(model) == {f"blocks.{i}.tok.{p}" for i in range(2) for p in ("weight", "bias")}
    # The selector is remembered: later classification (summaries, analysis) agrees.
    assert of_kind(model, SPATIAL) == {"blocks.0.tok", "blocks.1.tok"}
    assert summarize(model).frozen == 2 * (16 * 16 + 16)


@pytest.mark.parametrize("kind", ["mixer", "builtin"])
def test_ambiguous_known_blocks_are_classified_by_the_table(kind):
    # Width equal to the token count: 16 tokens (32 / 8)^2 with width 16; 49 tokens (28 / 4)^2 with width 49.
    model = timm_small("mixer", embed_dim=16) if kind == "mixer" else builtin_mixer(width=49)
    spatial, channel = expected_layers(kind, 2)
    assert of_kind(model, SPATIAL) == spatial and of_kind(model, CHANNEL) == channel


# --------------------------------------------------------------------------- the selector


def test_selector_patterns_and_predicates_override_the_classification():
    model = builtin_mixer()
    spatial, channel = expected_layers("builtin", 2)
    # Declare only the first block's token MLP (a container name covers its linear layers).
    apply_mixing(model, "chans", spatial="blocks.0.token_mlp", channel="blocks.1.token_mlp")
    kinds = classify_layers(model)
    assert kinds["blocks.1.token_mlp.fc1"] == CHANNEL and kinds["blocks.0.token_mlp.fc1"] == SPATIAL
    assert kinds["blocks.0.norm1"] == "norm"
    model = builtin_mixer()
    # A predicate adds to the automatic classification: the channel MLPs stay channel mixers.
    apply_mixing(model, "space", channel=lambda name, m: name.endswith("token_mlp.fc2"))
    assert frozen_names(model) == {
        f"blocks.{i}.{layer}.{p}"
        for i in range(2)
        for p in ("weight", "bias")
        for layer in ("channel_mlp.0", "channel_mlp.2", "token_mlp.fc2")
    }


def test_selector_errors_are_one_clear_line():
    with pytest.raises(
        SpatialmixError,
        match="--spatial-pattern 'nothing.\\*' matches no layer with filters; layer "
        "names look like: stem, blocks.0.token_mlp.fc1",
    ):
        apply_mixing(builtin_mixer(), "chans", spatial="nothing.*")
    with pytest.raises(SpatialmixError, match="matches both --spatial-pattern"):
        apply_mixing(builtin_mixer(), "chans", spatial="blocks.*", channel="*.fc1")


def test_patterns_from_the_command_line_are_saved_and_rebuilt(tiny_data, tmp_path, capsys):
    assert (
        main(
            [
                "models",
                "mlpmixer",
                "--in-chans",
                "1",
                "--image-size",
                "28",
                "--spatial-pattern",
                "blocks.*.token_mlp.fc1",
            ]
        )
        == 0
    )
    assert (
        "12 spatial mixers (12 token-mixing linear layers)" in capsys.readouterr().out
    )  # fc1 and fc2 still found
    run_dir = tmp_path / "run"
    config = TrainConfig(
        dataset="fashion-mnist",
        model="mlpmixer",
        width=16,
        depth=1,
        patch_size=7,
        mode="chans",
        channel_pattern="blocks.0.token_mlp.fc2",
        epochs=1,
        batch_size=64,
        progress=False,
        device="cpu",
        amp="none",
    )
    fit(config, run_dir, data=tiny_data)
    saved = json.loads((run_dir / runs.CONFIG).read_text())["train"]
    assert saved["channel_pattern"] == "blocks.0.token_mlp.fc2" and saved["spatial_pattern"] is None
    model, _ = load_trained_model(run_dir)
    assert frozen_names(model.model) == {"blocks.0.token_mlp.fc1.weight", "blocks.0.token_mlp.fc1.bias"}
    assert (
        main(
            [
                "train",
                "--model",
                "mlpmixer",
                "--mode",
                "chans",
                "--spatial-pattern",
                "nope",
                "--train-subset",
                "32",
                "--no-progress",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "--spatial-pattern 'nope' matches no layer" in capsys.readouterr().err


# --------------------------------------------------------------------------- smoothing a token-mixing matrix


def direct_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur a 2-D map by the definition (zero outside, Gaussian cut at ceil(3 sigma)), keep the L2 norm."""
    h, w = image.shape
    radius = math.ceil(3 * sigma)
    out = torch.zeros_like(image, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            for a in range(h):
                for b in range(w):
                    if abs(a - i) <= radius and abs(b - j) <= radius:
                        out[i, j] += image[a, b] * math.exp(-((a - i) ** 2 + (b - j) ** 2) / (2 * sigma**2))
    return out * image.norm() / out.norm()


def test_smoothing_a_token_mixing_matrix_blurs_each_row_over_the_patch_grid():
    torch.manual_seed(0)
    weight = torch.randn(5, 12, dtype=torch.float64)  # 12 input tokens on a 3 x 4 grid
    out = smooth_token_mixer(weight, 0.8, (3, 4), "in")
    for r in range(5):
        torch.testing.assert_close(out[r].reshape(3, 4), direct_blur(weight[r].reshape(3, 4), 0.8))
    cols = smooth_token_mixer(weight.T.contiguous(), 0.8, (3, 4), "out")  # tokens on the output side
    torch.testing.assert_close(cols, out.T)


def test_smoothed_frozen_token_mixers_in_a_model():
    raw, smooth = builtin_mixer(), builtin_mixer()
    apply_mixing(raw, "chans", InitSpec("gaussian", 0.1), seed=3)
    apply_mixing(smooth, "chans", InitSpec("gaussian", 0.1, smooth_sigma=1.0), seed=3)
    fc1_raw, fc1 = raw.blocks[0].token_mlp.fc1.weight, smooth.blocks[0].token_mlp.fc1.weight
    fc2_raw, fc2 = raw.blocks[0].token_mlp.fc2.weight, smooth.blocks[0].token_mlp.fc2.weight
    for r in range(
        3
    ):  # fc1: (hidden, 49 tokens): rows over the 7 x 7 grid; fc2: (49 tokens, hidden): columns
        torch.testing.assert_close(
            fc1[r].double().reshape(7, 7),
            direct_blur(fc1_raw[r].double().reshape(7, 7), 1.0),
            rtol=1e-5,
            atol=1e-6,
        )
        torch.testing.assert_close(
            fc2[:, r].double().reshape(7, 7),
            direct_blur(fc2_raw[:, r].double().reshape(7, 7), 1.0),
            rtol=1e-5,
            atol=1e-6,
        )
    # Channel mixers are not smoothed.
    assert torch.equal(raw.blocks[0].channel_mlp[0].weight, smooth.blocks[0].channel_mlp[0].weight)


def test_smoothing_a_declared_layer_without_a_grid_is_refused():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(SpatialmixError, match="cannot smooth spatial layer '0'.*--smooth-sigma 0"):
        apply_mixing(model, "chans", InitSpec("gaussian", 0.1, smooth_sigma=1.0), spatial="0")


class ToTokens(nn.Module):
    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


def test_probe_leaves_the_model_and_the_global_rng_untouched():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 4, stride=4),
        nn.BatchNorm2d(8),
        ToTokens(),
        OwnMixerBlock(8, 49),
        nn.Flatten(),
        nn.Linear(8 * 49, 10),
    )
    model.spatialmix_input_shape = (1, 28, 28)
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    stats = model[1].running_mean.clone()
    state = torch.get_rng_state()
    kinds = classify_layers(model)
    assert kinds["3.tok"] == SPATIAL and kinds["3.chan"] == CHANNEL
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(model[1].running_mean, stats)
    assert model.training and model[3].training and not model[1].training


# --------------------------------------------------------------------------- token MLPs of three layers


class DeepTokenBlock(nn.Module):
    """A Mixer block of a type spatialmix does not know, whose token MLP has three layers
    (tokens -> hidden -> hidden -> tokens)."""

    def __init__(self, width, tokens, hidden=24):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.token = nn.Sequential(
            nn.Linear(tokens, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, tokens),
        )
        self.channel = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        x = x + self.token(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel(self.norm2(x))


class DeepTokenMixer(nn.Module):
    """Width ``width`` on a 7 x 7 patch grid (28 x 28 images, patch 4): 49 tokens."""

    def __init__(self, width=32, depth=2, block=DeepTokenBlock):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, width, 4, stride=4)
        self.blocks = nn.Sequential(*[block(width, 49) for _ in range(depth)])
        self.head = nn.Linear(width, 10)
        self.spatialmix_input_shape = (1, 28, 28)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


DEEP_TOKEN_LAYERS = {f"blocks.{i}.token.{j}" for i in range(2) for j in (0, 2, 4)}
DEEP_CHANNEL_LAYERS = {f"blocks.{i}.channel.{j}" for i in range(2) for j in (0, 2)}


def test_every_layer_of_a_three_layer_token_mlp_is_a_spatial_mixer():
    # 49 -> 24 -> 24 -> 49 at width 32: the middle layer (24 -> 24) touches neither the tokens nor the
    # channels, and was taken for a channel mixer.
    model = DeepTokenMixer()
    assert of_kind(model, SPATIAL) == DEEP_TOKEN_LAYERS
    assert of_kind(model, CHANNEL) == DEEP_CHANNEL_LAYERS


@pytest.mark.parametrize("mode", ["chans", "space"])
def test_modes_freeze_or_train_the_whole_deep_token_mlp(mode):
    model = DeepTokenMixer()
    apply_mixing(model, mode, seed=0)
    frozen = DEEP_TOKEN_LAYERS if mode == "chans" else DEEP_CHANNEL_LAYERS
    assert frozen_names(model) == {f"{layer}.{p}" for layer in frozen for p in ("weight", "bias")}


class UnclosedTokenBlock(nn.Module):
    """Tokens -> 24 -> 24 along the token axis, never mapped back to the 49 tokens: the second layer
    mixes something spatial, but nothing in the shapes says so."""

    def __init__(self, width, tokens):
        super().__init__()
        self.reduce = nn.Sequential(nn.Linear(tokens, 24), nn.GELU(), nn.Linear(24, 24))
        self.channel = nn.Linear(width, width)

    def forward(self, x):
        return self.channel(self.reduce(x.transpose(1, 2)).transpose(1, 2))


def test_width_equal_to_tokens_or_an_unclosed_token_chain_is_refused_and_can_be_declared():
    for model, first in (
        (DeepTokenMixer(width=49), "blocks.0.token.0"),  # 49 channels, 49 tokens: every shape fits both
        (DeepTokenMixer(depth=1, block=UnclosedTokenBlock), "blocks.0.reduce.2"),
    ):
        with pytest.raises(SpatialmixError) as err:
            apply_mixing(model, "chans")
        message = str(err.value)
        assert f"cannot tell whether {first!r}" in message and "--spatial-pattern" in message
        assert "\n" not in message
        assert all(p.requires_grad for p in model.parameters())  # refused before anything changed
    model = DeepTokenMixer(width=49)
    apply_mixing(model, "chans", spatial="blocks.*.token", channel="blocks.*.channel")
    assert frozen_names(model) == {f"{layer}.{p}" for layer in DEEP_TOKEN_LAYERS for p in ("weight", "bias")}


def test_smoothing_refuses_a_hidden_token_layer_before_changing_anything():
    model = DeepTokenMixer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(SpatialmixError, match="cannot smooth spatial layer 'blocks.0.token.2'"):
        apply_mixing(model, "chans", InitSpec("gaussian", 0.1, smooth_sigma=1.0))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# --------------------------------------------------------------------------- a model's own init


def gates(model) -> list[nn.Linear]:
    return [block.mlp_channels.gate.proj for block in model.blocks]


def test_full_keeps_gmlps_near_identity_gate_unless_an_init_is_asked_for():
    model = timm_small("gmlp")
    # timm's gMLP starts its spatial gate near the identity: weight std 1e-6, bias 1.
    assert all(
        torch.equal(g.bias, torch.ones_like(g.bias)) and g.weight.abs().max() < 1e-4 for g in gates(model)
    )
    before = {n: t.clone() for n, t in model.state_dict().items()}
    apply_mixing(model, "full", seed=0)
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    assert applied_inits(model) == {"spatial": "model's own", "channel": "model's own"}
    # Asked for, an init applies in Full too: PyTorch's default, uniform in +-1/sqrt(16 tokens).
    apply_mixing(model, "full", InitSpec("default"), seed=0)
    for g in gates(model):
        assert g.weight.abs().max() <= 0.25 and g.weight.abs().max() > 0.2 and g.bias.abs().max() <= 0.25
    assert applied_inits(model) == {"spatial": "default", "channel": "model's own"}


def test_chans_draws_the_frozen_gate_and_keeps_the_channel_mlps_own_init():
    model = timm_small("gmlp")
    before = {n: t.clone() for n, t in model.state_dict().items()}
    apply_mixing(model, "chans", seed=0)
    spatial, channel = expected_layers("gmlp", 2)
    for g in gates(model):
        assert (
            not g.weight.requires_grad and g.weight.abs().max() > 0.2
        )  # a random draw, not the near-identity
    for layer in channel:
        assert torch.equal(model.get_submodule(layer).weight, before[f"{layer}.weight"])
    assert applied_inits(model) == {"spatial": "default", "channel": "model's own"}


def test_a_training_config_asks_for_an_init_only_by_naming_one():
    config = TrainConfig(model="timm:gmlp_ti16_224", mode="full", seed=0)
    own = build_model(config, 1, 10, 32)
    assert all(torch.equal(g.bias, torch.ones_like(g.bias)) for g in gates(own))
    drawn = build_model(config.replace(spatial_init="default"), 1, 10, 32)
    assert not any(torch.equal(g.bias, torch.ones_like(g.bias)) for g in gates(drawn))

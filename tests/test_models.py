"""Models: the published ConvMixer sizes, the separable ResNet's layout, the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spatialmix.core.mixing import SPATIAL, STEM_OR_FULL, apply_mixing, classify_layers
from spatialmix.engine.config import TrainConfig
from spatialmix.errors import SpatialmixError
from spatialmix.models.convmixer import ConvMixer
from spatialmix.models.factory import count_parameters, create_model, list_models
from spatialmix.models.registry import MODEL_REGISTRY, RegisteredModel, register_model

# Published sizes (ConvMixer paper, Table 1; timm's exact counts for 1000 classes).
PUBLISHED = [
    ("convmixer-1536/20", "convmixer_1536_20", 51.6, 51_625_960),
    ("convmixer-768/32", "convmixer_768_32", 21.1, 21_110_248),
    ("convmixer-1024/20", "convmixer_1024_20_ks9_p14", 24.4, 24_383_464),
]


def convmixer_formula(width, depth, kernel, patch, in_chans, num_classes) -> int:
    """Parameters of a ConvMixer counted by hand: conv weights + biases, BatchNorm scale + shift."""
    stem = in_chans * width * patch * patch + width + 2 * width
    block = (width * kernel * kernel + width + 2 * width) + (width * width + width + 2 * width)
    head = width * num_classes + num_classes
    return stem + depth * block + head


@pytest.mark.parametrize("name,timm_name,millions,exact", PUBLISHED)
def test_named_convmixer_has_published_parameter_count(name, timm_name, millions, exact):
    import timm

    with torch.device("meta"):  # shapes only: no memory, no init time
        ours = create_model(name, in_chans=3, num_classes=1000)
        reference = timm.create_model(timm_name, pretrained=False)
    n = count_parameters(ours)
    assert n == count_parameters(reference)
    assert n == exact
    assert round(n / 1e6, 1) == millions
    cfg = {
        "convmixer-1536/20": (1536, 20, 9, 7),
        "convmixer-768/32": (768, 32, 7, 7),
        "convmixer-1024/20": (1024, 20, 9, 14),
    }[name]
    assert n == convmixer_formula(*cfg, in_chans=3, num_classes=1000)
    # Same layout as the reference, tensor by tensor (so timm checkpoints would load).
    ours_shapes = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    ref_shapes = [(k, tuple(v.shape)) for k, v in reference.state_dict().items()]
    assert ours_shapes == ref_shapes
    ours_acts = [type(m) for m in ours.modules() if isinstance(m, (nn.GELU, nn.ReLU))]
    ref_acts = [type(m) for m in reference.modules() if isinstance(m, (nn.GELU, nn.ReLU))]
    assert ours_acts == ref_acts and len(ours_acts) == 2 * cfg[1] + 1


def test_convmixer_256_8_on_cifar10_has_059m_parameters():
    from timm.models.convmixer import ConvMixer as TimmConvMixer

    model = create_model("convmixer-256/8", in_chans=3, num_classes=10, image_size=32)
    n = count_parameters(model)
    assert round(n / 1e6, 2) == 0.59
    assert n == convmixer_formula(256, 8, 5, 2, in_chans=3, num_classes=10)
    assert n == count_parameters(TimmConvMixer(256, 8, kernel_size=5, patch_size=2, num_classes=10))


def test_convmixer_layout_and_forward_shapes():
    model = ConvMixer(width=24, depth=2, kernel_size=5, patch_size=4, in_chans=1, num_classes=7)
    x = torch.randn(3, 1, 28, 28)
    # Depthwise convs use 'same' padding: the feature map keeps the patch grid size.
    assert model.forward_features(x).shape == (3, 24, 7, 7)
    assert model(x).shape == (3, 7)
    stem = model.stem[0]
    assert stem.kernel_size == (4, 4) and stem.stride == (4, 4)
    for block in model.blocks:
        dw, pw = block[0].fn[0], block[1]
        assert dw.groups == 24 and dw.kernel_size == (5, 5) and dw.padding == (2, 2)
        assert pw.kernel_size == (1, 1) and pw.groups == 1


def test_convmixer_named_config_accepts_overrides():
    model = create_model("convmixer-256/8", in_chans=1, num_classes=10, image_size=28, width=32, depth=3)
    assert model.width == 32 and model.depth == 3 and model.kernel_size == 5 and model.patch_size == 2
    assert count_parameters(model) == convmixer_formula(32, 3, 5, 2, in_chans=1, num_classes=10)


def test_even_kernel_and_oversized_patch_are_rejected():
    with pytest.raises(SpatialmixError, match="even"):
        create_model("convmixer", in_chans=1, num_classes=10, image_size=28, kernel_size=4)
    with pytest.raises(SpatialmixError, match="larger than the 28 x 28"):
        create_model("convmixer", in_chans=1, num_classes=10, image_size=28, patch_size=29)
    with pytest.raises(SpatialmixError, match="width must be a positive"):
        create_model("convmixer", in_chans=1, num_classes=10, width=0)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(SpatialmixError) as err:
        create_model("convmixer-999/1")
    message = str(err.value)
    assert "unknown model 'convmixer-999/1'" in message
    for name in ("convmixer-256/8", "convmixer", "resnet18-sep", "resnet50-sep", "timm:NAME"):
        assert name in message
    assert "\n" not in message
    with pytest.raises(SpatialmixError, match="timm has no model"):
        create_model("timm:no_such_net")
    with pytest.raises(SpatialmixError, match="torchvision has no model"):
        create_model("torchvision:no_such_net")


def test_registry_names():
    names = list_models()
    for name in (
        "convmixer-256/8",
        "convmixer-768/32",
        "convmixer-1536/20",
        "convmixer-1024/20",
        "resnet18-sep",
        "resnet50-sep",
        "resnet18",
        "resnet50",
    ):
        assert name in names


# --------------------------------------------------------------------------- separable ResNet


def convs(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("in_chans,size", [(1, 28), (3, 32)])
def test_separable_resnet_spatial_convs_are_all_depthwise(arch, in_chans, size):
    separable = create_model(f"{arch}-sep", in_chans=in_chans, num_classes=10, image_size=size)
    baseline = create_model(arch, in_chans=in_chans, num_classes=10, image_size=size)

    sep_convs = convs(separable)
    stem = sep_convs.pop("conv1")
    assert stem.groups == 1 and max(stem.kernel_size) > 1 and stem.in_channels == in_chans
    spatial = {n: m for n, m in sep_convs.items() if max(m.kernel_size) > 1}
    assert spatial, "the separable ResNet has no spatial convs at all"
    for name, conv in spatial.items():
        assert conv.groups == conv.in_channels == conv.out_channels, name

    base_convs = convs(baseline)
    assert not any(m.groups > 1 for m in base_convs.values())
    base_spatial = {n: m for n, m in base_convs.items() if n != "conv1" and max(m.kernel_size) > 1}
    # Each k x k conv of the baseline became depthwise k x k (same stride) + pointwise 1 x 1.
    assert len(spatial) == len(base_spatial)
    modules = dict(separable.named_modules())
    for name, conv in base_spatial.items():
        pair = modules[name]
        assert isinstance(pair, nn.Sequential) and len(pair) == 2
        depthwise, pointwise = pair
        assert depthwise.kernel_size == conv.kernel_size and depthwise.stride == conv.stride
        assert depthwise.padding == conv.padding and depthwise.in_channels == conv.in_channels
        assert pointwise.kernel_size == (1, 1) and pointwise.out_channels == conv.out_channels

    x = torch.randn(2, in_chans, size, size)
    separable.eval(), baseline.eval()
    with torch.no_grad():
        assert separable(x).shape == (2, 10)
        assert baseline(x).shape == (2, 10)
    assert count_parameters(separable) < count_parameters(baseline)


def test_separable_resnet_imagenet_stem_on_small_images():
    model = create_model("resnet18-sep", in_chans=1, num_classes=10)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def small_resnet_formula(width, depth, in_chans, num_classes, separable) -> int:
    """Parameters of the small-image ResNet counted by hand: 3 x 3 convs (depthwise + pointwise when
    separable), projection shortcuts where the width changes, BatchNorm scale + shift, the head."""

    def conv3(cin, cout):
        return cin * 9 + cin * cout if separable else cin * cout * 9

    total = in_chans * width * 9 + 2 * width  # the stem stays a full conv
    chans = width
    for stage in range(3):
        out = width * 2**stage
        for _ in range(depth):
            total += conv3(chans, out) + 2 * out + conv3(out, out) + 2 * out
            if chans != out:
                total += chans * out + 2 * out
            chans = out
    return total + chans * num_classes + num_classes


@pytest.mark.parametrize("width,depth,patch,size", [(8, 2, 1, 28), (32, 1, 2, 28), (16, 3, 1, 32)])
def test_small_resnet_has_he_et_als_layout(width, depth, patch, size):
    """Three stages of basic blocks (width, 2 x width, 4 x width; the last two halve the resolution),
    its 3 x 3 convs after the stem made depthwise + pointwise; its Chans mode freezes the depthwise
    filters only."""
    separable = create_model(
        "resnet-sep", in_chans=1, num_classes=10, image_size=size, width=width, depth=depth, patch_size=patch
    )
    ordinary = create_model(
        "resnet", in_chans=1, num_classes=10, image_size=size, width=width, depth=depth, patch_size=patch
    )
    assert count_parameters(separable) == small_resnet_formula(width, depth, 1, 10, separable=True)
    assert count_parameters(ordinary) == small_resnet_formula(width, depth, 1, 10, separable=False)
    kinds = classify_layers(separable)
    assert kinds["stem.0"] == STEM_OR_FULL and separable.stem[0].stride == (patch, patch)
    depthwise = [name for name, kind in kinds.items() if kind == SPATIAL]
    assert len(depthwise) == 3 * depth * 2
    x = torch.randn(2, 1, size, size)
    features = separable.blocks(separable.stem(x))
    assert features.shape[1:] == (4 * width, *[-(-size // patch // 4)] * 2)
    assert separable.eval()(x).shape == ordinary.eval()(x).shape == (2, 10)
    apply_mixing(separable, "chans")
    frozen = sum(p.numel() for p in separable.parameters() if not p.requires_grad)
    assert frozen == sum(dict(separable.named_modules())[n].weight.numel() for n in depthwise)


# --------------------------------------------------------------------------- MLP-Mixer


@pytest.mark.parametrize("width,depth,patch,size,in_chans", [(128, 6, 4, 28, 1), (64, 2, 4, 32, 3)])
def test_mlpmixer_has_the_parameters_of_timms_mixer_of_the_same_sizes(width, depth, patch, size, in_chans):
    """Same layout as timm's MlpMixer (stem conv, pre-norm token and channel MLPs, final norm, head),
    token hidden width / 2 and channel hidden 4 x width as in Mixer-S/16, and a formula by hand."""
    from timm.models.mlp_mixer import MlpMixer

    ours = create_model(
        "mlpmixer",
        in_chans=in_chans,
        num_classes=10,
        image_size=size,
        width=width,
        depth=depth,
        patch_size=patch,
    )
    reference = MlpMixer(
        num_classes=10,
        img_size=size,
        in_chans=in_chans,
        patch_size=patch,
        num_blocks=depth,
        embed_dim=width,
        mlp_ratio=(0.5, 4.0),
    )
    tokens, t, c = (size // patch) ** 2, width // 2, 4 * width
    block = (
        2 * width + (tokens * t + t + t * tokens + tokens) + 2 * width + (width * c + c + c * width + width)
    )
    formula = in_chans * width * patch * patch + width + depth * block + 2 * width + width * 10 + 10
    assert count_parameters(ours) == count_parameters(reference) == formula
    assert "mlpmixer" in list_models() and "mlpmixer-128/6" in list_models()


def test_every_family_has_its_models_in_the_one_table():
    """MODEL_REGISTRY lists every built-in model with its builder, so a name is known (and validated by
    TrainConfig) wherever models are built."""
    assert {
        "convmixer",
        "convmixer-256/8",
        "mlpmixer",
        "mlpmixer-128/6",
        "resnet18-sep",
        "resnet18",
        "unshufflenet",
    } <= set(list_models())
    assert all(isinstance(info.description, str) and info.description for info in MODEL_REGISTRY.values())
    TrainConfig(model="unshufflenet", patch_size=1).validate()
    model = create_model("unshufflenet", in_chans=1, num_classes=10, width=8, depth=1)
    assert type(model).__name__ == "UnshuffleNet"


def test_a_model_of_your_own_registers_with_the_decorator_and_builds_by_name():
    @register_model("tiny-test-net", "a test model", width=4)
    class TinyNet(nn.Module):
        def __init__(self, in_chans: int, num_classes: int, width: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(in_chans, width, 3, padding=1, groups=1), nn.Flatten(), nn.LazyLinear(num_classes)
            )

    try:
        assert "tiny-test-net" in list_models() and MODEL_REGISTRY["tiny-test-net"].builder is TinyNet
        model = create_model("tiny-test-net", in_chans=1, num_classes=3, width=6)
        assert isinstance(model, TinyNet) and model.body[0].out_channels == 6
    finally:
        MODEL_REGISTRY.pop("tiny-test-net")


def test_the_factory_fits_the_sizes_to_the_image_as_the_entry_says():
    """create_model knows no family: it hands the sizes to the entry's ``fit_to_image`` (here a made-up
    model whose width follows the image), then builds with what comes back."""

    class WideAsTheImage(nn.Module):
        def __init__(self, in_chans: int, num_classes: int, width: int):
            super().__init__()
            self.conv = nn.Conv2d(in_chans, width, 3)

    def fit_to_image(sizes: dict, image_size: int | None) -> dict:
        return {**sizes, "width": sizes["width"] * image_size}

    MODEL_REGISTRY["wide-test-net"] = RegisteredModel(
        "wide-test-net", WideAsTheImage, {"width": 2}, "a test model", fit_to_image
    )
    try:
        model = create_model("wide-test-net", in_chans=1, num_classes=3, image_size=12)
        assert model.conv.out_channels == 24 and model.spatialmix_input_shape == (1, 12, 12)
    finally:
        MODEL_REGISTRY.pop("wide-test-net")
    # the built-in entries: what depends on the image
    assert MODEL_REGISTRY["resnet18"].fit_to_image({}, 32) == {"stem": "cifar"}
    assert MODEL_REGISTRY["resnet18"].fit_to_image({}, None) == {"stem": "imagenet"}
    assert MODEL_REGISTRY["resnet18"].fit_to_image({"stem": "imagenet"}, 32) == {"stem": "imagenet"}
    assert MODEL_REGISTRY["mlpmixer"].fit_to_image({"width": 8, "kernel_size": 5}, 28) == {
        "width": 8,
        "image_size": 28,
    }
    with pytest.raises(SpatialmixError, match="patch size 8 is larger than the 4 x 4 image"):
        MODEL_REGISTRY["convmixer"].fit_to_image({"patch_size": 8}, 4)

"""The torch-free table of names (what the command line checks before torch loads) lists exactly what
the modules that implement them have."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import SUBPROCESS_ENV
from spatialmix import names
from spatialmix.core.inits import InitSpec, initialize_layers
from spatialmix.core.mixing import CHANNEL, SPATIAL, frozen_kind
from spatialmix.core.priors import EmpiricalPrior
from spatialmix.data import datasets
from spatialmix.data.batches import BatchLoader
from spatialmix.errors import SpatialmixError
from spatialmix.models.factory import list_models


def test_the_data_sets_and_models_are_the_implementations_tables():
    assert tuple(datasets.DATASETS) == names.DATASETS
    builtin = [m for m in list_models() if not m.endswith(":NAME")]
    assert sorted(builtin) == sorted(names.MODELS)


def test_every_mode_freezes_the_kind_of_mixer_it_names():
    assert {mode: frozen_kind(mode) for mode in names.MODES} == {
        "full": None,
        "chans": SPATIAL,
        "space": CHANNEL,
    }
    with pytest.raises(SpatialmixError, match="unknown mode 'both'"):
        frozen_kind("both")


def _drawn(spec: InitSpec) -> torch.Tensor:
    layer = nn.Conv2d(4, 4, 3, groups=4)
    initialize_layers([("blocks.0", layer)], spec, seed=0)
    return layer.weight.detach().clone()


def test_every_init_draws_filters_of_its_own():
    """Each init name reaches a draw of its own: one that fell through to another init's branch would
    draw that init's filters for the same seed."""
    source = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(1)) + 5
    prior = EmpiricalPrior.from_filters("source-run", [("blocks.0", source)], "weights.safetensors")
    specs = {
        name: InitSpec(name, source="source-run", prior=prior)
        if name == "covariance-from"
        else InitSpec(name)
        for name in names.INITS
    }
    drawn = {name: _drawn(spec) for name, spec in specs.items()}
    assert all(
        not torch.equal(drawn[a], drawn[b]) for i, a in enumerate(drawn) for b in list(drawn)[i + 1 :]
    ), "two inits drew the same filters"
    assert drawn["default"].abs().max() <= 1 / 3 and drawn["uniform"].abs().max() <= 0.1
    assert drawn["covariance-from"].mean() > 3  # the source's filters sit around 5; the others around 0


def test_every_augmentation_changes_the_images_as_it_names():
    """`none` leaves the images as they are; `flip` only mirrors them, `crop` only shifts them, and
    `crop-flip` does both (the same draws: crops as `crop`'s, then flips as `flip`'s)."""
    images = torch.arange(16 * 8 * 8, dtype=torch.int64).remainder(251).to(torch.uint8).view(16, 1, 8, 8)
    labels = torch.zeros(16, dtype=torch.int64)

    def batch(augment: str) -> torch.Tensor:
        loader = BatchLoader(images, labels, 16, (0.0,), (1 / 255,), train=True, augment=augment, seed=3)
        x, _ = next(iter(loader))
        return x

    shuffled = batch("none")
    assert sorted(map(tuple, shuffled.view(16, -1).tolist())) == sorted(
        map(tuple, images.float().view(16, -1).tolist())
    )
    flipped, cropped, both = batch("flip"), batch("crop"), batch("crop-flip")
    mirrored = [torch.equal(f, s.flip(-1)) and not torch.equal(f, s) for f, s in zip(flipped, shuffled)]
    assert any(mirrored) and all(m or torch.equal(f, s) for m, f, s in zip(mirrored, flipped, shuffled))
    assert not torch.equal(cropped, shuffled) and not torch.equal(cropped, flipped)
    assert torch.equal(both, torch.stack([c.flip(-1) if m else c for m, c in zip(mirrored, cropped)]))
    assert set(names.AUGMENTATIONS) == {"none", "flip", "crop", "crop-flip"}


def test_a_bad_configuration_is_refused_before_torch_is_imported():
    """A mistyped name or a bad value is answered from the names alone: torch is never imported."""
    script = (
        "import sys\n"
        "from spatialmix.cli.main import main\n"
        "for argv in (['train', '--model', 'convmixr'], ['train', '--mode', 'chanz'],\n"
        "             ['train', '--epochs', '0'], ['train', '--dataset', 'fmnist'],\n"
        "             ['train', '--width', '8', '--model', 'timm:convnext_atto'],\n"
        "             ['train', '--spatial-init', 'gauss']):\n"
        "    assert main(argv) == 2, argv\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", proc.stderr
    assert "did you mean 'convmixer'?" in proc.stderr and "unknown mode 'chanz'" in proc.stderr

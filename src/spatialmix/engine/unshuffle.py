"""Pixel un-shuffling (the paper's third claim): reconstruct images from scrambled pixels.

One fixed, seeded permutation of the H x W pixel positions scrambles every image, train and test
alike (the channels of a pixel move together). An image-to-image network, `UnshuffleNet`,
receives the scrambled image and must output the original. It is an isotropic ConvMixer at full
resolution built from the classifier's blocks, so Full, Chans and Space apply unchanged.

Pieces, top to bottom:

* `psnr`, `ssim` and `scrambled_floor`: how close a reconstruction is;
* `UnshuffleNet`: stem (1 x 1 conv) -> ConvMixer blocks -> 1 x 1 head to the image channels;
* `UnshuffleTask`: the task the training loop of `spatialmix.engine.train` runs (MSE or L1
  loss on normalized images; test metrics PSNR and SSIM on images in [0, 1]);
* `UNSHUFFLE_PRESETS`, `train_unshuffle`, `load_run_permutation` and
  `reconstruct`: training a run and reading one back.

The scrambling itself (`PixelPermutation`, `make_permutation`, its file) is
`spatialmix.data.permutation`; the study that compares Full / Chans / Space (table and figure) is
`spatialmix.studies.unshuffle`.

Choices the paper leaves open, made explicit here: one permutation shared by all images; a 1 x 1
output head learned in every mode; MSE on normalized images by default. With a patch size of 1
the stem is itself a pointwise conv, so it counts as a channel mixer (frozen in Space mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spatialmix.data.datasets import DATASETS
from spatialmix.data.permutation import PixelPermutation, check_window, make_permutation
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.device import autocast_context
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.models.factory import create_model

MODEL_NAME = "unshufflenet"
LOSSES = ("mse", "l1")
PSNR_CAP_MSE = 1e-10  # an exact reconstruction scores 100 dB instead of infinity


# --------------------------------------------------------------------------- metrics


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 log10(data_range^2 / MSE)``."""
    mse = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(PSNR_CAP_MSE))


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (pytorch-msssim, Gaussian window 11, sigma 1.5).

    The window shrinks to the largest odd size that fits images smaller than 11 pixels.
    """
    from pytorch_msssim import ssim as msssim_ssim

    size = min(prediction.shape[-2:])
    win_size = min(11, size if size % 2 else size - 1)
    return msssim_ssim(
        prediction.float(), target.float(), data_range=data_range, size_average=False, win_size=win_size
    )


def _unit_range(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalized images back to [0, 1] (clamped: a prediction may overshoot)."""
    return (x.float() * std.to(x.device) + mean.to(x.device)).clamp(0, 1)


def _stats(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
        torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
    )


def scrambled_floor(images: torch.Tensor, permutation: PixelPermutation, batch_size: int = 1024) -> dict:
    """PSNR and SSIM of the scrambled images themselves against the originals (uint8 images in),
    and each image's PSNR (``psnr_per_example``, rounded to 0.01 dB)."""
    psnr_sum = ssim_sum = 0.0
    per_image = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float() / 255
        scrambled = permutation.scramble(x)
        scores = psnr(scrambled, x)
        psnr_sum += scores.sum().item()
        per_image += scores.tolist()
        ssim_sum += ssim(scrambled, x).sum().item()
    n = len(images)
    per_example = [round(v, 2) for v in per_image]
    return {"psnr": psnr_sum / n, "ssim": ssim_sum / n, "n": n, "psnr_per_example": per_example}


# --------------------------------------------------------------------------- the model


# --------------------------------------------------------------------------- the task


class UnshuffleTask:
    """Learn to undo one fixed pixel permutation (see
    `spatialmix.engine.classification.ClassificationTask`).

    Inputs are the scrambled normalized images, targets the original normalized images; the loss
    (``mse`` or ``l1``) is taken there. Test metrics: ``loss``, ``psnr`` (the score) and ``ssim``
    on images brought back to [0, 1]. Train and test batches are scrambled by the same permutation,
    built from ``perm_seed`` and ``window`` once the image size is known.
    """

    name = "unshuffle"
    score = "psnr"

    def __init__(self, perm_seed: int = 0, window: int | None = None, loss: str = "mse"):
        if loss not in LOSSES:
            raise unknown_name("loss", loss, LOSSES)
        if isinstance(perm_seed, bool) or not isinstance(perm_seed, int) or not 0 <= perm_seed < 2**64:
            # (torch's generators take seeds below 2**64)
            raise SpatialmixError(
                f"permutation seed must be a whole number from 0 to 2**64 - 1, got {perm_seed!r}"
            )
        if window is not None:
            check_window(window, window)  # a positive integer; whether it divides the image is checked later
        self.perm_seed, self.window, self.loss = perm_seed, window, loss
        self.permutation: PixelPermutation | None = None
        self._mean, self._std = _stats((0.0,), (1.0,))  # replaced by the data's in create_model

    def to_dict(self) -> dict:
        return {"name": self.name, "perm_seed": self.perm_seed, "window": self.window, "loss": self.loss}

    def permutation_for(self, image_size: int) -> PixelPermutation:
        if self.permutation is None or self.permutation.image_size != image_size:
            self.permutation = make_permutation(image_size, self.perm_seed, self.window)
        return self.permutation

    def check_config(self, config: TrainConfig) -> None:
        if config.model != MODEL_NAME:
            raise SpatialmixError(
                f"the un-shuffling task trains the image-to-image model {MODEL_NAME!r}, "
                f"not {config.model!r}; pass model={MODEL_NAME!r}"
            )
        augment = config.augment or DATASETS[config.dataset].default_augment
        if augment != "none":
            raise SpatialmixError(
                f"un-shuffling needs augment='none' (the target is the exact original image), got {augment!r}"
            )

    def create_model(self, config: TrainConfig, data_info: dict) -> nn.Module:
        self.check_config(config)
        self.permutation_for(data_info["image_size"])
        spec = DATASETS[config.dataset]
        self._mean, self._std = _stats(data_info.get("mean", spec.mean), data_info.get("std", spec.std))
        return create_model(
            MODEL_NAME,
            in_chans=data_info["in_chans"],
            num_classes=data_info["num_classes"],
            image_size=data_info["image_size"],
            width=config.width,
            depth=config.depth,
            kernel_size=config.kernel_size,
            patch_size=config.patch_size,
            activation=config.activation,
        )

    def scramble(self, x: torch.Tensor) -> torch.Tensor:
        return self.permutation_for(x.shape[-1]).scramble(x)

    def batch(self, x, y):
        return self.scramble(x), x

    def loss_fn(self, config: TrainConfig | None = None) -> nn.Module:
        return nn.MSELoss() if self.loss == "mse" else nn.L1Loss()

    def running_score(self, outputs, targets) -> torch.Tensor:
        """Summed PSNR of the batch (for the progress bar)."""
        return psnr(
            _unit_range(outputs, self._mean, self._std), _unit_range(targets, self._mean, self._std)
        ).sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, amp: str = "none") -> dict:
        """Loss, PSNR and SSIM over every test image, each image scrambled by the run's permutation;
        under ``"per_example"`` the summary entry ``test_psnr_per_example``: each image's PSNR in
        test-set order, rounded to 0.01 dB (what the verdicts need to cover the test set's own
        sampling error)."""
        was_training = model.training
        model.eval()
        # The loader normalizes x -> x * scale + shift from uint8; invert exactly that.
        std = (1.0 / (loader.scale * 255.0)).float().cpu()
        mean = (-loader.shift * std.to(loader.shift.device)).float().cpu()
        per_element = F.mse_loss if self.loss == "mse" else F.l1_loss
        totals = {"loss": 0.0, "psnr": 0.0, "ssim": 0.0}
        per_image = []
        count = 0
        for x, _ in loader:
            inputs, targets = self.batch(x, None)
            with autocast_context(device, amp):
                outputs = model(inputs)
            outputs = outputs.float()
            totals["loss"] += per_element(outputs, targets, reduction="none").flatten(1).mean(1).sum().item()
            pred, true = _unit_range(outputs, mean, std), _unit_range(targets, mean, std)
            scores = psnr(pred, true)
            totals["psnr"] += scores.sum().item()
            per_image += scores.tolist()
            totals["ssim"] += ssim(pred, true).sum().item()
            count += len(x)
        model.train(was_training)
        per_example = {"test_psnr_per_example": [round(v, 2) for v in per_image]}
        return {**{k: v / max(1, count) for k, v in totals.items()}, "n": count, "per_example": per_example}


# --------------------------------------------------------------------------- presets and training


@dataclass(frozen=True)
class UnshufflePreset:
    name: str
    description: str
    config: TrainConfig


UNSHUFFLE_PRESETS: dict[str, UnshufflePreset] = {
    "small": UnshufflePreset(
        "small",
        "UnshuffleNet-32/8 (kernel 7) on 4,000 training images, 3 epochs: minutes on 2 CPU cores",
        TrainConfig(
            dataset="fashion-mnist",
            model=MODEL_NAME,
            width=32,
            depth=8,
            kernel_size=7,
            patch_size=1,
            augment="none",
            label_smoothing=0.0,
            epochs=3,
            batch_size=32,
            lr=0.005,
            weight_decay=0.0,
            train_subset=4000,
            test_subset=1000,
        ),
    ),
    # Sized to about an hour on 2 CPU cores (4 trainings, 2 side by side: `--processes 2`): width 64
    # runs about 80 images/s per single-thread process, so 15,000 images x 8 epochs is ~25 minutes a run.
    # Eight epochs give each curve eight points; the test subset is fixed for every model.
    "hour": UnshufflePreset(
        "hour",
        "UnshuffleNet-64/8 (kernel 7) on 15,000 training images, 8 epochs: about an hour on 2 CPU cores "
        "with --processes 2",
        TrainConfig(
            dataset="fashion-mnist",
            model=MODEL_NAME,
            width=64,
            depth=8,
            kernel_size=7,
            patch_size=1,
            augment="none",
            label_smoothing=0.0,
            epochs=8,
            batch_size=32,
            lr=0.005,
            weight_decay=0.0,
            train_subset=15000,
            test_subset=2000,
        ),
    ),
    "large": UnshufflePreset(
        "large",
        "UnshuffleNet-512/16 (kernel 7) as in the paper, whole data set, 20 epochs (GPU)",
        TrainConfig(
            dataset="fashion-mnist",
            model=MODEL_NAME,
            width=512,
            depth=16,
            kernel_size=7,
            patch_size=1,
            augment="none",
            label_smoothing=0.0,
            epochs=20,
            batch_size=128,
            lr=0.002,
            weight_decay=0.0,
        ),
    ),
}
# What the preset fixes: the task needs exactly this model, at full resolution, on unaugmented images.
FIXED_FIELDS = ("model", "patch_size", "augment")


def unshuffle_config(preset: str = "small", mode: str = "full", seed: int = 0, **overrides) -> TrainConfig:
    """The training config of ``preset`` for one mode and seed; ``overrides`` are TrainConfig fields."""
    if preset not in UNSHUFFLE_PRESETS:
        raise unknown_name("un-shuffling preset", preset, UNSHUFFLE_PRESETS)
    known = set(UNSHUFFLE_PRESETS[preset].config.to_dict())
    bad = sorted(set(overrides) - known)
    if bad:
        raise SpatialmixError(f"unknown training settings {bad}; valid ones are the fields of TrainConfig")
    fixed = sorted(k for k in FIXED_FIELDS if overrides.get(k) is not None)
    if fixed:
        raise SpatialmixError(
            f"un-shuffling fixes {fixed} (model {MODEL_NAME}, patch size 1, no augmentation); "
            f"drop those settings"
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    return UNSHUFFLE_PRESETS[preset].config.replace(**changes, mode=mode, seed=seed).validate()


@torch.no_grad()
def reconstruct(
    model: nn.Module, images: torch.Tensor, permutation: PixelPermutation, mean, std
) -> torch.Tensor:
    """Scramble uint8 ``images``, run ``model`` and return its reconstructions in [0, 1]."""
    mean_t, std_t = _stats(mean, std)
    device = next(model.parameters()).device
    x = (images.float().to(device) / 255 - mean_t.to(device)) / std_t.to(device)
    return _unit_range(model.eval()(permutation.scramble(x)), mean_t, std_t).cpu()

"""Batches of in-memory uint8 images, augmented and normalized whole on the training device.

`BatchLoader` draws every random number of an epoch up front from ``(seed, epoch)``, so a
resumed or distributed run sees exactly the batches an uninterrupted single process would;
cropping (`random_crop`), flipping (`random_flip`) and normalization are batched
tensor operations, with no per-sample Python and no worker processes. `Normalize`,
`InputSpaceModel` and `to_unit_range` give a trained network the [0, 1] input space
every model spatialmix hands out takes (RobustBench's convention, what attacks need).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spatialmix.errors import unknown_name
from spatialmix.names import AUGMENTATIONS


def check_augment(name: str) -> str:
    if name not in AUGMENTATIONS:
        raise unknown_name("augmentation", name, AUGMENTATIONS)
    return name


class BatchLoader:
    """Iterate over (normalized float images, labels) batches of an in-memory data set.

    The order and the augmentation of epoch ``e`` depend only on ``(seed, e)``, so a resumed run
    sees exactly the batches an uninterrupted one would. For distributed training each of the
    ``world_size`` ranks takes every ``world_size``-th example of the shuffled order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean,
        std,
        *,
        train: bool,
        augment: str = "none",
        seed: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.augment = check_augment(augment) if train else "none"
        self.seed = seed
        self.channels_last = channels_last
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self._epoch_seed(0)))
        else:
            order = torch.arange(n)
        return self._shard(order)

    def _shard(self, values: torch.Tensor) -> torch.Tensor:
        """This rank's share of a per-example sequence of the epoch: every ``world_size``-th entry.

        Global batch ``i`` is then the union of the ranks' batches ``i``: the examples one process
        with ``world_size`` times the batch size takes. Training pads by wrapping so every rank takes
        the same number of steps (as DistributedSampler); evaluation does not, so no example counts twice.
        """
        if self.world_size == 1:
            return values
        if self.train:
            per_rank = -(-len(values) // self.world_size)
            values = torch.cat([values, values[: per_rank * self.world_size - len(values)]])
        return values[self.rank :: self.world_size]

    def _shard_size(self) -> int:
        n = len(self.labels)
        return -(-n // self.world_size) if self.train else len(range(self.rank, n, self.world_size))

    def _epoch_seed(self, salt: int) -> int:
        return (self.seed * 1_000_003 + self.epoch * 7919 + salt) % (2**63)

    def __len__(self) -> int:
        if self.drop_last:
            # Whole global batches only: the steps per epoch do not depend on the number of processes.
            return len(self.labels) // (self.batch_size * self.world_size)
        return -(-self._shard_size() // self.batch_size)

    def num_examples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self._shard_size()

    def __iter__(self):
        order = self._indices()
        generator = torch.Generator().manual_seed(self._epoch_seed(1))
        # Draw every random number of the epoch up front, on the CPU, for every example of the
        # epoch (then keep this rank's share), so results depend neither on the device nor on the
        # number of processes.
        size = self.images.shape[-1]
        pad = max(1, size // 8)
        n = len(self.labels)
        offsets = self._shard(torch.randint(0, 2 * pad + 1, (n, 2), generator=generator))
        flips = self._shard(torch.rand(n, generator=generator) < 0.5)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(order)), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx.to(self.device)]
            if "crop" in self.augment:
                x = random_crop(x, offsets[start : start + len(idx)].to(self.device), pad)
            if "flip" in self.augment:
                x = random_flip(x, flips[start : start + len(idx)].to(self.device))
            yield self.normalize(x), self.labels[idx.to(self.device)]

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, x_uint8.float(), self.scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def random_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample random translation: zero-pad by ``pad`` and cut the original size at ``offsets``."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    return torch.where(flips[:, None, None, None], x.flip(-1), x)


def to_unit_range(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1] (the input space of attacks)."""
    return x_uint8.float() / 255.0


class Normalize(torch.nn.Module):
    """(x - mean) / std as a module, so a model can take [0, 1] inputs (attacks need that)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class InputSpaceModel(torch.nn.Module):
    """A model that takes images in [0, 1]: ``normalize`` (the data set's mean and std), then ``model``.

    What ``Run.model()`` and ``load_trained_model`` return, and what attacks see (RobustBench's
    convention): the trained network itself is ``.model``, which takes normalized images.
    """

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x):
        return self.model(self.normalize(x))

"""One fixed, seeded permutation of an image's pixel positions, and its file.

The scrambling of the un-shuffling task (`spatialmix.engine.unshuffle`): `make_permutation`
draws the same permutation from a seed in every process and on every machine, optionally moving
pixels only within ``window x window`` tiles (a milder scrambling). The channels of a pixel move
together. `PixelPermutation` scrambles and unscrambles exactly, and is saved as
``permutation.safetensors`` (source and inverse, sizes in the metadata) beside a run's
``config.json``; a damaged or edited file is refused, since it can always be rebuilt from its seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spatialmix.errors import SpatialmixError, check_positive
from spatialmix.io import runs

PERMUTATION_FILE = "permutation.safetensors"
PERMUTATION_FORMAT = "spatialmix-pixel-permutation/1"


def check_window(image_size: int, window: int | None) -> int:
    """The tile size actually used (``None``: the whole image); clear error when it cannot tile."""
    if window is None:
        return image_size
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise SpatialmixError(f"window must be a positive whole number of pixels, got {window!r}")
    if image_size % window:
        divisors = ", ".join(str(d) for d in range(1, image_size + 1) if image_size % d == 0)
        raise SpatialmixError(
            f"window {window} does not divide the {image_size} x {image_size} image; choose one of {divisors}"
        )
    return window


class PixelPermutation:
    """A fixed permutation of the pixel positions of ``image_size`` x ``image_size`` images.

    ``source[i]`` is the (row-major) position whose pixel lands at position ``i`` of the scrambled
    image; ``inverse`` undoes it. Both are int64 tensors of length ``image_size ** 2``.
    """

    def __init__(
        self,
        source: torch.Tensor,
        image_size: int,
        seed: int,
        window: int | None,
        inverse: torch.Tensor | None = None,
        origin: str = "this permutation",
    ):
        source = torch.as_tensor(source).to(torch.int64).reshape(-1)
        n = image_size * image_size
        if len(source) != n or not torch.equal(torch.sort(source).values, torch.arange(n)):
            raise SpatialmixError(
                f"{origin} is not a permutation of {n} pixel positions; it is damaged, "
                f"delete it so that it is rebuilt from its seed"
            )
        computed = torch.empty_like(source)
        computed[source] = torch.arange(n)
        if inverse is not None and not torch.equal(
            torch.as_tensor(inverse).to(torch.int64).reshape(-1), computed
        ):
            raise SpatialmixError(
                f"{origin}: the stored inverse does not undo the permutation; it is damaged, "
                f"delete it so that it is rebuilt from its seed"
            )
        self.source, self.inverse = source, computed
        self.image_size, self.seed, self.window = image_size, seed, window
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, PixelPermutation)
            and self.image_size == other.image_size
            and torch.equal(self.source, other.source)
        )

    __hash__ = None

    def __repr__(self) -> str:
        tiles = "whole image" if self.window is None else f"{self.window} x {self.window} windows"
        return f"PixelPermutation({self.image_size} x {self.image_size}, seed {self.seed}, {tiles})"

    def scramble(self, images: torch.Tensor) -> torch.Tensor:
        """Move the pixels of ``images`` (..., H, W) to their scrambled positions (any dtype)."""
        return self._gather(images, 0)

    def unscramble(self, images: torch.Tensor) -> torch.Tensor:
        """Undo `scramble` exactly."""
        return self._gather(images, 1)

    def _gather(self, images: torch.Tensor, which: int) -> torch.Tensor:
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise SpatialmixError(
                f"images are {tuple(images.shape[-2:])} but the permutation is for "
                f"{self.image_size} x {self.image_size} images"
            )
        index = self._index(images.device)[which]
        out = images.flatten(-2).index_select(-1, index).view(images.shape)
        if (
            images.dim() == 4
            and not images.is_contiguous()
            and images.is_contiguous(memory_format=torch.channels_last)
        ):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.source.to(device), self.inverse.to(device))
        return self._on_device[device]

    def moved_fraction(self) -> float:
        """The share of pixels that leave their place (0: identity, about 1: a thorough scrambling)."""
        return (self.source != torch.arange(len(self.source))).float().mean().item()

    # ----------------------------------------------------------------------- files

    def save(self, path: str | Path) -> None:
        """Write ``path`` (safetensors: ``source`` and ``inverse``, sizes in the metadata) atomically."""
        metadata = {
            "format": PERMUTATION_FORMAT,
            "image_size": str(self.image_size),
            "seed": str(self.seed),
            "window": "" if self.window is None else str(self.window),
        }
        runs.save_weights(Path(path), {"source": self.source, "inverse": self.inverse}, metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, image_size: int | None = None) -> PixelPermutation:
        """Read a permutation file; with ``image_size``, refuse one made for another image size."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise SpatialmixError(f"permutation file {path} does not exist")
        tensors = runs.load_weights(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != PERMUTATION_FORMAT or not {"source", "inverse"} <= set(tensors):
            raise SpatialmixError(
                f"{path} is not a spatialmix pixel permutation; pass a {PERMUTATION_FILE} "
                f"written by spatialmix"
            )
        try:
            size, seed = int(meta["image_size"]), int(meta["seed"])
            window = int(meta["window"]) if meta.get("window") else None
        except (KeyError, ValueError):
            raise SpatialmixError(
                f"{path} has damaged metadata; delete it so that it is rebuilt from its seed"
            ) from None
        if image_size is not None and size != image_size:
            raise SpatialmixError(
                f"{path} scrambles {size} x {size} images but these images are "
                f"{image_size} x {image_size}; use another --out (or delete that file)"
            )
        return cls(tensors["source"], size, seed, window, inverse=tensors["inverse"], origin=str(path))


def make_permutation(image_size: int, seed: int = 0, window: int | None = None) -> PixelPermutation:
    """The permutation of ``seed``: the same in every process and on every machine.

    With ``window`` the image is cut into ``window`` x ``window`` tiles and pixels move only inside
    their tile (``window=1`` is the identity, ``window=None`` or the image size scrambles the
    whole image).
    """
    check_positive(image_size=image_size)
    tile = check_window(image_size, window)
    tiles_per_side = image_size // tile
    n_tiles = tiles_per_side * tiles_per_side
    generator = torch.Generator().manual_seed(int(seed))
    # argsort of uniform keys is a uniform random permutation per tile, drawn for all tiles at once.
    local = torch.rand(n_tiles, tile * tile, generator=generator, dtype=torch.float64).argsort(
        dim=1, stable=True
    )
    tile_row, tile_col = torch.arange(n_tiles) // tiles_per_side, torch.arange(n_tiles) % tiles_per_side
    in_row, in_col = torch.arange(tile * tile) // tile, torch.arange(tile * tile) % tile
    position = (tile_row[:, None] * tile + in_row) * image_size + tile_col[:, None] * tile + in_col
    source = torch.empty(image_size * image_size, dtype=torch.int64)
    source[position.reshape(-1)] = position.gather(1, local).reshape(-1)
    return PixelPermutation(source, image_size, int(seed), window)


def check_or_save_permutation(path: Path, permutation: PixelPermutation) -> None:
    """Save ``permutation`` at ``path``, or check that the file already there is the same one."""
    path = Path(path)
    if not path.exists():
        permutation.save(path)
        return
    stored = PixelPermutation.load(path, permutation.image_size)
    if stored != permutation:
        raise SpatialmixError(
            f"{path} holds another permutation (seed {stored.seed}, window {stored.window}) "
            f"than this one (seed {permutation.seed}, window {permutation.window}); "
            f"use the saved settings or another --out"
        )

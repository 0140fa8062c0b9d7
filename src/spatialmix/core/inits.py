"""How random filters are drawn: the inits of the spatial (and channel) mixers, and their smoothing.

`initialize_layers` gives every layer its own generator seeded from (seed, layer name), so
a frozen layer's filters are the same whatever else the model holds and whatever ran before;
`InitSpec` is what a run records to rebuild them. ``covariance`` and ``covariance-from``
draw depthwise filters from the priors of `spatialmix.core.priors`. Smoothing (``smooth_sigma``)
blurs each k x k filter, or each token-mixing row over the patch grid, keeping its L2 norm (see
`spatialmix.core.mixing`'s docstring).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spatialmix.core.priors import ClosedFormPrior, EmpiricalPrior
from spatialmix.core.token_mixers import TokenProbe
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.names import INITS


@dataclass(frozen=True)
class InitSpec:
    """How random filters are drawn. Stored in the run config so a frozen model can be rebuilt.

    ``name``: ``default`` (PyTorch's conv default, uniform in +-1/sqrt(fan_in), i.e. +-1/k for a
    depthwise k x k), ``gaussian`` (normal with ``std``), ``uniform`` (in +-``std``),
    ``covariance`` (depthwise filters drawn from the closed-form covariance of Trockman et al.,
    see `spatialmix.core.priors`) or ``covariance-from`` (from the per-layer Gaussian fit of the
    depthwise filters of the trained run in ``source``).
    ``smooth_sigma`` > 0 then blurs each k x k filter with a Gaussian of that sigma (in pixels)
    and rescales it to its original L2 norm, so smoothing changes the frequency content of the
    filters and not their gain (token-mixing matrices: see the module docstring).
    """

    name: str = "default"
    std: float = 0.1
    smooth_sigma: float = 0.0
    source: str | None = None  # covariance-from: the run directory whose filters are the prior
    # covariance-from: the prior fitted to ``source`` (spatialmix.engine.init_source.empirical_prior)
    prior: EmpiricalPrior | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """One line for a run's record: ``default``, ``gaussian (std 0.1), smoothed (sigma 1)``, ..."""
        what = {
            "gaussian": f"gaussian (std {self.std:g})",
            "uniform": f"uniform (±{self.std:g})",
            "covariance-from": f"covariance-from {self.source}",
        }.get(self.name, self.name)
        return what + (f", smoothed (sigma {self.smooth_sigma:g})" if self.smooth_sigma > 0 else "")

    def __post_init__(self):
        if self.name not in INITS:
            raise unknown_name("init", self.name, INITS)
        if (self.name == "covariance-from") != (self.source is not None):
            raise SpatialmixError(
                "--spatial-init covariance-from needs --init-from RUN_DIR (a trained Full run), "
                "and --init-from goes only with covariance-from"
            )
        if not (self.std > 0 and math.isfinite(self.std)):
            raise SpatialmixError(f"init std must be a positive number, got {self.std}")
        if not (self.smooth_sigma >= 0 and math.isfinite(self.smooth_sigma)):
            raise SpatialmixError(f"smoothing sigma must be >= 0, got {self.smooth_sigma}")


def gaussian_kernel(sigma: float, size: int) -> torch.Tensor:
    """A normalized 2-D Gaussian of the given sigma, ``size`` x ``size`` (size odd)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = g[:, None] * g[None, :]
    return kernel / kernel.sum()


def smooth_filters(weight: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each k x k filter of ``weight`` (out, in, k, k) with a Gaussian, keeping its L2 norm.

    Zero padding, 'same' size: the result is the band-limited part of the filter that fits in
    its k x k support. Filters are processed in float64 so that equal seeds give equal bits.
    """
    if sigma == 0:
        return weight.clone()
    out_ch, in_ch, kh, kw = weight.shape
    size = 2 * math.ceil(3 * sigma) + 1
    blur = gaussian_kernel(sigma, size)[None, None]
    w = weight.to(torch.float64).reshape(out_ch * in_ch, 1, kh, kw)
    smoothed = F.conv2d(w, blur, padding=size // 2)
    smoothed = smoothed[..., (smoothed.shape[-2] - kh) // 2 :][..., :kh, (smoothed.shape[-1] - kw) // 2 :][
        ..., :kw
    ]
    norm_before = w.flatten(1).norm(dim=1).clamp_min(1e-12)
    norm_after = smoothed.flatten(1).norm(dim=1).clamp_min(1e-12)
    smoothed = smoothed * (norm_before / norm_after)[:, None, None, None]
    return smoothed.reshape(weight.shape).to(weight.dtype)


def _draw(shape, fan_in: int, spec: InitSpec, generator: torch.Generator) -> torch.Tensor:
    if spec.name == "default":
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    if spec.name == "uniform":
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * spec.std
    return torch.randn(shape, generator=generator, dtype=torch.float64) * spec.std


def smooth_token_mixer(weight: torch.Tensor, sigma: float, grid: tuple[int, int], axis: str) -> torch.Tensor:
    """Blur a token-mixing weight (out, in) over the patch grid: each row as a gh x gw map (``axis="in"``),
    or each column (``axis="out"``), keeping its L2 norm (see the module docstring)."""
    matrix = weight if axis == "in" else weight.T
    rows, n = matrix.shape
    maps = smooth_filters(matrix.reshape(rows, 1, *grid), sigma).reshape(rows, n)
    return maps if axis == "in" else maps.T


def _smoothing_axis(name: str, shape: tuple, probe: TokenProbe | None) -> str | None:
    """How a spatial layer's weight of ``shape`` is smoothed: None for k x k filters, else the side of a
    token-mixing weight that indexes the patch grid; an error for any other layer."""
    if len(shape) == 4:
        return None
    axis = probe.token_axis.get(name) if probe is not None else None
    if (
        axis not in ("in", "out")
        or probe.grid is None
        or shape[1 if axis == "in" else 0] != probe.grid[0] * probe.grid[1]
    ):
        raise SpatialmixError(
            f"cannot smooth spatial layer {name!r} (weight {tuple(shape)}): smoothing is "
            f"defined for depthwise k x k filters and for token-mixing layers over a known patch "
            f"grid; use --smooth-sigma 0 for this model"
        )
    return axis


def _smooth(name: str, new: torch.Tensor, sigma: float, probe: TokenProbe | None) -> torch.Tensor:
    axis = _smoothing_axis(name, tuple(new.shape), probe)
    return smooth_filters(new, sigma) if axis is None else smooth_token_mixer(new, sigma, probe.grid, axis)


@torch.no_grad()
def initialize_layers(
    layers: list[tuple[str, nn.Module]], spec: InitSpec, seed: int, probe: TokenProbe | None = None
) -> None:
    """Draw new weights (and biases) for ``layers`` from ``spec``, reproducibly from ``seed``.

    Each layer gets its own generator seeded from (seed, layer name), so the filters of a layer
    do not depend on the global RNG, on the order of construction or on the other layers (the
    covariance priors also depend on the layer's relative depth, its position in ``layers``).
    ``probe`` tells where token-mixing layers meet the patch grid (needed to smooth them).
    """
    prior = _covariance_prior(spec, layers)
    if spec.smooth_sigma > 0:  # every layer checked before any changes
        for name, module in layers:
            _smoothing_axis(name, tuple(module.weight.shape), probe)
    for index, (name, module) in enumerate(layers):
        generator = torch.Generator().manual_seed(_layer_seed(seed, name))
        weight = module.weight
        fan_in = weight[0].numel()
        if prior is not None:
            new = prior.draw(name, tuple(weight.shape), index, len(layers), generator)
        else:
            new = _draw(weight.shape, fan_in, spec, generator)
        if spec.smooth_sigma > 0:
            new = _smooth(name, new, spec.smooth_sigma, probe)
        weight.copy_(new.to(weight.dtype))
        bias = getattr(module, "bias", None)
        if bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            bias.copy_(
                ((torch.rand(bias.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound).to(
                    bias.dtype
                )
            )


def _covariance_prior(spec: InitSpec, layers):
    if spec.name == "covariance":
        return ClosedFormPrior()
    if spec.name == "covariance-from":
        if spec.prior is None:
            raise SpatialmixError(
                f"InitSpec('covariance-from', source={spec.source!r}) needs the fitted prior of its "
                f"run: pass prior=sm.empirical_prior({spec.source!r})"
            )
        return spec.prior
    return None


def _layer_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)

"""Structured random depthwise filters: multivariate Gaussian priors over a k x k filter.

After Trockman, Willmott & Kolter, "Understanding the Covariance Structure of Convolutional
Filters", ICLR 2023 (arXiv 2210.03651). They observe that the learned depthwise filters of
ConvMixer / ConvNeXt have a highly structured k^2 x k^2 covariance: viewed as a k x k grid of
k x k blocks, block (p) -- the covariance of the weight at position p with every other weight --
is a bump centred on p, and the bumps widen in deeper layers. Sampling filters from such a
covariance, either transferred from a trained network or built in closed form, beats i.i.d.
init, in some cases without training the filters at all.

Two priors, used by `spatialmix.core.inits.initialize_layers` for ``--spatial-init``:

* `ClosedFormPrior` (``covariance``): ``Sigma[p, q] = v * exp(-|p - q|^2 / (2 s_l^2))`` over
  the k x k positions p, q, i.e. every block is a Gaussian centred on its own position (the
  structure the paper constructs), with a width that grows linearly with relative depth,
  ``s_l = sigma0 + growth * l / (L - 1)`` pixels, as the paper's does. ``v`` is the variance of
  PyTorch's default depthwise init (uniform in +-1/k: 1 / (3 k^2)), so against ``default`` only
  the correlations change, not the gain. The matrix is a Gaussian (RBF) kernel matrix, hence
  positive semi-definite for every sigma. Where this differs from the paper: the authors' code
  repository (github.com/locuslab/convcov) holds no code and their exact depth schedule and
  constants could not be retrieved here, so ``sigma0`` / ``growth`` are spatialmix's documented
  defaults (`SIGMA0`, `GROWTH`), not the paper's fitted values.
* `EmpiricalPrior` (``covariance-from RUN_DIR``): the paper's transfer experiment. The
  depthwise filters of each spatial layer of a trained run are fitted with a Gaussian (their
  sample mean and covariance); a new model of any width draws its filters from the fit of the
  layer at the nearest relative depth (layer l of L reads source layer round(l (S-1) / (L-1))).
  The run folder is read by `spatialmix.engine.init_source.empirical_prior` (through
  `spatialmix.io.runs`: safetensors, no pickle); every shape is checked here.

Sampling is ``mean + L z`` with z standard normal from the layer's own seeded generator and
``L = V sqrt(max(lambda, 0))`` from the eigendecomposition of the covariance (float64), which
also handles the singular covariances of layers with fewer filters than k^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spatialmix.errors import SpatialmixError

SIGMA0 = 0.5  # pixels: width of the covariance bumps in the first spatial layer
GROWTH = 1.0  # pixels added by the last spatial layer (linear in relative depth)


def kernel_positions(k: int) -> torch.Tensor:
    """The (row, column) of each weight of a k x k filter, in the order of ``weight.reshape(-1)``."""
    rows, cols = torch.meshgrid(
        torch.arange(k, dtype=torch.float64), torch.arange(k, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def depth_sigma(index: int, n_layers: int, sigma0: float = SIGMA0, growth: float = GROWTH) -> float:
    """Width of the covariance bumps of spatial layer ``index`` (0-based) of ``n_layers``."""
    return sigma0 + growth * (index / (n_layers - 1) if n_layers > 1 else 0.0)


def closed_form_covariance(k: int, sigma: float, variance: float | None = None) -> torch.Tensor:
    """The k^2 x k^2 covariance ``v exp(-|p - q|^2 / (2 sigma^2))`` (v: the default init's variance)."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise SpatialmixError(f"covariance width sigma must be a positive number, got {sigma}")
    variance = 1.0 / (3 * k * k) if variance is None else variance
    p = kernel_positions(k)
    distance2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    return variance * torch.exp(-distance2 / (2 * sigma**2))


def sample_gaussian(
    mean: torch.Tensor, cov: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``n`` draws (n, d) of N(mean, cov), float64, from ``generator`` (cov may be singular)."""
    eigenvalues, vectors = torch.linalg.eigh(cov.to(torch.float64))
    root = vectors * eigenvalues.clamp_min(0).sqrt()[None, :]
    z = torch.randn((n, cov.shape[0]), generator=generator, dtype=torch.float64)
    return mean.to(torch.float64)[None, :] + z @ root.T


def _depthwise_shape(name: str, shape: tuple) -> int:
    """The kernel size k of a depthwise weight (C, m, k, k); a clear error for anything else."""
    if len(shape) != 4 or shape[-1] != shape[-2] or shape[-1] < 2:
        raise SpatialmixError(
            f"the covariance inits are defined for square depthwise k x k filters; spatial layer "
            f"{name!r} has a weight of shape {tuple(shape)}: use --spatial-init default, gaussian "
            f"or uniform for this model"
        )
    return int(shape[-1])


@dataclass(frozen=True)
class ClosedFormPrior:
    """``--spatial-init covariance``: filters from `closed_form_covariance` at the layer's depth."""

    sigma0: float = SIGMA0
    growth: float = GROWTH

    def covariance(self, k: int, index: int, n_layers: int) -> torch.Tensor:
        return closed_form_covariance(k, depth_sigma(index, n_layers, self.sigma0, self.growth))

    def draw(
        self, name: str, shape: tuple, index: int, n_layers: int, generator: torch.Generator
    ) -> torch.Tensor:
        k = _depthwise_shape(name, shape)
        n = math.prod(shape[:2])
        cov = self.covariance(k, index, n_layers)
        return sample_gaussian(torch.zeros(k * k, dtype=torch.float64), cov, n, generator).reshape(shape)


@dataclass(frozen=True)
class LayerFit:
    """The Gaussian fit of one trained layer's filters."""

    layer: str
    mean: torch.Tensor  # (k^2,)
    cov: torch.Tensor  # (k^2, k^2), sample covariance (n - 1 denominator)
    n_filters: int


def fit_filters(layer: str, weight: torch.Tensor) -> LayerFit:
    """Sample mean and covariance of a depthwise weight's k x k filters (float64)."""
    k = weight.shape[-1]
    x = weight.detach().to("cpu", torch.float64).reshape(-1, k * k)
    if x.shape[0] < 2:
        raise SpatialmixError(f"layer {layer!r} has {x.shape[0]} filter: a covariance needs at least 2")
    centred = x - x.mean(0)
    return LayerFit(layer, x.mean(0), centred.T @ centred / (x.shape[0] - 1), int(x.shape[0]))


def nearest_layer(index: int, n_layers: int, n_source: int) -> int:
    """Source layer at the nearest relative depth: layer ``index`` of ``n_layers`` -> one of ``n_source``."""
    if n_layers <= 1 or n_source <= 1:
        return 0 if n_source <= 1 else round((n_source - 1) / 2)
    return int(round(index * (n_source - 1) / (n_layers - 1)))


@dataclass(frozen=True)
class EmpiricalPrior:
    """``--spatial-init covariance-from RUN_DIR``: per-layer Gaussian fits of a trained run's filters."""

    source: str
    kernel_size: int
    fits: tuple[LayerFit, ...]

    @staticmethod
    def from_filters(source: str, filters: list[tuple[str, object]], weights_file: str) -> EmpiricalPrior:
        """Fit each spatial layer's filters (``(layer name, weight)`` in depth order) of the run
        ``source``; ``weights_file`` names the file they came from in errors (it is untrusted)."""
        fits, kernel = [], None
        for name, weight in filters:
            if (
                not isinstance(weight, torch.Tensor)
                or weight.dim() != 4
                or weight.shape[-1] != weight.shape[-2]
                or weight.shape[1] != 1
                or not weight.is_floating_point()
            ):
                shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
                raise SpatialmixError(
                    f"{weights_file}: {name}.weight should be depthwise filters "
                    f"(C, 1, k, k), found {shape}; the run is damaged or not the model its config "
                    f"builds"
                )
            if kernel is not None and weight.shape[-1] != kernel:
                raise SpatialmixError(
                    f"{source}: spatial layers of different kernel sizes ({kernel} and "
                    f"{weight.shape[-1]}); covariance-from needs one kernel size"
                )
            if not torch.isfinite(weight).all():
                raise SpatialmixError(f"{weights_file}: {name}.weight holds NaN or infinite values")
            kernel = int(weight.shape[-1])
            fits.append(fit_filters(name, weight))
        if not fits:
            raise SpatialmixError(
                f"{source} has no depthwise (spatial-mixing) filters to take a covariance from"
            )
        return EmpiricalPrior(str(source), kernel, tuple(fits))

    def fit_for(self, index: int, n_layers: int) -> LayerFit:
        return self.fits[nearest_layer(index, n_layers, len(self.fits))]

    def draw(
        self, name: str, shape: tuple, index: int, n_layers: int, generator: torch.Generator
    ) -> torch.Tensor:
        k = _depthwise_shape(name, shape)
        if k != self.kernel_size:
            raise SpatialmixError(
                f"--init-from {self.source} has {self.kernel_size} x {self.kernel_size} filters but "
                f"this model's are {k} x {k}; use --kernel-size {self.kernel_size} or another run"
            )
        fit = self.fit_for(index, n_layers)
        return sample_gaussian(fit.mean, fit.cov, math.prod(shape[:2]), generator).reshape(shape)

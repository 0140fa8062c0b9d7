"""What learned and random spatial mixers look like: filters, frequency responses, statistics.

Everything works on a model (any ``nn.Module`` whose spatial mixers `spatialmix.core.mixing`
recognizes) or on a saved run directory, whose ``init.safetensors`` adds where each layer started.

Frequency conventions. A k x k filter is zero-padded to ``size`` x ``size`` (default
`FFT_SIZE`) before its 2-D DFT, which samples the filter's continuous frequency response
finely without changing it; frequencies are in cycles per pixel, from -0.5 to 0.5 (Nyquist) on
each axis, so the radius of a frequency runs from 0 (DC) to 0.5 in the inscribed disc and to
about 0.71 in the corners. Magnitudes are not normalized per filter: by Parseval the power
summed over the grid is ``size**2`` times the filter's squared L2 norm, so every ratio below
(energy fractions, the low/high ratio, the relative radial profile) is independent of the
filters' scale and compares learned, random and smoothed filters on equal terms.

* `filter_spectrum`: per-filter magnitude |H| on the centred grid;
* `radial_profile`: the mean of a centred 2-D map over rings one frequency bin wide;
* `LayerSpectrum`: a layer's mean magnitude spectrum, its radial power profile relative
  to the layer's mean power (1 everywhere for a white, flat spectrum such as a delta or i.i.d.
  random filters, in expectation), and the ratio of energy below and above
  `LOW_HIGH_CUTOFF` cycles/pixel;
* `LayerStats`: filter norms and the distance from initialization (exactly zero for
  frozen layers, which doubles as a check that freezing worked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spatialmix.core.mixing import NORM, SPATIAL, classify_layers, layers_of_kind
from spatialmix.engine.train import load_trained_model
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.ui.display import ResultTable

FFT_SIZE = 32
LOW_HIGH_CUTOFF = 0.25  # cycles/pixel: half the Nyquist frequency


# --------------------------------------------------------------------------- spectra


def as_filter_bank(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight (out, in/groups, kh, kw) as a bank of 2-D filters (out * in/groups, kh, kw), float64."""
    if weight.dim() != 4:
        raise SpatialmixError(f"expected a conv weight (out, in, kh, kw), got shape {tuple(weight.shape)}")
    return weight.detach().to("cpu", torch.float64).reshape(-1, *weight.shape[-2:])


def frequencies(size: int) -> torch.Tensor:
    """The DFT frequencies in cycles/pixel, centred (the order of `filter_spectrum`'s axes)."""
    return torch.fft.fftshift(torch.fft.fftfreq(size, dtype=torch.float64))


def frequency_radius(size: int) -> torch.Tensor:
    """Distance of each centred grid point from DC, in cycles/pixel."""
    f = frequencies(size)
    return torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def filter_spectrum(filters: torch.Tensor, size: int = FFT_SIZE) -> torch.Tensor:
    """Magnitude of the 2-D DFT of each filter (N, kh, kw), zero-padded to size x size, centred."""
    if filters.dim() == 2:
        filters = filters[None]
    kh, kw = filters.shape[-2:]
    if size < max(kh, kw):
        raise SpatialmixError(
            f"FFT size {size} is smaller than the {kh} x {kw} filters; use at least {max(kh, kw)}"
        )
    # numpy's FFT: single-threaded, which for hundreds of tiny transforms beats torch's thread pool
    spectrum = np.abs(np.fft.fft2(filters.detach().cpu().to(torch.float64).numpy(), s=(size, size)))
    return torch.from_numpy(np.fft.fftshift(spectrum, axes=(-2, -1)))


def radial_profile(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a centred square 2-D map over rings of width 1/size: (radii in cycles/pixel, means).

    Rings run from DC to Nyquist (0.5); the corners beyond it are left out so that every ring is
    complete and the profile reads the same in every direction.
    """
    size = image.shape[-1]
    ring = torch.round(frequency_radius(size) * size).long()
    n_rings = size // 2 + 1
    sums = torch.zeros(n_rings, dtype=torch.float64).index_add_(
        0, ring[ring < n_rings], image.to(torch.float64)[ring < n_rings]
    )
    counts = torch.bincount(ring[ring < n_rings], minlength=n_rings).to(torch.float64)
    return (np.arange(n_rings) / size), (sums / counts).numpy()


def energy_split(power: torch.Tensor, cutoff: float = LOW_HIGH_CUTOFF) -> tuple[float, float]:
    """Energy (summed power) of a centred map below and at-or-above ``cutoff`` cycles/pixel."""
    low = frequency_radius(power.shape[-1]) < cutoff
    return float(power[..., low].sum()), float(power[..., ~low].sum())


@dataclass
class LayerSpectrum:
    """The frequency response of one layer's spatial filters, averaged over its filters."""

    layer: str
    n_filters: int
    kernel: tuple[int, int]
    magnitude: np.ndarray  # (size, size) mean |H| over the filters, centred
    radii: np.ndarray  # ring radii, cycles/pixel
    profile: np.ndarray  # mean power per ring / mean power over the grid (1 = white)
    low_high_ratio: float  # energy below LOW_HIGH_CUTOFF / energy above it
    high_fraction: float  # energy above LOW_HIGH_CUTOFF / all energy


def layer_spectrum(
    layer: str, filters: torch.Tensor, size: int = FFT_SIZE, cutoff: float = LOW_HIGH_CUTOFF
) -> LayerSpectrum:
    magnitude = filter_spectrum(filters, size)
    power = magnitude.pow(2).mean(0)
    radii, ring_power = radial_profile(power)
    mean_power = float(power.mean())
    low, high = energy_split(power, cutoff)
    return LayerSpectrum(
        layer=layer,
        n_filters=int(filters.shape[0]),
        kernel=tuple(filters.shape[-2:]),
        magnitude=magnitude.mean(0).numpy(),
        radii=radii,
        profile=ring_power / mean_power if mean_power > 0 else ring_power,
        low_high_ratio=low / high if high > 0 else math.inf,
        high_fraction=high / (low + high) if low + high > 0 else float("nan"),
    )


def spatial_filters(
    model: nn.Module, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Each spatial mixer's filters as a bank (N, kh, kw); from ``state`` (a state dict) when given.

    Only convolutional mixers have k x k filters: token-mixing matrices (MLP-Mixer) are left out
    here and described by their norms and distance from init (`layer_statistics`).
    """
    banks = {}
    for name, module in layers_of_kind(model, SPATIAL):
        if not isinstance(module, nn.Conv2d):
            continue
        weight = module.weight if state is None else state.get(f"{name}.weight")
        if weight is None:
            raise SpatialmixError(f"the saved weights have no {name}.weight: they belong to another model")
        banks[name] = as_filter_bank(weight)
    return banks


def spectra(filters: dict[str, torch.Tensor], size: int = FFT_SIZE) -> list[LayerSpectrum]:
    return [layer_spectrum(name, bank, size) for name, bank in filters.items()]


# --------------------------------------------------------------------------- per-layer statistics


@dataclass
class LayerStats:
    layer: str
    kind: str
    frozen: bool
    n_filters: int
    shape: str
    norm_mean: float  # mean L2 norm of one output filter (a row of the weight)
    norm_std: float
    distance: float | None = None  # ||params - params at init||, weight and bias together
    relative_distance: float | None = None


def _filter_layers(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """Every layer that holds filters (a weight of 2 or more dims): mixers, stem, head, others."""
    modules = dict(model.named_modules())
    return [
        (name, kind, modules[name])
        for name, kind in classify_layers(model).items()
        if kind != NORM
        and getattr(modules[name], "weight", None) is not None
        and modules[name].weight.dim() >= 2
    ]


@torch.no_grad()
def layer_statistics(model: nn.Module, init_state: dict[str, torch.Tensor] | None = None) -> list[LayerStats]:
    """Filter norms of every filter layer, and its distance from ``init_state`` when given."""
    rows = []
    for name, kind, module in _filter_layers(model):
        params = dict(module.named_parameters(recurse=False))
        norms = params["weight"].detach().to("cpu", torch.float64).flatten(1).norm(dim=1)
        row = LayerStats(
            layer=name,
            kind=kind,
            frozen=not any(p.requires_grad for p in params.values()),
            n_filters=len(norms),
            shape="x".join(str(s) for s in params["weight"].shape),
            norm_mean=float(norms.mean()),
            norm_std=float(norms.std()) if len(norms) > 1 else 0.0,
        )
        if init_state is not None:
            now, start = [], []
            for pname, p in params.items():
                key = f"{name}.{pname}"
                if key not in init_state:
                    raise SpatialmixError(f"the initial weights have no {key}: they belong to another model")
                now.append(p.detach().to("cpu", torch.float64).reshape(-1))
                start.append(init_state[key].to(torch.float64).reshape(-1))
            now, start = torch.cat(now), torch.cat(start)
            row.distance = float((now - start).norm())
            row.relative_distance = row.distance / max(float(start.norm()), 1e-12)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- models and runs


@dataclass
class FilterAnalysis:
    """Filters, spectra and statistics of one model (a saved run or a model in memory)."""

    label: str
    group: str  # the label without the seed (seeds of one setting)
    filters: dict[str, torch.Tensor]  # spatial layer -> (N, kh, kw), final weights
    spectra: list[LayerSpectrum]
    stats: list[LayerStats]
    init_spectra: list[LayerSpectrum] = field(default_factory=list)
    spatial_frozen: bool | None = None
    run_dir: str | None = None
    config: dict = field(default_factory=dict)


def run_label(train_config: dict, with_seed: bool = True) -> str:
    """A short name for a run: mode, smoothing sigma if any, seed ("Chans σ=1 seed 0")."""
    label = str(train_config.get("mode", "model")).capitalize()
    sigma = train_config.get("smooth_sigma") or 0
    if sigma:
        label += f" σ={sigma:g}"
    if with_seed and train_config.get("seed") is not None:
        label += f" seed {train_config['seed']}"
    return label


def analyze_model(
    model: nn.Module,
    label: str = "model",
    init_state: dict[str, torch.Tensor] | None = None,
    size: int = FFT_SIZE,
    group: str | None = None,
) -> FilterAnalysis:
    """Spectra and statistics of ``model``'s spatial mixers (and distance from ``init_state`` if given)."""
    filters = spatial_filters(model)
    spatial = [m for _, m in layers_of_kind(model, SPATIAL)]
    if not spatial:
        raise SpatialmixError(
            f"{label} has no spatial mixers (depthwise k x k convs or token-mixing layers) to "
            f"analyze; use a separable model such as convmixer or resnet18-sep"
        )
    frozen = all(not p.requires_grad for m in spatial for p in m.parameters(recurse=False))
    return FilterAnalysis(
        label=label,
        group=group or label,
        filters=filters,
        spectra=spectra(filters, size),
        stats=layer_statistics(model, init_state),
        init_spectra=spectra(spatial_filters(model, init_state), size) if init_state is not None else [],
        spatial_frozen=frozen,
    )


def analyze_run(run_dir: str | Path, size: int = FFT_SIZE, label: str | None = None) -> FilterAnalysis:
    """`analyze_model` on a saved run's latest weights, measured against its ``init.safetensors``."""

    run_dir = runs.check_run_dir(Path(run_dir))
    model, record = load_trained_model(run_dir, weights="latest")
    network = model.model  # the trained network: its parameter names are those of init.safetensors
    init_path = run_dir / runs.INIT
    init_state = runs.load_weights(init_path) if init_path.is_file() else None
    config = record.get("train", {})
    analysis = analyze_model(
        network, label or run_label(config), init_state, size, group=run_label(config, with_seed=False)
    )
    analysis.run_dir, analysis.config = str(run_dir), config
    return analysis


def analyze(source: nn.Module | str | Path, size: int = FFT_SIZE, label: str | None = None) -> FilterAnalysis:
    """`analyze_model` for a model, `analyze_run` for a run directory."""
    if isinstance(source, nn.Module):
        return analyze_model(source, label or type(source).__name__, size=size)
    return analyze_run(source, size, label)


# --------------------------------------------------------------------------- tables


def spectrum_table(
    analyses: list[FilterAnalysis], title: str = "Frequency content of the spatial filters"
) -> ResultTable:
    table = ResultTable(
        title,
        [
            ("run", "run", ""),
            ("layer", "layer", ""),
            ("filters", "filters", ""),
            ("state", "filters are", ""),
            ("ratio", f"low/high energy (f<{LOW_HIGH_CUTOFF:g})", ".3f"),
            ("high", "high-freq. share", ".3f"),
            ("ratio_init", "low/high at init", ".3f"),
            ("high_init", "high-freq. share at init", ".3f"),
        ],
    )
    for a in analyses:
        init = {s.layer: s for s in a.init_spectra}
        for s in a.spectra:
            start = init.get(s.layer)
            table.add(
                run=a.label,
                layer=s.layer,
                filters=f"{s.n_filters} x {s.kernel[0]}x{s.kernel[1]}",
                state=filter_state(a),
                ratio=s.low_high_ratio,
                high=s.high_fraction,
                ratio_init=start.low_high_ratio if start else None,
                high_init=start.high_fraction if start else None,
            )
    return table


def filter_state(analysis: FilterAnalysis) -> str:
    """ "learned", "frozen random" or "frozen smoothed random"."""
    if not analysis.spatial_frozen:
        return "learned"
    return "frozen smoothed random" if (analysis.config.get("smooth_sigma") or 0) > 0 else "frozen random"


def statistics_table(
    analyses: list[FilterAnalysis], title: str = "Filter norms and distance from initialization"
) -> ResultTable:
    table = ResultTable(
        title,
        [
            ("run", "run", ""),
            ("layer", "layer", ""),
            ("kind", "kind", ""),
            ("state", "state", ""),
            ("shape", "shape", ""),
            ("norm", "filter norm (mean ± std)", ".4f"),
            ("distance", "distance from init", ".4g"),
            ("relative", "relative distance", ".4f"),
        ],
    )
    for a in analyses:
        for s in a.stats:
            table.add(
                run=a.label,
                layer=s.layer,
                kind=s.kind,
                state="frozen" if s.frozen else "trained",
                shape=s.shape,
                norm=(s.norm_mean, s.norm_std),
                distance=s.distance,
                relative=s.relative_distance,
            )
    return table


def frozen_layers_moved(analyses: list[FilterAnalysis]) -> list[str]:
    """``run: layer`` of every frozen layer whose distance from init is not exactly zero (should be none)."""
    return [
        f"{a.label}: {s.layer}"
        for a in analyses
        for s in a.stats
        if s.frozen and s.distance is not None and s.distance != 0.0
    ]


# --------------------------------------------------------------------------- figures (Agg, no pyplot state)

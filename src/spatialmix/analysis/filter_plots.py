"""Figures of spatial filters: mosaics of the filters of each layer, and their radial spectra."""

from __future__ import annotations

import math

import numpy as np
import torch

from spatialmix.analysis.filters import LOW_HIGH_CUTOFF, FilterAnalysis, filter_state


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def filter_mosaic(bank: torch.Tensor, max_filters: int = 16) -> np.ndarray:
    """The first filters of a bank tiled in a square grid, each scaled to [-1, 1] by its own max |w|;
    NaN between tiles (drawn as background)."""
    bank = bank[:max_filters].numpy()
    n, kh, kw = bank.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    mosaic = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan)
    for i, f in enumerate(bank):
        r, c = divmod(i, cols)
        scale = np.abs(f).max()
        mosaic[r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw] = (
            f / scale if scale > 0 else f
        )
    return mosaic


def _wrap(label: str, width: int = 22) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def _short(layer: str, index: int) -> str:
    return f"spatial {index + 1}\n{layer}"


def plot_filter_grids(analyses: list[FilterAnalysis], max_filters: int = 16, max_layers: int = 8):
    """One row per analysis, one column per spatial layer: the layer's first filters."""
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.5")  # grey gaps, not white like a zero weight
    n_layers = min(max_layers, max(len(a.filters) for a in analyses))
    fig = _figure(1.5 * n_layers + 1.2, 1.5 * len(analyses) + 0.6)
    axes = fig.subplots(len(analyses), n_layers, squeeze=False)
    image = None
    for r, a in enumerate(analyses):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([]), ax.set_yticks([])
            if c >= len(a.filters):
                ax.set_axis_off()
                continue
            name = list(a.filters)[c]
            image = ax.imshow(
                filter_mosaic(a.filters[name], max_filters),
                cmap=cmap,
                vmin=-1,
                vmax=1,
                interpolation="nearest",
            )
            if r == 0:
                ax.set_title(_short(name, c), fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{_wrap(a.label)}\n({filter_state(a)})", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="weight / max |weight| of the filter")
    return fig


def plot_radial_profiles(analyses: list[FilterAnalysis], max_layers: int = 8):
    """Relative radial power per spatial layer, one line per analysis (1 = white spectrum)."""
    n_layers = min(max_layers, max(len(a.spectra) for a in analyses))
    cols = min(4, n_layers)
    rows = math.ceil(n_layers / cols)
    fig = _figure(3.2 * cols, 2.6 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for i, ax in enumerate(axes):
        if i >= n_layers:
            ax.set_axis_off()
            continue
        for j, a in enumerate(analyses):
            if i < len(a.spectra):
                s = a.spectra[i]
                ax.plot(s.radii, s.profile, marker=".", color=f"C{j % 10}", label=a.label)
        ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
        ax.axvline(LOW_HIGH_CUTOFF, color="0.6", lw=0.8, ls="--")
        ax.set_title(
            _short(analyses[0].spectra[i].layer if i < len(analyses[0].spectra) else "", i), fontsize=8
        )
        ax.set_xlabel("frequency (cycles/pixel)", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("power / mean power", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    return fig


def plot_mean_spectra(analyses: list[FilterAnalysis], max_layers: int = 8):
    """The mean 2-D magnitude spectrum of each layer (DC in the centre), one row per analysis."""
    n_layers = min(max_layers, max(len(a.spectra) for a in analyses))
    fig = _figure(1.6 * n_layers + 1.2, 1.6 * len(analyses) + 0.6)
    axes = fig.subplots(len(analyses), n_layers, squeeze=False)
    for r, a in enumerate(analyses):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([]), ax.set_yticks([])
            if c >= len(a.spectra):
                ax.set_axis_off()
                continue
            s = a.spectra[c]
            # each panel scaled to its own maximum: the shape matters here, the gain is in the tables
            ax.imshow(
                s.magnitude / max(s.magnitude.max(), 1e-12),
                cmap="magma",
                vmin=0,
                vmax=1,
                extent=(-0.5, 0.5, -0.5, 0.5),
                interpolation="nearest",
            )
            if r == 0:
                ax.set_title(_short(s.layer, c), fontsize=7)
            if c == 0:
                ax.set_ylabel(_wrap(a.label), fontsize=8)
    return fig

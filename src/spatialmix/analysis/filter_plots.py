"""Figures of spatial filters: mosaics of the filters of each layer, and their radial spectra."""

from __future__ import annotations

import math

import numpy as np
import torch

from spatialmix.analysis.filters import LOW_HIGH_CUTOFF, FilterAnalysis, filter_state

# Figures are drawn at most this wide (inches, at 100 dpi): shown at a page's width of about 1,000
# pixels their 8-point text stays about 11 pixels tall; more layers make smaller tiles, not wider figures.
MAX_WIDTH = 10.0
LABEL_WIDTH = 1.6  # inches left of a grid of tiles for the rows' names


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _tile(n_columns: int, largest: float) -> float:
    """The side of one tile of a grid of ``n_columns`` (inches), its row label's room left aside."""
    return min(largest, (MAX_WIDTH - LABEL_WIDTH) / n_columns)


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


def _wrap(label: str, width: int = 16) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def _row_label(ax, text: str) -> None:
    """A row's name beside its first tile, written across: on end it ran into the next row's."""
    ax.set_ylabel(text, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)


def _short(layer: str, index: int) -> str:
    return f"spatial {index + 1}\n{layer}"


def plot_filter_grids(analyses: list[FilterAnalysis], max_filters: int = 16, max_layers: int = 8):
    """One row per analysis, one column per spatial layer: the layer's first filters."""
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.5")  # grey gaps, not white like a zero weight
    n_layers = min(max_layers, max(len(a.filters) for a in analyses))
    tile = _tile(n_layers, 1.5)
    fig = _figure(tile * n_layers + LABEL_WIDTH, tile * len(analyses) + 1.4)
    axes = fig.subplots(len(analyses), n_layers, squeeze=False)
    image, titled = None, set()
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
            if c not in titled:  # the first row with this layer names it (runs differ in depth)
                titled.add(c)
                ax.set_title(_short(name, c), fontsize=8)
            if c == 0:
                _row_label(ax, f"{_wrap(a.label)}\n({filter_state(a)})")
    if image is not None:
        # below the grid, where its label has the figure's whole width (beside one row it was cut off)
        bar = fig.colorbar(image, ax=axes, location="bottom", shrink=0.6, aspect=40, pad=0.02)
        bar.set_label("weight / max |weight| of the filter", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return fig


def plot_radial_profiles(analyses: list[FilterAnalysis], max_layers: int = 8):
    """Relative radial power per spatial layer, one line per analysis (1 = white spectrum)."""
    n_layers = min(max_layers, max(len(a.spectra) for a in analyses))
    cols = min(4, n_layers)
    rows = math.ceil(n_layers / cols)
    fig = _figure(MAX_WIDTH * cols / 4, 2.6 * rows + 0.4)
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
        ax.tick_params(labelsize=8)
    handles, labels = axes[0].get_legend_handles_labels()  # under the panels, not over a panel's lines
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8)
    return fig


def plot_mean_spectra(analyses: list[FilterAnalysis], max_layers: int = 8):
    """The mean 2-D magnitude spectrum of each layer (DC in the centre), one row per analysis."""
    n_layers = min(max_layers, max(len(a.spectra) for a in analyses))
    tile = _tile(n_layers, 1.6)
    fig = _figure(tile * n_layers + LABEL_WIDTH, tile * len(analyses) + 0.6)
    axes = fig.subplots(len(analyses), n_layers, squeeze=False)
    titled = set()
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
            if c not in titled:
                titled.add(c)
                ax.set_title(_short(s.layer, c), fontsize=8)
            if c == 0:
                _row_label(ax, _wrap(a.label))
    return fig

"""The report's filter analysis: the spatial filters of every run's latest checkpoint, their spectra,
norms and distance from initialization (computed by `spatialmix.analysis`), and the check that
frozen layers never moved."""

from __future__ import annotations

from spatialmix.analysis.filter_plots import plot_filter_grids, plot_mean_spectra, plot_radial_profiles
from spatialmix.analysis.filters import (
    FFT_SIZE,
    LOW_HIGH_CUTOFF,
    FilterAnalysis,
    analyze_run,
    filter_state,
    frequency_radius,
    frozen_layers_moved,
    spectrum_table,
    statistics_table,
)
from spatialmix.errors import SpatialmixError
from spatialmix.report.inputs import Inputs
from spatialmix.report.page import LONG_TABLE, Section, details_table, figure_image, fold
from spatialmix.report.sections import ABSENT, SECTIONS
from spatialmix.ui.display import ResultTable, mean_std

MAX_FIGURE_ROWS = 12


def filters_section(inputs: Inputs, fft_size: int = FFT_SIZE) -> Section:
    section = Section("filters", SECTIONS["filters"])
    analyses: list[FilterAnalysis] = []
    skipped: list[str] = []
    for r in inputs.runs:
        try:
            analysis = analyze_run(r.path, fft_size, label=r.label)
        except SpatialmixError as err:
            if "FFT size" in str(err):
                raise
            reason = str(err).split("; ")[0]  # the first clause says what is wrong; the advice is for the CLI
            skipped.append(reason if r.label in reason else f"{r.label}: {reason}")
            continue
        analysis.group = f"{r.source}|{r.group}"
        analyses.append(analysis)
    if not analyses:
        section.absent = ABSENT["filters"] + (": " + "; ".join(skipped) if skipped else "")
        return section
    shown = _representatives(analyses)
    section.items.append(
        f"Spatial filters (depthwise k x k) of each run's latest checkpoint. Frequencies are in cycles/pixel "
        f"(0.5 = Nyquist), from each filter's DFT zero-padded to {fft_size} x {fft_size}. Energy ratios do "
        "not "
        f"depend on the filters' scale: a white spectrum (a delta, or i.i.d. random filters in expectation) "
        f"has a flat relative profile at 1 and a low/high energy ratio of about "
        f"{_white_ratio(fft_size):.3f} (the share of the frequency grid below {LOW_HIGH_CUTOFF:g} "
        "cycles/pixel); "
        f"more energy at low frequency means smoother filters. Full and Chans runs of the same seed and init "
        f"start from the same random filters, so a Chans row shows what the Full row started from."
    )
    if len(shown) < len(analyses):
        section.items.append(
            f"Figures show the first seed of each setting ({len(shown)} of {len(analyses)} runs); "
            f"the tables show every run."
        )
    shown = [a for a in shown if a.filters]  # token-mixing models have no k x k filters to draw
    if not shown:
        section.items.append(
            "These runs' spatial mixers are token-mixing matrices (no k x k filters): they are "
            "described by their norms and distance from initialization below."
        )
    else:
        _filter_figures(section, shown)
    with_spectra = [a for a in analyses if a.spectra]
    if with_spectra:
        table = spectrum_table(with_spectra)
        if len(table.rows) > LONG_TABLE:  # one row per run and layer: the settings' means, then all rows
            section.items += [spectrum_summary(with_spectra), details_table(table)]
        else:
            section.items.append(table)
    section.items.append(fold(statistics_table(analyses)))
    moved = frozen_layers_moved(analyses)
    frozen_count = sum(s.frozen for a in analyses for s in a.stats)
    if moved:
        section.items.append(
            "WARNING: frozen layers moved away from their initialization: " + "; ".join(moved)
        )
    elif frozen_count:
        section.items.append(
            f"Check: all {frozen_count} frozen layers are bit-for-bit at their initialization "
            f"(distance exactly 0)."
        )
    if skipped:
        section.items.append("Not analyzed: " + "; ".join(skipped) + ".")
    return section


def _filter_figures(section: Section, shown: list[FilterAnalysis]) -> None:
    section.items.append(
        figure_image(
            plot_filter_grids(shown),
            "The first 16 filters of each spatial layer; each filter scaled by its own "
            "largest |weight| (red positive, blue negative).",
        )
    )
    section.items.append(
        figure_image(
            plot_radial_profiles(shown),
            "Radial profile of the mean power spectrum of each spatial layer, relative to "
            "the layer's mean power (dotted: white spectrum; dashed: the low/high cutoff).",
        )
    )
    section.items.append(
        figure_image(
            plot_mean_spectra(shown),
            "Mean 2-D magnitude spectrum of each spatial layer (DC in the centre, each panel "
            "scaled to its maximum).",
        )
    )


def spectrum_summary(analyses: list[FilterAnalysis]) -> ResultTable:
    """The spectrum table in one row per setting and layer: mean ± standard deviation over its runs."""
    cells: dict[tuple[str, str], list] = {}
    for a in analyses:
        init = {s.layer: s for s in a.init_spectra}
        for s in a.spectra:
            cells.setdefault((a.group, s.layer), []).append((a, s, init.get(s.layer)))
    table = ResultTable(
        "Frequency content of the spatial filters: mean ± sd over the runs of each setting "
        "(every run in the table below)",
        [
            ("setting", "setting", ""),
            ("layer", "layer", ""),
            ("state", "filters are", ""),
            ("runs", "runs", ""),
            ("ratio", f"low/high energy (f<{LOW_HIGH_CUTOFF:g})", ".3f"),
            ("high", "high-freq. share", ".3f"),
            ("ratio_init", "low/high at init", ".3f"),
            ("high_init", "high-freq. share at init", ".3f"),
        ],
    )
    for (group, layer), members in cells.items():
        starts = [start for _, _, start in members if start is not None]
        table.add(
            setting=group.partition("|")[2] or group,
            layer=layer,
            state=filter_state(members[0][0]),
            runs=len(members),
            ratio=mean_std([s.low_high_ratio for _, s, _ in members]),
            high=mean_std([s.high_fraction for _, s, _ in members]),
            ratio_init=mean_std([s.low_high_ratio for s in starts]) if starts else None,
            high_init=mean_std([s.high_fraction for s in starts]) if starts else None,
        )
    return table


def _white_ratio(size: int) -> float:

    low = int((frequency_radius(size) < LOW_HIGH_CUTOFF).sum())
    return low / (size * size - low)


def _representatives(analyses: list[FilterAnalysis]) -> list[FilterAnalysis]:
    """The first run of each setting (seeds of one setting look alike), at most MAX_FIGURE_ROWS."""
    chosen, groups = [], set()
    for a in analyses:
        if a.group not in groups:
            groups.add(a.group)
            chosen.append(a)
    return chosen[:MAX_FIGURE_ROWS]

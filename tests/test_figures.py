"""save_png: the one place a figure becomes a PNG file."""

import io

import numpy as np
import pytest

from spatialmix.io.figures import save_png
from spatialmix.robustness.settings import AttackSettings
from spatialmix.studies.robustness import sigma_figure


def test_save_png_returns_the_bytes_it_writes_and_closes_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig = plt.figure(figsize=(2, 1), dpi=50)
    fig.add_subplot().plot([0, 1], [1, 0])
    png = save_png(fig, tmp_path / "plot.png", dpi=100)
    assert (tmp_path / "plot.png").read_bytes() == png and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size == (200, 100)  # the dpi asked for, not the figure's 50
    assert plt.get_fignums() == []  # pyplot no longer holds it
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary file left behind


def test_save_png_of_a_bare_figure_at_its_own_dpi_writes_nothing_without_a_path(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    fig = Figure(figsize=(2, 1), dpi=30)
    fig.add_subplot().plot([0, 1], [0, 1])
    png = save_png(fig)
    assert Image.open(io.BytesIO(png)).size == (60, 30) and list(tmp_path.iterdir()) == []


def test_a_figure_that_fails_to_draw_is_still_closed_and_nothing_is_written(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()

    def broken(*args, **kwargs):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="cannot draw"):
        save_png(fig, tmp_path / "plot.png")
    assert plt.get_fignums() == [] and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- figures readable at page width


def _drawn(monkeypatch, module, draw):
    """The figure ``draw`` hands to ``module``'s save_png, drawn, with its renderer."""
    caught = []
    monkeypatch.setattr(module, "save_png", lambda fig, *args, **kwargs: caught.append(fig) or b"")
    draw()
    (fig,) = caught
    return fig


def _attack_result(label: str, mode: str, seed: int) -> dict:
    budgets = [
        {"eps": e, "robust_acc": a, "default_acc": a, "warnings": []}
        for e, a in ((0.0, 0.9), (2 / 255, 0.7), (8 / 255, 0.1))
    ]
    return {
        "label": label,
        "mode": mode,
        "seed": seed,
        "settings": {"norm": "Linf"},
        "budgets": budgets,
        "warnings": [],
    }


def test_the_attack_plot_wraps_its_panels_at_four_a_row(monkeypatch, tmp_path):
    from spatialmix.robustness import results

    runs = [_attack_result(f"{m} seed {s}", m, s) for s in range(5) for m in ("full", "chans")]  # 11 panels
    fig = _drawn(monkeypatch, results, lambda: results.plot_robustness(runs, tmp_path / "r.png"))
    panels = [ax for ax in fig.axes if ax.axison]
    columns = {round(ax.get_position().x0, 3) for ax in panels}
    rows = {round(ax.get_position().y0, 3) for ax in panels}
    assert len(panels) == 11 and len(columns) == 4 and len(rows) == 3
    assert fig.get_figwidth() <= 11.5  # about 1,200 pixels at 110 dpi, shown at ~1,000: text stays legible
    # ten runs of two modes: one legend entry per mode in the overview, not ten
    assert [t.get_text() for t in panels[0].get_legend().get_texts()] == ["Full (5 runs)", "Chans (5 runs)"]


def test_the_filter_grids_colour_bar_label_lies_inside_the_figure():
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from spatialmix.analysis.filter_plots import plot_filter_grids
    from spatialmix.analysis.filters import FilterAnalysis

    one_row = FilterAnalysis("Full seed 0", "Full", {"blocks.0": torch.randn(16, 5, 5)}, [], [])
    fig = plot_filter_grids([one_row])
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    labels = [
        t for ax in fig.axes for t in (ax.xaxis.label, ax.yaxis.label) if "max |weight|" in t.get_text()
    ]
    assert len(labels) == 1
    box, page = labels[0].get_window_extent(renderer), fig.bbox
    assert box.x0 >= page.x0 and box.x1 <= page.x1 and box.y0 >= page.y0 and box.y1 <= page.y1


def test_the_robust_interval_figure_shows_each_modes_t_interval_over_seeds():
    from scipy import stats

    from spatialmix.io.study_results import SavedStudy
    from spatialmix.report.robustness import interval_figure, robust_by_seed

    accuracy = {
        ("full", 0): 0.50,
        ("full", 1): 0.54,
        ("full", 2): 0.49,
        ("chans", 0): 0.55,
        ("chans", 1): 0.56,
    }
    runs = [
        {"mode": m, "seed": s, "robust_acc": {"0": 0.9, "8/255": a}} for (m, s), a in accuracy.items()
    ] + [
        {"mode": "full", "seed": "x", "robust_acc": {"8/255": 0.0}},
        {"mode": "full", "seed": 3, "robust_acc": {"8/255": "?"}},
    ]
    numbers = robust_by_seed(SavedStudy("robustness", "robustness", [], [], [], {"runs": runs}))
    assert numbers == {
        "full": {0.0: {0: 0.9, 1: 0.9, 2: 0.9}, 8 / 255: {0: 0.50, 1: 0.54, 2: 0.49}},
        "chans": {0.0: {0: 0.9, 1: 0.9}, 8 / 255: {0: 0.55, 1: 0.56}},
    }  # malformed runs (a seed that is no number, an accuracy that is no number) are left out
    fig = interval_figure(numbers)
    modes, paired = fig.axes[0], fig.axes[1]
    full = [0.50, 0.54, 0.49]
    half = stats.t.ppf(0.975, 2) * stats.tstd(full) / 3**0.5
    bars = modes.collections[0]  # Full's: drawn first
    top = max(seg[1][1] for seg in bars.get_segments() if seg[0][0] > 0.01)
    assert top == pytest.approx(100 * (sum(full) / 3 + half))
    # Chans - Full paired by seed: seeds 0 and 1 only, differences 0.05 and 0.02
    difference = stats.t.ppf(0.975, 1) * stats.tstd([0.05, 0.02]) / 2**0.5
    (bar,) = [seg for c in paired.collections for seg in c.get_segments() if seg[0][0] > 0.01]
    assert (bar[0][1], bar[1][1]) == pytest.approx((100 * (0.035 - difference), 100 * (0.035 + difference)))
    assert paired.get_title() == "Chans - Full, paired (2 seeds)"


def test_the_smoothing_plot_keeps_its_legend_off_the_curves():
    """Curves that fill the axes at every height (clean high, 2/255 to 8/255 lower and rising): the
    legend sits outside the axes, inside the figure, and over none of the points."""
    settings = AttackSettings(eps=(0, 2 / 255, 4 / 255, 8 / 255))
    robust = {0: [0.9, 0.9, 0.9, 0.9], 2 / 255: [0.3, 0.5, 0.7, 0.8], 4 / 255: [0.1, 0.3, 0.5, 0.6]}
    robust[8 / 255] = [0.0, 0.1, 0.3, 0.4]
    sigmas = [0.0, 0.5, 1.0, 2.0]
    groups = {
        sigma: [{"budgets": [{"eps": e, "robust_acc": robust[e][i]} for e in settings.eps]}] * 2
        for i, sigma in enumerate(sigmas)
    }
    fig = sigma_figure(groups, settings)
    fig.canvas.draw()
    (ax,) = fig.axes
    legends = fig.legends + ([ax.get_legend()] if ax.get_legend() else [])
    assert len(legends) == 1
    box = legends[0].get_window_extent()
    assert not box.overlaps(ax.get_window_extent())
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    points = np.concatenate([line.get_xydata() for line in ax.get_lines()])
    assert len(points) == 16
    for x, y in ax.transData.transform(points):
        assert not (box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1)
    assert [t.get_text() for t in legends[0].get_texts()] == ["clean", "eps 2/255", "eps 4/255", "eps 8/255"]

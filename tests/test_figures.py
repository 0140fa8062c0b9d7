"""save_png: the one place a figure becomes a PNG file."""

import io

import pytest

from spatialmix.io.figures import save_png


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

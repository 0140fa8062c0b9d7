"""Filter analysis: spectra against hand computations, smoothing, norms, distance from initialization."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from spatialmix.analysis import filter_plots
from spatialmix.analysis import filters as analysis
from spatialmix.core.inits import InitSpec, gaussian_kernel, smooth_filters
from spatialmix.core.mixing import CHANNEL, SPATIAL, apply_mixing
from spatialmix.data.datasets import ImageData
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.train import fit
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.models.convmixer import ConvMixer


def grid_index(size: int, f: float) -> int:
    """Index of frequency ``f`` (cycles/pixel) on the centred axis of filter_spectrum."""
    freqs = analysis.frequencies(size).numpy()
    return int(np.argmin(np.abs(freqs - f)))


# --------------------------------------------------------------------------- spectra of known filters


@pytest.mark.parametrize("size", [5, 16, 32])
def test_delta_has_flat_unit_magnitude(size):
    delta = torch.zeros(1, 5, 5, dtype=torch.float64)
    delta[0, 2, 2] = 1.0
    spectrum = analysis.filter_spectrum(delta, size)
    assert spectrum.shape == (1, size, size)
    torch.testing.assert_close(spectrum, torch.ones_like(spectrum), rtol=0, atol=1e-12)


def test_delta_profile_is_white_and_ratio_is_the_grid_share():
    delta = torch.zeros(1, 3, 3, dtype=torch.float64)
    delta[0, 0, 0] = 1.0  # off-centre: a shift changes the phase only
    s = analysis.layer_spectrum("delta", delta, size=16)
    np.testing.assert_allclose(s.profile, 1.0, atol=1e-12)
    # count the grid points below the cutoff by hand
    f = np.fft.fftfreq(16)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    low = int((radius < analysis.LOW_HIGH_CUTOFF).sum())
    assert s.low_high_ratio == pytest.approx(low / (256 - low), rel=1e-12)
    assert s.high_fraction == pytest.approx((256 - low) / 256, rel=1e-12)


def test_box_filter_matches_the_dirichlet_kernel():
    k, size = 3, 12
    box = torch.ones(1, k, k, dtype=torch.float64)
    spectrum = analysis.filter_spectrum(box, size)[0].numpy()
    m = np.round(analysis.frequencies(size).numpy() * size)
    with np.errstate(invalid="ignore", divide="ignore"):
        dirichlet = np.abs(np.sin(np.pi * m * k / size) / np.sin(np.pi * m / size))
    dirichlet[m == 0] = k
    np.testing.assert_allclose(spectrum, np.outer(dirichlet, dirichlet), atol=1e-12)
    # values worked out on paper: DC = 9; f = 1/3 is a zero of the kernel;
    # at Nyquist |sin(3pi/2)/sin(pi/2)| = 1
    dc, third, nyq = grid_index(size, 0), grid_index(size, 1 / 3), grid_index(size, -0.5)
    assert spectrum[dc, dc] == pytest.approx(9.0)
    assert spectrum[third, dc] == pytest.approx(0.0, abs=1e-12)
    assert spectrum[nyq, dc] == pytest.approx(3.0)
    assert spectrum[nyq, nyq] == pytest.approx(1.0)


def test_gaussian_matches_its_cosine_sum_and_the_continuous_transform():
    sigma, k, size = 1.0, 7, 32
    g2 = gaussian_kernel(sigma, k)
    spectrum = analysis.filter_spectrum(g2[None], size)[0].numpy()
    g1 = g2.sum(1).numpy()  # the separable 1-D factor (the kernel is normalized)
    f = analysis.frequencies(size).numpy()
    j = np.arange(1, k // 2 + 1)
    # a symmetric filter's DFT is real up to a phase: g[c] + 2 sum_j g[c+j] cos(2 pi f j)
    one_d = np.abs(g1[k // 2] + 2 * (g1[k // 2 + j][None] * np.cos(2 * np.pi * f[:, None] * j[None])).sum(1))
    np.testing.assert_allclose(spectrum, np.outer(one_d, one_d), atol=1e-12)
    # sampled at 1 px and truncated at 3 sigma, it stays close to exp(-2 pi^2 sigma^2 f^2)
    continuous = np.exp(-2 * np.pi**2 * sigma**2 * f**2)
    np.testing.assert_allclose(spectrum, np.outer(continuous, continuous), atol=0.02)
    assert spectrum[grid_index(size, 0), grid_index(size, 0)] == pytest.approx(1.0)


def test_radial_profile_averages_rings():
    size = 8
    image = analysis.frequency_radius(size)
    radii, profile = analysis.radial_profile(image)
    assert radii.tolist() == [i / size for i in range(size // 2 + 1)]
    assert profile[0] == 0.0
    # the four axis points at radius 1/8 and the ring's diagonal points sqrt(2)/8 (rounded to ring 1)
    assert profile[1] == pytest.approx((4 * 1 / 8 + 4 * math.sqrt(2) / 8) / 8)


def test_fft_size_smaller_than_the_filter_is_refused():
    with pytest.raises(SpatialmixError, match="FFT size 3 is smaller"):
        analysis.filter_spectrum(torch.ones(2, 5, 5), 3)


# --------------------------------------------------------------------------- smoothing


def test_smoothed_bank_has_less_high_frequency_energy_than_the_same_seed_unsmoothed():
    gen = torch.Generator().manual_seed(0)
    bank = (torch.rand(64, 1, 5, 5, generator=gen, dtype=torch.float64) * 2 - 1) / 5
    raw = analysis.layer_spectrum("raw", analysis.as_filter_bank(bank))
    smooth = analysis.layer_spectrum("smooth", analysis.as_filter_bank(smooth_filters(bank, 1.0)))
    # relative profiles cross near 0.3 cycles/pixel for sigma 1; above it the smoothed bank is far weaker
    high = raw.radii >= 0.35
    assert np.all(smooth.profile[high] < 0.5 * raw.profile[high])
    assert smooth.high_fraction < raw.high_fraction
    assert smooth.low_high_ratio > 2 * raw.low_high_ratio
    # i.i.d. filters are white: the ratio is near the grid share of the low band
    white = analysis.layer_spectrum("delta", torch.eye(1, 25, dtype=torch.float64).reshape(1, 5, 5))
    assert raw.low_high_ratio == pytest.approx(white.low_high_ratio, rel=0.25)


def test_init_spec_smoothing_lowers_high_frequencies_in_every_layer():
    def model(sigma):
        torch.manual_seed(0)
        m = ConvMixer(width=16, depth=3, kernel_size=5, patch_size=2, in_chans=1, num_classes=10)
        return apply_mixing(m, "chans", spatial_init=InitSpec(smooth_sigma=sigma), seed=3)

    raw, smooth = analysis.analyze(model(0.0)), analysis.analyze(model(1.5))
    assert len(raw.spectra) == 3
    for r, s in zip(raw.spectra, smooth.spectra):
        assert s.layer == r.layer
        assert s.high_fraction < r.high_fraction
    assert raw.spatial_frozen and smooth.spatial_frozen


# --------------------------------------------------------------------------- statistics


def test_filter_norms_and_distance_on_known_weights():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, padding=1, bias=False), nn.Conv2d(4, 2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)  # each filter: norm sqrt(9) = 3
        model[1].weight.copy_(torch.tensor([[3.0, 4, 0, 0], [0, 0, 0, 1]]).reshape(2, 4, 1, 1))  # norms 5, 1
    init = {k: v.clone() for k, v in model.state_dict().items()}
    init["1.weight"][0, 0] += 2.0
    stats = {s.layer: s for s in analysis.layer_statistics(model, init)}
    assert stats["0"].kind == SPATIAL and stats["1"].kind == CHANNEL
    assert stats["0"].norm_mean == pytest.approx(3.0) and stats["0"].norm_std == pytest.approx(0.0)
    assert stats["1"].norm_mean == pytest.approx(3.0) and stats["1"].norm_std == pytest.approx(math.sqrt(8))
    assert stats["0"].distance == 0.0
    assert stats["1"].distance == pytest.approx(2.0)
    assert stats["1"].relative_distance == pytest.approx(2.0 / math.sqrt(5**2 + 4**2 + 1))  # init row 0: 5, 4


def test_moved_frozen_layer_is_reported():
    model = apply_mixing(ConvMixer(8, 2, 3, 2, in_chans=1, num_classes=3), "chans", seed=0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    a = analysis.analyze_model(model, "chans", init)
    assert analysis.frozen_layers_moved([a]) == []
    init["blocks.0.0.fn.0.weight"][0, 0, 0, 0] += 1e-6
    moved = analysis.frozen_layers_moved([analysis.analyze_model(model, "chans", init)])
    assert moved == ["chans: blocks.0.0.fn.0"]


def test_model_without_spatial_mixers_is_refused():
    with pytest.raises(SpatialmixError, match="no spatial mixers"):
        analysis.analyze(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Flatten(), nn.Linear(8, 2)))


# --------------------------------------------------------------------------- saved runs


def random_data(n_train=64, n_test=32, size=16, seed=0) -> ImageData:
    gen = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randint(0, 256, (n, 1, size, size), generator=gen, dtype=torch.uint8)
    labels = lambda n: torch.randint(0, 4, (n,), generator=gen)
    return ImageData(
        "fashion-mnist",
        images(n_train),
        labels(n_train),
        images(n_test),
        labels(n_test),
        (0.5,),
        (0.25,),
        ["a", "b", "c", "d"],
    )


def small_config(mode: str, **changes) -> TrainConfig:
    return TrainConfig(
        dataset="fashion-mnist",
        model="convmixer",
        width=8,
        depth=2,
        kernel_size=3,
        patch_size=4,
        mode=mode,
        epochs=1,
        batch_size=16,
        progress=False,
        device="cpu",
        **changes,
    )


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = random_data()
    for mode in ("full", "chans", "space"):
        fit(small_config(mode), root / mode, data=data)
    return root


def test_distance_from_init_is_zero_exactly_for_frozen_layers(tiny_runs):
    chans = analysis.analyze_run(tiny_runs / "chans")
    stats = {s.layer: s for s in chans.stats}
    spatial = [s for s in stats.values() if s.kind == SPATIAL]
    assert len(spatial) == 2 and all(s.frozen and s.distance == 0.0 for s in spatial)
    trained = [s for s in stats.values() if not s.frozen]
    assert {s.kind for s in trained} >= {CHANNEL, "head"}
    assert all(s.distance > 0 and s.relative_distance > 0 for s in trained)
    # frozen spatial filters: the final spectra are the initial ones
    assert chans.spatial_frozen and analysis.filter_state(chans) == "frozen random"
    for now, start in zip(chans.spectra, chans.init_spectra):
        np.testing.assert_array_equal(now.magnitude, start.magnitude)

    space = analysis.analyze_run(tiny_runs / "space")
    assert all(s.distance == 0.0 for s in space.stats if s.kind == CHANNEL)
    assert all(s.distance > 0 for s in space.stats if s.kind == SPATIAL)

    full = analysis.analyze_run(tiny_runs / "full")
    assert not any(s.frozen for s in full.stats)
    assert all(s.distance > 0 for s in full.stats)
    assert analysis.filter_state(full) == "learned"
    assert full.label == "Full seed 0" and full.group == "Full"


def test_tables_and_figures_of_runs(tiny_runs):
    analyses = [analysis.analyze(tiny_runs / m) for m in ("full", "chans")]
    spec = analysis.spectrum_table(analyses)
    assert [r["run"] for r in spec.rows] == ["Full seed 0"] * 2 + ["Chans seed 0"] * 2
    assert spec.rows[2]["ratio"] == spec.rows[2]["ratio_init"]  # frozen: unchanged
    stats = analysis.statistics_table(analyses)
    assert "distance from init" in stats.to_markdown()
    mosaic = filter_plots.filter_mosaic(analyses[0].filters["blocks.0.0.fn.0"], max_filters=6)
    assert mosaic.shape == (2 * 4 - 1, 3 * 4 - 1)  # 6 filters of 3x3: 2 rows, 3 columns, 1 px gaps
    assert np.nanmax(np.abs(mosaic)) == pytest.approx(1.0)
    for plot in (
        filter_plots.plot_filter_grids,
        filter_plots.plot_radial_profiles,
        filter_plots.plot_mean_spectra,
    ):
        fig = plot(analyses)
        assert len(fig.axes) >= 2


def test_analyze_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(SpatialmixError, match="not a spatialmix run"):
        analysis.analyze_run(tmp_path)


def test_token_mixing_models_have_statistics_but_no_filter_banks(tmp_path, tiny_config, fake_fashion_dir):
    """An MLP-Mixer's spatial mixers are matrices, not k x k filters: the analysis (and the report)
    describe them by norms and distance from init instead of failing on them."""
    from spatialmix.analysis.filters import analyze
    from spatialmix.report.document import write_report

    config = tiny_config(
        model="mlpmixer",
        width=16,
        depth=1,
        patch_size=4,
        mode="chans",
        data_dir=str(fake_fashion_dir),
        train_subset=128,
    )
    fit(config, tmp_path / "run")
    analysis = analyze(tmp_path / "run")
    assert analysis.filters == {} and analysis.spectra == []
    token_rows = [row for row in analysis.stats if row.kind == "spatial"]
    assert [row.layer for row in token_rows] == ["blocks.0.token_mlp.fc1", "blocks.0.token_mlp.fc2"]
    assert all(row.frozen and row.distance == 0.0 for row in token_rows)
    # the norms of the weights the run saved, each row of a token-mixing matrix one filter; frozen at init
    saved = load_file(runs.latest_checkpoint(tmp_path / "run") / runs.MODEL_FILE)
    init = load_file(tmp_path / "run" / runs.INIT)
    files = write_report([tmp_path / "run"], tmp_path / "report.html")
    tables = files.markdown.read_text()
    for row in token_rows:
        weight = saved[f"{row.layer}.weight"].double()
        assert torch.equal(weight, init[f"{row.layer}.weight"].double())
        norms = weight.norm(dim=1)
        assert (row.norm_mean, row.norm_std) == pytest.approx((norms.mean().item(), norms.std().item()))
        shape = "x".join(map(str, weight.shape))
        norm = f"{norms.mean().item():.4f} ± {norms.std().item():.4f}"
        assert f"| {row.layer} | spatial | frozen | {shape} | {norm} | 0 | 0.0000 |" in tables
    assert "These runs' spatial mixers are token-mixing matrices (no k x k filters)" in tables
    assert files.html == tmp_path / "report.html" and "filters" in files.present

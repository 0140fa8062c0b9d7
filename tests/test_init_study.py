"""The init study: Chans with four priors of frozen filters beside Full and Space, attacked alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY
from spatialmix.engine.config import TrainConfig
from spatialmix.io import runs
from spatialmix.io.study_results import StudyResult
from spatialmix.robustness.settings import AttackSettings
from spatialmix.studies.context import Preset, StudyContext, classification_run_dir
from spatialmix.studies.init import (
    COVARIANCE,
    COVARIANCE_FROM,
    DEFAULT,
    DEFAULT_SIGMA,
    FULL,
    SPACE,
    best_smoothing_sigma,
    init_study,
    prior_gain_table,
)

ATTACK = {
    "eps": (0.0, 8 / 255),
    "attacks": ("fgsm", "pgd"),
    "steps": 2,
    "n_examples": 32,
    "reference_examples": 8,
    "reference_steps": 4,
    "reference_targets": 1,
    "square_queries": 20,
    "batch_size": 32,
}


def tiny_context(out_dir: Path, data_dir: Path, results: dict | None = None, seeds=(0,)) -> StudyContext:
    base = TrainConfig(
        **{
            **TINY,
            "data_dir": str(data_dir),
            "train_subset": 256,
            "test_subset": 64,
            "device": "cpu",
            "amp": "none",
        }
    )
    preset = Preset("tiny", "test", base, seeds=seeds, options={"robustness": dict(ATTACK)})
    return StudyContext(preset, Path(out_dir), seeds, {}, results=dict(results or {}))


def smoothing_result(rows) -> StudyResult:
    return StudyResult(
        "smoothing",
        [],
        {
            "runs": [
                {"smooth_sigma": s, "seed": seed, "clean_acc": c, "robust_acc": {"8/255": r}}
                for s, seed, c, r in rows
            ]
        },
    )


def test_best_sigma_is_the_most_robust_smoothing(tmp_path):
    settings = AttackSettings(**ATTACK).validate()
    ctx = tiny_context(tmp_path, tmp_path)
    assert best_smoothing_sigma(ctx, settings) == (
        DEFAULT_SIGMA,
        "the default (the smoothing study has not run)",
    )
    # Mean over seeds at the largest budget; sigma 0 is not a smoothing; ties go to the higher clean accuracy.
    rows = [
        (0.0, 0, 0.9, 0.9),
        (0.5, 0, 0.8, 0.30),
        (0.5, 1, 0.8, 0.50),
        (1.0, 0, 0.7, 0.45),
        (1.0, 1, 0.7, 0.30),
        (2.0, 0, 0.9, 0.40),
        (2.0, 1, 0.9, 0.40),
    ]
    ctx.results["smoothing"] = smoothing_result(rows)
    sigma, source = best_smoothing_sigma(ctx, settings)
    assert sigma == 2.0 and "smoothing study" in source  # 0.5 and 2.0 both average 0.40; 2.0 is cleaner
    # From an earlier reproduce call's results.json of the same preset.
    saved = {"preset": "tiny", "studies": {"smoothing": {"data": smoothing_result(rows[:3]).data}}}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert best_smoothing_sigma(tiny_context(tmp_path, tmp_path), settings)[0] == 0.5
    (tmp_path / "results.json").write_text("{not json")
    assert best_smoothing_sigma(tiny_context(tmp_path, tmp_path), settings)[0] == DEFAULT_SIGMA


def fake_result(seed, clean, robust):
    return {"seed": seed, "clean_acc": clean, "budgets": [{"eps": 8 / 255, "robust_acc": robust}]}


def test_prior_gain_table_pairs_seeds_and_measures_the_gap_closed():
    settings = AttackSettings(**ATTACK).validate()
    groups = {
        FULL: [fake_result(0, 0.90, 0.3), fake_result(1, 0.92, 0.3)],
        DEFAULT: [fake_result(1, 0.82, 0.40), fake_result(0, 0.80, 0.50)],  # any order: paired by seed
        COVARIANCE: [fake_result(0, 0.85, 0.45), fake_result(1, 0.86, 0.50)],
    }
    (row,) = prior_gain_table(groups, settings, "Chans: smoothed σ=1").rows
    assert row["filters"] == COVARIANCE and row["seeds"] == 2
    assert row["clean_gain"][0] == pytest.approx(0.045) and row["clean_gain"][1] == pytest.approx(
        0.00707, abs=1e-5
    )
    assert row["robust_gain"][0] == pytest.approx(0.025)  # (-0.05 + 0.10) / 2
    assert row["gap_closed"] == pytest.approx((0.855 - 0.81) / (0.91 - 0.81))
    groups[FULL] = [fake_result(0, 0.80, 0.3), fake_result(1, 0.80, 0.3)]  # Full no better: nothing to close
    assert prior_gain_table(groups, settings, "x").rows[0]["gap_closed"] is None


@pytest.mark.slow
def test_init_study_end_to_end(fake_fashion_dir, tmp_path):
    ctx = tiny_context(tmp_path / "study", fake_fashion_dir)
    result = init_study(ctx)
    smoothed = f"Chans: smoothed σ={DEFAULT_SIGMA:g}"
    order = [FULL, SPACE, DEFAULT, smoothed, COVARIANCE, COVARIANCE_FROM]
    accuracy, gains = result.tables
    assert [row["filters"] for row in accuracy.rows] == order and all(
        row["seeds"] == 1 for row in accuracy.rows
    )
    assert [row["filters"] for row in gains.rows] == [smoothed, COVARIANCE, COVARIANCE_FROM]
    assert result.data["smoothing_sigma"] == DEFAULT_SIGMA and len(result.data["runs"]) == 6
    by_group = {r["filters"]: r for r in result.data["runs"]}
    # Full, Space and the default Chans are the classification study's runs.
    for group, mode in ((FULL, "full"), (SPACE, "space"), (DEFAULT, "chans")):
        assert Path(by_group[group]["run"]) == classification_run_dir(ctx.out_dir, mode, 0)
    for entry in result.data["runs"]:
        saved = json.loads(Path(entry["robustness_json"]).read_text())
        bits = next(b["robust_bits"] for b in saved["budgets"] if b["eps_label"] == "8/255")
        assert len(bits) == 32 and entry["robust_acc"]["8/255"] == bits.count("1") / 32
        assert entry["clean_acc"] == saved["clean_acc"]
        summary = json.loads((Path(entry["run"]) / runs.SUMMARY).read_text())
        assert summary["frozen_unchanged"] is True
    train = {g: json.loads((Path(by_group[g]["run"]) / runs.CONFIG).read_text())["train"] for g in order}
    assert train[COVARIANCE]["spatial_init"] == "covariance" and train[COVARIANCE]["mode"] == "chans"
    assert train[COVARIANCE_FROM]["init_from"] == by_group[FULL]["run"]
    assert train[smoothed]["smooth_sigma"] == DEFAULT_SIGMA
    # The gain table is the difference of the accuracy table's numbers (one seed: exact).
    default = by_group[DEFAULT]["clean_acc"]
    assert gains.rows[1]["clean_gain"][0] == pytest.approx(by_group[COVARIANCE]["clean_acc"] - default)
    assert result.section == "init" and all(figure.caption for figure in result.figures)
    for figure in result.figures:
        assert Path(figure.file).is_file() and Path(figure.file).read_bytes()[:4] == b"\x89PNG"
    assert {Path(f.file).name for f in result.figures} == {
        "init-robustness.png",
        "init-filters.png",
        "init-spectra.png",
    }
    # Run again: every training and every attack is read back, not redone.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "study").rglob("*.json")}
    again = init_study(ctx)
    assert again.data["runs"] == result.data["runs"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name == "robustness.json")

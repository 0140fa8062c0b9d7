"""Verdicts from hand-made study data whose right answer is known, from study folders and run folders."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from spatialmix.analysis.claims import CLAIMS, CONTRADICTS, INCONCLUSIVE, NOT_RUN, SUPPORTS, Verdict
from spatialmix.analysis.crossed import crossed_interval, crossed_ratio_interval
from spatialmix.analysis.decision import SEEDS_ONLY, claim_verdicts, decide, eps_value
from spatialmix.analysis.statistics import Estimate
from spatialmix.analysis.verdict_text import power_text, verdict_table
from spatialmix.analysis.verdicts_from_folders import (
    reproduce_commands,
    verdicts_for_runs,
    verdicts_for_study,
)
from spatialmix.errors import SpatialmixError


def bits_of(array) -> str:
    return "".join("1" if b else "0" for b in array)


def correct(p: float, n: int = 500, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < p


def with_changes(base: np.ndarray, to_right: int = 0, to_wrong: int = 0) -> np.ndarray:
    """``base`` with the first ``to_right`` wrong examples made right
    and the first ``to_wrong`` right ones wrong."""
    out = base.copy()
    out[np.flatnonzero(~base)[:to_right]] = True
    out[np.flatnonzero(base)[:to_wrong]] = False
    return out


def by_claim(verdicts, claim):
    return [v for v in verdicts if v.claim == claim]


def est(low, high, value=None):
    return Estimate((low + high) / 2 if value is None else value, low, high, "test", 3)


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    "claim, low, high, word",
    [
        ("1a", -0.008, 0.004, SUPPORTS),  # within 1 point of Full
        ("1a", 0.01, 0.03, SUPPORTS),  # better than Full is not "worse than nearly the same"
        ("1a", -0.05, -0.02, CONTRADICTS),
        ("1a", -0.02, 0.0, INCONCLUSIVE),  # covers -1 point
        ("1a", -0.01, 0.0, INCONCLUSIVE),  # touches the margin: not decided
        ("1b", -0.06, -0.01, SUPPORTS),  # Space below Full
        ("1b", 0.01, 0.02, CONTRADICTS),
        ("1b", -0.01, 0.01, INCONCLUSIVE),
        ("2a", 0.001, 0.03, SUPPORTS),
        ("2a", -0.03, -0.001, CONTRADICTS),
        ("2a", 0.0, 0.0, INCONCLUSIVE),  # identical models are not "more robust"
        ("3a", -0.9, 0.5, SUPPORTS),
        ("3a", -3.0, -1.5, CONTRADICTS),
        ("3b", 0.95, 1.01, SUPPORTS),
        ("3b", 0.5, 0.8, CONTRADICTS),
    ],
)
def test_the_rule(claim, low, high, word):
    assert decide(CLAIMS[claim], est(low, high)) == word


def test_a_zero_width_interval_decides_nothing():
    # every seed gave Space exactly 0.2 points below Full: no spread at all, not a decision
    assert decide(CLAIMS["1b"], est(-0.002, -0.002)) == INCONCLUSIVE
    assert decide(CLAIMS["1b"], est(-0.0021, -0.002)) == SUPPORTS


def test_a_line_the_test_set_keeps_open_asks_for_more_test_images():
    # 1a, 0.05 points above its -1 point margin; the seeds agree (0.01 points) but the test set
    # alone leaves +-0.196 points (SE 0.1): no number of seeds decides it
    estimate = Estimate(-0.95, -1.15, -0.75, "crossed", 20, 10_000, spread=0.01, test_set_variance=0.01)
    verdict = Verdict("1a", CLAIMS["1a"].effect, estimate, INCONCLUSIVE, seeds_needed=None)
    assert (
        power_text(verdict)
        == "needs more test images: the test set alone gives ±0.20 pts, whatever the number of seeds"
    )
    # far enough from the margin, seeds can decide it: the usual advice
    farther = replace(verdict, estimate=replace(estimate, value=-0.5), detectable=0.3, seeds_needed=30)
    assert power_text(farther) == "detects ≥ 0.30 pts from the threshold; needs about 30 seeds"


def test_no_interval_is_inconclusive_and_no_data_is_not_run():
    assert decide(CLAIMS["1a"], Estimate(0.0, None, None, "one seed: interval undefined", 1)) == INCONCLUSIVE
    assert decide(CLAIMS["1a"], None) == NOT_RUN


# --------------------------------------------------------------------------- claim 1


def classification(acc_by_mode: dict, bits_by_mode: dict | None = None) -> dict:
    out = {}
    for mode, accs in acc_by_mode.items():
        out[mode] = []
        for seed, acc in enumerate(accs):
            row = {"mode": mode, "seed": seed, "test_acc": acc}
            if bits_by_mode:
                row["test_correct_bits"] = bits_of(bits_by_mode[mode][seed])
            out[mode].append(row)
    return out


def test_claim_1_from_seed_accuracies_alone_uses_the_seed_paired_t_interval_and_says_what_it_leaves_out():
    full, chans, space = [0.900, 0.904, 0.898], [0.897, 0.903, 0.894], [0.860, 0.870, 0.850]
    verdicts = claim_verdicts(classification({"full": full, "chans": chans, "space": space}))
    one_a, one_b = by_claim(verdicts, "1a")[0], by_claim(verdicts, "1b")[0]
    diffs = np.array(chans) - np.array(full)
    half = 4.302653 * diffs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2) from a table
    assert one_a.unit == "pts"  # a verdict states accuracies in percentage points, as its table
    row = verdict_table([one_a]).rows[0]  # the table prints the verdict's own numbers
    assert row["estimate"] == f"{one_a.estimate.value:+.2f} pts" and row["rule"] == "> -1 pts"
    assert one_a.estimate.value == pytest.approx(100 * diffs.mean())
    assert (one_a.estimate.low, one_a.estimate.high) == pytest.approx(
        (100 * (diffs.mean() - half), 100 * (diffs.mean() + half))
    )
    assert one_a.verdict == SUPPORTS and one_a.estimate.n_seeds == 3
    assert one_a.estimate.method == "t over 3 seeds only: test-set variance not included"
    assert one_b.verdict == SUPPORTS
    assert one_b.estimate.value == pytest.approx(100 * (np.mean(space) - np.mean(full)))


def test_claim_1_contradicted_and_inconclusive():
    far_behind = claim_verdicts(classification({"full": [0.90, 0.91, 0.90], "chans": [0.85, 0.86, 0.86]}))
    assert by_claim(far_behind, "1a")[0].verdict == CONTRADICTS
    noisy = claim_verdicts(classification({"full": [0.90, 0.91, 0.90], "chans": [0.86, 0.93, 0.89]}))
    assert by_claim(noisy, "1a")[0].verdict == INCONCLUSIVE
    one_seed = by_claim(claim_verdicts(classification({"full": [0.90], "chans": [0.899]})), "1a")[0]
    assert one_seed.verdict == INCONCLUSIVE and not one_seed.estimate.defined
    assert one_seed.estimate.method == "one seed: no interval"
    assert power_text(one_seed) == "one seed: train more seeds"


def test_claim_1_pairs_examples_when_both_runs_saved_them():
    full = [correct(0.9, seed=s) for s in range(3)]
    chans = [with_changes(f, to_right=1, to_wrong=2) for f in full]  # 1 example fewer right per seed
    data = classification(
        {"full": [f.mean() for f in full], "chans": [c.mean() for c in chans]}, {"full": full, "chans": chans}
    )
    verdict = by_claim(claim_verdicts(data), "1a")[0]
    assert verdict.estimate.value == pytest.approx(-100 / 500)
    assert verdict.estimate.method == "t over 3 seeds + test-set variance of 500 test examples (crossed)"
    assert verdict.estimate.n_examples == 500
    # every seed loses the same count of examples: the seeds agree exactly, but which examples
    # change differs from seed to seed, so the crossed interval has a width and still decides
    differences = np.stack([c.astype(float) - f for c, f in zip(chans, full)])
    reference = crossed_interval(differences)
    assert (verdict.estimate.low, verdict.estimate.high) == pytest.approx(
        (100 * reference.low, 100 * reference.high)
    )
    assert verdict.estimate.low < -0.2 < verdict.estimate.high and verdict.verdict == SUPPORTS
    assert "1/2 p=1" in verdict.details  # McNemar: 1 only Chans right, 2 only Full right, each seed
    # bits of another length in one pair: back to the seed-paired t-interval, which says so
    data["chans"][1]["test_correct_bits"] = data["chans"][1]["test_correct_bits"][:-1]
    assert by_claim(claim_verdicts(data), "1a")[0].estimate.method == SEEDS_ONLY.format(3)


def test_modes_without_a_common_seed_are_not_compared():
    data = {"full": [{"seed": 0, "test_acc": 0.9}], "chans": [{"seed": 1, "test_acc": 0.9}]}
    verdict = by_claim(claim_verdicts(data), "1a")[0]
    assert verdict.verdict == INCONCLUSIVE and "share no seed" in verdict.details


# --------------------------------------------------------------------------- claim 2


def robust_records(chans_change: dict, seeds=(0, 1, 2)) -> list[dict]:
    """Full and Chans runs on the same 500 examples; Chans differs from Full at 8/255 by ``chans_change``."""
    records = []
    for seed in seeds:
        clean = correct(0.9, seed=seed)
        full = {"0": clean, "8/255": clean & correct(0.5, seed=100 + seed)}
        chans = {"0": clean, "8/255": with_changes(full["8/255"], **chans_change)}
        for mode, bits in (("full", full), ("chans", chans)):
            records.append(
                {
                    "mode": mode,
                    "seed": seed,
                    "robust_acc": {k: float(b.mean()) for k, b in bits.items()},
                    "robust_bits": {k: bits_of(b) for k, b in bits.items()},
                }
            )
    return records


@pytest.mark.parametrize(
    "change, word",
    [
        ({"to_right": 30}, SUPPORTS),
        ({"to_wrong": 30}, CONTRADICTS),
        ({}, INCONCLUSIVE),
        ({"to_right": 2, "to_wrong": 2}, INCONCLUSIVE),
    ],
)
def test_claim_2a_pairs_examples_per_budget(change, word):
    verdicts = by_claim(claim_verdicts(robustness=robust_records(change)), "2a")
    assert len(verdicts) == 1 and "8/255" in verdicts[0].effect  # eps 0 is claim 1's business
    verdict = verdicts[0]
    expected = 100 * (change.get("to_right", 0) - change.get("to_wrong", 0)) / 500  # points
    assert verdict.estimate.value == pytest.approx(expected) and verdict.verdict == word
    assert verdict.estimate.n_seeds == 3 and verdict.estimate.n_examples == 500
    if change == {"to_right": 30}:
        # every seed: 30 examples only Chans survives, none only Full: p = 2 * 0.5**30
        assert f"30/0 p={2 * 0.5**30:.2g}" in verdict.details
    if not change:
        assert (verdict.estimate.low, verdict.estimate.high) == (0.0, 0.0)


def test_claim_2a_pairs_only_runs_attacked_on_the_same_examples():
    records = robust_records({"to_right": 30})
    for r in records:
        r["examples_sha256"] = "abc"
    paired = by_claim(claim_verdicts(robustness=records), "2a")[0]
    assert paired.details.startswith("exact McNemar per seed") and paired.estimate.n_examples == 500
    records[3]["examples_sha256"] = "other"
    assert by_claim(claim_verdicts(robustness=records), "2a")[0].estimate.method == SEEDS_ONLY.format(3)


def test_seeds_scored_on_different_numbers_of_examples_get_the_crossed_interval():
    sizes = (200, 500, 1000)
    full = [correct(0.8, seed=s, n=n) for s, n in enumerate(sizes)]
    chans = [with_changes(f, to_right=k, to_wrong=0) for f, k in zip(full, (2, 10, 12))]
    data = classification(
        {"full": [f.mean() for f in full], "chans": [c.mean() for c in chans]}, {"full": full, "chans": chans}
    )
    estimate = by_claim(claim_verdicts(data), "1a")[0].estimate
    differences = [c.astype(float) - f for c, f in zip(chans, full)]
    reference = crossed_interval(differences)
    shown = (100 * reference.value, 100 * reference.low, 100 * reference.high, 100 * reference.spread)
    assert (estimate.value, estimate.low, estimate.high, estimate.spread) == pytest.approx(shown)
    assert estimate.method == "t over 3 seeds + test-set variance of 200-1,000 test examples (crossed)"
    # each seed counts once: the mean of the seeds' effects (2/200, 10/500, 12/1000)
    assert estimate.value == pytest.approx(100 * np.mean([2 / 200, 10 / 500, 12 / 1000]))
    assert estimate.n_examples is None and estimate.test_set_variance >= 0


def test_claim_2a_without_bits_falls_back_to_seeds():
    records = robust_records({"to_right": 30})
    for r in records:
        r.pop("robust_bits")
    verdict = by_claim(claim_verdicts(robustness=records), "2a")[0]
    assert verdict.estimate.method == SEEDS_ONLY.format(3) and verdict.estimate.value == pytest.approx(
        3000 / 500
    )
    # the same shift on every seed: a zero-width interval, which decides nothing
    assert verdict.estimate.low == verdict.estimate.high and verdict.verdict == INCONCLUSIVE
    assert verdict.details.startswith("zero-width interval") and power_text(verdict).startswith("no spread")


def smoothing_records(slope: float, seeds=(0, 1, 2), noise: float = 0.005) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "mode": "chans",
            "seed": seed,
            "smooth_sigma": sigma,
            "robust_acc": {"0": 0.9, "8/255": 0.4 + slope * sigma + noise * rng.standard_normal()},
        }
        for seed in seeds
        for sigma in (0.0, 0.5, 1.0, 2.0)
    ]


@pytest.mark.parametrize("slope, word", [(0.05, SUPPORTS), (-0.05, CONTRADICTS), (0.0, INCONCLUSIVE)])
def test_claim_2b_is_the_slope_against_sigma(slope, word):
    records = smoothing_records(slope, noise=0.0 if slope == 0.0 else 0.005)
    if slope == 0.0:  # flat on average, but one seed rises and one falls: the interval covers 0
        for r in records:
            r["robust_acc"]["8/255"] += {0: 0.02, 1: -0.02, 2: 0.001}[r["seed"]] * r["smooth_sigma"]
    verdict = by_claim(claim_verdicts(smoothing=records, robust_examples=500), "2b")[0]
    assert verdict.verdict == word and verdict.estimate.n_seeds == 3 and verdict.estimate.n_examples == 500
    assert verdict.unit == "pts/σ" and verdict.estimate.value == pytest.approx(100 * slope, abs=1)
    assert verdict.estimate.method == SEEDS_ONLY.format(3) and "sigmas 0, 0.5, 1, 2" in verdict.details


# --------------------------------------------------------------------------- claim 3


def unshuffle_payload(full, chans, floor=7.0, n=None):
    seeds = list(range(len(full)))
    return {
        "runs": {
            "Full": [{"seed": s, "test_psnr": p} for s, p in zip(seeds, full)],
            "Chans": [{"seed": s, "test_psnr": p} for s, p in zip(seeds, chans)],
            "No spatial mixing (k=1)": [{"seed": s, "test_psnr": 9.0} for s in seeds],
        },
        "floor": [{"psnr": floor, "ssim": 0.1, "n": n} for _ in seeds]
        if n
        else [{"psnr": floor} for _ in seeds],
        "settings": {"seeds": seeds},
    }


def test_claim_3_relative_to_full_and_to_the_floor():
    keeps_up = claim_verdicts(unshuffle=unshuffle_payload([30.0, 31.0, 30.5], [29.8, 30.6, 30.4]))
    three_a, three_b = by_claim(keeps_up, "3a")[0], by_claim(keeps_up, "3b")[0]
    assert three_a.estimate.value == pytest.approx(-0.7 / 3) and three_a.verdict == SUPPORTS
    assert three_a.estimate.n_examples is None  # the floor did not say on how many images
    fractions = [(c - 7) / (f - 7) for f, c in zip([30.0, 31.0, 30.5], [29.8, 30.6, 30.4])]
    assert three_b.estimate.value == pytest.approx(np.mean(fractions)) and three_b.verdict == SUPPORTS
    falls_behind = claim_verdicts(unshuffle=unshuffle_payload([16.0, 16.5, 16.2], [12.0, 12.1, 11.9], n=1000))
    assert [v.verdict for v in falls_behind if v.claim.startswith("3")] == [CONTRADICTS, CONTRADICTS]
    assert [v.estimate.n_examples for v in falls_behind] == [1000, 1000]


def unshuffle_per_image(n_seeds: int = 3, n: int = 200) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """An un-shuffling study that saved each image's PSNR (rounded to 0.01 dB), and its tables."""
    rng = np.random.default_rng(3)
    floor = np.round(np.broadcast_to(11 + rng.standard_normal(n), (n_seeds, n)), 2)
    gain = 10 + 2 * rng.standard_normal(n)
    full = np.round(floor + gain + 0.5 * rng.standard_normal((n_seeds, n)), 2)
    fraction = 0.9 + 0.05 * rng.standard_normal(n)  # images differ in how much Chans recovers
    chans = np.round(floor + fraction * gain + 0.5 * rng.standard_normal((n_seeds, n)), 2)

    def runs(table):
        return [
            {"seed": s, "test_psnr": float(row.mean()), "test_psnr_per_example": row.tolist()}
            for s, row in enumerate(table)
        ]

    payload = {
        "runs": {"Full": runs(full), "Chans": runs(chans)},
        "floor": [{"psnr": float(f.mean()), "n": n, "psnr_per_example": f.tolist()} for f in floor],
        "settings": {"seeds": list(range(n_seeds))},
    }
    return payload, floor, full, chans


def test_claim_3_with_each_images_psnr_covers_the_population_of_images():
    payload, floor, full, chans = unshuffle_per_image()
    three_a, three_b = (by_claim(claim_verdicts(unshuffle=payload), c)[0] for c in ("3a", "3b"))
    difference = crossed_interval(chans - full)
    assert (three_a.estimate.value, three_a.estimate.low, three_a.estimate.high) == pytest.approx(
        (difference.value, difference.low, difference.high)
    )
    assert three_a.estimate.method == "t over 3 seeds + test-set variance of 200 test examples (crossed)"
    ratio = crossed_ratio_interval(chans - floor, full - floor)
    assert three_b.estimate.value == pytest.approx((chans - floor).mean() / (full - floor).mean())
    assert (three_b.estimate.low, three_b.estimate.high) == pytest.approx((ratio.low, ratio.high))
    assert three_b.estimate.method.startswith("ratio of means, delta method: t over 3 seeds")
    assert three_b.estimate.test_set_variance > 0 and three_b.estimate.n_examples == 200
    # one run's list is not the evaluation its test_psnr reports: the seeds' own numbers alone
    payload["runs"]["Chans"][1]["test_psnr"] += 0.1
    three_a, three_b = (by_claim(claim_verdicts(unshuffle=payload), c)[0] for c in ("3a", "3b"))
    assert three_a.estimate.method == three_b.estimate.method == SEEDS_ONLY.format(3)


# --------------------------------------------------------------------------- not run, the table


def test_claims_without_data_are_not_run_with_the_command():
    commands = reproduce_commands(Path("runs/study"))
    verdicts = claim_verdicts(classification({"full": [0.9, 0.91], "chans": [0.9, 0.905]}), commands=commands)
    assert [v.claim for v in verdicts] == ["1a", "1b", "2a", "2b", "3a", "3b"]  # 1b: no Space runs
    assert [v.verdict for v in verdicts][1:] == [NOT_RUN] * 5
    assert "spatialmix reproduce --preset standard --out runs/standard" in verdicts[2].details
    # what deciding a line not run takes is in the table's own column, not only in "how"
    assert power_text(verdicts[2]) == "run `spatialmix reproduce --preset standard --out runs/standard`"
    assert "spatialmix reproduce --out runs/study --studies unshuffle" in verdicts[4].details
    assert claim_verdicts() == []  # nothing and no commands: nothing to say


def test_verdict_table_lists_every_line_with_its_numbers():
    verdicts = claim_verdicts(
        classification({"full": [0.9, 0.91, 0.9], "chans": [0.85, 0.86, 0.86]}),
        commands=reproduce_commands(Path("x")),
    )
    table = verdict_table(verdicts)
    cells = table.cells()
    headers = [h for _, h, _ in table.columns]
    row = dict(zip(headers, cells[0]))
    assert row["claim"] == "1a" and row["verdict"] == CONTRADICTS and row["seeds"] == "3"
    assert row["estimate"] == "-4.67 pts" and row["supports if interval"] == "> -1 pts"
    assert row["95% interval"].startswith("[-") and row["95% interval"].endswith("] pts")
    assert [dict(zip(headers, c))["verdict"] for c in cells[1:]] == [NOT_RUN] * 5
    assert "setting" not in headers
    assert "| 1a |" in table.to_markdown()


# --------------------------------------------------------------------------- folders


def write_run(
    path: Path, train: dict, summary: dict | None, robustness: dict | None = None, task: dict | None = None
) -> Path:
    path.mkdir(parents=True)
    data = {"in_chans": 1, "num_classes": 10, "image_size": 28, "mean": [0.3], "std": [0.3], "n_test": 10_000}
    (path / "config.json").write_text(
        json.dumps(
            {"format_version": 1, "train": train, "data": data, "task": task or {"name": "classification"}}
        )
    )
    if summary is not None:
        (path / "summary.json").write_text(
            json.dumps({"task": (task or {}).get("name", "classification"), **summary})
        )
        (path / "status.json").write_text(json.dumps({"state": "finished", "epoch": 1}))
    if robustness is not None:
        (path / "robustness.json").write_text(json.dumps(robustness))
    return path


def robustness_json(record: dict, settings: dict) -> dict:
    return {
        "settings": settings,
        "n_examples": 500,
        "budgets": [
            {
                "eps": eps_value(k),
                "eps_label": k,
                "robust_acc": record["robust_acc"][k],
                "robust_bits": record["robust_bits"][k],
            }
            for k in record["robust_acc"]
        ],
    }


SETTINGS = {"eps": [0.0, 8 / 255], "norm": "Linf", "n_examples": 500, "seed": 0, "device": "cpu"}


def make_study(out: Path, moved_from: str = "/elsewhere/study") -> Path:
    """A reproduce folder: classification and robustness in results.json, robustness.json in the runs,
    whose paths were written where the study first ran (it has been moved since)."""
    records = robust_records({"to_right": 30})
    cls = classification({"full": [0.900, 0.904, 0.898], "chans": [0.897, 0.903, 0.894]})
    runs_data = []
    for r in records:
        name = f"{r['mode']}-seed{r['seed']}"
        summary = next(s for s in cls[r["mode"]] if s["seed"] == r["seed"])
        write_run(
            out / "classification" / name,
            {"mode": r["mode"], "seed": r["seed"], "model": "convmixer"},
            summary,
            robustness_json(r, SETTINGS),
        )
        float32 = {
            k: float(np.float32(v)) for k, v in r["robust_acc"].items()
        }  # as the attack engine saves them
        runs_data.append(
            {
                "run": f"{moved_from}/classification/{name}",
                "mode": r["mode"],
                "seed": r["seed"],
                "clean_acc": float32["0"],
                "robust_acc": float32,
                "warnings": [],
            }
        )
    results = {
        "preset": "quick",
        "seeds": [0, 1, 2],
        "studies": {
            "classification": {"data": {"runs": cls}},
            "robustness": {
                "data": {"settings": {**SETTINGS, "device": "cuda"}, "runs": runs_data, "warnings": []}
            },
        },
    }
    (out / "results.json").write_text(json.dumps(results))
    return out


def test_verdicts_for_a_study_folder(tmp_path):
    study = make_study(tmp_path / "study")
    verdicts = verdicts_for_study(study)
    assert [v.claim for v in verdicts] == ["1a", "1b", "2a", "2b", "3a", "3b"]
    two_a = by_claim(verdicts, "2a")[0]
    # robust_bits found in the moved run folders: paired per example (McNemar per seed, exact counts)
    assert "McNemar" in two_a.details and two_a.verdict == SUPPORTS
    assert two_a.estimate.value == pytest.approx(3000 / 500)
    one_a = by_claim(verdicts, "1a")[0]  # seed-level t-interval of accuracies over the 10,000 test images
    assert (
        one_a.verdict == SUPPORTS
        and one_a.estimate.method == SEEDS_ONLY.format(3)
        and one_a.estimate.n_examples == 10_000
    )
    assert all(
        v.verdict == NOT_RUN and f"--out {study}" in v.details
        for v in verdicts
        if v.claim[0] != "2" and v.claim != "1a"
    )


def test_the_verdicts_step_of_reproduce_saves_strict_json(tmp_path):
    from spatialmix.studies.context import PRESETS, StudyContext
    from spatialmix.studies.reproduce import STUDIES, study_function

    study = make_study(tmp_path / "study")
    (study / "classification" / "chans-seed0").rename(
        study / "classification" / "gone"
    )  # 1a: no pair at seed 0
    results = json.loads((study / "results.json").read_text())
    results["studies"]["classification"]["data"]["runs"]["chans"][0]["seed"] = 7
    (study / "results.json").write_text(json.dumps(results))
    assert list(STUDIES).index("verdicts") < list(STUDIES).index("report")
    result = study_function("verdicts")(StudyContext(PRESETS["quick"], study, (0, 1, 2), {}))
    (table,) = result.tables
    assert [r["claim"] for r in table.rows] == ["1a", "1b", "2a", "2b", "3a", "3b"]
    saved = json.loads(json.dumps(result.data, allow_nan=False))["verdicts"]
    assert saved[0]["claim"] == "1a" and saved[0]["seeds"] == 2 and saved[0]["rule"] == "> -1 pts"
    # 2a: seed 0 of Chans lost its robust_bits, so the seeds alone, which tie exactly: no width, no verdict
    assert saved[2]["verdict"] == INCONCLUSIVE and saved[2]["details"].startswith("zero-width interval")
    assert saved[3] == {**saved[3], "verdict": NOT_RUN, "estimate": None}


def test_a_robustness_json_of_another_evaluation_is_not_paired(tmp_path):
    study = make_study(tmp_path / "study")
    path = study / "classification" / "chans-seed1" / "robustness.json"
    saved = json.loads(path.read_text())
    saved["settings"]["n_examples"] = 1000  # `spatialmix attack` re-ran it with other settings
    path.write_text(json.dumps(saved))
    assert by_claim(verdicts_for_study(study), "2a")[0].estimate.method == SEEDS_ONLY.format(3)


def test_a_failed_attack_check_is_flagged_on_the_claim_2_line_from_study_and_run_folders(tmp_path):
    study = make_study(tmp_path / "study")
    assert "attack check failed" not in by_claim(verdicts_for_study(study), "2a")[0].details
    path = study / "classification" / "full-seed1" / "robustness.json"
    saved = json.loads(path.read_text())
    saved["checks"] = [{"name": "reference", "ok": False}, {"name": "chance", "ok": True}]
    path.write_text(json.dumps(saved))
    # results.json written before it listed the failed checks: the run's robustness.json says
    from_study = by_claim(verdicts_for_study(study), "2a")[0]
    from_runs = by_claim(verdicts_for_runs(sorted((study / "classification").iterdir())), "2a")[0]
    for verdict in (from_study, from_runs):
        assert verdict.details.startswith("attack check failed (reference) in 1 of 6 runs")
        assert "McNemar" in verdict.details and verdict.verdict == SUPPORTS  # flagged, not changed
    assert "attack check failed" in verdict_table([from_study]).rows[0]["how"]


def test_a_damaged_robustness_json_falls_back_to_the_seeds(tmp_path):
    study = make_study(tmp_path / "study")
    (study / "classification" / "full-seed2" / "robustness.json").write_text("{oops")
    verdict = by_claim(verdicts_for_study(study), "2a")[0]
    assert verdict.estimate.method == SEEDS_ONLY.format(3) and verdict.estimate.value == pytest.approx(
        3000 / 500
    )


def test_verdicts_for_a_missing_empty_or_corrupt_study(tmp_path):
    with pytest.raises(SpatialmixError, match="never-ran is not a folder; pass the folder"):
        verdicts_for_study(tmp_path / "never-ran")
    (tmp_path / "never-ran").mkdir()  # a study folder with nothing in it yet
    verdicts = verdicts_for_study(tmp_path / "never-ran")
    assert [v.verdict for v in verdicts] == [NOT_RUN] * len(CLAIMS)
    assert "--studies classification" in verdicts[0].details
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{oops")
    with pytest.raises(SpatialmixError, match="corrupt"):
        verdicts_for_study(tmp_path / "bad")


def test_study_and_run_folders_give_the_same_verdicts(tmp_path):
    study = make_study(tmp_path / "study")
    from_study = [v for v in verdicts_for_study(study) if v.verdict != NOT_RUN]
    from_runs = [
        v for v in verdicts_for_runs(sorted((study / "classification").iterdir())) if v.verdict != NOT_RUN
    ]
    assert from_runs == from_study


def test_a_study_folder_without_study_results_is_read_as_runs(tmp_path):
    study = make_study(tmp_path / "study")
    (study / "results.json").unlink()  # interrupted before the first study saved its results
    verdicts = verdicts_for_study(study)
    assert by_claim(verdicts, "2a")[0].verdict == SUPPORTS
    assert f"spatialmix reproduce --out {study} --studies unshuffle" in by_claim(verdicts, "3a")[0].details
    sweep = tmp_path / "sweep"
    (study / "classification").rename(sweep)
    (sweep / "results.json").write_text(json.dumps({"title": "Sweep", "runs": []}))  # what `sweep` writes
    assert "spatialmix unshuffle" in by_claim(verdicts_for_study(sweep), "3a")[0].details


def test_verdicts_for_a_grid_of_runs_are_grouped_by_setting(tmp_path):
    accs = {
        ("convmixer-a", "full"): [0.90, 0.91, 0.90],
        ("convmixer-a", "chans"): [0.899, 0.909, 0.898],
        ("convmixer-b", "full"): [0.90, 0.91, 0.90],
        ("convmixer-b", "chans"): [0.85, 0.86, 0.86],
    }
    dirs = []
    for (model, mode), values in accs.items():
        for seed, acc in enumerate(values):
            train = {"model": model, "mode": mode, "seed": seed, "lr": 0.01, "progress": seed == 0}
            dirs.append(
                write_run(
                    tmp_path / f"model={model},mode={mode},seed={seed}",
                    train,
                    {"mode": mode, "seed": seed, "test_acc": acc},
                )
            )
    dirs.append(
        write_run(tmp_path / "unfinished", {"model": "convmixer-a", "mode": "space", "seed": 0}, None)
    )
    verdicts = verdicts_for_runs(dirs)
    one_a = by_claim(verdicts, "1a")
    assert [(v.scope, v.verdict) for v in one_a] == [
        ("model=convmixer-a", SUPPORTS),
        ("model=convmixer-b", CONTRADICTS),
    ]
    assert one_a[0].estimate.n_examples == 10_000
    assert (
        by_claim(verdicts, "2a")[0].verdict == NOT_RUN
        and "spatialmix attack" in by_claim(verdicts, "2a")[0].details
    )
    table = verdict_table(verdicts)
    assert table.columns[1][1] == "setting"
    assert verdicts_for_runs([d for d in dirs if "chans" not in d.name]) == []  # no pair of modes: no verdict


def test_smoothing_and_unshuffling_from_run_folders(tmp_path):
    dirs = []
    for r in smoothing_records(0.05):
        bits = {"0": bits_of(correct(0.9)), "8/255": None}
        budgets = [
            {"eps_label": k, "robust_acc": v, "robust_bits": bits[k]} for k, v in r["robust_acc"].items()
        ]
        train = {"model": "convmixer", "mode": "chans", "seed": r["seed"], "smooth_sigma": r["smooth_sigma"]}
        dirs.append(
            write_run(
                tmp_path / f"chans-sigma{r['smooth_sigma']}-seed{r['seed']}",
                train,
                {"mode": "chans", "seed": r["seed"], "test_acc": 0.9},
                {"settings": SETTINGS, "n_examples": 500, "budgets": budgets},
            )
        )
    for mode, psnr in (("full", 30.0), ("chans", 29.9)):
        for seed in (0, 1):
            dirs.append(
                write_run(
                    tmp_path / f"unshuffle-{mode}-{seed}",
                    {"model": "unshufflenet", "mode": mode, "seed": seed},
                    {
                        "mode": mode,
                        "seed": seed,
                        "test_psnr": psnr + (0.1 if mode == "full" else 0.12) * seed,
                    },
                    task={"name": "unshuffle", "perm_seed": 0, "window": None, "loss": "mse"},
                )
            )
    verdicts = verdicts_for_runs(dirs)
    two_b = by_claim(verdicts, "2b")[0]
    assert two_b.verdict == SUPPORTS and two_b.estimate.n_examples == 500 and two_b.scope == ""
    three_a = by_claim(verdicts, "3a")[0]
    assert three_a.estimate.value == pytest.approx(-0.09) and three_a.verdict == SUPPORTS
    assert [v.verdict for v in by_claim(verdicts, "1a") + by_claim(verdicts, "3b")] == [NOT_RUN, NOT_RUN]


@pytest.mark.parametrize(
    "record, field",
    [
        ({"studies": []}, "sequential.studies"),
        ({"studies": {"classification": {"level": 1.5}}}, "sequential.studies.classification.level"),
        ({"studies": {"classification": {"level": "0.99"}}}, "sequential.studies.classification.level"),
        ({"studies": {"__import__": {"level": 0.99}}}, "sequential.studies.__import__.level"),
    ],
)
def test_a_damaged_sequential_record_is_one_error_naming_the_file_and_field(tmp_path, record, field):
    study = make_study(tmp_path / "study")
    results = json.loads((study / "results.json").read_text())
    (study / "results.json").write_text(json.dumps({**results, "sequential": record}))
    with pytest.raises(SpatialmixError) as caught:
        verdicts_for_study(study)
    message = str(caught.value)
    assert message.startswith(str(study / "results.json")) and field in message and "\n" not in message


def test_a_sequential_record_sets_the_level_of_its_study(tmp_path):
    study = make_study(tmp_path / "study")
    results = json.loads((study / "results.json").read_text())
    record = {"studies": {"robustness": {"level": 0.99}}}
    (study / "results.json").write_text(json.dumps({**results, "sequential": record}))
    levels = {v.claim: v.estimate.level for v in verdicts_for_study(study) if v.estimate is not None}
    assert levels["2a"] == 0.99 and levels["1a"] == 0.95


def test_each_model_family_of_a_study_gets_its_own_claim_1_lines(tmp_path):
    """A classification study of two families: 1a and 1b per family, named by it; the ResNet's
    summaries are completed from its own run folders (classification/resnet-<mode>-seed<k>); the
    claim-2 lines are named by the model they attacked, the un-shuffling ones by none."""
    study = make_study(tmp_path / "study")
    results = json.loads((study / "results.json").read_text())
    convmixer = results["studies"]["classification"]["data"]["runs"]
    convmixer["space"] = classification({"space": [0.880, 0.885, 0.879]})["space"]
    full = [correct(0.9, n=1000, seed=s) for s in range(3)]
    bits = {
        "full": full,
        "chans": [with_changes(f, to_wrong=50) for f in full],  # 5 points behind: contradicts 1a
        "space": [with_changes(f, to_wrong=120) for f in full],
    }
    resnet = classification({mode: [b.mean() for b in arrays] for mode, arrays in bits.items()})
    for mode, rows in resnet.items():
        for row in rows:
            write_run(
                study / "classification" / f"resnet-{mode}-seed{row['seed']}",
                {"mode": mode, "seed": row["seed"], "model": "resnet-sep"},
                {**row, "test_correct_bits": bits_of(bits[mode][row["seed"]])},  # only in the run folder
            )
    results["studies"]["classification"]["data"].update(
        model="convmixer-64/4", families={"resnet-sep-32/1": {"prefix": "resnet-", "runs": resnet}}
    )
    (study / "results.json").write_text(json.dumps(results))

    verdicts = verdicts_for_study(study)
    lines = [(v.claim, v.scope, v.verdict) for v in verdicts if v.claim[0] == "1"]
    assert lines == [
        ("1a", "convmixer-64/4", SUPPORTS),
        ("1a", "resnet-sep-32/1", CONTRADICTS),
        ("1b", "convmixer-64/4", SUPPORTS),
        ("1b", "resnet-sep-32/1", SUPPORTS),
    ]
    resnet_1a = next(v for v in verdicts if v.claim == "1a" and v.scope == "resnet-sep-32/1")
    assert resnet_1a.estimate.value == pytest.approx(-5.0)  # its own runs, never paired with ConvMixer's
    assert "exact McNemar per seed (only Chans / only Full right): 0/50" in resnet_1a.details
    assert {v.scope for v in verdicts if v.claim == "2a"} == {"convmixer-64/4"}
    assert {(v.scope, v.verdict) for v in verdicts if v.claim[0] == "3"} == {("", NOT_RUN)}
    table = verdict_table(verdicts)
    assert [r["scope"] for r in table.rows if r["claim"] == "1b"] == ["convmixer-64/4", "resnet-sep-32/1"]
    # the same folder read as one family (results.json of one model): no names
    results["studies"]["classification"]["data"].pop("families")
    (study / "results.json").write_text(json.dumps(results))
    assert {v.scope for v in verdicts_for_study(study)} == {""}

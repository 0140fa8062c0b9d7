"""``reproduce --until-decided`` end to end on real Fashion-MNIST (tiny model), and its schedule."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import SYSTEM_FASHION_MNIST
from spatialmix.analysis.claims import CLAIMS, SUPPORTS, Verdict
from spatialmix.analysis.statistics import Estimate, continued_levels, spending_levels
from spatialmix.analysis.verdicts_from_folders import verdicts_for_study
from spatialmix.cli import main as cli
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.io.study_results import StudyResult
from spatialmix.studies import sequential
from spatialmix.studies.context import PRESETS, StudyContext, classification_run_dir
from spatialmix.studies.reproduce import reproduce
from spatialmix.studies.sequential import SeedRounds, more_seeds, reproduce_until_decided, sequential_table
from spatialmix.sweep.plan import study_sweep

OVERRIDES = dict(train_subset=256, test_subset=128, epochs=1, width=8, depth=1, progress=False)
needs_data = pytest.mark.skipif(
    not SYSTEM_FASHION_MNIST.is_dir(), reason="needs the OS package dataset-fashion-mnist"
)


def test_the_schedule_of_looks():
    rounds = SeedRounds(start=3, step=2, max_seeds=8)
    assert rounds.looks == 4 and [rounds.seeds_at(j) for j in (1, 2, 3, 4)] == [3, 5, 7, 8]
    assert more_seeds((5, 2), 4) == (5, 2, 0, 1)
    with pytest.raises(SpatialmixError, match="give --max-seeds 3 or more"):
        SeedRounds(start=3, step=2, max_seeds=2)
    with pytest.raises(SpatialmixError, match="--step must be a whole number"):
        SeedRounds(start=3, step=0, max_seeds=8)


def test_spending_levels_spend_exactly_alpha_little_early():
    levels = spending_levels(4)
    assert sum(1 - v for v in levels) == pytest.approx(0.05)
    assert levels == pytest.approx([1 - 0.05 / 16, 1 - 0.05 * 3 / 16, 1 - 0.05 * 5 / 16, 1 - 0.05 * 7 / 16])
    assert spending_levels(1) == pytest.approx([0.95])
    with pytest.raises(SpatialmixError, match="looks must be"):
        spending_levels(0)


def test_until_decided_needs_a_study_of_the_claims_and_room_for_its_first_round(tmp_path):
    with pytest.raises(SpatialmixError, match="names none of them"):
        reproduce_until_decided("quick", tmp_path, studies=["init"])
    # the quick preset trains Full and Chans on 4 seeds in its first round
    with pytest.raises(SpatialmixError, match="--max-seeds 3 is below the 4 seeds of the first round"):
        reproduce_until_decided("quick", tmp_path / "x", max_seeds=3)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def _finished(out, seeds):
    return {
        (mode, seed): runs.is_run_dir(classification_run_dir(out, mode, seed))
        and (classification_run_dir(out, mode, seed) / runs.SUMMARY).is_file()
        for mode in ("full", "chans", "space")
        for seed in seeds
    }


def _summary_times(out):
    return {p: p.stat().st_mtime_ns for p in sorted((out / "classification").glob("*/summary.json"))}


@pytest.mark.slow
@needs_data
def test_until_decided_adds_seeds_to_the_max_and_reuses_runs_when_started_again(tmp_path, monkeypatch):
    monkeypatch.delenv("SPATIALMIX_DATA", raising=False)
    out = tmp_path / "study"
    args = dict(seeds=(0, 1), studies=["classification", "verdicts"], max_seeds=3, seed_step=1, **OVERRIDES)
    record = reproduce_until_decided("quick", out, **args)
    entry = record["studies"]["classification"]
    assert entry["seeds"] in (2, 3) and entry["looks"] == 2
    if entry["stopped"] == "max seeds":  # tiny models: usually still open after the first look
        expected = {"look": 2, "looks": 2, "seeds": 3, "level": spending_levels(2)[1], "stopped": "max seeds"}
        assert entry == {**expected, "spent": pytest.approx(0.05), "max_seeds": 3}
        assert all(_finished(out, (0, 1, 2)).values())
    saved = json.loads((out / "results.json").read_text())
    assert saved["sequential"] == json.loads(json.dumps(record))
    # the verdicts use each study's spent level, and say so
    levels = {v.estimate.level for v in verdicts_for_study(out) if v.claim in ("1a", "1b") and v.estimate}
    assert levels == {entry["level"]}
    before = _summary_times(out)
    again = reproduce_until_decided("quick", out, **args)
    assert _summary_times(out) == before  # every run reused, none trained again
    assert again["studies"] == record["studies"]
    # the closing steps alone keep the spent levels; a study of the claims run again drops them
    kept = json.loads((out / "results.json").read_text())["sequential"]
    reproduce("quick", out, seeds=(0, 1), studies=["verdicts"], **OVERRIDES)
    assert json.loads((out / "results.json").read_text())["sequential"] == kept
    reproduce("quick", out, seeds=(0, 1), studies=["classification"], **OVERRIDES)
    assert "sequential" not in json.loads((out / "results.json").read_text())


@pytest.mark.slow
@needs_data
def test_until_decided_stops_at_the_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SPATIALMIX_DATA", raising=False)
    out = tmp_path / "study"
    record = reproduce_until_decided(
        "quick", out, seeds=(0, 1), studies=["classification"], budget="1s", seed_step=1, **OVERRIDES
    )
    entry = record["studies"]["classification"]
    assert entry["stopped"] == "budget" and entry["seeds"] == 2 and entry["look"] == 1
    assert not any(_finished(out, (2,)).values())  # no round after the first
    assert "needs about" in record["budget_note"] and "budget" in capsys.readouterr().out


@pytest.mark.slow
@needs_data
def test_a_decided_study_gets_no_more_seeds(tmp_path, monkeypatch):
    monkeypatch.delenv("SPATIALMIX_DATA", raising=False)
    decided = [
        Verdict(c, CLAIMS[c].effect, Estimate(-0.1, -0.2, -0.05, "t", 2), SUPPORTS) for c in ("1a", "1b")
    ]
    monkeypatch.setattr(sequential, "verdicts_for_study", lambda out: decided)
    out = tmp_path / "study"
    record = reproduce_until_decided(
        "quick", out, seeds=(0, 1), studies=["classification"], seed_step=1, **OVERRIDES
    )
    assert record["studies"]["classification"]["stopped"] == "decided"
    assert not any(_finished(out, (2,)).values())


@pytest.mark.slow
@needs_data
def test_following_the_advice_of_the_refusal_runs_with_a_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SPATIALMIX_DATA", raising=False)
    out = tmp_path / "study"
    tiny = ["--train-subset", "256", "--test-subset", "128", "--width", "8", "--depth", "1", "--no-progress"]
    argv = ["reproduce", "--out", str(out), "--seeds", "0", "1", "--studies", "classification", *tiny]
    assert cli.main([*argv, "--budget", "1s"]) == 2
    assert "add --until-decided" in capsys.readouterr().err
    assert cli.main([*argv, "--budget", "1s", "--until-decided"]) == 0
    record = json.loads((out / "results.json").read_text())["sequential"]
    assert record["studies"]["classification"]["stopped"] == "budget" and record["budget_s"] == 1.0


def test_a_preset_gives_each_study_and_mode_the_seeds_it_needs(tmp_path):
    quick = PRESETS["quick"]
    ctx = StudyContext(quick, tmp_path, quick.seeds, {})
    assert ctx.seeds_for("classification") == (0, 1, 2, 3)
    assert ctx.seeds_for("classification", "space") == (0, 1, 2)
    assert ctx.seeds_for("robustness") == ctx.seeds_for("smoothing") == (0, 1, 2)
    given = StudyContext(quick, tmp_path, (0, 1, 2, 3), {}, seeds_given=True)
    assert given.seeds_for("classification", "space") == given.seeds_for("robustness") == (0, 1, 2, 3)
    jobs = study_sweep("quick", tmp_path).jobs
    assert sorted(j.name for j in jobs if j.name.startswith("space")) == [f"space-seed{s}" for s in (0, 1, 2)]
    assert len(jobs) == 4 + 4 + 3 + 4 + 4 + 3  # ConvMixer, then the ResNet
    assert sorted(j.name for j in jobs if j.name.startswith("resnet-chans")) == [
        f"resnet-chans-seed{s}" for s in (0, 1, 2, 3)
    ]
    assert len(study_sweep("quick", tmp_path, seeds=(0, 1)).jobs) == 2 * 6


@pytest.mark.slow
@needs_data
def test_until_decided_starts_each_study_from_the_seeds_its_preset_gives_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SPATIALMIX_DATA", raising=False)
    tiny = replace(PRESETS["quick"], name="tiny", seeds=(0, 1), seed_counts={"space": 1, "robustness": 1})
    monkeypatch.setitem(PRESETS, "tiny", tiny)
    never_decided = [
        Verdict(c, CLAIMS[c].effect, Estimate(0.0, -1.0, 1.0, "t", 2), "inconclusive") for c in CLAIMS
    ]
    looks = []

    def look(out):  # what was trained when each look was taken
        looks.append({key for key, done in _finished(out, (0, 1, 2)).items() if done})
        return never_decided

    monkeypatch.setattr(sequential, "verdicts_for_study", look)
    out = tmp_path / "study"
    record = reproduce_until_decided(
        "tiny", out, studies=["classification"], max_seeds=3, seed_step=1, **OVERRIDES
    )
    assert record["studies"]["classification"] == {
        "look": 2,
        "looks": 2,
        "seeds": 3,
        "level": spending_levels(2)[1],
        "spent": pytest.approx(0.05),
        "max_seeds": 3,
        "stopped": "max seeds",
    }
    # the first look: Full and Chans on the preset's 2 seeds, Space on 1; the second: every mode on 3
    assert looks[0] == {("full", 0), ("full", 1), ("chans", 0), ("chans", 1), ("space", 0)}
    assert looks[1] == {(mode, seed) for mode in ("full", "chans", "space") for seed in (0, 1, 2)}


@pytest.mark.parametrize("until_decided", [False, True])
def test_repeated_seeds_are_refused_before_anything_is_written(tmp_path, until_decided):
    run = reproduce_until_decided if until_decided else reproduce
    with pytest.raises(SpatialmixError, match=r"--seeds repeats seed 0 \(0 0 1\); give each seed once"):
        run("quick", tmp_path / "x", seeds=(0, 0, 1), studies=["classification"])
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- the schedule, run by stand-ins


class StandIn:
    """``reproduce`` and the verdicts replaced: each call records the seeds each study got and keeps
    results.json's ``sequential`` record as ``reproduce`` does; no claim is ever decided."""

    def __init__(self, monkeypatch, out: Path):
        self.out, self.calls = out, []
        monkeypatch.setattr(sequential, "reproduce", self.reproduce)
        monkeypatch.setattr(sequential, "verdicts_for_study", lambda out: [])
        monkeypatch.setattr(sequential, "_decided", lambda verdicts, study: False)

    def reproduce(self, preset, out_dir, seeds, studies, sequential=None, **common):
        self.calls.append((tuple(studies), len(seeds) if seeds else None))
        self.out.mkdir(parents=True, exist_ok=True)
        record = json.loads(json.dumps(sequential))
        (self.out / "results.json").write_text(json.dumps({"preset": preset, "sequential": record}))
        return {s: StudyResult(s, data={"time_s": 1.0}) for s in studies}

    def seeds_seen(self, study: str) -> list[int]:
        return [count for studies, count in self.calls if study in studies and count is not None]


def test_the_default_most_seeds_is_4x_each_studys_own_first_round(tmp_path, monkeypatch):
    stand_in = StandIn(monkeypatch, tmp_path / "study")
    record = reproduce_until_decided("quick", tmp_path / "study", studies=["classification", "robustness"])
    # quick: classification starts from 4 seeds, robustness from 3 (as the docstring says)
    assert record["studies"]["classification"]["max_seeds"] == 16
    assert record["studies"]["robustness"]["max_seeds"] == 12
    assert record["studies"]["robustness"]["looks"] == 1 + math.ceil((12 - 3) / 2)
    assert max(stand_in.seeds_seen("robustness")) == 12 and max(stand_in.seeds_seen("classification")) == 16
    assert "4 x the seeds of that study's first round" in " ".join(reproduce_until_decided.__doc__.split())
    for entry in record["studies"].values():  # every look's error rate, spent in full by the last
        assert entry["stopped"] == "max seeds" and entry["spent"] == pytest.approx(0.05)


def test_a_rerun_with_more_seeds_continues_the_spending_of_the_first(tmp_path, monkeypatch):
    out = tmp_path / "study"
    stand_in = StandIn(monkeypatch, out)
    # the first run stops after its first look (budget): 3 seeds of at most 7, looks at 3, 5, 7
    first = reproduce_until_decided("quick", out, studies=["robustness"], max_seeds=7, budget=0.5)
    entry = first["studies"]["robustness"]
    assert (entry["look"], entry["looks"], entry["stopped"]) == (1, 3, "budget")
    assert entry["spent"] == pytest.approx(0.05 / 9)
    # started again with at most 11 seeds: it goes on from look 1 (3 seeds), not from a fresh schedule
    stand_in.calls.clear()
    again = reproduce_until_decided("quick", out, studies=["robustness"], max_seeds=11)
    entry = again["studies"]["robustness"]
    assert (entry["look"], entry["looks"], entry["seeds"], entry["stopped"]) == (5, 5, 11, "max seeds")
    later = continued_levels(5, 1, 0.05 / 9)
    assert entry["level"] == pytest.approx(later[-1]) and entry["spent"] == pytest.approx(0.05)
    # the first round reuses the preset's 3 seeds, then one round per look
    assert stand_in.calls[0] == (("robustness",), None) and stand_in.seeds_seen("robustness") == [5, 7, 9, 11]
    # a fresh spending over the same seeds would spend more than 5% in all: 0.05 / 9 before, 0.05 now
    assert 0.05 / 9 + sum(1 - v for v in spending_levels(5)) > 0.05
    # started once more: nothing is left to spend, so no seed is added, whatever --max-seeds says
    stand_in.calls.clear()
    once_more = reproduce_until_decided("quick", out, studies=["robustness"], max_seeds=21)
    assert once_more["studies"]["robustness"] == entry and max(stand_in.seeds_seen("robustness")) == 11
    assert "its whole error rate is spent" in sequential_table(once_more).rows[0]["stopped"]


def test_continued_levels_spend_what_the_earlier_looks_left():
    # the same schedule, continued after look 2 of 4: the levels spending_levels gives it
    assert continued_levels(4, 2, 0.05 * (2 / 4) ** 2) == pytest.approx(spending_levels(4)[2:])
    # a longer schedule after look 1 of 3: what is left, 0.05 * (1 - 1/9), in the power family's shape
    levels = continued_levels(6, 1, 0.05 / 9)
    assert len(levels) == 5 and 0.05 / 9 + sum(1 - v for v in levels) == pytest.approx(0.05)
    assert all(a > b for a, b in zip(levels, levels[1:]))  # little early, most late
    assert continued_levels(3, 3, 0.05) == [] and continued_levels(5, 2, 0.05) == pytest.approx([1.0] * 3)
    with pytest.raises(SpatialmixError, match="error rate spent must be between 0 and 0.05"):
        continued_levels(5, 2, 0.2)


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"look": 0, "looks": 3, "seeds": 3, "level": 0.99}, "look"),
        ({"look": 4, "looks": 3, "seeds": 3, "level": 0.99}, "looks"),
        ({"look": 1, "looks": 3, "seeds": 3, "level": 0.99, "spent": 0.5}, "spent"),
        ({"look": 1, "looks": 3, "seeds": 3, "level": 0.99, "max_seeds": 2}, "max_seeds"),
    ],
)
def test_a_damaged_earlier_record_is_one_error_naming_its_field(tmp_path, monkeypatch, entry, field):
    StandIn(monkeypatch, tmp_path / "elsewhere")  # (nothing is trained, whatever happens)
    results = {"preset": "quick", "sequential": {"studies": {"robustness": entry}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(SpatialmixError, match=rf"field sequential\.studies\.robustness\.{field} must be"):
        reproduce_until_decided("quick", tmp_path, studies=["robustness"])


def test_an_earlier_record_without_its_spent_error_rate_is_read_by_its_schedule(tmp_path, monkeypatch):
    # results.json written before the record kept what each study spent: look 2 of 4 spent 0.05 / 4
    StandIn(monkeypatch, tmp_path)
    old = {"look": 2, "looks": 4, "seeds": 5, "level": spending_levels(4)[1], "stopped": "budget"}
    results = {"preset": "quick", "sequential": {"step": 2, "rho": 2.0, "studies": {"robustness": old}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    record = reproduce_until_decided("quick", tmp_path, studies=["robustness"])
    entry = record["studies"]["robustness"]
    assert (entry["looks"], entry["max_seeds"]) == (4, 9)  # 5 seeds + 2 more looks of 2
    assert entry["level"] == pytest.approx(spending_levels(4)[3]) and entry["spent"] == pytest.approx(0.05)

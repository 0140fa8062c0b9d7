"""The classification study end to end on real Fashion-MNIST (tiny model, small subsets)."""

from __future__ import annotations

import dataclasses
import json
import re
import statistics

import pytest
import torch
from safetensors.torch import load_file

from conftest import SYSTEM_FASHION_MNIST
from spatialmix.analysis.verdicts_from_folders import reproduce_commands, verdicts_for_study
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.studies import context as study
from spatialmix.studies import reproduce as reproduce_module
from spatialmix.studies.classification import MODEL_FIELDS, classification_jobs, model_families
from spatialmix.studies.context import PRESETS, StudyContext, classification_run_dir
from spatialmix.studies.reproduce import reproduce
from spatialmix.studies.sequential import CLAIM_STUDIES


def on_real_data(test):
    """A test that trains on the real Fashion-MNIST: the slow tier."""
    needs_data = pytest.mark.skipif(
        not SYSTEM_FASHION_MNIST.is_dir(),
        reason="needs the OS package dataset-fashion-mnist (scripts/setup.sh installs it)",
    )
    return pytest.mark.slow(needs_data(test))


OVERRIDES = dict(train_subset=512, test_subset=256, epochs=1, width=16, depth=1, progress=False)
QUICK_RESNET = PRESETS["quick"].options["classification"]["families"]["resnet"]
RESNET_NAME = f"resnet-sep-{QUICK_RESNET['width']}/{QUICK_RESNET['depth']}"
SEEDS = (0, 1)
MODES = ("full", "chans", "space")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """Run the study once for the module; the tests read what it left."""
    out = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SPATIALMIX_DATA", raising=False)
        printed = _capture(
            lambda: reproduce("quick", out, seeds=SEEDS, studies=["classification"], **OVERRIDES)
        )
    return out, printed


def _capture(fn):
    import contextlib
    import io

    buffer = io.StringIO()  # tables go to stdout, progress lines to stderr
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        results = fn()
    return results, buffer.getvalue()


def summaries(out, mode):
    return [runs.read_json(classification_run_dir(out, mode, seed) / runs.SUMMARY) for seed in SEEDS]


@on_real_data
def test_prints_and_saves_the_table(study_dir):
    out, (results, printed) = study_dir
    words = printed.split()  # (a header may wrap onto two lines in a narrow console)
    for name in ("Full", "Chans", "Space", "test acc", "frozen params"):
        assert all(word in words for word in name.split()), name
    assert (out / "results.json").is_file() and (out / "results.md").is_file()
    markdown = (out / "results.md").read_text()
    for mode in ("| Full |", "| Chans |", "| Space |"):
        assert mode in markdown
    saved = json.loads((out / "results.json").read_text())
    assert saved["preset"] == "quick" and saved["seeds"] == list(SEEDS)
    assert saved["overrides"] == OVERRIDES
    table = results["classification"].tables[0]
    assert [row["mode"] for row in table.rows] == ["Full", "Chans", "Space"]
    for mode in MODES:
        assert runs.read_json(classification_run_dir(out, mode, 0) / runs.STATUS)["state"] == "finished"
        record = runs.read_json(classification_run_dir(out, mode, 0) / runs.CONFIG)
        assert record["data"]["source"] == "/usr/share/datasets/fashion-mnist"  # the real data
        assert (record["data"]["n_train"], record["data"]["n_test"]) == (512, 256)


@on_real_data
def test_parameter_counts(study_dir):
    out, (results, _) = study_dir
    base = PRESETS["quick"].base
    width, depth, k, p = OVERRIDES["width"], OVERRIDES["depth"], base.kernel_size, base.patch_size
    spatial = depth * (width * k * k + width)  # depthwise weights + biases
    channel = depth * (width * width + width)  # pointwise weights + biases
    batchnorms = (1 + 2 * depth) * 2 * width  # scale + shift after the stem and each conv
    stem = 1 * width * p * p + width  # 1 input channel (grey images)
    head = width * 10 + 10
    total = stem + spatial + channel + batchnorms + head
    rows = {row["mode"]: row for row in results["classification"].tables[0].rows}
    assert rows["Full"]["frozen"] == 0 and rows["Full"]["trainable"] == total
    assert rows["Chans"]["frozen"] == spatial and rows["Chans"]["trainable"] == total - spatial
    assert rows["Space"]["frozen"] == channel and rows["Space"]["trainable"] == total - channel


@on_real_data
def test_same_seed_modes_start_from_the_same_filters(study_dir):
    out, _ = study_dir
    init = {mode: load_file(str(classification_run_dir(out, mode, 0) / runs.INIT)) for mode in MODES}
    assert init["full"].keys() == init["chans"].keys() == init["space"].keys()
    for name in init["full"]:
        assert torch.equal(init["full"][name], init["chans"][name])
        assert torch.equal(init["full"][name], init["space"][name])
    other_seed = load_file(str(classification_run_dir(out, "chans", 1) / runs.INIT))
    assert not torch.equal(other_seed["blocks.0.0.fn.0.weight"], init["chans"]["blocks.0.0.fn.0.weight"])


@on_real_data
def test_two_seeds_give_mean_and_std(study_dir):
    out, (results, printed) = study_dir
    rows = {row["mode"]: row for row in results["classification"].tables[0].rows}
    for mode in MODES:
        accs = [s["test_acc"] for s in summaries(out, mode)]
        mean, std = rows[mode.capitalize()]["test_acc"]
        assert mean == pytest.approx(statistics.fmean(accs))
        assert std == pytest.approx(statistics.stdev(accs))
        assert rows[mode.capitalize()]["seeds"] == 2
    assert "±" in printed
    # The two seeds are different runs, not one run counted twice.
    first, second = (
        runs.read_jsonl(classification_run_dir(out, "full", seed) / runs.METRICS) for seed in SEEDS
    )
    assert first[0]["train_loss"] != second[0]["train_loss"]
    assert (
        summaries(out, "chans")[0]["frozen_fingerprint"] != summaries(out, "chans")[1]["frozen_fingerprint"]
    )


@on_real_data
def test_second_call_reuses_finished_runs(study_dir, monkeypatch):
    out, (first, _) = study_dir
    files = {}
    run_dirs = sorted((out / "classification").iterdir())
    assert len(run_dirs) == 2 * len(MODES) * len(SEEDS)  # both families
    for run in run_dirs:
        files[run] = (
            snapshot := {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
        )
        assert snapshot

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study, "fit", no_training)
    again, printed = _capture(
        lambda: reproduce("quick", out, seeds=SEEDS, studies=["classification"], **OVERRIDES)
    )
    for run, snapshot in files.items():
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == snapshot
    for again_table, first_table in zip(again["classification"].tables, first["classification"].tables):
        assert again_table.rows == first_table.rows
    assert "Chans" in printed


@on_real_data
def test_both_families_are_trained_in_every_mode_and_judged_apart(study_dir):
    """The separable ResNet beside ConvMixer: its own run folders and table, the overrides that do not
    name a model, and 1a and 1b per family in the verdicts."""
    out, (results, _) = study_dir
    convmixer, resnet = results["classification"].tables
    assert "convmixer-16/1" in convmixer.title and "resnet-sep" in resnet.title
    assert [row["mode"] for row in resnet.rows] == ["Full", "Chans", "Space"]
    for mode in MODES:
        for seed in SEEDS:
            record = runs.read_json(classification_run_dir(out, mode, seed, "resnet-") / runs.CONFIG)
            train = record["train"]
            assert (train["model"], train["mode"], train["seed"]) == ("resnet-sep", mode, seed)
            assert (train["train_subset"], train["test_subset"]) == (512, 256)  # the overrides
            assert train["width"] == QUICK_RESNET["width"]  # --width was ConvMixer's
    rows = {row["mode"]: row for row in resnet.rows}
    assert rows["Full"]["frozen"] == 0 and rows["Chans"]["frozen"] > 0 and rows["Space"]["frozen"] > 0
    lines = [(v.claim, v.scope, v.estimate.n_seeds) for v in verdicts_for_study(out) if v.claim[0] == "1"]
    assert lines == [
        ("1a", "convmixer-16/1", 2),
        ("1a", RESNET_NAME, 2),
        ("1b", "convmixer-16/1", 2),
        ("1b", RESNET_NAME, 2),
    ]


@on_real_data
def test_interrupted_study_run_is_continued(tmp_path):
    """A study killed in the middle of a run continues that run in place instead of refusing it."""
    overrides = dict(OVERRIDES, train_subset=256, test_subset=128)
    out = tmp_path / "study"
    config = PRESETS["quick"].base.replace(**overrides, mode="chans", seed=0)
    run_dir = classification_run_dir(out, "chans", 0)
    study.fit(config, run_dir, max_steps=1)  # stopped after one step: no checkpoint yet
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "running"
    init = (run_dir / runs.INIT).read_bytes()
    _capture(lambda: reproduce("quick", out, seeds=(0,), studies=["classification"], **overrides))
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "finished"
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1]
    assert (run_dir / runs.INIT).read_bytes() == init
    # Asking for another config in the same study folder is refused, and the run is kept.
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    runs.atomic_write_json(run_dir / runs.STATUS, {"state": "running", "epoch": 1})
    before[run_dir / runs.STATUS] = (run_dir / runs.STATUS).read_bytes()
    # (the finished Full run of the first call is the first to refuse: it is never reused for another config)
    with pytest.raises(SpatialmixError, match="different config|finished with another configuration"):
        _capture(
            lambda: reproduce(
                "quick", out, seeds=(0,), studies=["classification"], **{**overrides, "lr": 0.02}
            )
        )
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@on_real_data
def test_a_conflicting_run_is_refused_before_any_job_trains(tmp_path):
    """A study whose last job would be refused (its folder holds a run with another config) stops
    before training anything: the jobs before it are not started, the conflicting run is untouched."""
    overrides = dict(OVERRIDES, train_subset=256, test_subset=128)
    out = tmp_path / "study"
    config = PRESETS["quick"].base.replace(**overrides, mode="space", seed=0, lr=0.02)
    run_dir = classification_run_dir(out, "space", 0)  # space runs last in the study's order
    study.fit(config, run_dir, max_steps=1)  # an interrupted run with another lr
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(SpatialmixError, match="different config"):
        _capture(
            lambda: reproduce("quick", out, seeds=(0,), studies=["classification"], processes=1, **overrides)
        )
    assert not classification_run_dir(out, "full", 0).exists()
    assert not classification_run_dir(out, "chans", 0).exists()
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_unknown_names(tmp_path):
    with pytest.raises(SpatialmixError, match="unknown preset 'fast'; choose one of: paper, quick"):
        reproduce("fast", tmp_path)
    with pytest.raises(SpatialmixError, match="unknown study 'segmentation'"):
        reproduce("quick", tmp_path, studies=["segmentation"])
    with pytest.raises(SpatialmixError, match="unknown training settings"):
        reproduce("quick", tmp_path, studies=["classification"], warmup_epochs=3)
    assert not any(tmp_path.iterdir())


def test_the_study_table_names_every_study_in_running_order():
    """One visible table: every entry is a function of a studies module, the report runs last, the
    verdicts just before it, each claim's studies before the verdicts, and the studies run on request
    or kept aside by --until-decided are entries of it."""
    names = list(reproduce_module.STUDIES)
    assert names[-2:] == ["verdicts", "report"]
    assert names.index("classification") < names.index("robustness") < names.index("smoothing")
    assert set(CLAIM_STUDIES) == {"classification", "robustness", "smoothing", "unshuffle"}
    assert set(CLAIM_STUDIES) <= set(names[: names.index("verdicts")])
    on_request = {s for preset in PRESETS.values() for s in preset.on_request}
    assert set(names) >= on_request | reproduce_module.KEEP_SEQUENTIAL

    for name in names:
        assert reproduce_module.STUDIES[name].__module__.startswith("spatialmix.studies.")
    with pytest.raises(SpatialmixError, match="unknown study 'segmentation'"):
        reproduce_module.study_function("segmentation")


@on_real_data
def test_reproduce_prints_the_time_of_each_study_and_the_total(study_dir):
    out, (results, printed) = study_dir
    assert "classification took" in printed and "total" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["studies"]["classification"]["data"]["time_s"] > 0


def test_the_quick_preset_leaves_claim_2_to_the_standard_preset(tmp_path):
    """The quick preset runs what it can decide in minutes; its claim-2 lines name the standard preset."""
    assert reproduce_module.default_studies("quick") == ["classification", "unshuffle", "verdicts", "report"]
    # the standard preset runs claims 1 and 2 on the quick preset's ConvMixer; claim 3 is the quick preset's
    assert reproduce_module.default_studies("standard") == [
        "classification",
        "robustness",
        "smoothing",
        "verdicts",
        "report",
    ]
    standard = study.PRESETS["standard"]
    assert standard.base == study.PRESETS["quick"].base  # the quick recipe, on more seeds
    assert len(standard.options["smoothing"]["sigmas"]) >= 3  # a slope that can bend
    ctx = study.StudyContext(standard, tmp_path, standard.seeds, {})
    jobs = classification_jobs(ctx)
    assert {job.family for job in jobs} == {"convmixer-64/4"}
    attacked = {(mode, seed) for seed in ctx.seeds_for("robustness") for mode in ("full", "chans")}
    trained = {(job.config.mode, job.config.seed) for job in jobs}
    assert len(attacked) == 48 and attacked <= trained  # the attacks reuse the classification runs
    commands = reproduce_commands(tmp_path, "quick")
    standard = "spatialmix reproduce --preset standard"
    assert commands["robustness"] == commands["smoothing"] == f"{standard} --out runs/standard"
    assert commands["classification"] == f"spatialmix reproduce --out {tmp_path} --studies classification"


def test_each_study_records_the_machine_and_command_that_ran_it(study_dir):
    """What `spatialmix publish` stamps the published numbers with comes from the study's own entry."""
    import torch

    out, _ = study_dir
    machine = json.loads((out / "results.json").read_text())["studies"]["classification"]["data"]["machine"]
    assert machine["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["command"].startswith(f"spatialmix reproduce --preset quick --out {out} --seeds ")
    assert "--studies classification" in machine["command"]
    assert machine["versions"]["torch"] and machine["processes"] >= 1 and machine["date"]


# --------------------------------------------------------------------------- the plan (no training)


def plan(tmp_path, seeds=None, preset="quick", **overrides):
    ctx = StudyContext(PRESETS[preset], tmp_path, tuple(seeds or PRESETS[preset].seeds), overrides)
    ctx.seeds_given = seeds is not None
    return classification_jobs(ctx)


def test_the_plan_trains_both_families_in_every_mode_in_their_own_run_folders(tmp_path):
    jobs = plan(tmp_path, seeds=(0, 1))
    families = list(dict.fromkeys(job.family for job in jobs))
    assert families == ["convmixer-64/4", RESNET_NAME]
    for family in families:
        mine = [job for job in jobs if job.family == family]
        assert sorted((j.config.mode, j.config.seed) for j in mine) == sorted(
            (mode, seed) for mode in MODES for seed in (0, 1)
        )
    assert len({job.run_dir for job in jobs}) == len(jobs) == 12
    # ConvMixer keeps the folders the robustness, smoothing and init studies reuse
    convmixer = {(j.config.mode, j.config.seed): j.run_dir for j in jobs if j.family == families[0]}
    assert convmixer == {(m, s): classification_run_dir(tmp_path, m, s) for m in MODES for s in (0, 1)}
    resnet = [job for job in jobs if job.family == RESNET_NAME]
    assert {job.run_dir.name for job in resnet} == {f"resnet-{m}-seed{s}" for m in MODES for s in (0, 1)}
    assert {job.config.model for job in resnet} == {"resnet-sep"}
    # The families differ in their model only (the ResNet has no kernel size to set): the same data,
    # epochs and optimizer
    own = PRESETS["quick"].base
    for job in resnet:
        assert job.config.kernel_size is None
        assert job.config.replace(**{k: getattr(own, k) for k in MODEL_FIELDS}, mode="full", seed=0) == own


def seed_counts(jobs) -> dict[tuple[str, str], int]:
    counts = {}
    for job in jobs:
        key = (job.family, job.config.mode)
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_the_preset_seeds_limit_each_family_and_mode(tmp_path):
    """The preset's seed counts by study, mode and family; seeds given on the command line go to
    every family and mode."""
    quick = PRESETS["quick"]

    def expected(*keys):
        return min(quick.seed_counts.get(k, len(quick.seeds)) for k in keys)

    counts = seed_counts(plan(tmp_path))
    for mode in MODES:
        assert counts[("convmixer-64/4", mode)] == expected("classification", mode)
        assert counts[(RESNET_NAME, mode)] == expected("classification", mode, "resnet")
    fewer = dataclasses.replace(quick, seed_counts={"space": 3, "resnet": 2})
    ctx = StudyContext(fewer, tmp_path, quick.seeds, {})
    assert seed_counts(classification_jobs(ctx)) == {
        **{("convmixer-64/4", m): n for m, n in (("full", 4), ("chans", 4), ("space", 3))},
        **{(RESNET_NAME, m): 2 for m in MODES},
    }
    given = seed_counts(plan(tmp_path, seeds=(4, 5, 6, 7, 8, 9, 10)))
    assert set(given.values()) == {7} and len(given) == 6


def test_overrides_naming_a_model_change_the_presets_own_model_only(tmp_path):
    jobs = plan(tmp_path, seeds=(0,), width=16, depth=1, epochs=2)
    widths = {job.family: job.config.width for job in jobs}
    assert widths == {"convmixer-16/1": 16, RESNET_NAME: QUICK_RESNET["width"]}
    assert {job.config.epochs for job in jobs} == {2}
    # two families of one name stay apart (the verdicts' scope names each)
    width, depth = QUICK_RESNET["width"], QUICK_RESNET["depth"]
    same = plan(tmp_path, seeds=(0,), model="resnet-sep", width=width, depth=depth)
    assert {job.family for job in same} == {RESNET_NAME, f"{RESNET_NAME} (resnet)"}


@pytest.mark.parametrize(
    "families, message",
    [
        ({"res/net": {"model": "resnet-sep"}}, "preset family 'res/net': its name begins run folder names"),
        ({"resnet": {"modle": "resnet-sep"}}, "preset family resnet: 'modle' is not a training setting"),
        ({"resnet": {"model": "resnett"}}, "unknown model 'resnett'"),
    ],
)
def test_a_bad_family_of_a_preset_is_one_clear_error(tmp_path, families, message):
    preset = dataclasses.replace(PRESETS["quick"], options={"classification": {"families": families}})
    ctx = StudyContext(preset, tmp_path, (0,), {})
    with pytest.raises(SpatialmixError, match=re.escape(message)):
        model_families(ctx)

"""Sweeps: grids from YAML, jobs through submitit, interrupted sweeps that continue, gathered tables."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

import pytest

from conftest import SRC_DIR, snapshot_files
from spatialmix.cli.main import main
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.studies.context import classification_run_dir
from spatialmix.sweep.plan import grid_sweep, load_grid_file, plan_sweep, study_sweep
from spatialmix.sweep.run import finished_summary, run_sweep
from spatialmix.sweep.settings import JobResources, SweepSettings, parse_slurm_options, parse_time
from spatialmix.sweep.slurm import make_executor

TINY_BASE = dict(
    model="convmixer",
    width=8,
    depth=1,
    kernel_size=3,
    patch_size=4,
    epochs=1,
    batch_size=64,
    train_subset=128,
    test_subset=64,
    progress=False,
    device="cpu",
    amp="none",
)


def write_grid(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def tiny_grid(fake_fashion_dir):
    """4 configurations (Full / Chans x 2 seeds) of a tiny ConvMixer on the fake Fashion-MNIST."""
    return {
        "base": {**TINY_BASE, "data_dir": str(fake_fashion_dir)},
        "grid": {"mode": ["full", "chans"], "seed": [0, 1]},
    }


# --------------------------------------------------------------------------- planning


def test_grid_file_expands_to_every_combination(tmp_path):
    path = write_grid(
        tmp_path / "grid.yaml",
        """
preset: quick
base:
  epochs: 3
  weight_decay: 5e-3     # YAML reads this as a string
grid:
  model: [convmixer-128/6, "timm:convnext_atto"]
  mode: [full, chans, space]
  seed: [0, 1]
""",
    )
    sweep = grid_sweep(load_grid_file(path), tmp_path / "out", lr=0.05)
    assert len(sweep.jobs) == 2 * 3 * 2
    combos = {(j.config.model, j.config.mode, j.config.seed) for j in sweep.jobs}
    assert combos == {
        (m, mode, s)
        for m in ("convmixer-128/6", "timm:convnext_atto")
        for mode in ("full", "chans", "space")
        for s in (0, 1)
    }
    for job in sweep.jobs:
        # base, command line, preset
        assert (job.config.epochs, job.config.weight_decay, job.config.lr, job.config.dataset) == (
            3,
            0.005,
            0.05,
            "fashion-mnist",
        )
        assert job.run_dir.parent == tmp_path / "out" / "runs" and "/" not in job.run_dir.name
    assert sweep.jobs[-1].name == "model=timm-convnext_atto,mode=space,seed=1"
    assert len({j.run_dir for j in sweep.jobs}) == len(sweep.jobs)


@pytest.mark.parametrize(
    "text,message",
    [
        ("grid: {mode: [full]}\nbogus: 1\n", "unknown keys \\['bogus'\\]"),
        ("grid: {modee: [full]}\n", "unknown training settings \\['modee'\\]"),
        ("grid: {mode: []}\n", "non-empty list"),
        ("grid: {mode: full}\n", "non-empty list"),
        ("grid: {mode: [full, full]}\n", "lists a value twice"),
        ("base: {mode: full}\ngrid: {mode: [chans]}\n", "both swept"),
        ("grid: {mode: [full, sideways]}\n", "configuration mode=sideways: unknown mode 'sideways'"),
        ("grid: {epochs: [1, two]}\n", "configuration epochs=two"),
        ("base: [1, 2]\ngrid: {mode: [full]}\n", "`base:` in the grid file must be a mapping"),
        ("- just a list\n", "must be a mapping"),
        ("grid: {mode: [full\n", "not valid YAML at line"),
        ("preset: huge\ngrid: {mode: [full]}\n", "unknown preset 'huge'"),
    ],
)
def test_bad_grid_files_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(SpatialmixError, match=message):
        grid_sweep(load_grid_file(write_grid(tmp_path / "g.yaml", text)), tmp_path / "out")


def test_slurm_time_formats():
    assert [parse_time(t) for t in ("90", "30:30", "1:30:00", "2-0", "1-12:00", "0-0:0:30")] == [
        90,
        31,
        90,
        2880,
        2160,
        1,
    ]
    for bad in ("1h", "", "0", "1:2:3:4"):
        with pytest.raises(SpatialmixError, match="time"):
            parse_time(bad)


def test_job_resources_refuse_impossible_requests():
    JobResources(gpus=0, nodes=1, cpus=0).validate()  # the smallest request is fine
    for changes, message in (
        (dict(gpus=-1), "--gpus must be 0 or more, got -1"),
        (dict(cpus=-2), "--cpus must be 0 or more, got -2"),
        (dict(nodes=0), "--nodes must be 1 or more, got 0"),
        (dict(time_min=0), "at least 1, got 0"),
        (dict(mem_gb=float("nan")), "--mem-gb must be a positive number"),
    ):
        with pytest.raises(SpatialmixError, match=re.escape(message)):
            JobResources(**changes).validate()
    # Several GPUs or nodes per configuration is a DDP job: only Slurm starts one.
    JobResources(gpus=4, nodes=2).check_for("slurm")
    JobResources(gpus=1).check_for("local")
    for changes in (dict(gpus=2), dict(nodes=2)):
        with pytest.raises(SpatialmixError, match="use --executor slurm"):
            JobResources(**changes).check_for("local")


def test_slurm_options_are_key_value_pairs():
    assert parse_slurm_options(["account=vision", "--qos=high", "mail-type=END,FAIL", "comment=a=b"]) == {
        "account": "vision",
        "qos": "high",
        "mail_type": "END,FAIL",
        "comment": "a=b",
    }
    for bad in ("account", "=abc"):
        with pytest.raises(SpatialmixError, match="is not KEY=VALUE"):
            parse_slurm_options([bad])


def test_plan_sweep_takes_a_grid_file_or_a_preset_and_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path / "modes.yaml", "grid: {mode: [full, chans]}\n")
    sweep = plan_sweep(SweepSettings(grid=str(grid)), epochs=1)
    assert sweep.out_dir == Path("runs/sweep-modes") and [j.config.epochs for j in sweep.jobs] == [1, 1]
    sweep = plan_sweep(SweepSettings(preset="quick", seeds=(4,)))
    assert sweep.out_dir == Path("runs/reproduce") and {j.config.seed for j in sweep.jobs} == {4}
    assert plan_sweep(SweepSettings(grid=str(grid), out="elsewhere")).out_dir == Path("elsewhere")
    for settings, message in (
        (SweepSettings(), "give either a grid file or --preset"),
        (SweepSettings(grid=str(grid), preset="quick"), "give either a grid file or --preset"),
        (SweepSettings(grid=str(grid), seeds=(1,)), "--seeds is for --preset"),
    ):
        with pytest.raises(SpatialmixError, match=message):
            plan_sweep(settings)
    assert list(tmp_path.iterdir()) == [grid]  # planning writes nothing


# --------------------------------------------------------------------------- submitit


@pytest.mark.slow
def test_submitit_sweep_interrupted_after_two_runs_only_the_other_two(tiny_grid, tmp_path, monkeypatch):
    # The job processes import the code under test, one thread each (2 shared cores).
    monkeypatch.setenv("PYTHONPATH", str(SRC_DIR))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = grid_sweep(tiny_grid, tmp_path / "sweep")
    finished = []

    def stop_after_two(job, summary):
        finished.append(job.name)
        assert summary["mode"] == job.config.mode and summary["seed"] == job.config.seed
        if len(finished) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does while the sweep waits for its jobs

    # Two jobs at a time: the third starts when the first finishes, and is cancelled by the interruption
    # long before it could finish (it is still importing torch when the second one ends).
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, "submitit-local", max_running=2, poll_s=0.2, on_finish=stop_after_two)
    assert list((tmp_path / "sweep" / "submitit").glob("*_submitted.pkl"))  # they did go through submitit
    # The interruption cancelled the third job (SIGINT). A job that was about to finish may still
    # finish (its run then counts as done: that is correct), so wait until every job process has
    # ended before reading what is done.
    _wait_for_job_processes(tmp_path / "sweep" / "submitit")
    done = [job.name for job in sweep.jobs if finished_summary(job) is not None]
    assert set(finished) <= set(done) and len(finished) == 2 and len(done) in (2, 3)
    before = {name: snapshot_files(tmp_path / "sweep" / "runs" / name) for name in done}

    started_again = []
    outcome = run_sweep(
        grid_sweep(tiny_grid, tmp_path / "sweep"),
        "submitit-local",
        max_running=2,
        poll_s=0.2,
        on_finish=lambda job, summary: started_again.append(job.name),
    )
    rest = [job.name for job in sweep.jobs if job.name not in done]
    assert sorted(started_again) == sorted(outcome.ran) == sorted(rest) and rest
    assert sorted(outcome.skipped) == sorted(done) and not outcome.failed
    for name in done:  # not run again: not a byte changed
        assert snapshot_files(tmp_path / "sweep" / "runs" / name) == before[name]

    # Gathered: the classification table (Full and Chans over 2 seeds), every configuration, the verdicts.
    classification, every, verdicts = outcome.tables
    assert [(r["claim"], r["seeds"]) for r in verdicts.rows][0] == ("1a", 2) and verdicts.title.startswith(
        "Verdicts"
    )
    assert [(r["mode"], r["seeds"]) for r in classification.rows] == [("Full", 2), ("Chans", 2)]
    assert len(every.rows) == 4 and {r["state"] for r in every.rows} == {"finished"}
    for row in every.rows:
        summary = runs.read_json(
            tmp_path / "sweep" / "runs" / f"mode={row['mode']},seed={row['seed']}" / runs.SUMMARY
        )
        assert row["test_acc"] == summary["test_acc"]
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert len(results["runs"]) == 4 and all(r["summary"] for r in results["runs"])
    assert "| Chans |" in (tmp_path / "sweep" / "results.md").read_text()


def _wait_for_job_processes(submitit_dir: Path, timeout_s: float = 120) -> None:
    """Until the submitit-local jobs (their job ids are process ids) have exited or are zombies."""

    def running(pid: int) -> bool:
        try:
            state = next(
                line
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("State:")
            )
        except (OSError, StopIteration):  # gone
            return False
        return state.split()[1] != "Z"

    deadline = time.monotonic() + timeout_s
    for pid in {int(p.name.split("_")[0]) for p in submitit_dir.glob("*_submitted.pkl")}:
        while running(pid):
            assert time.monotonic() < deadline, f"job process {pid} did not end after its cancellation"
            time.sleep(0.1)


def test_slurm_jobs_ask_for_the_resources(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    srun = fake_bin / "srun"  # submitit only checks that Slurm's srun exists
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    resources = JobResources(
        gpus=4,
        nodes=2,
        time_min=parse_time("1:30:00"),
        partition="gpu",
        cpus=8,
        slurm_options={"account": "vision"},
    )
    script = make_executor("slurm", tmp_path / "submitit", resources)._executor._make_submission_file_text(
        "python -m x", "uid"
    )
    for line in (
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--nodes=2",
        "--time=90",
        "--partition=gpu",
        "--cpus-per-task=8",
        "--account=vision",
    ):
        assert f"#SBATCH {line}\n" in script


def test_slurm_without_slurm_is_a_clear_error(tiny_grid, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun anywhere
    with pytest.raises(SpatialmixError, match="--executor slurm cannot start here"):
        run_sweep(grid_sweep(tiny_grid, tmp_path / "out"), "slurm")
    assert not (tmp_path / "out" / "runs").exists()


# --------------------------------------------------------------------------- in this process


@pytest.mark.slow
def test_study_sweep_runs_land_where_reproduce_reads_them(fake_fashion_dir, tmp_path):
    overrides = {k: v for k, v in TINY_BASE.items() if k not in ("model",)}
    sweep = study_sweep("quick", tmp_path / "study", seeds=(3,), data_dir=str(fake_fashion_dir), **overrides)
    modes = ("full", "chans", "space")
    assert [j.run_dir for j in sweep.jobs] == [  # both model families of the classification study
        classification_run_dir(tmp_path / "study", m, 3, prefix) for prefix in ("", "resnet-") for m in modes
    ]
    outcome = run_sweep(sweep)
    assert sorted(outcome.ran) == sorted(f"{p}{m}-seed3" for p in ("", "resnet-") for m in modes)
    convmixer, resnet, verdicts = outcome.tables
    for table in (convmixer, resnet):
        assert [r["mode"] for r in table.rows] == ["Full", "Chans", "Space"]
    lines = [(r["claim"], r["scope"], r["seeds"]) for r in verdicts.rows[:4]]
    scopes = ("convmixer-8/1", "resnet-sep-32/1")
    assert lines == [(claim, scope, 1) for claim in ("1a", "1b") for scope in scopes]
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    assert (
        results["seeds"] == [3]
        and results["studies"]["classification"]["data"]["runs"]["chans"][0]["seed"] == 3
    )
    # Started again, nothing runs.
    assert (
        run_sweep(
            study_sweep("quick", tmp_path / "study", seeds=(3,), data_dir=str(fake_fashion_dir), **overrides)
        ).ran
        == []
    )


def test_finished_run_of_another_config_is_not_reused(tiny_grid, tmp_path):
    tiny_grid["grid"] = {"mode": ["chans"]}
    run_sweep(grid_sweep(tiny_grid, tmp_path / "s"))
    tiny_grid["base"]["lr"] = 0.5
    with pytest.raises(
        SpatialmixError, match="finished with another configuration \\(lr=0.01 there, 0.5 now\\)"
    ):
        run_sweep(grid_sweep(tiny_grid, tmp_path / "s"))


def test_failed_configuration_does_not_stop_the_others(tiny_grid, tmp_path):
    del tiny_grid["base"]["batch_size"]
    tiny_grid["grid"] = {"batch_size": [64, 4096]}  # 4096 > the 128 training images
    outcome = run_sweep(grid_sweep(tiny_grid, tmp_path / "s"))
    assert outcome.ran == ["batch_size=64"] and list(outcome.failed) == ["batch_size=4096"]
    assert "lower --batch-size" in outcome.failed["batch_size=4096"]
    assert [r["state"] for r in outcome.tables[-1].rows] == ["finished", "not finished"]


def test_cli_sweep(tiny_grid, tmp_path, capsys):
    import yaml

    tiny_grid["grid"] = {"mode": ["full", "space"]}
    grid = write_grid(tmp_path / "g.yaml", yaml.safe_dump(tiny_grid))
    out = tmp_path / "cli"
    assert main(["sweep", str(grid), "--out", str(out), "--dry-run"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [(line[0], line[1], line[-1]) for line in lines] == [
        ("new", "mode=full", str(out / "runs" / "mode=full")),
        ("new", "mode=space", str(out / "runs" / "mode=space")),
    ]
    assert main(["sweep", str(grid), "--out", str(out), "--epochs", "1"]) == 0
    assert "0 configuration(s) finished before, 2 now" in capsys.readouterr().out
    assert (out / "results.md").is_file()
    for argv, message in (
        [["sweep", "--out", str(out)], "give either a grid file or --preset"],
        [["sweep", str(grid), "--seeds", "1"], "--seeds is for --preset"],
        [["sweep", str(grid), "--out", str(out), "--slurm-option", "account"], "KEY=VALUE"],
        [["sweep", str(grid), "--out", str(out), "--time", "soon"], "not a Slurm time limit"],
        [["sweep", str(grid), "--out", str(out), "--gpus", "2"], "use --executor slurm"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_a_configuration_naming_its_model_keeps_none_of_the_presets_sizes(tmp_path, capsys):
    """Over the quick preset (ConvMixer-64/4, patch 2), `model: convmixer-128/6` trains ConvMixer-128/6,
    a size given beside it still wins, and --dry-run shows the model as it will be built."""
    from spatialmix.cli.main import main
    from spatialmix.sweep.plan import grid_sweep, resolved_model

    spec = {"preset": "quick", "grid": {"model": ["convmixer", "convmixer-128/6"], "seed": [0]}}
    jobs = {job.labels["model"]: job.config for job in grid_sweep(spec, tmp_path / "s").jobs}
    assert (jobs["convmixer"].width, jobs["convmixer"].depth, jobs["convmixer"].patch_size) == (64, 4, 2)
    assert (jobs["convmixer-128/6"].width, jobs["convmixer-128/6"].depth) == (None, None)
    named = jobs["convmixer-128/6"]
    assert resolved_model(named) == "convmixer-128/6 (width 128, depth 6, kernel 5, patch 2)"
    assert resolved_model(jobs["convmixer"]) == "convmixer (width 64, depth 4, kernel 5, patch 2)"
    spec = {"preset": "quick", "base": {"width": 96}, "grid": {"model": ["convmixer-128/6"]}}
    (job,) = grid_sweep(spec, tmp_path / "t").jobs
    assert resolved_model(job.config) == "convmixer-128/6 (width 96, depth 6, kernel 5, patch 2)"
    grid = tmp_path / "grid.yaml"
    grid.write_text("preset: quick\ngrid:\n  model: [convmixer-128/6]\n")
    assert main(["sweep", str(grid), "--out", str(tmp_path / "u"), "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("new") and "convmixer-128/6 (width 128, depth 6, kernel 5, patch 2)" in line

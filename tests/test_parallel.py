"""Independent jobs side by side: results in order, errors surface, and nothing depends on neighbours."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import torch

from spatialmix.engine.parallel import run_side_by_side
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.studies.context import train_or_reuse
from spatialmix.studies.reproduce import resolve_parallelism


def _square_and_threads(x: int) -> tuple[int, int]:
    return x * x, torch.get_num_threads()


def _refuse(x: int) -> int:
    if x == 2:
        raise SpatialmixError(f"job {x} refused")
    return x


@pytest.mark.slow
def test_results_come_back_in_job_order_with_the_threads_asked_for():
    seen = []
    results = run_side_by_side(
        [(_square_and_threads, (i,)) for i in range(5)],
        processes=2,
        threads=1,
        on_done=lambda i, r: seen.append(i),
    )
    assert results == [(i * i, 1) for i in range(5)]
    assert sorted(seen) == list(range(5))


def test_one_process_runs_here_in_order():
    seen = []
    before = torch.get_num_threads()
    try:
        assert run_side_by_side(
            [(_square_and_threads, (3,))] * 2, processes=1, threads=1, on_done=lambda i, r: seen.append(i)
        ) == [(9, 1), (9, 1)]
    finally:
        torch.set_num_threads(before)
    assert seen == [0, 1]


@pytest.mark.slow
def test_a_failing_job_raises_its_own_error():
    with pytest.raises(SpatialmixError, match="job 2 refused"):
        run_side_by_side([(_refuse, (i,)) for i in range(4)], processes=2)


def test_parallelism_defaults_and_bad_values():
    assert resolve_parallelism(1, None) == (1, None)
    assert resolve_parallelism(2, None) == (2, 1)
    assert resolve_parallelism(2, 2) == (2, 2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(SpatialmixError, match="must be a whole number of at least 1"):
            resolve_parallelism(bad, None)
        with pytest.raises(SpatialmixError, match="--threads must be"):
            resolve_parallelism(1, bad)


def _weights(run_dir):
    return (runs.latest_checkpoint(run_dir) / runs.MODEL_FILE).read_bytes()


@pytest.mark.slow
def test_a_run_trained_beside_another_is_bitwise_the_run_trained_alone(
    tmp_path, tiny_config, fake_fashion_dir
):
    config = tiny_config(data_dir=str(fake_fashion_dir), train_subset=256, threads=1, width=24, depth=2)
    neighbour = config.replace(mode="space", seed=5, width=32)
    alone = run_side_by_side([(train_or_reuse, (config, tmp_path / "alone"))], processes=1, threads=1)[0]
    beside = run_side_by_side(
        [
            (train_or_reuse, (config, tmp_path / "beside")),
            (train_or_reuse, (neighbour, tmp_path / "neighbour")),
        ],
        processes=2,
        threads=1,
    )[0]
    assert _weights(tmp_path / "alone") == _weights(tmp_path / "beside")
    assert (
        alone["test_acc"] == beside["test_acc"] and alone["test_correct_bits"] == beside["test_correct_bits"]
    )
    assert (
        runs.read_jsonl(tmp_path / "alone" / runs.METRICS)[0]["train_loss"]
        == runs.read_jsonl(tmp_path / "beside" / runs.METRICS)[0]["train_loss"]
    )


WAIT_S = 120  # far longer than a job of these tests takes (a job that waits this long fails its test)


def _wait_for(path: Path) -> bool:
    """Whether ``path`` appeared within WAIT_S seconds (polled: a job has no other line to the test)."""
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _released(release: str) -> str:
    return "released" if _wait_for(Path(release)) else "never released"


def _return_at_once() -> str:
    return "done"


@pytest.mark.slow
def test_each_job_is_reported_as_it_ends_not_when_all_have(tmp_path):
    """A long job does not hold back the report of a short one (the study's progress lines): job 0 ends
    only when the report of job 1 releases it."""
    release = tmp_path / "release"
    reported = []

    def on_done(index: int, result: str) -> None:
        reported.append((index, result))
        if index == 1:
            release.touch()

    results = run_side_by_side(
        [(_released, (str(release),)), (_return_at_once, ())], processes=2, on_done=on_done
    )
    assert reported == [(1, "done"), (0, "released")] and results == ["released", "done"]


def _work_long(started: str, finished: str) -> None:
    """A job far longer than the test: it says it started, works for WAIT_S, then writes its result."""
    Path(started).write_text(str(os.getpid()))
    time.sleep(WAIT_S)
    Path(finished).write_text("finished")


def _refuse_once_started(started: str) -> None:
    _wait_for(Path(started))
    raise SpatialmixError("job 2 refused")


def _is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (exited, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
def test_a_failed_study_stops_the_other_jobs_instead_of_leaving_them_running(tmp_path):
    """After an error (or Ctrl-C / SIGTERM sent to this process only) no orphaned worker trains on: the
    job still running when another fails is stopped before run_side_by_side returns."""
    started, finished = tmp_path / "started", tmp_path / "finished"
    jobs = [(_work_long, (str(started), str(finished))), (_refuse_once_started, (str(started),))]
    with pytest.raises(SpatialmixError, match="job 2 refused"):
        run_side_by_side(jobs, processes=2)
    # (a pool that waited for the long job instead would return only after it wrote its result)
    assert not _is_running(int(started.read_text())) and not finished.exists()


def test_interrupted_reproduce_says_to_run_the_same_command_again(monkeypatch, capsys):
    from spatialmix.cli import main as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(
        cli.COMMANDS, "reproduce", dataclasses.replace(cli.COMMANDS["reproduce"], run=interrupted)
    )
    assert cli.main(["reproduce", "--out", "somewhere"]) == 130
    err = capsys.readouterr().err
    assert "continue with the same command" in err and "--resume" not in err

"""One sweep job: train a configuration, resume it, or read it back (what every executor runs)."""

from __future__ import annotations

from pathlib import Path

from spatialmix.engine import distributed
from spatialmix.engine.config import TrainConfig
from spatialmix.io import runs
from spatialmix.studies.context import train_or_reuse


def _clear_cut_short_start(run_dir: Path) -> None:
    """A job stopped before its run's first file leaves a folder that is not a run yet but not empty;
    remove what it wrote (never the lock file, which another process may hold), so it starts from scratch."""
    if not run_dir.is_dir():
        return
    with runs.locked(run_dir):  # never under a process that is writing the run right now
        if not runs.is_run_dir(run_dir) and runs.Run(run_dir).holds_nothing():
            for p in run_dir.iterdir():
                if p.name != runs.LOCK:
                    p.unlink()


def run_job(config: dict, run_dir: str) -> dict:
    """What every job runs: train one configuration, resume it, or read it back when it finished."""

    if distributed.launched_rank() == 0:  # the one process of the job that writes
        _clear_cut_short_start(Path(run_dir))
    return train_or_reuse(TrainConfig.from_dict(config), Path(run_dir))

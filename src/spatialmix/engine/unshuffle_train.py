"""Training an un-shuffling run, and reading its permutation back."""

from __future__ import annotations

from pathlib import Path

from spatialmix.data.datasets import ImageData
from spatialmix.data.permutation import PERMUTATION_FILE, PixelPermutation, check_or_save_permutation
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.loaders import load_data_for
from spatialmix.engine.tasks import saved_task
from spatialmix.engine.train import fit
from spatialmix.engine.unshuffle import UnshuffleTask
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs


def train_unshuffle(
    config: TrainConfig,
    run_dir: str | Path,
    task: UnshuffleTask | None = None,
    resume: bool = False,
    data: ImageData | None = None,
    max_steps: int | None = None,
) -> dict:
    """Train an un-shuffling run (``spatialmix.engine.train.fit`` with `UnshuffleTask`).

    The permutation is saved as ``permutation.safetensors`` in ``run_dir``; when resuming, the one
    already there must be the one the task rebuilds from its seed.
    """
    task = task or UnshuffleTask()
    config.validate()
    task.check_config(config)
    run_dir = Path(run_dir)
    data = data if data is not None else load_data_for(config)
    permutation = task.permutation_for(data.image_size)
    if resume and (run_dir / PERMUTATION_FILE).exists():
        check_or_save_permutation(run_dir / PERMUTATION_FILE, permutation)
    summary = fit(config, run_dir, resume=resume, data=data, max_steps=max_steps, task=task)
    check_or_save_permutation(run_dir / PERMUTATION_FILE, permutation)
    return summary


def load_run_permutation(run_dir: str | Path) -> PixelPermutation:
    """The permutation of a saved un-shuffling run, checked against the one its seed rebuilds.

    Everything comes from the validated `spatialmix.io.runs.Run` (a run folder is untrusted):
    a malformed config.json is one line naming the file and the field.
    """
    run = runs.Run(run_dir).check()
    task = saved_task(run)
    if not isinstance(task, UnshuffleTask):
        raise SpatialmixError(f"{run.path} is not an un-shuffling run (its task is {task.name!r})")
    try:
        rebuilt = task.permutation_for(run.record()["data"]["image_size"])
    except SpatialmixError as err:  # e.g. a window that does not divide the image size
        raise SpatialmixError(f"{run.file(runs.CONFIG)}: field 'task': {err}") from None
    path = run.file(PERMUTATION_FILE)
    if not path.exists():
        return rebuilt
    stored = PixelPermutation.load(path, rebuilt.image_size)
    if stored != rebuilt:
        raise SpatialmixError(
            f"{path} does not match the run's seed {task.perm_seed} and window {task.window}: "
            f"the file was replaced or edited"
        )
    return stored

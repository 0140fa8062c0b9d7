"""A training run you can hold: its config, metrics, summary, model, checkpoints and robustness results.

``sm.train(...)`` returns one; ``sm.Run.open(RUN_DIR)`` opens any run folder, finished or not.
Every attribute reads the folder when it is asked for (a run still training shows its latest
epoch), through the validated reader `spatialmix.io.runs.Run`:

    run = sm.Run.open("runs/tiny")
    run.status, run.summary["test_acc"], run.metrics.tail(1)
    model = run.model()                    # the newest checkpoint's weights, in eval mode
    model(images)                          # images in [0, 1]: the model normalizes them itself
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from spatialmix.engine.config import TrainConfig
from spatialmix.engine.tasks import saved_config
from spatialmix.engine.train import load_trained_model
from spatialmix.errors import SpatialmixError
from spatialmix.io import run_files, runs
from spatialmix.robustness.attacks import RESULT_NAME


class Run:
    """One run folder as a Python object.

    ``model``: for a run trained with a model of its own, the factory or module that rebuilds it
    (what ``sm.train`` was given; `model` takes one too), and ``trust_code=True`` to import the
    factory its ``config.json`` names instead (only for runs you trust).
    """

    def __init__(self, path: str | os.PathLike, *, model=None, trust_code: bool = False):
        self._folder = runs.Run(path)
        self._model, self._trust_code = model, trust_code

    @classmethod
    def open(cls, path: str | os.PathLike, *, model=None, trust_code: bool = False) -> Run:
        """The run in ``path`` (finished or not); a folder that is not a spatialmix run is one clear error."""
        run = cls(path, model=model, trust_code=trust_code)
        run._folder.check()
        return run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"

    @property
    def path(self) -> Path:
        return self._folder.path

    @property
    def config(self) -> TrainConfig:
        """The run's TrainConfig (``config.json``)."""
        return saved_config(self._folder)

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per finished epoch (``metrics.jsonl``): ``epoch``, ``step``, ``train_loss``,
        ``test_acc``, ``lr``, ...; empty before the first epoch ends."""
        return pd.DataFrame.from_records(self._folder.metrics())

    @property
    def summary(self) -> dict | None:
        """The final numbers (``summary.json``); None until the run finishes."""
        return self._folder.summary()

    @property
    def status(self) -> str | None:
        """``running``, ``finished``, ``failed`` or ``interrupted`` (``status.json``); None before the
        run wrote one."""
        return self._folder.status().get("state")

    @property
    def checkpoints(self) -> list[Path]:
        """The complete checkpoint folders, oldest first (the last is the one ``model()`` loads)."""
        return self._folder.checkpoints_newest_first()[::-1]

    def model(
        self, weights: str = "latest", *, model=None, trust_code: bool | None = None, device="cpu"
    ) -> nn.Module:
        """The run's model with its weights loaded (``latest``: the newest checkpoint; ``init``: as it was
        built), in eval mode, taking images in [0, 1] with its normalization inside.

        RobustBench's convention: give it unnormalized images (an attack from any library can run on
        it as it is); it normalizes them with the mean and std of the run's data set (``config.json``).
        It is an ``InputSpaceModel``: ``.model`` is the trained network itself, which takes normalized
        images, and whose ``state_dict`` is the checkpoint's. ``model`` / ``trust_code``: as for
        ``Run`` (default: the handle's).
        """
        module, _ = load_trained_model(
            self.path,
            weights,
            torch.device(device),
            model=model if model is not None else self._model,
            trust_code=self._trust_code if trust_code is None else trust_code,
        )
        return module

    def robustness(self) -> dict | None:
        """The robustness result ``spatialmix attack`` / ``sm.attack_runs`` saved for this run
        (``robustness.json``: ``clean_acc``, and per budget ``eps`` and ``robust_acc``), or None."""
        path = self._folder.file(f"{RESULT_NAME}.json")
        if not path.is_file():
            return None
        return check_robustness(runs.read_json(path, "robustness result"), path)


def check_robustness(result, path: Path) -> dict:
    """The fields of a saved robustness result that readers rely on, checked (one line when one is wrong)."""
    if not isinstance(result, dict):
        raise SpatialmixError(f"{path} must hold a JSON object; the file is damaged or not spatialmix's")
    run_files.need_field(path, result, "clean_acc", run_files.is_number, "a number")
    budgets = run_files.need_field(path, result, "budgets", lambda v: isinstance(v, list), "a list")
    for budget in budgets:
        if not isinstance(budget, dict):
            raise run_files.bad_field(path, "budgets", "a list of objects", budget)
        for name in ("eps", "robust_acc"):
            run_files.need_field(path, budget, name, run_files.is_number, "a number")
    return result

"""What a run learns, and the model it learns it with.

A task (`ClassificationTask`, or
`UnshuffleTask`) builds the network for the data, turns loader
batches into (inputs, targets), and gives the loss, a running score for the progress bar and the
test metrics. `TASKS` is the one table of them. `build_model` turns a config into a
model with its mixers initialized and frozen (`spatialmix.core.mixing`); a model of your own
(`spatialmix.engine.user_model`) goes through the same steps.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from spatialmix.core.mixing import apply_mixing
from spatialmix.data.datasets import ImageData
from spatialmix.engine.classification import ClassificationTask
from spatialmix.engine.config import TrainConfig, is_user_reference
from spatialmix.engine.init_source import empirical_prior
from spatialmix.engine.model_size import check_model_size
from spatialmix.engine.unshuffle import UnshuffleTask
from spatialmix.engine.user_model import UserModel
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.io import runs

# Every task a run can learn, by the name config.json records.
TASKS: dict[str, type] = {
    "classification": ClassificationTask,
    "unshuffle": UnshuffleTask,
}


def task_from_dict(d: dict | None):
    if d is not None and not (isinstance(d, dict) and isinstance(d.get("name"), str)):
        raise SpatialmixError(
            f"a task must be an object with a 'name', got {d!r}; the run's config.json is damaged"
        )
    d = dict(d or {"name": "classification"})
    name = d.pop("name")
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    try:
        return TASKS[name](**d)
    except TypeError:
        raise SpatialmixError(
            f"task {name!r} has settings this spatialmix does not know ({', '.join(sorted(d))}); "
            f"the run's config.json is damaged or from another version"
        ) from None


def saved_task(run: runs.Run, record: dict | None = None):
    """The task of a saved run (classification when config.json names none); a bad one is an error naming the
    file. ``record``: config.json when the caller has read it already."""
    record = run.record() if record is None else record
    try:
        return task_from_dict(record.get("task"))
    except SpatialmixError as err:
        raise SpatialmixError(f"{run.file(runs.CONFIG)}: field 'task': {err}") from None


def saved_config(run: runs.Run) -> TrainConfig:
    """The saved TrainConfig of a run (fields added to TrainConfig after the run was made take their
    defaults)."""
    record = run.record()
    task = saved_task(run, record)  # first: a damaged task is reported before the training fields
    config = TrainConfig.from_dict(record["train"], source=run.file(runs.CONFIG))
    if not is_user_reference(config.model):  # user code builds its own model: its sizes are not ours
        check_model_size(config, record["data"], task, source=run.file(runs.CONFIG))
    return config


def data_info(data: ImageData) -> dict:
    """What building a model needs to know about its data (saved in config.json)."""
    return {
        "name": data.name,
        "in_chans": data.in_chans,
        "image_size": data.image_size,
        "num_classes": data.num_classes,
        "mean": list(data.mean),
        "std": list(data.std),
        "n_train": len(data.train_labels),
        "n_test": len(data.test_labels),
        "source": data.source,
    }


def build_model(
    config: TrainConfig,
    in_chans: int,
    num_classes: int,
    image_size: int,
    task=None,
    user: UserModel | None = None,
    fresh: bool = False,
) -> nn.Module:
    """The model of ``config`` with its mixers initialized from the seeded init specs and frozen per mode.

    Construction runs under a fixed seed too, so every tensor (not only the mixers) is a function
    of the config: the same config always rebuilds the same initial model. ``user``: a model of your
    own (its factory is called under the same seed; a module is used as it is, or a copy of it with
    ``fresh``) instead of the one the task builds from ``config.model``.
    """
    task = task or ClassificationTask()
    info = {"in_chans": in_chans, "num_classes": num_classes, "image_size": image_size}
    if user is None:  # a model of your own is sized by your code, not by the config
        check_model_size(config, info, task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.resolved_init_seed)
        model = user.create(info, fresh) if user is not None else task.create_model(config, info)
    return prepare_model(model, config)


def prepare_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    """What every model of a run goes through: its mixers drawn from the seeded init specs and frozen
    per mode (the CPU kernels run around it while it trains, never inside it)."""
    spatial_init = config.spatial_init_spec()
    if spatial_init is not None and spatial_init.name == "covariance-from":
        spatial_init = dataclasses.replace(spatial_init, prior=empirical_prior(spatial_init.source))
    model = apply_mixing(
        model,
        config.mode,
        spatial_init=spatial_init,
        channel_init=config.channel_init_spec(),
        seed=config.resolved_init_seed,
        spatial=config.spatial_pattern,
        channel=config.channel_pattern,
    )
    return model

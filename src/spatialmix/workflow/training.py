"""``sm.train``: train a config or a model of your own, and get the run back as a `Run`.

The loop itself is `spatialmix.engine.train.fit` (which returns the summary dict); this adds
what a person calling it wants: a model (or its factory) as the first argument, the config's fields
as keyword arguments, and a handle on the result.
"""

from __future__ import annotations

import dataclasses
import os

from spatialmix.data.datasets import ImageData
from spatialmix.engine.config import TrainConfig, is_user_reference
from spatialmix.engine.resume import resume_config
from spatialmix.engine.train import fit
from spatialmix.engine.user_model import as_user_model
from spatialmix.errors import SpatialmixError, did_you_mean
from spatialmix.io import runs
from spatialmix.workflow.handle import Run


def train(
    model_or_config,
    run_dir: str | os.PathLike,
    *,
    config: TrainConfig | None = None,
    data: ImageData | None = None,
    resume: bool = False,
    callbacks=(),
    trust_code: bool = False,
    max_steps: int | None = None,
    task=None,
    **fields,
) -> Run:
    """Train in ``run_dir`` and return the `Run` (its ``summary``, ``metrics``, ``model()``, ...).

    The trained model, ``train(...).model()``, takes images in [0, 1] and normalizes them itself
    (RobustBench's convention; see ``Run.model``).

    ``model_or_config``: a `TrainConfig`, or a model of your own: an ``nn.Module``, or a
    factory (a function or class returning one, called with whichever of ``in_chans``,
    ``num_classes``, ``image_size`` it takes, under the run's seed). Its mixers are initialized and
    frozen per ``mode`` as a built-in model's are; ``config.json`` records where it came from (the
    factory's ``module:name``) and its tensors' shapes. ``config``: the settings for a model of your
    own (default ``TrainConfig()``); ``fields``: TrainConfig fields to change (``mode="chans"``,
    ``epochs=1``). ``resume=True`` continues the run (with its saved config, changed by ``fields``:
    ``sm.train(build, run_dir, resume=True, epochs=5)``). ``callbacks``:
    `Callback` objects (``sm.TensorBoardLogger()``, ...).
    ``trust_code``: import the factory a config or a run names (only for code you trust).
    ``data``, ``max_steps``, ``task``: see `spatialmix.engine.train.fit`.
    """
    if isinstance(model_or_config, str):
        raise SpatialmixError(
            f"train() takes a TrainConfig or a model of your own, not a model's name; for "
            f"{model_or_config!r} pass TrainConfig(model={model_or_config!r}): "
            f"sm.train(sm.TrainConfig(model={model_or_config!r}), run_dir)"
        )
    if isinstance(model_or_config, TrainConfig):
        if config is not None:
            raise SpatialmixError("pass the config once: as the first argument or as config=, not both")
        config, user = _changed(model_or_config, fields), None
    else:
        user = as_user_model(model_or_config)
        config = _config_for_model(user, run_dir, config, resume, fields)
    fit(
        config,
        run_dir,
        resume=resume,
        data=data,
        max_steps=max_steps,
        task=task,
        model=user,
        trust_code=trust_code,
        callbacks=callbacks,
    )
    return Run(run_dir, model=model_or_config if user is not None else None, trust_code=trust_code)


def _checked(fields: dict) -> dict:
    """``fields``, each a TrainConfig field (a typo is one line with a suggestion)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for name in fields:
        if name not in names:
            raise SpatialmixError(
                f"train() got an unknown setting {name!r};{did_you_mean(name, names)} the settings are "
                f"TrainConfig's fields"
            )
    return fields


def _changed(config: TrainConfig, fields: dict) -> TrainConfig:
    return config.replace(**_checked(fields)) if fields else config


def _config_for_model(user, run_dir, config: TrainConfig | None, resume: bool, fields: dict) -> TrainConfig:
    """The config that trains ``user``: ``config`` (or, resuming, the run's saved one) with ``fields``,
    its ``model`` naming the factory."""
    if "model" in fields:
        raise SpatialmixError("model= is the first argument here; pass the factory or module itself")
    if config is not None and is_user_reference(config.model) and config.model != user.name:
        raise SpatialmixError(
            f"the config names the model {config.model}, but {user.name} was given; pass one of them"
        )
    if not resume or config is not None:
        return _changed((config or TrainConfig()).replace(model=user.name), fields)
    saved = resume_config(run_dir, _checked(fields))  # refuses a bare resume where nothing was saved
    if runs.Run(run_dir).holds_nothing():  # nothing was saved: the run starts
        return saved.replace(model=user.name)
    if saved.model != user.name:
        raise SpatialmixError(
            f"{run_dir} was trained with the model {saved.model}, not {user.name}; pass that one to resume it"
        )
    return saved

"""How large the model of a config is, measured before it is built.

Its parameters, and the activations (every layer's output) of one training batch, are counted.

Sizes that pass their limits one by one (`SIZE_LIMITS`) can still
multiply into a model no machine holds, and a run folder's config.json may come from anyone. The
model is built on torch's meta device, which records shapes and allocates nothing, and one image
goes through it there; `check_model_size` refuses a model above
`MAX_PARAMETERS` or `MAX_ACTIVATIONS` in
one line naming the settings that make it large.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from spatialmix.engine.config import TrainConfig
from spatialmix.errors import SpatialmixError
from spatialmix.io.limits import MAX_ACTIVATIONS, MAX_PARAMETERS

# The settings that decide a model's size, named in the error (those a config sets).
SIZE_FIELDS = ("model", "width", "depth", "kernel_size", "patch_size", "token_hidden", "channel_hidden")
DATA_FIELDS = ("in_chans", "num_classes", "image_size")

_MEASURED: dict[str, tuple[int, int]] = {}  # a run folder is loaded several times by one command


def model_size(config: TrainConfig, info: dict, task) -> tuple[int, int]:
    """``(parameters, activations of one batch of config.batch_size images)`` of the model ``task``
    builds for ``config`` and data ``info`` (in_chans, num_classes, image_size); ``(0, 0)`` for a model
    that cannot be built on the meta device (its real build decides)."""
    key = json.dumps([config.to_dict(), {k: info[k] for k in DATA_FIELDS}, task.to_dict()], sort_keys=True)
    if key not in _MEASURED:
        if len(_MEASURED) >= 64:
            _MEASURED.clear()
        _MEASURED[key] = _measure(config, info, task)
    parameters, per_image = _MEASURED[key]
    return parameters, per_image * config.batch_size


def _measure(config: TrainConfig, info: dict, task) -> tuple[int, int]:
    """Parameters and activations per image, on the meta device."""
    task = copy.deepcopy(task)  # building may cache tensors in the task (a permutation): never meta ones
    with torch.device("meta"):
        try:
            model = task.create_model(config, info)
        except SpatialmixError:
            raise
        except Exception:  # a constructor that needs real tensors: its real build decides
            return 0, 0
        parameters = sum(p.numel() for p in model.parameters())
        outputs = [0]

        def count(module, inputs, output):
            outputs[0] += output.numel() if isinstance(output, torch.Tensor) else 0

        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        hooks = [m.register_forward_hook(count) for m in leaves]
        try:
            model(torch.empty(1, info["in_chans"], info["image_size"], info["image_size"]))
        except Exception:
            pass  # the real forward fails there too: what ran until then is what it would allocate
        finally:
            for hook in hooks:
                hook.remove()
    return parameters, outputs[0]


def check_model_size(config: TrainConfig, info: dict, task, source: str | Path | None = None) -> None:
    """Refuse, before anything is allocated, a model above the limits; ``source``: the config.json the
    settings come from (named in the error)."""
    parameters, activations = model_size(config, info, task)
    if parameters <= MAX_PARAMETERS and activations <= MAX_ACTIVATIONS:
        return
    settings = {**{k: getattr(config, k) for k in SIZE_FIELDS}, **{k: info[k] for k in DATA_FIELDS}}
    if parameters <= MAX_PARAMETERS:  # too many activations: the batch counts too
        settings["batch_size"] = config.batch_size
    named = ", ".join(
        f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in settings.items() if v is not None
    )
    what = (
        f"{parameters:,} parameters (at most {MAX_PARAMETERS:,})"
        if parameters > MAX_PARAMETERS
        else f"{activations:,} activations in one batch (at most {MAX_ACTIVATIONS:,})"
    )
    where = f"{source}: fields " if source else "the settings "
    raise SpatialmixError(
        f"{where}{named} make a model of {what}; "
        + ("the file is damaged or not spatialmix's" if source else "choose smaller sizes")
    )

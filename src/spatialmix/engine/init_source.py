"""``--spatial-init covariance-from RUN_DIR``: the prior fitted to a trained run's spatial filters.

The run folder is untrusted: it is read through `spatialmix.io.runs` (no link out of it,
safetensors, no pickle), its model is rebuilt from config.json on the meta device (shapes only) to know which
layers mix space, and `from_filters` checks every
shape it fits.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spatialmix.core.mixing import SPATIAL, LayerSelector, layers_of_kind
from spatialmix.core.priors import EmpiricalPrior
from spatialmix.engine.classification import ClassificationTask
from spatialmix.engine.config import TrainConfig
from spatialmix.errors import SpatialmixError, resume_command
from spatialmix.io import runs


def empirical_prior(run_dir: str | Path) -> EmpiricalPrior:
    """Per-layer Gaussian fits of the spatial filters of the trained (Full or Space) run ``run_dir``."""
    run = runs.Run(run_dir).check()  # no link out of it, config.json of the right shape
    run_dir, record = run.path, run.record()
    train = record["train"]
    if train.get("mode") == "chans":
        raise SpatialmixError(
            f"{run_dir} is a Chans run: its spatial filters were frozen at random, not learned; "
            f"pass a Full (or Space) run to --init-from"
        )
    folder = run.latest_checkpoint()
    if folder is None:
        raise SpatialmixError(f"{run_dir} has no checkpoint yet; train it first ({resume_command(run_dir)})")
    state = runs.load_weights(run.file(runs.CKPT_DIR, folder.name, runs.MODEL_FILE), base=run_dir)
    names = _spatial_layer_names(train, record["data"], run_dir)
    filters = [(name, state.get(f"{name}.weight")) for name in names]
    return EmpiricalPrior.from_filters(str(run_dir), filters, str(folder / runs.MODEL_FILE))


def _spatial_layer_names(train: dict, data: dict, run_dir: Path) -> list[str]:
    """The spatial layers of the run's model, from its config (built on the meta device: shapes only)."""
    try:
        config = TrainConfig.from_dict(train)
        info = {k: int(data[k]) for k in ("in_chans", "num_classes", "image_size")}
        with torch.device("meta"):
            model = ClassificationTask().create_model(config, info)
    except SpatialmixError as err:
        raise SpatialmixError(f"cannot rebuild the model of {run_dir}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise SpatialmixError(
            f"{run_dir / runs.CONFIG} is damaged ({type(err).__name__}: {err}); "
            f"pass another run to --init-from"
        ) from None
    selector = LayerSelector.of(train.get("spatial_pattern"), train.get("channel_pattern"))
    return [name for name, _ in layers_of_kind(model, SPATIAL, selector)]

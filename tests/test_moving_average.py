"""A moving average of the weights (``ema_decay``): what is evaluated, saved, resumed and frozen."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from spatialmix.core.mixing import frozen_fingerprint
from spatialmix.engine.classification import evaluate
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.device import resolve_amp
from spatialmix.engine.loaders import make_loaders
from spatialmix.engine.resume import AVERAGED_STEPS, TRAINED_WEIGHTS
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.io.untrusted import load_torch


def checkpoint(run_dir) -> tuple[dict, dict]:
    folder = runs.latest_checkpoint(run_dir)
    return load_file(str(folder / runs.MODEL_FILE)), load_torch(folder / runs.STATE_FILE, base=run_dir)


def test_the_saved_model_is_the_average_of_the_trained_weights(tiny_config, tiny_data, tmp_path):
    decay = 0.9
    run_dir = tmp_path / "run"
    summary = fit(tiny_config(mode="chans", ema_decay=decay, epochs=1), run_dir, data=tiny_data)
    saved, state = checkpoint(run_dir)
    trained = state[TRAINED_WEIGHTS]
    init = load_file(str(run_dir / runs.INIT))
    steps = int(state[AVERAGED_STEPS])
    assert steps == summary["epochs"] * 4  # 256 images / batch 64, one update per step

    # The average differs from the last weights wherever something was learned ...
    moved = [k for k in trained if trained[k].is_floating_point() and not torch.equal(trained[k], init[k])]
    assert moved and any(not torch.equal(saved[k], trained[k]) for k in moved)
    # ... and every frozen tensor (unchanged in training) is bitwise its init in the average too.
    model = load_trained_model(run_dir)[0].model
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen
    for name in frozen:
        assert torch.equal(saved[name], init[name]) and torch.equal(trained[name], init[name]), name
    assert summary["frozen_unchanged"] is True


def test_the_average_is_what_is_evaluated(tiny_config, tiny_data, tmp_path):
    config = tiny_config(ema_decay=0.9)
    run_dir = tmp_path / "run"
    summary = fit(config, run_dir, data=tiny_data)
    cpu = torch.device("cpu")
    test_loader = make_loaders(config, tiny_data, cpu, 0, 1)[1]
    saved = evaluate(load_trained_model(run_dir)[0].model, test_loader, cpu, resolve_amp(config.amp, cpu))
    bits = "".join("1" if hit else "0" for hit in saved["correct"].tolist())
    assert summary["test_correct_bits"] == bits and summary["test_acc"] == pytest.approx(saved["acc"])


class _Killed(Exception):
    pass


def test_a_resumed_averaged_run_matches_an_uninterrupted_one(tiny_config, tiny_data, tmp_path, monkeypatch):
    config = tiny_config(ema_decay=0.8, epochs=2)
    straight = tmp_path / "straight"
    fit(config, straight, data=tiny_data)
    halves = tmp_path / "halves"
    real_save = runs.save_checkpoint

    def killed_at_epoch_2(run_dir, epoch, *args, **kwargs):
        if epoch == 2:
            raise _Killed
        return real_save(run_dir, epoch, *args, **kwargs)

    monkeypatch.setattr(runs, "save_checkpoint", killed_at_epoch_2)
    with pytest.raises(_Killed):
        fit(config, halves, data=tiny_data)
    monkeypatch.setattr(runs, "save_checkpoint", real_save)
    fit(config, halves, resume=True, data=tiny_data)  # from epoch 1's checkpoint
    for (a_saved, a_state), (b_saved, b_state) in [(checkpoint(straight), checkpoint(halves))]:
        assert a_saved.keys() == b_saved.keys()
        for name in a_saved:
            assert torch.equal(a_saved[name], b_saved[name]), name
            assert torch.equal(a_state[TRAINED_WEIGHTS][name], b_state[TRAINED_WEIGHTS][name]), name
        assert int(a_state[AVERAGED_STEPS]) == int(b_state[AVERAGED_STEPS]) == 8


def test_a_checkpoint_without_an_average_is_not_resumed_with_one(tiny_config, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    fit(tiny_config(epochs=1), run_dir, data=tiny_data)
    plain = runs.read_json(run_dir / runs.CONFIG)
    with pytest.raises(SpatialmixError, match="different config") as err:
        fit(tiny_config(epochs=2, ema_decay=0.9), run_dir, resume=True, data=tiny_data)
    assert "ema_decay=0.0 (saved) vs 0.9" in str(err.value)
    assert runs.read_json(run_dir / runs.CONFIG) == plain


@pytest.mark.parametrize("decay", [-0.1, 1.0, float("nan")])
def test_a_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(SpatialmixError, match=r"--ema-decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=decay).validate()


def test_no_average_leaves_the_run_as_it_was(tiny_config, tiny_data, tmp_path):
    """ema_decay 0 writes no average into the training state (runs saved before it open as they were)."""
    run_dir = tmp_path / "run"
    fit(tiny_config(), run_dir, data=tiny_data)
    saved, state = checkpoint(run_dir)
    assert TRAINED_WEIGHTS not in state and AVERAGED_STEPS not in state
    model = load_trained_model(run_dir)[0].model
    assert frozen_fingerprint(model) == runs.read_json(run_dir / runs.SUMMARY)["frozen_fingerprint"]

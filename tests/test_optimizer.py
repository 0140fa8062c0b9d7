"""The optimizer contract, in code: frozen tensors never reach it; decay on matrices and filters only."""

from __future__ import annotations

import subprocess
import sys

import torch

from conftest import SUBPROCESS_ENV
from spatialmix.core.mixing import apply_mixing
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.optim import make_optimizer, parameter_groups
from spatialmix.models.convmixer import ConvMixer


def _model(mode):
    model = ConvMixer(16, 2, 5, 2, in_chans=1, num_classes=10)
    return apply_mixing(model, mode, seed=0)


def test_every_trainable_tensor_once_no_frozen_one_and_decay_only_on_matrices_and_filters():
    for mode in ("full", "chans", "space"):
        model = _model(mode)
        no_decay, decay = parameter_groups(model, 0.05)
        assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
        grouped = [id(p) for p in no_decay["params"] + decay["params"]]
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert len(grouped) == len(set(grouped)) and set(grouped) == trainable
        names = {id(p): n for n, p in model.named_parameters()}
        assert all(names[id(p)].endswith(("bias", ".weight")) and p.ndim == 1 for p in no_decay["params"])
        assert all(p.ndim >= 2 for p in decay["params"])
        # biases and BatchNorm weights are never decayed; every conv filter and the head's matrix are
        assert {names[id(p)] for p in no_decay["params"]} == {
            n for n, p in model.named_parameters() if p.requires_grad and p.ndim == 1
        }


def test_frozen_tensors_get_no_optimizer_state_after_steps():
    model = _model("chans")
    optimizer = make_optimizer(model, TrainConfig(lr=0.01, weight_decay=0.01))
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(), loss.backward(), optimizer.step()
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p not in optimizer.state for p in frozen)
    assert all(p in optimizer.state for p in model.parameters() if p.requires_grad)


def test_the_command_line_builds_without_importing_torch():
    """`spatialmix --help` answers at once: building every command's options imports no torch."""
    code = (
        "import sys; from spatialmix.cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=SUBPROCESS_ENV, check=True
    )
    assert out.stdout.strip() == "[]"

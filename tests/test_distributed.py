"""Distributed training: 2 gloo processes on CPU learn what one process learns on the same global batch.

One process group (2 processes started with torch.multiprocessing) runs every multi-process part;
the single-process references run in the test process. Every run trains the same tiny ConvMixer in
Chans mode, with augmentation off, so the only differences left are floating-point summation order.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from spatialmix.data.batches import BatchLoader
from spatialmix.engine import distributed
from spatialmix.engine.classification import ClassificationTask
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.tasks import build_model
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs

# spawns torchrun process groups: the slow tier
pytestmark = [pytest.mark.slow]

WORLD = 2
CONFIG = dict(
    dataset="fashion-mnist",
    model="convmixer",
    width=16,
    depth=2,
    kernel_size=3,
    patch_size=4,
    mode="chans",
    augment="none",
    sync_bn=True,
    epochs=2,
    batch_size=64,
    lr=0.01,
    device="cpu",
    amp="none",
    progress=False,
)


class CapturingTask(ClassificationTask):
    """Classification that keeps a copy of the weights it last evaluated (the final ones, on every rank)."""

    last: dict | None = None

    def evaluate(self, model, loader, device, amp="none"):
        self.last = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return super().evaluate(model, loader, device, amp)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, data, out: str) -> None:
    """One of the 2 processes: what torchrun would set up, then the multi-process runs."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    out = Path(out)
    config = TrainConfig(**CONFIG)
    try:
        task = CapturingTask()
        fit(config, out / "ddp", data=data, task=task)
        torch.save(task.last, out / f"final-rank{rank}.pt")
        # Without SyncBatchNorm each rank normalizes with its half batch: a different result.
        task = CapturingTask()
        fit(config.replace(sync_bn=False), out / "ddp-no-sync-bn", data=data, task=task)
        torch.save(task.last, out / f"no-sync-bn-rank{rank}.pt")
        # Stopped one step into epoch 2: the checkpoint of epoch 1 is what a 1-process run resumes from.
        steps_per_epoch = len(data.train_labels) // config.batch_size
        fit(config, out / "interrupted", data=data, max_steps=steps_per_epoch + 1)
        # DDP's gradient buckets hold the trainable tensors only.
        model = build_model(config, data.in_chans, data.num_classes, data.image_size)
        ddp = distributed.wrap_model(model, distributed.setup(torch.device("cpu")))
        log = ddp._get_ddp_logging_data()
        (out / f"ddp-rank{rank}.json").write_text(
            json.dumps(
                {
                    "tensors": log["num_parameter_tensors"],
                    "bytes": log["total_parameter_size_bytes"],
                    "world_size": distributed.world_size(),
                }
            )
        )
    finally:
        distributed.teardown()


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), tiny_data, str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, tiny_data):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    fit(TrainConfig(**CONFIG), run_dir, data=tiny_data)
    return run_dir


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return runs.load_weights(runs.latest_checkpoint(run_dir) / runs.MODEL_FILE)


def max_relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            scale = a[k].abs().max().clamp_min(1e-3)
            worst = max(worst, ((a[k].float() - b[k].float()).abs().max() / scale).item())
    return worst


TOLERANCE = 2e-4  # float32 summation order over 8 AdamW steps (measured: 1.6e-5)


def test_two_processes_learn_the_single_process_weights(two_process_runs, single_process_run):
    single = final_weights(single_process_run)
    ddp = final_weights(two_process_runs / "ddp")
    assert max_relative_difference(single, ddp) < TOLERANCE
    # The tolerance tells runs apart: per-rank BatchNorm statistics give other weights.
    no_sync = torch.load(two_process_runs / "no-sync-bn-rank0.pt")
    assert max_relative_difference(single, no_sync) > 100 * TOLERANCE


def test_ranks_hold_identical_weights_and_frozen_tensors_never_move(two_process_runs, single_process_run):
    rank0 = torch.load(two_process_runs / "final-rank0.pt")
    rank1 = torch.load(two_process_runs / "final-rank1.pt")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    init = runs.load_weights(two_process_runs / "ddp" / runs.INIT)
    single_init = runs.load_weights(single_process_run / runs.INIT)
    model = build_model(TrainConfig(**CONFIG), 1, 4, 28)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    spatial = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
    ]
    assert sorted(frozen) == sorted(f"{n}.{p}" for n in spatial for p in ("weight", "bias"))
    for name in frozen:
        assert torch.equal(rank0[name], init[name]) and torch.equal(rank1[name], init[name]), name
        assert torch.equal(init[name], single_init[name]), name
    # ... and every trainable tensor did move.
    assert all(not torch.equal(rank0[n], init[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_ddp_makes_no_gradient_bucket_for_frozen_tensors(two_process_runs):
    model = build_model(TrainConfig(**CONFIG), 1, 4, 28)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) < len(list(model.parameters()))
    for rank in range(WORLD):
        log = json.loads((two_process_runs / f"ddp-rank{rank}.json").read_text())
        assert log == {
            "tensors": len(trainable),
            "bytes": sum(p.numel() * 4 for p in trainable),
            "world_size": WORLD,
        }


def test_only_one_set_of_run_files_with_global_numbers(two_process_runs, single_process_run):
    def listing(root):
        return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))

    assert listing(two_process_runs / "ddp") == listing(single_process_run)
    assert not any(name.startswith(".") for name in listing(two_process_runs / "ddp"))
    ddp_metrics = runs.read_jsonl(two_process_runs / "ddp" / runs.METRICS)
    single_metrics = runs.read_jsonl(single_process_run / runs.METRICS)
    assert [m["epoch"] for m in ddp_metrics] == [1, 2]  # written once, not once per rank
    for ours, ref in zip(ddp_metrics, single_metrics):
        assert ours["step"] == ref["step"]
        # Accuracies over the whole test set (each example counted once) and the global batches.
        assert ours["test_acc"] == pytest.approx(ref["test_acc"], abs=1.5 / 64)
        assert ours["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-3)
        assert ours["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-3)
    summary = runs.read_json(two_process_runs / "ddp" / runs.SUMMARY)
    assert summary["test_acc"] == ddp_metrics[-1]["test_acc"] and summary["frozen_unchanged"]


def test_one_process_resumes_a_two_process_checkpoint(
    two_process_runs, single_process_run, tiny_data, tmp_path
):
    run_dir = tmp_path / "resumed"
    shutil.copytree(two_process_runs / "interrupted", run_dir)
    assert runs.read_json(runs.latest_checkpoint(run_dir).parent / runs.LATEST)["epoch"] == 1
    summary = fit(TrainConfig(**CONFIG), run_dir, resume=True, data=tiny_data)
    assert summary["epochs"] == 2
    assert max_relative_difference(final_weights(single_process_run), final_weights(run_dir)) < TOLERANCE
    model, _ = load_trained_model(run_dir)
    assert isinstance(model.model.stem[2], nn.BatchNorm2d)


# --------------------------------------------------------------------------- without processes


def test_ranks_batches_make_up_the_single_process_batch(tiny_data):
    """Global batch i is the union of the ranks' batches i, augmentation included."""

    def loader(batch, rank=0, world_size=1):
        loader = BatchLoader(
            tiny_data.train_images,
            tiny_data.train_labels,
            batch,
            (0.3,),
            (0.3,),
            train=True,
            augment="crop-flip",
            seed=3,
            rank=rank,
            world_size=world_size,
        )
        loader.set_epoch(1)
        return loader

    single = list(loader(64))
    shards = [list(loader(32, r, 2)) for r in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 4
    for i, (x, y) in enumerate(single):
        x_parts = torch.cat([shards[0][i][0], shards[1][i][0]])
        y_parts = torch.cat([shards[0][i][1], shards[1][i][1]])
        # Rank r holds positions r, r + 2, ... of the global batch.
        order = torch.cat([torch.arange(0, 64, 2), torch.arange(1, 64, 2)])
        assert torch.equal(x_parts, x[order]) and torch.equal(y_parts, y[order])


def test_steps_per_epoch_do_not_depend_on_the_world_size(tiny_data):
    images, labels = tiny_data.train_images[:250], tiny_data.train_labels[:250]
    lengths = {
        w: len(BatchLoader(images, labels, 64 // w, (0.3,), (0.3,), train=True, world_size=w))
        for w in (1, 2, 4)
    }
    assert lengths == {1: 3, 2: 3, 4: 3}


def test_sharded_evaluation_counts_every_example_once(tiny_data):
    images, labels = tiny_data.test_images[:63], tiny_data.test_labels[:63]
    seen = []
    for rank in range(4):
        loader = BatchLoader(images, labels, 8, (0.3,), (0.3,), train=False, rank=rank, world_size=4)
        batches = list(loader)
        assert sum(len(y) for _, y in batches) == loader.num_examples()
        seen += [x for x, _ in batches]
    assert torch.cat(seen).shape[0] == 63
    whole = next(iter(BatchLoader(images, labels, 63, (0.3,), (0.3,), train=False)))[0]
    assert sorted(map(tuple, torch.cat(seen).flatten(1)[:, :50].tolist())) == sorted(
        map(tuple, whole.flatten(1)[:, :50].tolist())
    )


def test_global_batch_must_split_over_the_processes(tiny_data):
    from spatialmix.engine.loaders import make_loaders

    with pytest.raises(SpatialmixError, match="does not split evenly over 3 processes"):
        make_loaders(TrainConfig(**CONFIG), tiny_data, torch.device("cpu"), rank=0, world_size=3)


def test_a_plain_run_is_a_world_of_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world = distributed.setup(torch.device("cpu"))
    assert (world.rank, world.world_size, world.is_main, world.distributed) == (0, 1, True, False)
    assert not distributed.is_initialized()
    model = nn.Linear(2, 2)
    assert distributed.wrap_model(model, world) is model


def test_half_set_torchrun_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SpatialmixError, match="torchrun"):
        distributed.setup(torch.device("cpu"))

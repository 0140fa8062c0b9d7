"""Several processes training one model: PyTorch's process group, set up from the torchrun environment.

``torchrun --nproc-per-node N`` (or Slurm through submitit) starts N copies of the same program and
tells each its ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in the environment. `setup` reads
them, joins the process group (NCCL on GPUs, gloo on CPUs) and picks this process's device; a plain
``python`` run sees no such variables and stays a world of one, where every helper below is a no-op.

The rules the training loop follows (see `spatialmix.engine.train.fit`):

* every rank builds the same model from the same seeded config; DistributedDataParallel averages
  the gradients of the trainable tensors only (frozen ones have ``requires_grad=False``, so DDP
  gives them no gradient bucket) and they stay bitwise equal on every rank;
* ``config.batch_size`` is the global batch: each rank takes ``batch_size / world_size`` examples
  of every global batch, so a run means the same thing whatever the number of processes;
* sums (loss, correct answers, examples) are all-reduced before they are printed or saved;
* only rank 0 (`is_main`) writes files and draws progress bars.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from spatialmix.errors import SpatialmixError
from spatialmix.ui.display import console


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SpatialmixError(
            f"environment variable {name}={value!r} is not an integer; "
            f"start the processes with torchrun, which sets it"
        ) from None


def launched_world_size() -> int:
    """How many processes the launcher (torchrun, submitit) started: ``WORLD_SIZE``, else 1."""
    return _env_int("WORLD_SIZE", 1)


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``), before any process group exists."""
    return _env_int("RANK", 0)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True in the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: torch.device) -> World:
    """Join the process group that torchrun describes in the environment (once per process).

    ``device`` is the device the config asked for; on GPUs each process takes ``cuda:LOCAL_RANK``.
    Without torchrun's variables (or with ``WORLD_SIZE=1``) this returns a world of one and starts
    nothing. A group that the caller initialized already is used as it is.
    """
    size = world_size() if is_initialized() else launched_world_size()
    if size <= 1 and not is_initialized():
        return World(device=device)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SpatialmixError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                f"start at most that many processes per node (torchrun --nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not is_initialized():
        _init_process_group(backend_for(device), device)
    if dist.get_rank() != 0:
        console.quiet = True  # one voice: progress and messages come from rank 0 only
    return World(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _init_process_group(backend: str, device: torch.device) -> None:
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise SpatialmixError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not: start several processes with "
            f"`torchrun --nproc-per-node N -m spatialmix.cli ...`, not by hand"
        )
    try:
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as err:
        raise SpatialmixError(
            f"could not join the {backend} process group "
            f"({str(err).strip().splitlines()[0][:160]}); check MASTER_ADDR/MASTER_PORT and "
            f"that every process was started"
        ) from None
    atexit.register(teardown)


def teardown() -> None:
    """Leave the process group (registered at exit by `setup`; safe to call twice)."""
    if is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (in place; returned for convenience)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_true(flag: bool | torch.Tensor, device: torch.device | None = None) -> bool:
    """True when ``flag`` holds on every rank, so all ranks take the same branch (no one left waiting)."""
    if world_size() == 1:
        return bool(flag)
    ok = torch.as_tensor(flag, dtype=torch.int32, device=device).reshape(1).clone()
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def mean_over_ranks(metrics: dict, count: int, device: torch.device | None = None) -> dict:
    """Combine per-rank means of disjoint shards into the global mean, weighting each rank by ``count``.

    Every numeric value is treated as a mean over this rank's ``count`` examples (loss, accuracy,
    ...); the key ``n``, if present, becomes the global number of examples.
    """
    if world_size() == 1:
        return dict(metrics)
    keys = [
        k for k, v in metrics.items() if k != "n" and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    sums = torch.tensor(
        [float(metrics[k]) * count for k in keys] + [float(count)], dtype=torch.float64, device=device
    )
    all_reduce_sum(sums)
    total = sums[-1].item()
    combined = dict(metrics)
    combined.update({k: sums[i].item() / max(total, 1.0) for i, k in enumerate(keys)})
    if "n" in metrics:
        combined["n"] = int(round(total))
    return combined


def run_on_main(fn):
    """Call ``fn()`` on rank 0 only; a `SpatialmixError` it raises is raised on every rank.

    For checks that read the file system: one rank decides, so no rank waits forever for one that
    stopped with an error.
    """
    message = None
    if is_main():
        try:
            fn()
        except SpatialmixError as err:
            message = str(err)
    if world_size() > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise SpatialmixError(message)


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all evaluate one model."""
    if world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


# --------------------------------------------------------------------------- the model


def wrap_model(model: nn.Module, world: World) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else ``model`` itself.

    DDP only makes gradient buckets for tensors with ``requires_grad=True``: frozen mixers are
    never all-reduced and receive no gradient.
    """
    if not world.distributed:
        return model
    if not any(p.requires_grad for p in model.parameters()):
        raise SpatialmixError("every tensor of the model is frozen: there is nothing to train")
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` normalizes with the statistics of the global batch.

    GPUs get `torch.nn.SyncBatchNorm` (through timm's converter, which also handles timm's
    BatchNorm + activation layers). Its kernels exist only for GPUs and DDP refuses it on CPUs, so
    on CPUs (gloo) the plain BatchNorm layers are replaced by `CPUSyncBatchNorm` modules
    holding the same parameter and buffer tensors, so state-dict keys (checkpoints) do not change.
    """
    if device.type != "cpu":
        from timm.layers import convert_sync_batchnorm as timm_convert_sync_batchnorm

        return timm_convert_sync_batchnorm(model)

    if type(model) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return CPUSyncBatchNorm.sharing(model)
    for name, child in model.named_children():
        setattr(model, name, convert_sync_batchnorm(child, device))
    return model


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) that is differentiable: the gradient of a global sum is the global sum of
    gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with the statistics of the global batch, for CPU tensors (what SyncBatchNorm does on GPUs).

    Two all-reduces per layer (sums and count, then the centered sum of squares: two passes, for
    the accuracy of a single-process BatchNorm). Outside distributed training it is an ordinary BatchNorm.
    """

    @classmethod
    def sharing(cls, norm: nn.modules.batchnorm._BatchNorm) -> CPUSyncBatchNorm:
        """A CPUSyncBatchNorm that holds ``norm``'s own parameter and buffer tensors."""
        sync = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        for name, tensor in [*norm.named_parameters(recurse=False), *norm.named_buffers(recurse=False)]:
            setattr(sync, name, tensor)
        sync.train(norm.training)
        return sync

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float()
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        totals = _SumOverRanks.apply(torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])]))
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centered = x - mean.view(shape)
        var = _SumOverRanks.apply((centered * centered).sum(dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count.item())
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        momentum = (1.0 / self.num_batches_tracked.item()) if self.momentum is None else self.momentum
        unbiased = var * (count / max(count - 1, 1.0))  # as nn.BatchNorm: the running variance is unbiased
        self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)

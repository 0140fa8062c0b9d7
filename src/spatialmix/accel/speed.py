"""What makes training and attacks fast on a CPU, measured rather than assumed (see ``benchmarks/``).

Facts of the quick model's shapes on a CPU, each measured with ``torch.profiler`` (the README
gives the table):

* **Threads.** A torch process with 2 threads beside one other busy process waits for the busier
  core and can run 10x slower than with 1. :func:`set_threads` pins the number of threads a run
  uses (``--threads``); a study runs its independent trainings side by side with 1 thread each.
* **The allocator.** glibc hands freed memory of more than 128 KiB back to the kernel at once, so
  every training step maps and faults in its activations again (thousands of page faults per
  step). :func:`tune_allocator` raises glibc's mmap and trim thresholds so freed blocks are
  reused.
* **GELU on channels_last** takes a slower strided kernel than the same memory viewed as a
  contiguous NHWC tensor (:class:`ChannelsLastGELU` runs it on that view).
* **Two backward passes torch has no fast CPU path for**: a depthwise conv's weight and input
  gradients (:class:`DepthwiseConv2d`, :mod:`spatialmix.accel.depthwise`) and a training-mode batch
  norm's backward (:class:`BatchNorm2d`) come from the C kernels of :mod:`spatialmix.accel.native`.
* **Eval-mode batch norms under attack** are the per-channel multiply-add they are
  (:class:`EvalBatchNorm2d`, :func:`eval_batchnorm`).

:func:`accelerate` swaps these classes into a model in place. GELU gives the values of torch's
vectorized kernel; the kernels compute the same sums as torch's in another order (fp32
accumulation, within about 1e-6 relative); a learned depthwise conv runs in fp32 under ``--amp
bf16`` (more precise, not less).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

import torch
import torch.nn.functional as F
from torch import nn

from spatialmix.accel import depthwise, native

# glibc caps the mmap threshold at 32 MiB on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024
_allocator_tuned = False


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (None or 0: torch's default); return the number in use.

    Results do not depend on it on a CPU for the ops spatialmix uses at a fixed thread count, but
    they may differ between thread counts (reduction order), which is why the number is part of a
    run's config.
    """
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def tune_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    Idempotent; returns False where the C library is not glibc (nothing is changed there).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    _allocator_tuned = ok
    return ok


def _is_channels_last_only(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class ChannelsLastGELU(nn.GELU):
    """``nn.GELU`` that runs a channels_last input as the contiguous NHWC tensor it is in memory.

    The values are bitwise those of ``nn.GELU`` on a contiguous tensor (the vectorized kernel);
    torch's strided kernel for channels_last differs from them by up to about 1e-6.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _is_channels_last_only(x):
            return F.gelu(x.permute(0, 2, 3, 1), approximate=self.approximate).permute(0, 3, 1, 2)
        return super().forward(x)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` whose gradients come from :mod:`spatialmix.accel.depthwise` on CPUs.

    oneDNN's depthwise weight gradient is 8x (fp32) to 20x (bf16) slower than its forward pass on
    CPUs, and its input gradient about 2x: the weight gradient comes from a C kernel and the input
    gradient from the flipped-filter conv. A *learned* depthwise conv (Full, Space) computes in
    fp32 inside bf16 autocast (its output cast back to bf16 for the next op): in bf16 the quick
    preset's Full model lost 0.4 points. A frozen one (Chans, or any model under attack) runs in
    the autocast dtype. Without the C kernel a learned conv falls back to torch's fp32 conv. Same
    parameters and state dict as ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or not torch.is_grad_enabled()
            or not (self.weight.requires_grad or x.requires_grad)
        ):
            return super().forward(x)
        autocast = torch.is_autocast_enabled("cpu")
        out_dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
        # learned filters compute in fp32: in bf16 the quick preset's Full lost 0.4 points (0.879 vs 0.883)
        dtype = torch.float32 if self.weight.requires_grad else out_dtype
        if depthwise.supports(self, x, dtype):
            with torch.autocast("cpu", enabled=False):
                return depthwise.conv(x.to(dtype), self.weight, self.bias, self.padding[0]).to(out_dtype)
        if autocast and self.weight.requires_grad:
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float()).to(out_dtype)
        return super().forward(x)


class _TrainBatchNorm(torch.autograd.Function):
    """torch's own training-mode batch norm forward (batch statistics, running statistics updated
    in place); the backward pass from the C kernel of :mod:`spatialmix.accel.native`."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        y, mean, invstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )[:3]
        ctx.save_for_backward(x, weight, mean, invstd)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, invstd = ctx.saved_tensors
        g = g.to(x.dtype).contiguous(memory_format=torch.channels_last)
        with torch.profiler.record_function("spatialmix::batchnorm_backward"):  # so profiles count it
            gx, gw, gb = native.call_batchnorm_backward(
                native.library(), x, g, mean, invstd, weight, torch.get_num_threads()
            )
        needs = ctx.needs_input_grad
        return (
            gx if needs[0] else None,
            gw.to(weight.dtype) if needs[1] else None,
            gb.to(weight.dtype) if needs[2] else None,
            None,
            None,
            None,
            None,
        )


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode backward pass comes from a C kernel on CPUs.

    torch's CPU backward of a training-mode batch norm took 3.8 ms per call for 128 x 128 x 14 x
    14 bf16 channels_last activations; the kernel (``kernels/batchnorm_grad.c``) takes about 1 ms
    and gives the same gradients to float rounding (its sums run over fixed blocks: for the same
    forward statistics, bitwise the same for any thread count; torch's forward statistics can move
    in the last bit with the thread count, so end to end only the bias gradient is bitwise
    thread-invariant). A training batch with one value per channel is refused with torch's own
    error before anything changes. The forward pass, the running
    statistics and ``num_batches_tracked`` are torch's. Eval mode, other devices and layouts, and
    a machine without the kernels are plain ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.dim() > 1 and x.numel() <= x.size(1):
            # torch's message, raised before anything (running statistics, the batch count) changes:
            # the kernel would divide by zero values of variance and write NaN into running_var
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        if not (
            self.training
            and torch.is_grad_enabled()
            and x.device.type == "cpu"
            and depthwise.is_channels_last(x)
            and x.dtype in (torch.float32, torch.bfloat16)
            and (self.weight is None or self.weight.dtype == torch.float32)
            and native.library() is not None
        ):
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average, as nn.BatchNorm2d does
                momentum = 1.0 / float(self.num_batches_tracked)
        return _TrainBatchNorm.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps
        )


class EvalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that runs, in eval mode, as the per-channel multiply-add it then is.

    An attack runs the model's backward pass at every step with the batch norms in eval mode, and
    torch's CPU kernel for that backward took 13 ms per call on the quick model's activations (500
    images of 64 x 14 x 14, one thread), a quarter of the whole step: as much as all the
    convolutions' backward. ``addcmul`` does the same forward in one pass and its backward is one
    multiply. In training mode, or without running statistics, it is ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_var is None or x.dim() != 4:
            return super().forward(x)
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        return torch.addcmul(shift.to(x.dtype).view(1, -1, 1, 1), x, scale.to(x.dtype).view(1, -1, 1, 1))


@contextlib.contextmanager
def eval_batchnorm(model: nn.Module):
    """Within the block, every exact ``nn.BatchNorm2d`` (or :class:`BatchNorm2d`) of ``model`` is an
    :class:`EvalBatchNorm2d`
    (same parameters and buffers: only the class changes), and back afterwards."""
    swapped = [(m, type(m)) for m in model.modules() if type(m) in (nn.BatchNorm2d, BatchNorm2d)]
    for m, _ in swapped:
        m.__class__ = EvalBatchNorm2d
    try:
        yield model
    finally:
        for m, kind in swapped:
            m.__class__ = kind


def accelerate(model: nn.Module) -> nn.Module:
    """Swap in the faster CPU kernels above, in place: same parameters, same state dict.

    Only modules of exactly ``nn.GELU`` / a depthwise ``nn.Conv2d`` / ``nn.BatchNorm2d`` are changed (not
    subclasses
    with their own forward), by switching their class, so hooks, parameters and their
    ``requires_grad`` flags stay untouched.
    """
    for module in model.modules():
        if type(module) is nn.GELU:
            module.__class__ = ChannelsLastGELU
        elif type(module) is nn.Conv2d and module.groups == module.in_channels > 1:
            module.__class__ = DepthwiseConv2d
        elif type(module) is nn.BatchNorm2d:
            module.__class__ = BatchNorm2d
    return model

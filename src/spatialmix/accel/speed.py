"""What makes training and attacks fast on a CPU, measured rather than assumed (see ``benchmarks/``).

Facts of the quick model's shapes on a CPU, each measured with ``torch.profiler`` (the README
gives the table):

* **Threads.** A torch process with 2 threads beside one other busy process waits for the busier
  core and can run 10x slower than with 1. `set_threads` pins the number of threads a run
  uses (``--threads``); a study runs its independent trainings side by side with 1 thread each.
* **The allocator.** glibc hands freed memory of more than 128 KiB back to the kernel at once, so
  every training step maps and faults in its activations again (thousands of page faults per
  step). `tune_allocator` raises glibc's mmap and trim thresholds so freed blocks are
  reused: the command line and the processes spatialmix starts call it; a library call leaves the
  caller's process as it was.
* **GELU on channels_last** takes a slower strided kernel than the same memory viewed as a
  contiguous NHWC tensor (`_gelu` runs it on that view).
* **Two backward passes torch has no fast CPU path for**: a depthwise conv's weight and input
  gradients (`_depthwise_conv`, `spatialmix.accel.depthwise`) and a training-mode batch
  norm's backward (`_batch_norm`) come from the C kernels of `spatialmix.accel.native`.
* **Eval-mode batch norms under attack** are the per-channel multiply-add they are.

`FastKernels` puts these in place of torch's own calls within a block (training and
attacks enter it); a model is never changed: its modules keep their classes, parameters and
hooks, and outside the block it runs on torch's kernels. GELU gives the values of torch's
vectorized kernel; the kernels compute the same sums as torch's in another order (fp32
accumulation, within about 1e-6 relative); a learned depthwise conv runs in fp32 under ``--amp
bf16`` (more precise, not less).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

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


def _gelu(x: torch.Tensor, approximate: str = "none"):
    """GELU of a channels_last input, run as the contiguous NHWC tensor it is in memory: bitwise the
    values of torch's vectorized kernel (its strided kernel for channels_last differs by up to
    about 1e-6)."""
    if not _is_channels_last_only(x):
        return NotImplemented
    return F.gelu(x.permute(0, 2, 3, 1), approximate=approximate).permute(0, 3, 1, 2)


def _conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """A stride-1 depthwise conv whose gradients come from `spatialmix.accel.depthwise`.

    oneDNN's depthwise weight gradient is 8x (fp32) to 20x (bf16) slower than its forward pass on
    CPUs, and its input gradient about 2x: the weight gradient comes from a C kernel and the input
    gradient from the flipped-filter conv. A *learned* depthwise conv (Full, Space) computes in
    fp32 inside bf16 autocast (its output cast back to bf16 for the next op): in bf16 the quick
    preset's Full model lost 0.4 points (0.879 vs 0.883). A frozen one (Chans, or any model under
    attack) runs in the autocast dtype where the C kernel takes it. Any other depthwise conv inside
    autocast (without the C kernel, or at stride 2 as in the separable ResNet) computes in fp32 with
    torch's own conv: oneDNN's bf16 input gradient of a frozen stride-2 depthwise conv took 12 ms
    against 0.5 ms in fp32 (64 x 32 x 14 x 14, kernel 3, one thread), which made the ResNet's Chans
    runs 1.4x slower than its Full ones. NotImplemented (torch's conv) for anything else.
    """
    if not (
        isinstance(x, torch.Tensor)
        and x.dim() == 4
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and (weight.requires_grad or x.requires_grad)
        and groups == x.shape[1] == weight.shape[0] > 1
    ):
        return NotImplemented
    autocast = torch.is_autocast_enabled("cpu")
    out_dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
    dtype = torch.float32 if weight.requires_grad else out_dtype
    if depthwise.supports(x, weight, stride, padding, dilation, dtype):
        with torch.autocast("cpu", enabled=False):
            return depthwise.conv(x.to(dtype), weight, bias, depthwise.same_padding(padding)).to(out_dtype)
    if autocast:  # learned, or frozen where the C kernel cannot run it (oneDNN's bf16 gradient is slow)
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x.float(), weight, bias, stride, padding, dilation, groups).to(out_dtype)
    return NotImplemented


class _TrainBatchNorm(torch.autograd.Function):
    """torch's own training-mode batch norm forward (batch statistics, running statistics updated
    in place); the backward pass from the C kernel of `spatialmix.accel.native`."""

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


def _batch_norm(
    x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5, attack=False
):
    """A 2-D batch norm's fast paths on CPUs; NotImplemented (torch's own) for anything else.

    Training: torch's forward (its batch and running statistics), the backward from a C kernel
    (``kernels/batchnorm_grad.c``: torch's CPU backward took 3.8 ms per call for 128 x 128 x 14 x 14
    bf16 channels_last activations, the kernel about 1 ms, the same gradients to float rounding;
    its sums run over fixed blocks, so for the same forward statistics they are bitwise the same
    for any thread count, while torch's forward statistics can move in the last bit with the thread
    count: end to end only the bias gradient is bitwise thread-invariant). A training batch with one
    value per channel is refused with torch's own error before the kernel could write NaN into
    ``running_var``.

    Under attack (eval mode): the per-channel multiply-add an eval-mode batch norm is. An attack
    runs the backward pass at every step, and torch's CPU kernel for it took 13 ms per call on the
    quick model's activations (500 images of 64 x 14 x 14, one thread), a quarter of the step;
    ``addcmul``'s backward is one multiply.
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type == "cpu"):
        return NotImplemented
    if training:
        if x.numel() <= x.size(1):  # what torch's F.batch_norm checks first
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        if not (
            torch.is_grad_enabled()
            and depthwise.is_channels_last(x)
            and x.dtype in (torch.float32, torch.bfloat16)
            and (weight is None or weight.dtype == torch.float32)
            and native.library() is not None
        ):
            return NotImplemented
        return _TrainBatchNorm.apply(x, weight, bias, running_mean, running_var, momentum, eps)
    if not attack or running_var is None:
        return NotImplemented
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return torch.addcmul(shift.to(x.dtype).view(1, -1, 1, 1), x, scale.to(x.dtype).view(1, -1, 1, 1))


class FastKernels(TorchFunctionMode):
    """Within the block, the faster CPU paths above run in place of torch's own calls they cover:
    ``F.gelu`` on channels_last inputs, stride-1 depthwise ``F.conv2d`` with gradients, and
    ``F.batch_norm`` in training (and, with ``attack=True``, in eval mode as a multiply-add).

    Nothing about a model changes: its modules keep their classes, parameters, state dict and
    hooks, and outside the block everything runs on torch's kernels. Anything a path does not
    cover (other devices, layouts, shapes) is torch's own call.
    """

    def __init__(self, attack: bool = False):
        super().__init__()
        self.attack = attack

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            out = _conv2d(*args, **kwargs)
        elif func is F.batch_norm:
            out = _batch_norm(*args, **kwargs, attack=self.attack)
        elif func is F.gelu:
            out = _gelu(*args, **kwargs)
        else:
            out = NotImplemented
        return func(*args, **kwargs) if out is NotImplemented else out

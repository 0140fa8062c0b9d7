"""What makes training fast on a CPU, measured rather than assumed (see ``benchmarks/``).

Three facts of the quick model's shapes on a CPU, each measured with ``torch.profiler`` (the
README gives the table):

* **Threads.** A torch process with 2 threads beside one other busy process waits for the busier
  core and can run 10x slower than with 1. :func:`set_threads` pins the number of threads a run
  uses (``--threads``); a study runs its independent trainings side by side with 1 thread each.
* **The allocator.** glibc hands freed memory of more than 128 KiB back to the kernel at once, so
  every training step maps and faults in its activations again (thousands of page faults per
  step). :func:`tune_allocator` raises glibc's mmap and trim thresholds so freed blocks are
  reused.
* **Memory layout and precision of two ops.** GELU on a channels_last tensor takes a slower
  strided kernel than the same memory viewed as a contiguous NHWC tensor
  (:class:`ChannelsLastGELU` runs it on that view); and oneDNN's bf16 depthwise *weight* gradient
  is about 3x slower than its fp32 one, so a depthwise conv whose weight is learned runs in fp32
  inside bf16 autocast (:class:`DepthwiseConv2d`), while a frozen one (Chans) stays in bf16, where
  it is fastest.

None of these changes what a run computes beyond about 1e-6: GELU gives the values of torch's
vectorized kernel, and the Full mode's depthwise convs run in fp32 under ``--amp bf16`` (more
precise, not less).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch
import torch.nn.functional as F
from torch import nn

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
    """A depthwise ``nn.Conv2d`` that computes a *learned* filter in fp32 under CPU bf16 autocast.

    oneDNN's bf16 depthwise weight gradient is several times slower than the fp32 one on CPUs;
    the input gradient and the forward pass are fast in bf16. So when the weight is trained, the
    conv runs in fp32 (its output is cast back to bf16 for the next op); when it is frozen
    (Chans) autocast runs it in bf16 as usual. Same parameters and state dict as ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and self.weight.requires_grad
                and torch.is_grad_enabled()):
            dtype = torch.get_autocast_dtype("cpu")
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float()).to(dtype)
        return super().forward(x)


def accelerate(model: nn.Module) -> nn.Module:
    """Swap in the faster CPU kernels above, in place: same parameters, same state dict.

    Only modules of exactly ``nn.GELU`` / a depthwise ``nn.Conv2d`` are changed (not subclasses
    with their own forward), by switching their class, so hooks, parameters and their
    ``requires_grad`` flags stay untouched.
    """
    for module in model.modules():
        if type(module) is nn.GELU:
            module.__class__ = ChannelsLastGELU
        elif type(module) is nn.Conv2d and module.groups == module.in_channels > 1:
            module.__class__ = DepthwiseConv2d
    return model

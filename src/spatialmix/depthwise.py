"""A depthwise convolution's gradients on CPUs: the weight gradient from a small C kernel built on
first use, the input gradient as a conv with the flipped filters.

In Full and Space training most of a ConvMixer step's convolution backward was oneDNN's depthwise
*weight* gradient: on the benchmark's shapes (128 images x 128 channels of 14 x 14, kernel 5, one
thread) it takes 24 ms in fp32 and 65 ms in bf16, against 3 ms for the forward pass. The kernel
in ``kernels/depthwise_grad.c`` computes the same sum in about 4 ms (0.4 ms on the quick preset's
64 x 64 channels), for fp32 or bf16 inputs, accumulating in fp32. oneDNN's input gradient took
about twice its forward pass; the forward conv of the output gradient with the flipped filters is
the same sum.

:func:`conv` is a stride-1 depthwise ``conv2d`` with those two gradients and torch's own forward
pass. The kernel is compiled with the machine's C compiler (``$CC``, else ``cc`` or ``gcc``) into
``~/.cache/spatialmix/kernels`` (or ``$SPATIALMIX_CACHE``), once per source, compiler and CPU,
and checked against torch on a small case before it is used. Without a compiler, with
``SPATIALMIX_NATIVE=0``, or for shapes it does not handle (stride or dilation above 1, not
channels_last, unequal padding), :func:`supports` is False and callers keep torch's own
convolution: the same results to float rounding, slower.

The images are summed in fixed chunks of :data:`CHUNK` and the chunks added in order, so the
gradient is bitwise the same whatever the number of threads.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("kernels") / "depthwise_grad.c"
CHUNK = 16                 # images summed together before the chunks are added, in order
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fopenmp")
_BUILD_TIMEOUT_S = 120

_lock = threading.Lock()
_kernel = None             # the ctypes function once loaded
_unavailable: str | None = None   # why there is none, once we know


def cache_dir() -> Path:
    root = os.environ.get("SPATIALMIX_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spatialmix"
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _library_path(cc: str) -> Path:
    """One build per source, flags, compiler and CPU (``-march=native`` makes it CPU-specific)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_flags(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    return cache_dir() / f"depthwise_grad-{key}.so"


def _build(cc: str, target: Path) -> None:
    """Compile to a unique temporary name and rename: a reader never sees half a library."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True,
                              timeout=_BUILD_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path):
    fn = ctypes.CDLL(str(path)).depthwise_weight_grad
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 11
    return fn


def _agrees_with_torch(fn) -> bool:
    """A miscompiled or foreign library must not train anything: compare with torch on a small case
    that takes both the vector path (16 channels) and the plain one (3 more)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 19, 6, 7, generator=g).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(3, 19, 6, 7, generator=g).contiguous(memory_format=torch.channels_last)
    ours = _call(fn, x, gy, 5, 2, threads=2)
    weight = torch.zeros(19, 1, 5, 5)
    ref = torch.ops.aten.convolution_backward(gy, x, weight, None, [1, 1], [2, 2], [1, 1], False, [0, 0], 19,
                                              [False, True, False])[1]
    return torch.allclose(ours, ref, rtol=1e-4, atol=1e-4)


def kernel():
    """The loaded kernel, building it on first use; None when it cannot be had (see :func:`status`)."""
    global _kernel, _unavailable
    if _kernel is not None or _unavailable is not None:
        return _kernel
    with _lock:
        if _kernel is not None or _unavailable is not None:
            return _kernel
        if os.environ.get("SPATIALMIX_NATIVE", "1") == "0":
            _unavailable = "turned off by SPATIALMIX_NATIVE=0"
            return None
        cc = _compiler()
        if cc is None:
            _unavailable = "no C compiler found (set $CC, or install gcc)"
            return None
        try:
            path = _library_path(cc)
            if not path.is_file():
                _build(cc, path)
            fn = _load(path)
            if not _agrees_with_torch(fn):
                _unavailable = f"{path} disagrees with torch's convolution; delete it to rebuild"
                return None
            _kernel = fn
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _unavailable = f"could not build or load the kernel: {err}"
        return _kernel


def status() -> str:
    """One line for benchmarks and logs: whether the kernel is in use, and if not, why."""
    return "C kernel" if kernel() is not None else f"torch's ({_unavailable})"


def _call(fn, x: torch.Tensor, gy: torch.Tensor, kernel_size: int, padding: int, threads: int) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.empty(c, 1, kernel_size, kernel_size, dtype=torch.float32)
    if fn(x.data_ptr(), gy.data_ptr(), out.data_ptr(), int(x.dtype == torch.bfloat16), n, c, h, w,
          gy.shape[2], gy.shape[3], kernel_size, padding, CHUNK, threads) != 0:
        raise MemoryError("out of memory in the depthwise weight-gradient kernel")
    return out


def weight_grad(x: torch.Tensor, gy: torch.Tensor, kernel_size: int, padding: int) -> torch.Tensor:
    """fp32 ``[C, 1, k, k]`` gradient of the weight of a stride-1 depthwise conv with input ``x``
    and output gradient ``gy`` (CPU, fp32 or bf16; made channels_last if they are not)."""
    fn = kernel()
    if fn is None:
        raise RuntimeError(f"the depthwise kernel is not available: {_unavailable}")
    n, c, h, w = x.shape
    out_shape = (n, c, h + 2 * padding - kernel_size + 1, w + 2 * padding - kernel_size + 1)
    if tuple(gy.shape) != out_shape or gy.dtype != x.dtype or x.dtype not in (torch.float32, torch.bfloat16) \
            or x.device.type != "cpu" or gy.device.type != "cpu" or min(out_shape) < 1:
        # the kernel trusts these sizes for its memory reads: nothing else may reach it
        raise ValueError(f"weight_grad needs CPU fp32/bf16 tensors with gy of shape {out_shape} and x's dtype; "
                         f"got x {tuple(x.shape)} {x.dtype}, gy {tuple(gy.shape)} {gy.dtype}")
    x, gy = x.contiguous(memory_format=torch.channels_last), gy.contiguous(memory_format=torch.channels_last)
    with torch.profiler.record_function("spatialmix::depthwise_weight_grad"):   # so profiles count it
        return _call(fn, x, gy, kernel_size, padding, threads=torch.get_num_threads())


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def supports(conv: torch.nn.Conv2d, x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether :func:`conv` can run ``conv`` on ``x`` in ``dtype`` (a learned weight needs the kernel)."""
    k, p = conv.kernel_size, conv.padding
    return (x.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and _channels_last(x)
            and conv.groups == conv.in_channels == conv.out_channels and k[0] == k[1]
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
            and isinstance(p, tuple) and p[0] == p[1] and p[0] <= k[0] - 1
            and conv.weight.dtype == torch.float32 and (not conv.weight.requires_grad or kernel() is not None))


class _DepthwiseConv(torch.autograd.Function):
    """The forward pass by torch (oneDNN); the input gradient as the forward conv of the output
    gradient with the flipped filters (oneDNN's own backward-data kernel for depthwise convs took
    1.9x the time of that conv: 1.15 against 0.62 ms for 100 x 64 x 14 x 14, fp32, one thread);
    the weight gradient by the C kernel, in fp32 for the fp32 weight even when the activations
    are bf16."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        w = weight.to(x.dtype)
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, w, None if bias is None else bias.to(x.dtype), 1, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        p, channels = ctx.padding, x.shape[1]
        gy = gy.contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:   # stride 1: the full correlation with the flipped filters
            gx = F.conv2d(gy, w.flip((2, 3)), None, 1, w.shape[-1] - 1 - p, 1, channels)
        if ctx.needs_input_grad[1]:
            gw = weight_grad(x, gy, w.shape[-1], p)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(dim=(0, 2, 3), dtype=torch.float32)
        return gx, gw, gb, None


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """A stride-1 depthwise ``conv2d`` of channels_last ``x`` in ``x``'s dtype, with fp32 ``weight``
    and ``bias`` (their gradients come back in fp32; a frozen weight needs no kernel). Check
    :func:`supports` first."""
    return _DepthwiseConv.apply(x, weight, bias, padding)

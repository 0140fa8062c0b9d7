"""The C kernels in ``spatialmix/kernels/*.c``: built on first use, checked, loaded with ctypes.

torch has no fast CPU path for two backward passes that ConvMixer training and attacks run at
every step: a depthwise conv's weight gradient (:mod:`spatialmix.accel.depthwise`) and a training-mode
batch norm's backward (:class:`spatialmix.accel.speed.FastKernels`). Their kernels are plain C (GCC
vector extensions, OpenMP), compiled with the machine's C compiler (``$CC``, else ``cc`` or
``gcc``) into ``~/.cache/spatialmix/kernels`` (or ``$SPATIALMIX_CACHE``), once per source,
compiler and CPU (``-march=native``), to a unique temporary name and then renamed, so concurrent
first uses (a study's side-by-side workers) never see half a library. Built with ``-fopenmp``,
the library shares the ``libgomp`` torch has loaded (same soname), so its threads are torch's own
idle workers rather than competitors for the same cores.

Before first use each kernel is compared with torch on a small case; a library that disagrees (a
bad build, someone else's file) is not used. Without a compiler, with ``SPATIALMIX_NATIVE=0``, or
after any failure, :func:`library` is None, :func:`status` says why, and callers keep torch's
own kernels: the same results to float rounding, slower.
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

KERNELS = Path(__file__).with_name("kernels")
SOURCES = ("depthwise_grad.c", "batchnorm_grad.c")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fopenmp")
_BUILD_TIMEOUT_S = 180
_INT, _PTR, _LONG = ctypes.c_int, ctypes.c_void_p, ctypes.c_long
SIGNATURES = {  # function -> argument types (every kernel returns 0, or -1 when out of memory)
    "depthwise_weight_grad": [_PTR] * 3 + [_INT] * 11,
    "batchnorm_backward": [_PTR] * 8 + [_INT, _LONG, _INT, _INT],
}

_lock = threading.Lock()
_library = None  # the loaded ctypes library
_unavailable: str | None = None  # why there is none, once we know


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spatialmix"
    return Path(os.environ.get("SPATIALMIX_CACHE") or default) / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _library_path(cc: str) -> Path:
    """One build per sources, flags, compiler and CPU (``-march=native`` makes it CPU-specific)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    texts = [(KERNELS / name).read_text() for name in SOURCES]
    key = hashlib.sha256(
        "\0".join([*texts, " ".join(FLAGS), version, _cpu_flags(), platform.machine()]).encode()
    ).hexdigest()[:16]
    return cache_dir() / f"spatialmix-kernels-{key}.so"


def _build(cc: str, target: Path) -> None:
    """Compile to a unique temporary name and rename: a reader never sees half a library."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        done = subprocess.run(
            [cc, *FLAGS, *(str(KERNELS / name) for name in SOURCES), "-o", str(tmp)],
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        os.chmod(tmp, 0o700)  # code this process will load: its owner's alone, whatever the umask
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path):
    lib = ctypes.CDLL(str(path))
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, argtypes
    return lib


def _channels_last(*shape, generator, dtype=torch.float32):
    return torch.randn(*shape, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)


def call_depthwise_weight_grad(
    lib, x, gy, kernel_size: int, padding: int, chunk: int, threads: int
) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.empty(c, 1, kernel_size, kernel_size, dtype=torch.float32)
    if (
        lib.depthwise_weight_grad(
            x.data_ptr(),
            gy.data_ptr(),
            out.data_ptr(),
            int(x.dtype == torch.bfloat16),
            n,
            c,
            h,
            w,
            gy.shape[2],
            gy.shape[3],
            kernel_size,
            padding,
            chunk,
            threads,
        )
        != 0
    ):
        raise MemoryError("out of memory in the depthwise weight-gradient kernel")
    return out


def call_batchnorm_backward(lib, x, g, mean, invstd, weight, threads: int):
    """(grad_x, grad_weight, grad_bias) of a training-mode batch norm; x and g channels_last, same dtype."""
    n, c, h, w = x.shape
    gx = torch.empty_like(x, memory_format=torch.channels_last)
    gw, gb = torch.empty(c, dtype=torch.float32), torch.empty(c, dtype=torch.float32)
    weight_ptr = None if weight is None else weight.data_ptr()  # NULL: no affine weight
    if (
        lib.batchnorm_backward(
            x.data_ptr(),
            g.data_ptr(),
            mean.data_ptr(),
            invstd.data_ptr(),
            weight_ptr,
            gx.data_ptr(),
            gw.data_ptr(),
            gb.data_ptr(),
            int(x.dtype == torch.bfloat16),
            n * h * w,
            c,
            threads,
        )
        != 0
    ):
        raise MemoryError("out of memory in the batch-norm backward kernel")
    return gx, gw, gb


def _agrees_with_torch(lib) -> bool:
    """A miscompiled or foreign library must not train anything: each kernel against torch on a
    small case (19 channels: the vector path and the plain one)."""
    g = torch.Generator().manual_seed(0)
    x, gy = _channels_last(3, 19, 6, 7, generator=g), _channels_last(3, 19, 6, 7, generator=g)
    ours = call_depthwise_weight_grad(lib, x, gy, 5, 2, chunk=2, threads=2)
    ref = torch.ops.aten.convolution_backward(
        gy, x, torch.zeros(19, 1, 5, 5), None, [1, 1], [2, 2], [1, 1], False, [0, 0], 19, [False, True, False]
    )[1]
    if not torch.allclose(ours, ref, rtol=1e-4, atol=1e-4):
        return False
    weight, bias = torch.rand(19, generator=g) + 0.5, torch.randn(19, generator=g)
    _, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, None, None, True, 0.1, 1e-5)[:3]
    ours = call_batchnorm_backward(lib, x, gy, mean, invstd, weight, threads=2)
    ref = torch.ops.aten.native_batch_norm_backward(
        gy, x, weight, None, None, mean, invstd, True, 1e-5, [True, True, True]
    )
    return all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(ours, ref))


def library():
    """The loaded kernels, building them on first use; None when they cannot be had (see :func:`status`)."""
    global _library, _unavailable
    if _library is not None or _unavailable is not None:
        return _library
    with _lock:
        if _library is not None or _unavailable is not None:
            return _library
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
            lib = _load(path)
            if not _agrees_with_torch(lib):
                _unavailable = f"{path} disagrees with torch; delete it to rebuild"
                return None
            _library = lib
        except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as err:
            _unavailable = f"could not build or load the kernels: {err}"
        return _library


def status() -> str:
    """One line for benchmarks and logs: whether the C kernels are in use, and if not, why."""
    return "C kernels" if library() is not None else f"torch's ({_unavailable})"

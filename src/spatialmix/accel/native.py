"""The C kernels in ``spatialmix/kernels/*.c``: built on first use, checked, loaded with ctypes.

torch has no fast CPU path for two backward passes that ConvMixer training and attacks run at
every step: a depthwise conv's weight gradient (`spatialmix.accel.depthwise`) and a training-mode
batch norm's backward (`spatialmix.accel.speed.FastKernels`). Their kernels are plain C (GCC
vector extensions, OpenMP), compiled with the machine's C compiler (``$CC``, else ``cc`` or
``gcc``) into ``~/.cache/spatialmix/kernels`` (or ``$SPATIALMIX_CACHE``), once per source,
compiler and CPU (``-march=native``), to a unique temporary name and then renamed, so concurrent
first uses (a study's side-by-side workers) never see half a library. Built with ``-fopenmp``,
the library shares the ``libgomp`` torch has loaded (same soname), so its threads are torch's own
idle workers rather than competitors for the same cores.

The cache holds code this process will run, so nothing in it is loaded on its name alone. Each
build records its SHA-256 beside the library (``<name>.sha256``, 0600); before loading, the
kernel folder must be a real folder of this user's that nobody else can write, the library and its
record regular files of this user's that nobody else can write, and the library's bytes must hash
to the record. A folder or file that fails the ownership checks is left alone: one warning line,
and torch's kernels. A library without a matching record (someone else's file, a build of an older
spatialmix) is rebuilt in its place, never loaded. The record is no signature: whoever can write the
folder could forge it, which is why the folder must be this user's alone.

Before first use each kernel is also compared with torch on a small case; a library that disagrees
(a bad build) is not used. Without a compiler, with ``SPATIALMIX_NATIVE=0``, or after any failure,
`library` is None, `status` says why, and callers keep torch's own kernels: the same
results to float rounding, slower.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
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

_RECORD = ".sha256"  # beside each library: the SHA-256 of the bytes this code built
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # never a symlink; a FIFO cannot block
_FIX = "not loading code from the kernel cache (delete it, or set SPATIALMIX_CACHE to a folder of your own)"

_lock = threading.Lock()
_library = None  # the loaded ctypes library
_unavailable: str | None = None  # why there is none, once we know
_loaded_fds: list[int] = []  # descriptors of loaded libraries, open for good (see _load)


class _Untrusted(Exception):
    """The kernel folder, or a file in it, is not this user's alone: nothing in it is loaded or built."""


class _Unrecorded(Exception):
    """A library whose bytes do not hash to the record of a build by this code: rebuilt, never loaded."""


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


def _check_owned(fd: int, what: Path) -> None:
    """The object behind ``fd`` (not a path that could be swapped meanwhile) is this user's alone."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise _Untrusted(f"{what} is owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o022:
        raise _Untrusted(f"{what} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")


def _open_folder(folder: Path) -> int:
    """A descriptor of the kernel folder (created 0700 if missing), checked: every later lookup goes
    through it, so what a path's parents point at after this check does not matter."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        pass  # a file, or a symlink to nowhere: the open below says which
    try:
        fd = os.open(folder, _OPEN | os.O_DIRECTORY)
    except OSError as err:
        if err.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        raise _Untrusted(f"{folder} is {'a symlink' if folder.is_symlink() else 'not a folder'}") from None
    try:
        _check_owned(fd, folder)
    except _Untrusted:
        os.close(fd)
        raise
    return fd


def _open_file(folder_fd: int, path: Path, check: bool = True) -> int | None:
    """A descriptor of ``path``'s name in the checked folder, or None when there is none; never a
    symlink, only a regular file, and (``check``) this user's alone."""
    try:
        fd = os.open(path.name, _OPEN, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise _Untrusted(f"{path} is a symlink") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Untrusted(f"{path} is not a regular file")
        if check:
            _check_owned(fd, path)
    except _Untrusted:
        os.close(fd)
        raise
    return fd


def _sha256(fd: int) -> str:
    with open(fd, "rb", closefd=False) as f:
        f.seek(0)
        return hashlib.file_digest(f, "sha256").hexdigest()


def _recorded_sha256(folder_fd: int, library: Path) -> str | None:
    fd = _open_file(folder_fd, library.with_name(library.name + _RECORD))
    if fd is None:
        return None
    with open(fd, "rb") as f:
        return f.read(100).decode("ascii", "replace").strip()


def _write_record(folder_fd: int, library: Path, digest: str) -> None:
    """``<library>.sha256``, 0600, written to a fresh name and renamed: never half a record."""
    name = library.name + _RECORD
    tmp = f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder_fd)
    try:
        with open(fd, "w") as f:
            f.write(digest + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    finally:
        _unlink(folder_fd, tmp)


def _unlink(folder_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=folder_fd)
    except FileNotFoundError:
        pass


def _verified(folder_fd: int, library: Path) -> int | None:
    """A descriptor of the cached library whose bytes hash to its record; None when there is none."""
    fd = _open_file(folder_fd, library)
    if fd is None:
        return None
    try:
        recorded = _recorded_sha256(folder_fd, library)
        if recorded is None:
            raise _Unrecorded(f"{library} has no hash record")
        if recorded != _sha256(fd):
            raise _Unrecorded(f"{library} does not match the hash recorded when it was built")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _build(cc: str, folder_fd: int, target: Path) -> int:
    """Compile to a unique temporary name, record its hash and rename it into place: a reader never
    sees half a library. Returns a descriptor of the library built, which this process loads
    whatever a concurrent build renames over the name meanwhile."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = None
    try:
        done = subprocess.run(
            [cc, *FLAGS, *(str(KERNELS / name) for name in SOURCES), "-o", str(tmp)],
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        fd = _open_file(folder_fd, tmp, check=False)
        if fd is None:
            raise RuntimeError(f"{cc} wrote no {tmp}")
        os.fchmod(fd, 0o700)  # code this process will load: its owner's alone, whatever the umask
        _check_owned(fd, tmp)
        os.fsync(fd)
        # Concurrent first builds of the same sources write the same bytes; were they ever to differ,
        # a pair of record and library from two builds only means a rebuild by the next process.
        _write_record(folder_fd, target, _sha256(fd))
        os.replace(tmp.name, target.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    finally:
        _unlink(folder_fd, tmp.name)
    return fd


def _load(fd: int):
    """Load the library behind ``fd``, the very file whose bytes were hashed: the dynamic loader opens
    /proc/self/fd/N, that file whatever has been renamed onto its name since, and the checks above
    leave its contents writable by this user only. The descriptor stays open for good: the loader
    knows a library by the name it was opened by, and a reused N would be mistaken for this one."""
    proc = f"/proc/self/fd/{fd}"
    if not os.path.exists(proc):
        os.close(fd)
        raise RuntimeError("loading a checked library needs /proc/self/fd (Linux)")
    try:
        lib = ctypes.CDLL(proc)
    except BaseException:
        os.close(fd)
        raise
    _loaded_fds.append(fd)
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, argtypes
    return lib


def _checked_library(cc: str):
    """The cached library if it passes every check, else a fresh build; _Untrusted if the cache is
    not this user's alone (then nothing is built in it either)."""
    path = _library_path(cc)
    folder_fd = _open_folder(path.parent)
    try:
        try:
            fd = _verified(folder_fd, path)
        except _Unrecorded as why:
            _warn(f"{why}; rebuilding it")
            fd = None
        return _load(fd if fd is not None else _build(cc, folder_fd, path)), path
    finally:
        os.close(folder_fd)


def _warn(line: str) -> None:
    print(f"spatialmix: warning: {line}", file=sys.stderr)


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
    """The loaded kernels, building them on first use; None when they cannot be had (see `status`)."""
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
            lib, path = _checked_library(cc)
            if not _agrees_with_torch(lib):
                _unavailable = f"{path} disagrees with torch; delete it to rebuild"
                return None
            _library = lib
        except _Untrusted as why:
            _unavailable = f"{why}; {_FIX}"
            _warn(f"{_unavailable}; using torch's kernels")
        except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as err:
            _unavailable = f"could not build or load the kernels: {err}"
        return _library


def status() -> str:
    """One line for benchmarks and logs: whether the C kernels are in use, and if not, why."""
    return "C kernels" if library() is not None else f"torch's ({_unavailable})"

"""Building, checking and loading the C kernels: a clean fall-back to torch, with the reason,
whenever they cannot be built or do not agree with torch."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SUBPROCESS_ENV
from spatialmix.accel import native

pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C compiler")


def _fresh_status(env: dict) -> str:
    code = "from spatialmix.accel import native; print(native.status())"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_turned_off_or_without_a_compiler_it_falls_back_and_says_why(tmp_path):
    base = {**os.environ, "SPATIALMIX_CACHE": str(tmp_path / "cache")}
    assert _fresh_status({**base, "SPATIALMIX_NATIVE": "0"}) == "torch's (turned off by SPATIALMIX_NATIVE=0)"
    line = _fresh_status({**base, "CC": "/bin/false"})
    assert line.startswith("torch's (could not build or load the kernels: /bin/false failed")
    kernels = tmp_path / "cache" / "kernels"
    assert not kernels.exists() or not any(kernels.iterdir())  # no half-built library left behind
    assert _fresh_status(base) == "C kernels"  # and built where we pointed it
    assert len(list(kernels.glob("spatialmix-kernels-*.so"))) == 1


WRONG = """
int depthwise_weight_grad(const void *x, const void *gy, float *out, int b, int n, int c, int h, int w,
                          int ho, int wo, int k, int p, int chunk, int t) {
    for (int i = 0; i < c * k * k; i++) out[i] = 1.0f;
    return 0;
}
int batchnorm_backward(const void *x, const void *g, const float *m, const float *s, const float *w, void *gx,
                       float *gw, float *gb, int b, long n, int c, int t) {
    return 0;
}
"""


def test_a_library_that_disagrees_with_torch_is_not_used(tmp_path, monkeypatch):
    """A cached library that computes something else (a wrong build that passed every check of the
    cache) is refused."""
    monkeypatch.setenv("SPATIALMIX_CACHE", str(tmp_path))
    cc = native._compiler()
    wrong = tmp_path / "wrong.c"
    wrong.write_text(WRONG)
    target = native._library_path(cc)
    target.parent.mkdir(parents=True)
    subprocess.run([cc, "-shared", "-fPIC", str(wrong), "-o", str(target)], check=True)
    _record(target).write_text(hashlib.sha256(target.read_bytes()).hexdigest())  # as if built here
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_unavailable", None)
    assert native.library() is None
    assert native.status() == f"torch's ({target} disagrees with torch; delete it to rebuild)"
    # following the advice: delete it, and the next process builds the real one in its place
    target.unlink()
    assert _fresh_status({**os.environ, "SPATIALMIX_CACHE": str(tmp_path)}) == "C kernels"
    assert target.is_file()


def test_a_library_built_under_umask_000_is_not_writable_by_others(tmp_path):
    """The kernel cache holds code this process will load: whatever the umask, the library and the
    hash record it writes are readable and writable by their owner only."""
    cc = native._compiler()
    target = tmp_path / "cache" / "spatialmix-kernels-test.so"
    old = os.umask(0)
    try:
        folder = native._open_folder(target.parent)
        os.close(native._build(cc, folder, target))
        os.close(folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(_record(target).stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) & 0o077 == 0


# A library planted in the kernel cache: its constructor runs the moment anything loads it, so the
# marker file it writes is proof that the cache ran code this process did not build.
PLANTED = (
    """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen("%s", "w");
    if (f) { fputs("the planted constructor ran", f); fclose(f); }
}
"""
    + WRONG
)


def _plant(tmp_path: Path, monkeypatch, record: str | None = "match") -> tuple[Path, Path]:
    """A library whose constructor writes a marker, under the exact name the kernels load from;
    with no hash record, a record of another hash, or a (forged) record of its own hash."""
    monkeypatch.setenv("SPATIALMIX_CACHE", str(tmp_path / "cache"))
    cc, marker = native._compiler(), tmp_path / "marker"
    source = tmp_path / "planted.c"
    source.write_text(PLANTED % marker)
    target = native._library_path(cc)
    target.parent.mkdir(parents=True, mode=0o700)
    subprocess.run([cc, "-shared", "-fPIC", str(source), "-o", str(target)], check=True)
    if record is not None:
        data = target.read_bytes() if record == "match" else b"another library"
        _record(target).write_text(hashlib.sha256(data).hexdigest() + "\n")
    return target, marker


def _record(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _load_in_a_fresh_process(tmp_path: Path) -> tuple[str, list[str]]:
    """native.status() of a new process (a loaded constructor really runs) and its warning lines."""
    code = "from spatialmix.accel import native; print(native.status())"
    env = {**SUBPROCESS_ENV, "SPATIALMIX_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip(), done.stderr.strip().splitlines()


@pytest.mark.parametrize("record", [None, "another"], ids=["no record", "a record of another hash"])
def test_a_planted_library_without_a_matching_record_is_rebuilt_never_loaded(tmp_path, monkeypatch, record):
    """Only a library whose bytes hash to the record written when this code built it is loaded; any
    other library in a trusted cache is replaced by a fresh build, and its constructor never runs."""
    target, marker = _plant(tmp_path, monkeypatch, record)
    planted = target.read_bytes()
    line, warnings = _load_in_a_fresh_process(tmp_path)
    assert not marker.exists()
    assert line == "C kernels"
    why = "has no hash record" if record is None else "does not match the hash recorded when it was built"
    assert warnings == [f"spatialmix: warning: {target} {why}; rebuilding it"]
    built = target.read_bytes()
    assert built != planted
    assert _record(target).read_text().strip() == hashlib.sha256(built).hexdigest()
    assert stat.S_IMODE(_record(target).stat().st_mode) == 0o600
    assert _load_in_a_fresh_process(tmp_path) == ("C kernels", [])  # the rebuilt one is trusted as is


def _assert_refused(tmp_path: Path, target: Path, marker: Path, why: str) -> None:
    """Nothing of the cache is loaded, the planted files are left as they are, nothing is built
    beside them, and one warning line says why."""
    before = sorted(p.name for p in target.parent.iterdir()), target.read_bytes()
    line, warnings = _load_in_a_fresh_process(tmp_path)
    assert not marker.exists()
    assert (sorted(p.name for p in target.parent.iterdir()), target.read_bytes()) == before
    fix = "delete it, or set SPATIALMIX_CACHE to a folder of your own"
    reason = f"{why}; not loading code from the kernel cache ({fix})"
    assert line == f"torch's ({reason})"
    assert warnings == [f"spatialmix: warning: {reason}; using torch's kernels"]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=lambda mode: f"{mode:o}")
def test_a_planted_library_in_a_folder_others_can_write_is_never_loaded(tmp_path, monkeypatch, mode):
    """Even with a matching record: whoever can write the folder could have written both."""
    target, marker = _plant(tmp_path, monkeypatch)
    target.parent.chmod(mode)
    _assert_refused(tmp_path, target, marker, f"{target.parent} is writable by other users (mode {mode:o})")


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("whose", ["folder", "library", "record"])
def test_a_planted_library_where_another_user_owns_the_folder_or_a_file_is_never_loaded(
    tmp_path, monkeypatch, whose
):
    target, marker = _plant(tmp_path, monkeypatch)
    given = {"folder": target.parent, "library": target, "record": _record(target)}[whose]
    os.chown(given, NOBODY, NOBODY)
    _assert_refused(tmp_path, target, marker, f"{given} is owned by uid {NOBODY}, not by this user")


def test_a_planted_library_others_can_write_is_never_loaded(tmp_path, monkeypatch):
    target, marker = _plant(tmp_path, monkeypatch)
    target.chmod(0o757)
    _assert_refused(tmp_path, target, marker, f"{target} is writable by other users (mode 757)")


def test_a_symlinked_library_is_never_loaded(tmp_path, monkeypatch):
    """The name in the cache points at a library elsewhere, with a record of that library's hash."""
    target, marker = _plant(tmp_path, monkeypatch)
    elsewhere = tmp_path / "elsewhere.so"
    target.rename(elsewhere)
    target.symlink_to(elsewhere)
    _assert_refused(tmp_path, target, marker, f"{target} is a symlink")


def test_a_symlinked_kernel_folder_is_never_loaded(tmp_path, monkeypatch):
    target, marker = _plant(tmp_path, monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    target.parent.rename(elsewhere)
    target.parent.symlink_to(elsewhere)
    _assert_refused(tmp_path, target, marker, f"{target.parent} is a symlink")

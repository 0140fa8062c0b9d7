"""Building, checking and loading the C kernels: a clean fall-back to torch, with the reason,
whenever they cannot be built or do not agree with torch."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

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
    """A cached library that computes something else (a wrong build, someone else's file) is refused."""
    monkeypatch.setenv("SPATIALMIX_CACHE", str(tmp_path))
    cc = native._compiler()
    wrong = tmp_path / "wrong.c"
    wrong.write_text(WRONG)
    target = native._library_path(cc)
    target.parent.mkdir(parents=True)
    subprocess.run([cc, "-shared", "-fPIC", str(wrong), "-o", str(target)], check=True)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_unavailable", None)
    assert native.library() is None
    assert native.status() == f"torch's ({target} disagrees with torch; delete it to rebuild)"
    # following the advice: delete it, and the next process builds the real one in its place
    target.unlink()
    assert _fresh_status({**os.environ, "SPATIALMIX_CACHE": str(tmp_path)}) == "C kernels"
    assert target.is_file()


def test_a_library_built_under_umask_000_is_not_writable_by_others(tmp_path):
    """The kernel cache holds code this process will load: whatever the umask, the library it
    writes is readable and writable by its owner only."""
    cc = native._compiler()
    target = tmp_path / "cache" / "spatialmix-kernels-test.so"
    old = os.umask(0)
    try:
        native._build(cc, target)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(target.parent.stat().st_mode) & 0o077 == 0

"""What machine and which code produced a result: the stamp a study keeps beside its numbers.

The same configuration can give different numbers on two CPU kinds (kernels differ by instruction
set) and on two versions of the code, so every study records the CPU model and torch's CPU
capability, the process and thread counts, the package versions and the git commit of the code
that ran it (`machine_stamp`). `spatialmix publish` names a published folder after the
CPU (`cpu_tag`).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch

from spatialmix.version import __version__

# The packages whose versions can move a published number.
STAMPED_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scipy")
_SOURCE = Path(__file__).resolve().parents[1]  # the spatialmix package folder


def package_versions() -> dict[str, str | None]:
    """`{package: version}` of spatialmix and `STAMPED_PACKAGES` (None: not installed)."""
    versions: dict[str, str | None] = {"spatialmix": __version__}
    for name in STAMPED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_commit() -> dict[str, object]:
    """The git commit of the running spatialmix and whether tracked files differ from it
    (`{"commit": None, "dirty": None}` for an installed wheel, which has no repository)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), or the platform's word for it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels use here (`AVX512`, `AVX2`, `DEFAULT`, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def cpu_tag(model: str, capability: str) -> str:
    """A folder name for a CPU kind: its vendor and family and torch's capability,
    `Intel(R) Xeon(R) Platinum 8480+` with `AVX512` -> `intel-xeon-avx512`."""
    words = re.sub(r"\((R|TM|tm|r)\)", " ", model).split()
    named = [w for w in words if re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", w)][:2] or ["cpu"]
    slug = "-".join([*named, capability]).lower()
    return re.sub(r"[^a-z0-9]+", "-", slug).strip("-")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_stamp(
    command: str | None = None, processes: int | None = None, threads: int | None = None
) -> dict:
    """Where and with what a result was made, as JSON: the command, processes and threads, the CPU
    (model, capability, cores this process may use), a GPU if torch sees one, the package versions,
    the git commit and the date (UTC)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "command": command,
        "processes": processes,
        "threads": threads,
        "cpu": {"model": cpu_model(), "capability": cpu_capability(), "cores": _cores()},
        "gpu": gpu,
        "versions": package_versions(),
        **code_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }

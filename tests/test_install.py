"""spatialmix installs beside the torch an environment already has.

pyproject.toml declares ranges, constraints.txt pins the set-up's exact versions. The slow tests
build the wheel of this checkout offline (what ``pip install .`` builds too) and check what it
holds, what installing it would change in this environment, and that it imports and runs from a
folder of its own with this environment's torch.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import SUBPROCESS_ENV
from spatialmix.accel import native

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "src" / "spatialmix"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# What setuptools reads to build the wheel (copied, so that the build leaves nothing in the checkout).
BUILD_INPUTS = ("pyproject.toml", "README.md", "src")
NOT_BUILT_FROM = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)$")


def project_requirements() -> list[Requirement]:
    """The dependencies and every extra's, as pyproject.toml declares them."""
    project = PYPROJECT["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def build_requirements() -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]


def constraint_pins() -> dict[str, str]:
    """``{canonical name: version}`` of constraints.txt; every line is a comment, blank or one exact pin."""
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt:{number}: {line!r} is not an exact pin (name==version)"
        name = canonicalize_name(match["name"])
        assert name not in pins, f"constraints.txt:{number}: {name} is pinned twice"
        pins[name] = match["version"]
    return pins


def test_every_requirement_is_pinned_in_constraints_inside_its_range():
    pins = constraint_pins()
    for requirement in project_requirements() + build_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {name} (pyproject.toml requires {requirement})"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement}"
        )


def test_the_library_declares_lower_bounds_not_pins():
    for requirement in project_requirements():
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators and not operators & {"==", "===", "~="}, (
            f"pyproject.toml requires {requirement}: declare the oldest version that works (>=), "
            "and pin exact versions in constraints.txt"
        )


def requirement_closure(roots: list[Requirement]) -> dict[str, list[str]]:
    """``{canonical name: [the requirements naming it]}`` over ``roots`` and, recursively, what the
    installed distributions they name require (with the extras asked for; markers evaluated here)."""
    found: dict[str, list[str]] = {}
    todo = [(r, "pyproject.toml") for r in roots]
    while todo:
        requirement, by = todo.pop()
        name = canonicalize_name(requirement.name)
        first = name not in found
        found.setdefault(name, []).append(f"{by}: {requirement}")
        if not first:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for line in dist.requires or []:
            needed = Requirement(line)
            extras = requirement.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras):
                todo.append((needed, f"{name} {dist.version}"))
    return found


def test_installing_with_the_test_extra_requires_no_requests_pin():
    """torchattacks pins requests~=2.25.1 (a release with security advisories), which downgraded
    the requests of any environment spatialmix was installed in: it is an optional extra, installed
    by scripts/setup.sh with --no-deps, and nothing spatialmix or its test extra pulls in asks for it
    or for requests."""
    project = PYPROJECT["project"]
    roots = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    closure = requirement_closure(roots)
    assert "torch" in closure and "numpy" in closure  # (the walk follows the installed packages)
    assert "torchattacks" not in closure, closure.get("torchattacks")
    assert "requests" not in closure, closure.get("requests")
    assert project["optional-dependencies"]["reference"] == ["torchattacks>=3.5.1"]
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert "pip install -q -c constraints.txt --no-deps torchattacks" in setup


# ---- the wheel ----------------------------------------------------------------------------------


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """This environment's pip, its configuration files and variables ignored (each call here is offline)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", *args],
        cwd=cwd,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _completed(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{shlex.join(result.args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built offline with the build backend of this environment."""
    pytest.importorskip("pip")
    if Version(metadata.version("pip")) < Version("22.2"):
        pytest.skip("pip install --dry-run --report needs pip 22.2 or newer")
    (backend,) = [r for r in build_requirements() if r.name == "setuptools"]
    try:  # (not imported here: setuptools replaces distutils, which torch has imported already)
        installed = metadata.version(backend.name)
    except metadata.PackageNotFoundError:
        installed = None
    if installed is None or not backend.specifier.contains(installed):
        pytest.skip(f"building the wheel offline needs {backend} here, found {installed}")
    work = tmp_path_factory.mktemp("wheel")
    (work / "source").mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, work / "source" / name, ignore=NOT_BUILT_FROM)
        else:
            shutil.copy2(ROOT / name, work / "source" / name)
    built = _pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        "dist",
        str(work / "source"),
        cwd=work,
    )
    _completed(built)
    (built,) = (work / "dist").glob("spatialmix-*.whl")
    return built


def _wheel_text(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(f".dist-info/{suffix}")]
        return archive.read(name).decode("utf-8")


def _key(requirement: Requirement) -> tuple:
    return canonicalize_name(requirement.name), requirement.specifier, str(requirement.marker or "")


@pytest.mark.slow
def test_the_wheel_declares_the_ranges_of_pyproject(wheel):
    fields = Parser().parsestr(_wheel_text(wheel, "METADATA"))
    declared = [Requirement(r) for r in fields.get_all("Requires-Dist")]
    for name in ("torch", "torchvision"):
        (requirement,) = [r for r in declared if canonicalize_name(r.name) == name]
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators and "==" not in operators, f"the wheel requires {requirement}"
    expected = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra, group in PYPROJECT["project"]["optional-dependencies"].items():
        expected += [Requirement(f'{r}; extra == "{extra}"') for r in group]
    assert sorted(map(_key, declared), key=str) == sorted(map(_key, expected), key=str)
    assert fields["Requires-Python"] == PYPROJECT["project"]["requires-python"]
    scripts = _wheel_text(wheel, "entry_points.txt")
    assert "[console_scripts]" in scripts
    assert f"spatialmix = {PYPROJECT['project']['scripts']['spatialmix']}" in scripts


@pytest.mark.slow
def test_the_wheel_holds_every_file_of_the_package(wheel):
    """Run-time files that are not Python (the C kernels, built on first use) come along too."""
    with zipfile.ZipFile(wheel) as archive:
        packaged = {n for n in archive.namelist() if n.startswith("spatialmix/")}
    source = {
        p.relative_to(PACKAGE_DIR.parent).as_posix()
        for p in PACKAGE_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert packaged == source, f"only in the wheel {packaged - source}, missing {source - packaged}"
    assert {f"spatialmix/accel/kernels/{s}" for s in native.SOURCES} <= packaged


@pytest.mark.slow
def test_installing_the_wheel_keeps_the_environments_torch(wheel, tmp_path):
    """Offline, pip resolves the wheel's requirements with what is installed here: it would add
    spatialmix only, nothing else, and changes no torch."""
    report = tmp_path / "report.json"
    result = _pip("install", "--dry-run", "--no-index", "--report", str(report), str(wheel), cwd=tmp_path)
    assert result.returncode == 0, (
        f"the wheel's requirements are not met by this environment (torch {torch.__version__}) "
        f"without downloading:\n{result.stderr}"
    )
    listed = json.loads(report.read_text())["install"]
    installs = {canonicalize_name(item["metadata"]["name"]) for item in listed}
    assert installs <= {"spatialmix"}, f"installing the wheel would also install {installs - {'spatialmix'}}"


@pytest.mark.slow
def test_installing_the_wheel_beside_a_newer_requests_changes_nothing(wheel, tmp_path):
    """Where requests 2.32.5 is installed (a stand-in: its metadata ahead of this environment's on the
    path), pip resolves the wheel offline without touching it: nothing pins an older requests."""
    shadow = tmp_path / "shadow" / "requests-2.32.5.dist-info"
    shadow.mkdir(parents=True)
    (shadow / "METADATA").write_text("Metadata-Version: 2.1\nName: requests\nVersion: 2.32.5\n")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "install", "--dry-run"]
        + ["--no-index", "--report", str(report), str(wheel)],
        cwd=tmp_path,
        env={**SUBPROCESS_ENV, "PYTHONPATH": str(shadow.parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"pip would need another requests:\n{result.stderr}"
    listed = json.loads(report.read_text())["install"]
    assert [item["metadata"]["name"] for item in listed] == ["spatialmix"]


@pytest.mark.slow
def test_the_installed_wheel_imports_and_runs_with_the_environments_torch(wheel, tmp_path):
    target = tmp_path / "target"
    _completed(_pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp_path))
    env = {**SUBPROCESS_ENV, "PYTHONPATH": str(target)}  # not the checkout's src/
    probe = (
        "import json, torch, spatialmix; from spatialmix.accel import native; "
        "print(json.dumps({'package': spatialmix.__file__, 'torch': torch.__file__, "
        "'kernels': {s: (native.KERNELS / s).read_text() for s in native.SOURCES}}))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    found = json.loads(_completed(run).stdout)
    assert Path(found["package"]).resolve().is_relative_to(target.resolve())
    assert found["torch"] == torch.__file__
    for source, text in found["kernels"].items():
        assert text == (PACKAGE_DIR / "accel" / "kernels" / source).read_text()
    command = _completed(
        subprocess.run(
            [str(target / "bin" / "spatialmix"), "--help"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    assert command.stdout.startswith("usage: spatialmix")
    assert "reproduce" in command.stdout

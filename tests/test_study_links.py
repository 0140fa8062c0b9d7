"""Links inside a study folder: one whose target leaves the folder is skipped and named, and nothing
outside is opened or listed (audited in this process, and with strace for the command line); one that
stays inside is followed, and what it reaches counts once."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SUBPROCESS_ENV
from spatialmix.cli import main as cli
from spatialmix.io import runs
from spatialmix.report import document as report
from test_cli import assert_one_error_line, run_main

# --------------------------------------------------------------------------- an audit of what is read

_AUDITED = {"open", "os.listdir", "os.scandir"}
_log: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _log is not None and event in _AUDITED and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _log.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # (a hook cannot be removed: it records only inside `touched`)


@contextlib.contextmanager
def touched():
    """Every path this process opens or lists inside the block (Python's audit events)."""
    global _log
    _log = []
    try:
        yield _log
    finally:
        _log = None


def below(paths: list[str], folder: Path) -> list[str]:
    """The paths at or below ``folder``."""
    folder = os.path.realpath(folder)
    return [p for p in paths if p == folder or p.startswith(folder + os.sep)]


# --------------------------------------------------------------------------- the folders


@pytest.fixture
def outside_run(interrupted_run, tmp_path) -> Path:
    """A complete run outside every study folder of the test: what a link out would read."""
    other = tmp_path / "elsewhere" / "run"
    shutil.copytree(interrupted_run[0], other)
    return other


@pytest.fixture
def study(interrupted_run, tmp_path) -> Path:
    """A study folder of one run, ``classification/full-seed0``, two levels below ``tmp_path``."""
    folder = tmp_path / "studies" / "study"
    shutil.copytree(interrupted_run[0], folder / "classification" / "full-seed0")
    return folder


def report_main(capsys, folder: Path, out: Path) -> tuple[int, str, str]:
    return run_main(capsys, ["report", str(folder), "-o", str(out)])


# --------------------------------------------------------------------------- links out


def test_a_study_folder_of_one_link_out_reads_nothing_outside(capsys, outside_run, tmp_path):
    """`report` of a folder holding only `linked_run -> /elsewhere/run` read that run (exit 0, its
    files in the page); the link is now skipped and named, and with nothing else the folder is refused."""
    folder = tmp_path / "study"
    folder.mkdir()
    os.symlink(outside_run, folder / "linked_run")
    with touched() as paths:
        code, _, err = report_main(capsys, folder, tmp_path / "r.html")
    line = assert_one_error_line(code, err)
    assert line == (
        f"spatialmix: error: {folder} is neither a spatialmix run (no config.json) nor a study folder "
        f"(no results.json, no runs inside; skipped linked_run, a link that leads out of the folder)"
        f"; pass a folder made by `spatialmix train` or `spatialmix reproduce`"
    )
    assert below(paths, outside_run) == [] and not (tmp_path / "r.html").exists()


def test_a_link_up_the_tree_is_skipped_and_named_and_nothing_above_is_listed(capsys, study, tmp_path):
    """A link two levels up (`up -> ../..`, the tree that holds the study) is skipped, in one warning
    line: neither walked for runs nor searched for a file results.json lists that is not there."""
    os.symlink("../..", study / "up")
    shutil.copytree(study / "classification" / "full-seed0", tmp_path / "elsewhere-run")
    entry = {"section": "robustness", "data": {}, "tables": [], "figures": [], "files": ["figure.png"]}
    (study / "results.json").write_text(json.dumps({"studies": {"robustness": entry}}))
    (tmp_path / "figure.png").write_bytes(b"not the study's")
    with touched() as paths:
        code, out, err = report_main(capsys, study, study / "r.html")
    assert code == 0, err
    assert err.splitlines() == [
        f"spatialmix: warning: {study}: skipped up, a link that leads out of the folder"
    ]
    outside = [p for p in paths if not below([p], study) and below([p], tmp_path)]
    assert outside == [], outside
    page = (study / "r.html").read_text()
    assert f"Study folder {study.name}: skipped up, a link that leads out of the folder." in page
    assert "Listed in results.json but not found: figure.png." in page
    assert page.count("full-seed0") >= 1 and "elsewhere-run" not in page


def test_a_link_out_in_the_library_is_named_and_not_followed(study, tmp_path):
    """`sm.write_report` says which links it skipped; the runs found stay the study's own."""
    os.symlink(tmp_path, study / "classification" / "all-of-tmp")
    files = report.write_report([study], tmp_path / "r.html")
    assert files.skipped == [
        f"{study}: skipped classification/all-of-tmp, a link that leads out of the folder"
    ]
    assert runs.find_runs(study) == [study / "classification" / "full-seed0"]


# --------------------------------------------------------------------------- links that stay inside


def test_a_link_that_stays_inside_is_followed_and_counts_once(capsys, study, tmp_path):
    """A run reached through a link inside the folder is reported, once: `alias -> classification/
    full-seed0` made it two runs of the study; a run kept in a hidden folder is reached by its link."""
    os.symlink("classification/full-seed0", study / "alias")
    hidden = study / ".store" / "space-seed0"
    shutil.copytree(study / "classification" / "full-seed0", hidden)
    os.symlink(".store/space-seed0", study / "kept")
    found = runs.find_runs(study)
    assert [os.path.realpath(p) for p in found] == [
        os.path.realpath(study / "classification" / "full-seed0"),
        os.path.realpath(hidden),
    ]
    code, _, err = report_main(capsys, study, tmp_path / "r.html")
    assert code == 0 and err == ""


# --------------------------------------------------------------------------- the command line, traced


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_report_opens_lists_and_stats_nothing_below_a_linked_run(outside_run, tmp_path):
    """The command line traced by strace: no open, stat or listing of a path below the linked run."""
    folder = tmp_path / "study"
    folder.mkdir()
    os.symlink(outside_run, folder / "linked_run")
    trace = tmp_path / "trace"
    command = [sys.executable, "-m", "spatialmix.cli", "report", str(folder), "-o", str(tmp_path / "r.html")]
    calls = "trace=openat,open,stat,lstat,newfstatat,statx,getdents64"
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", calls, "-o", str(trace), *command],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        timeout=300,
    )
    if "ptrace" in done.stderr and done.returncode != 2:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 2 and "skipped linked_run" in done.stderr, done.stderr
    named = re.findall(r'"([^"]*)"', trace.read_text())
    assert named and not [p for p in named if p.startswith(str(outside_run) + os.sep)]
    assert not [p for p in named if p.startswith(str(folder / "linked_run") + os.sep)]


def test_the_report_command_prints_one_warning_per_study(capsys, study, outside_run, tmp_path):
    os.symlink(outside_run, study / "linked_run")
    os.symlink("/", study / "classification" / "root")
    code = cli.main(["report", str(study), "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 0 and err.splitlines() == [
        f"spatialmix: warning: {study}: skipped classification/root, linked_run, links that lead out of "
        f"the folder"
    ]

"""One writer per run folder: an exclusive lock held for the whole run, released when the process
dies; unique temporary names; fsync of files and folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import TINY, config_flags, run_cli
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.train import fit
from spatialmix.errors import SpatialmixError
from spatialmix.io import lock, runs, storage
from spatialmix.studies import context as study

# A process that holds a folder's lock the way spatialmix does (flock on RUN/run.lock, pid inside),
# without importing torch: it starts in milliseconds.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], "run.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def held(tmp_path):
    """A run folder locked by another process: ``(folder, process)``."""
    folder = tmp_path / "run"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_with_the_holders_pid(held, tiny_data):
    folder, proc = held
    with pytest.raises(lock.RunLockedError) as err:
        fit(TrainConfig(**TINY), folder, data=tiny_data)
    assert f"in use by another spatialmix process (pid {proc.pid})" in str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == [runs.LOCK]  # nothing written


def test_the_lock_is_released_when_its_holder_dies(held, tiny_data):
    folder, proc = held
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summary = fit(TrainConfig(**TINY), folder, resume=True, data=tiny_data)
    assert summary["epochs"] == 1
    assert (folder / runs.LOCK).read_bytes() == b""  # empty again once released


def test_the_lock_is_held_for_the_whole_run_and_names_this_process(tmp_path, tiny_data, monkeypatch):
    folder = tmp_path / "run"
    seen = []
    real_save = runs.save_checkpoint

    def save_and_look(run_dir, *args, **kwargs):
        seen.append((folder / runs.LOCK).read_text().strip())
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys\n"
                "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n"
                "    print('busy')\nelse:\n    print('free')",
                str(folder / runs.LOCK),
            ],
            capture_output=True,
            text=True,
        )
        seen.append(probe.stdout.strip())
        return real_save(run_dir, *args, **kwargs)

    monkeypatch.setattr(runs, "save_checkpoint", save_and_look)
    fit(TrainConfig(**TINY), folder, data=tiny_data)
    assert seen == [str(os.getpid()), "busy"]


def test_the_lock_is_reentrant_within_a_process(tmp_path, tiny_data):
    folder = tmp_path / "run"
    with runs.locked(folder):
        fit(TrainConfig(**TINY), folder, data=tiny_data)  # study.train_or_reuse holds the folder too
        assert (folder / runs.LOCK).read_text().strip() == str(os.getpid())
    assert (folder / runs.LOCK).read_bytes() == b""


def test_a_start_that_wrote_nothing_leaves_no_folder(tmp_path):
    folder = tmp_path / "a" / "run"
    with pytest.raises(SpatialmixError, match="unknown model"):
        fit(TrainConfig(**{**TINY, "model": "nosuch"}), folder)
    assert not folder.exists()
    with runs.locked(folder):
        assert (folder / runs.LOCK).exists()
    assert not folder.exists()


def test_reproduce_and_sweeps_use_the_same_lock(held, monkeypatch):
    from spatialmix.sweep.jobs import run_job

    folder, proc = held
    config = TrainConfig(**TINY)
    monkeypatch.setattr(study, "fit", lambda *a, **k: pytest.fail("trained a locked run"))
    with pytest.raises(lock.RunLockedError, match=f"pid {proc.pid}"):
        study.train_or_reuse(config, folder)
    with pytest.raises(lock.RunLockedError, match=f"pid {proc.pid}"):
        run_job(config.to_dict(), str(folder))


@pytest.mark.slow
def test_second_writer_through_the_cli_exits_2_naming_the_pid(held, fake_fashion_dir):
    folder, proc = held
    config = TrainConfig(**{**TINY, "data_dir": str(fake_fashion_dir), "train_subset": 128})
    result = run_cli(["train", *config_flags(config), "--out", str(folder)])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"spatialmix: error: {folder} is in use by another spatialmix process (pid {proc.pid}); "
        f"wait for it to "
        f"finish or stop it, or choose another --out"
    ]


# --------------------------------------------------------------------------- temporary files and fsync


def test_temporary_names_are_unique(tmp_path, monkeypatch):
    """Two writers of the same file must never share a temporary name (one would rename the other's)."""
    names = []
    real_save = torch.save

    def record(obj, path, *args, **kwargs):
        names.append(os.path.basename(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", record)
    for _ in range(2):
        storage.atomic_via_tmp(tmp_path / "state.pt", lambda tmp: torch.save({"a": 1}, tmp))
    assert len(set(names)) == 2 and all(str(os.getpid()) in n and n.endswith(".tmp") for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_files_and_their_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    runs.save_weights(tmp_path / "w.safetensors", {"x": torch.ones(2)})
    assert any(p.endswith(".tmp") for p in synced), synced  # the data, before the rename
    assert str(tmp_path) in synced, synced  # the folder, after it
    synced.clear()
    runs.atomic_write_json(tmp_path / "s.json", {"a": 1})
    assert any(p.endswith(".tmp") for p in synced) and str(tmp_path) in synced


def test_stray_temporaries_of_a_kill_are_cleaned_on_resume(tiny_data, tmp_path):
    folder = tmp_path / "run"
    config = TrainConfig(**{**TINY, "epochs": 2})
    fit(config.replace(epochs=1), folder, data=tiny_data)
    strays = [
        folder / ".status.json.123.ab.tmp",
        folder / runs.CKPT_DIR / ".latest.json.9.tmp",
        folder / runs.CKPT_DIR / "epoch-0001" / ".model.safetensors.77.cd.tmp",
    ]
    for p in strays:
        p.write_bytes(b"half")
    fit(config, folder, resume=True, data=tiny_data)
    assert not any(p.exists() for p in strays)
    assert not list(folder.rglob("*.tmp"))


@pytest.mark.slow
def test_two_fresh_starts_at_once_leave_one_consistent_run(fake_fashion_dir, tmp_path):
    """Two `spatialmix train` on the same --out: one runs, the other exits 2 naming it."""
    folder = tmp_path / "run"
    config = TrainConfig(**{**TINY, "data_dir": str(fake_fashion_dir), "train_subset": 256, "epochs": 2})
    cmd = [sys.executable, "-m", "spatialmix.cli", "train", *config_flags(config), "--out", str(folder)]
    from conftest import SUBPROCESS_ENV

    procs = [
        subprocess.Popen(
            cmd + ["--seed", str(seed)],
            env=SUBPROCESS_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert "in use by another spatialmix process (pid" in loser or "already holds a run" in loser
    winner_seed = (1, 2)[[p.returncode for p in procs].index(0)]
    record = runs.Run(folder).record()
    assert record["train"]["seed"] == winner_seed
    assert [m["epoch"] for m in runs.Run(folder).metrics()] == [1, 2]
    assert runs.Run(folder).status() == {"state": "finished", "epoch": 2}

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
from spatialmix.robustness.settings import AttackSettings
from spatialmix.studies import context as study
from test_cli import assert_one_error_line, run_main

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


# --------------------------------------------------------------------------- attacks and trainings of one run

# A spatialmix command (argv after the script) that stops where it holds what it holds: it prints
# "paused" when it reaches the function named first, then waits for a line on stdin before going on.
PAUSED = """
import sys
import importlib
module, name = sys.argv[1].rsplit(".", 1)
owner = importlib.import_module(module)
real = getattr(owner, name)

def paused(*args, **kwargs):
    print("paused", flush=True)
    sys.stdin.readline()
    return real(*args, **kwargs)

setattr(owner, name, paused)
from spatialmix.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


EVALUATE = "spatialmix.robustness.run_attacks.evaluate_run"  # where an attack holds the run


def attack_argv(run_dir, data_dir, eps: str) -> list[str]:
    return [
        *("attack", str(run_dir), "--data-dir", str(data_dir), "--n-examples", "4", "--eps", eps),
        *("--attacks", "fgsm", "--reference-examples", "0", "--no-progress", "--plot", "none"),
    ]


@pytest.fixture
def paused():
    """Start ``PAUSED`` at the function ``where`` with a command's arguments; yields a starter whose
    process is stopped there (it printed "paused"), and ends them all after the test."""
    from conftest import SUBPROCESS_ENV

    procs = []

    def start(where: str, argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSED, where, *argv],
            env=SUBPROCESS_ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline().strip()
        assert line == "paused", (line, proc.stderr.read() if proc.poll() is not None else "")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def go_on(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate("\n", timeout=300)
    return proc.returncode, out, err


def test_a_second_attack_of_a_run_is_refused_while_the_first_runs(capsys, paused, run_copy, fake_fashion_dir):
    """Two `attack`s of one run both evaluated it and both wrote robustness.json; the second is now
    refused at once, naming the first, and the result is the first's alone."""
    run_dir, _ = run_copy
    result = run_dir / "robustness.json"
    first = paused(EVALUATE, attack_argv(run_dir, fake_fashion_dir, "0"))
    code, _, err = run_main(capsys, attack_argv(run_dir, fake_fashion_dir, "0,1/255"))
    assert assert_one_error_line(code, err) == (
        f"spatialmix: error: {run_dir} is in use by another spatialmix process (pid {first.pid}); "
        f"attack it when that process (a training or another attack) has finished"
    )
    assert not result.exists()
    code, _, err = go_on(first)
    assert code == 0, err
    assert [b["eps"] for b in runs.read_json(result)["budgets"]] == [0.0]
    assert (run_dir / runs.LOCK).read_bytes() == b""  # released


def test_an_attack_of_a_run_in_training_is_refused_and_the_training_goes_on(
    capsys, paused, run_copy, fake_fashion_dir
):
    """`attack` of a run that `train --resume` was writing took no lock: it read the checkpoint the
    training was replacing and wrote into the folder beside it. It is now refused in one line."""
    run_dir, _ = run_copy
    training = paused("spatialmix.io.runs.save_checkpoint", ["train", "--resume", "--out", str(run_dir)])
    code, _, err = run_main(capsys, attack_argv(run_dir, fake_fashion_dir, "0"))
    assert assert_one_error_line(code, err) == (
        f"spatialmix: error: {run_dir} is in use by another spatialmix process (pid {training.pid}); "
        f"attack it when that process (a training or another attack) has finished"
    )
    assert not (run_dir / "robustness.json").exists()
    code, _, err = go_on(training)
    assert code == 0 and runs.Run(run_dir).status()["state"] == "finished", err
    code, _, err = run_main(capsys, attack_argv(run_dir, fake_fashion_dir, "0"))
    assert code == 0, err
    saved = runs.read_json(run_dir / "robustness.json")
    assert saved["weights"]["checkpoint"] == "epoch-0002"  # the training's last checkpoint


def test_a_training_is_refused_while_an_attack_holds_the_run(paused, run_copy, fake_fashion_dir):
    """A training of a run under attack went on beside it (the attack held no lock); it is now refused."""
    run_dir, config = run_copy
    attack = paused(EVALUATE, attack_argv(run_dir, fake_fashion_dir, "0"))
    with pytest.raises(lock.RunLockedError) as refused:
        fit(config, run_dir, resume=True)
    assert f"in use by another spatialmix process (pid {attack.pid})" in str(refused.value)
    code, _, err = go_on(attack)
    assert code == 0, err


FAST = AttackSettings(eps=(0.0,), attacks=("fgsm",), n_examples=4, reference_examples=0, strength="fast")


def test_evaluate_run_refuses_weights_replaced_while_it_reads_them(run_copy, fake_fashion_dir, monkeypatch):
    """`sm.evaluate_run` takes no lock: a checkpoint written between its fingerprint and its load gave a
    result naming the older checkpoint for the newer weights; it is now one line."""
    from spatialmix.robustness import run_attacks

    run_dir, _ = run_copy
    real_load = run_attacks.load_trained_model

    def load_after_a_new_checkpoint(*args, **kwargs):
        model, train_state = runs.load_checkpoint(run_dir / runs.CKPT_DIR / "epoch-0001", run_dir)
        runs.save_checkpoint(run_dir, 2, model, train_state)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(run_attacks, "load_trained_model", load_after_a_new_checkpoint)
    with pytest.raises(SpatialmixError) as refused:
        run_attacks.evaluate_run(
            run_dir, eps=(0.0,), attacks=("fgsm",), n_examples=4, data_dir=str(fake_fashion_dir)
        )
    assert str(refused.value) == (
        f"{run_dir} got a new checkpoint while it was read (a training is writing it); evaluate it again "
        f"when the training has finished"
    )


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

"""A run folder is untrusted input: runs.Run validates every file, never leaves the folder, never
reads a device or a huge file whole, and answers "finished with this config?" in one place."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.tasks import saved_config
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.errors import SpatialmixError
from spatialmix.io import limits, runs, storage
from spatialmix.io.paths import inside
from spatialmix.sweep import plan as sweep
from spatialmix.sweep.run import finished_summary


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data):
    config = TrainConfig(**{**TINY, "epochs": 2})
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    fit(config, run_dir, data=tiny_data)
    return run_dir, config


@pytest.fixture
def run(finished_run, tmp_path):
    src, config = finished_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst, config


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def edit_json(path, change):
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


# --------------------------------------------------------------------------- latest.json


@pytest.mark.parametrize(
    "pointer,field",
    [
        ({}, "folder"),
        ({"folder": 4, "epoch": 4}, "folder"),
        ([], None),
        ("", None),
        ({"folder": "epoch-0002"}, "epoch"),
        ({"folder": "../../x/checkpoints/epoch-0001", "epoch": 1}, "folder"),
        ({"folder": "/etc", "epoch": 1}, "folder"),
        ({"folder": "epoch-0002", "epoch": 7}, "epoch"),
    ],
)
def test_malformed_latest_json_is_one_line_naming_the_field(run, pointer, field):
    run_dir, _ = run
    (run_dir / runs.CKPT_DIR / runs.LATEST).write_text(json.dumps(pointer))
    with pytest.raises(SpatialmixError) as err:
        load_trained_model(run_dir)
    line = one_line(err)
    assert "latest.json" in line
    if field:
        assert f"'{field}'" in line


def test_latest_cannot_lead_to_another_runs_checkpoint(run, finished_run, tmp_path):
    """A checkpoint folder that is a symlink to another run's checkpoint is refused, not reported as ours."""
    run_dir, _ = run
    other = tmp_path / "other"
    shutil.copytree(finished_run[0], other)
    shutil.rmtree(run_dir / runs.CKPT_DIR / "epoch-0002")
    os.symlink(other / runs.CKPT_DIR / "epoch-0002", run_dir / runs.CKPT_DIR / "epoch-0002")
    with pytest.raises(SpatialmixError, match="points outside its run folder"):
        load_trained_model(run_dir)
    with pytest.raises(SpatialmixError, match="points outside its run folder"):
        runs.Run(run_dir).weights_fingerprint()


def test_weights_that_are_a_device_are_never_read(run):
    """model.safetensors -> /dev/zero would be read until memory runs out; it is refused at once."""
    run_dir, _ = run
    model = runs.Run(run_dir).latest_checkpoint() / runs.MODEL_FILE
    model.unlink()
    os.symlink("/dev/zero", model)
    with pytest.raises(SpatialmixError, match="outside its run folder|not a regular file"):
        runs.Run(run_dir).weights_fingerprint()
    with pytest.raises(SpatialmixError, match="not a regular file"):
        runs.file_sha256("/dev/zero")
    with pytest.raises(SpatialmixError, match="not a regular file"):
        runs.load_weights("/dev/zero")


def test_weights_larger_than_plausible_are_refused(tmp_path, monkeypatch):
    big = tmp_path / "model.safetensors"
    with open(big, "wb") as f:
        f.truncate(4096)  # sparse: the size check must come before any read
    from spatialmix.io import untrusted

    monkeypatch.setattr(untrusted, "WEIGHTS_BYTES", 1024)
    with pytest.raises(SpatialmixError, match="is 4,096 bytes, more than the 1,024 a weights file may have"):
        runs.load_weights(big)


def test_fingerprint_is_the_sha256_of_the_model_file(run):
    import hashlib

    run_dir, _ = run
    fingerprint = runs.Run(run_dir).weights_fingerprint()
    data = (run_dir / runs.CKPT_DIR / "epoch-0002" / runs.MODEL_FILE).read_bytes()
    assert fingerprint == {"checkpoint": "epoch-0002", "sha256": hashlib.sha256(data).hexdigest()}


# --------------------------------------------------------------------------- symlinks out of the folder


def test_metrics_symlink_is_never_written_through(tiny_data, tmp_path):
    """Training appends to metrics.jsonl: a symlink there must not carry the lines into another file."""
    config = TrainConfig(**{**TINY, "epochs": 2})
    run_dir = tmp_path / "run"
    real_save = runs.save_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Stop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, "save_checkpoint", save_then_stop)
        with pytest.raises(Stop):
            fit(config, run_dir, data=tiny_data)
    victim = tmp_path / "victim.txt"
    victim.write_bytes((run_dir / runs.METRICS).read_bytes())  # so a resume sees the history it expects
    before = victim.read_bytes()
    (run_dir / runs.METRICS).unlink()
    os.symlink(victim, run_dir / runs.METRICS)
    # A link out of the run is refused before anything is read or written (it used to be replaced).
    with pytest.raises(SpatialmixError, match="metrics.jsonl points outside its run folder"):
        fit(config, run_dir, resume=True, data=tiny_data)
    assert victim.read_bytes() == before and (run_dir / runs.METRICS).is_symlink()
    (run_dir / runs.METRICS).unlink()  # the advice: remove the link; the history comes from the checkpoint
    fit(config, run_dir, resume=True, data=tiny_data)
    assert victim.read_bytes() == before
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]


def test_append_jsonl_refuses_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.symlink(target, tmp_path / "metrics.jsonl")
    with pytest.raises(SpatialmixError, match="is a symlink"):
        storage.append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 1})
    assert target.read_text() == ""


def test_run_files_that_point_outside_are_refused(run, tmp_path):
    run_dir, _ = run
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"state": "finished", "epoch": 2}))
    (run_dir / runs.STATUS).unlink()
    os.symlink(secret, run_dir / runs.STATUS)
    with pytest.raises(SpatialmixError, match="points outside its run folder"):
        runs.Run(run_dir).status()
    # A symlink that stays inside the folder is fine.
    (run_dir / runs.STATUS).unlink()
    (run_dir / "status-copy.json").write_text(secret.read_text())
    os.symlink("status-copy.json", run_dir / runs.STATUS)
    assert runs.Run(run_dir).status() == {"state": "finished", "epoch": 2}


# --------------------------------------------------------------------------- shapes

CONFIG_DAMAGE = {
    "list": (lambda r: [r], "must hold a JSON object"),
    "train-null": (lambda r: {**r, "train": None}, "'train'"),
    "no-data": (lambda r: {k: v for k, v in r.items() if k != "data"}, "'data' is missing"),
    "epochs-string": (
        lambda r: {**r, "train": {**r["train"], "epochs": "ten"}},
        "epochs must be a whole number",
    ),
    "width-float": (lambda r: {**r, "train": {**r["train"], "width": 1.5}}, "width must be a whole number"),
    "mode-unknown": (lambda r: {**r, "train": {**r["train"], "mode": "bogus"}}, "unknown mode 'bogus'"),
    "size-string": (lambda r: {**r, "data": {**r["data"], "image_size": "28"}}, "'image_size'"),
    "mean-short": (lambda r: {**r, "data": {**r["data"], "mean": []}}, "'mean'"),
    "task-argument": (
        lambda r: {**r, "task": {"name": "classification", "evil": 1}},
        "settings this spatialmix",
    ),
    "task-string": (lambda r: {**r, "task": "classification"}, "task"),
    "version": (lambda r: {**r, "format_version": "1"}, "incompatible spatialmix"),
}


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_config_of_the_wrong_shape_is_one_line_naming_the_file(run, tiny_data, damage):
    run_dir, config = run
    change, expected = CONFIG_DAMAGE[damage]
    edit_json(run_dir / runs.CONFIG, change)
    for action in (
        lambda: load_trained_model(run_dir),
        lambda: fit(config.replace(epochs=3), run_dir, resume=True, data=tiny_data),
    ):
        with pytest.raises(SpatialmixError) as err:
            action()
        line = one_line(err)
        assert expected in line and ("config.json" in line or "incompatible" in line), line


@pytest.mark.parametrize(
    "section,field,value",
    [
        ("train", "width", 10**9),
        ("train", "depth", 10**6),
        ("train", "kernel_size", 10**5 + 1),
        ("train", "patch_size", 10**6),
        ("train", "token_hidden", 10**9),
        ("train", "channel_hidden", 10**9),
        ("data", "in_chans", 10**6),
        ("data", "num_classes", 10**9),
        ("data", "image_size", 10**6),
    ],
)
def test_a_huge_model_in_config_json_is_refused_before_anything_is_built(
    run, tiny_data, monkeypatch, section, field, value
):
    """A hostile or mistyped config.json must not make loading or resuming allocate a giant model."""
    import spatialmix.engine.train as train_module

    run_dir, config = run
    edit_json(run_dir / runs.CONFIG, lambda r: {**r, section: {**r[section], field: value}})

    def no_model(*args, **kwargs):
        raise AssertionError(f"a model was built from a config.json with {field}={value}")

    monkeypatch.setattr(train_module, "build_model", no_model)
    for action in (
        lambda: runs.Run(run_dir).record() and saved_config(runs.Run(run_dir)),
        lambda: load_trained_model(run_dir),
        lambda: fit(config.replace(epochs=3), run_dir, resume=True, data=tiny_data),
    ):
        with pytest.raises(SpatialmixError) as err:
            action()
        line = one_line(err)
        assert str(run_dir / runs.CONFIG) in line and f"'{field}'" in line and f"{value:,}" in line, line
        assert f"at most {limits.SIZE_LIMITS[field]:,}" in line, line


def test_the_size_limits_leave_the_papers_models_loadable():
    # ConvMixer-1536/20 with kernel 9 and patch 7 on ImageNet (Trockman & Kolter), and ImageNet-21k's classes.
    paper = {
        "width": 1536,
        "depth": 20,
        "kernel_size": 9,
        "patch_size": 7,
        "image_size": 224,
        "in_chans": 3,
        "num_classes": 21841,
    }
    assert all(value <= limits.SIZE_LIMITS[name] for name, value in paper.items())


@pytest.mark.parametrize(
    "name,content,expected",
    [
        (runs.SUMMARY, [1, 2], "must hold a JSON object"),
        (runs.SUMMARY, {"test_acc": "high"}, "'test_acc' must be a number"),
        (runs.STATUS, {"state": "done", "epoch": 1}, "'state' must be one of"),
        (runs.STATUS, {"state": "finished", "epoch": "2"}, "'epoch' must be a whole number"),
        (runs.STATUS, None, "must hold a JSON object"),
    ],
)
def test_summary_and_status_of_the_wrong_shape(run, name, content, expected):
    run_dir, config = run
    (run_dir / name).write_text(json.dumps(content))
    with pytest.raises(SpatialmixError) as err:
        runs.Run(run_dir).finished_summary(config)
    assert expected in one_line(err) and name in str(err.value)


def test_non_utf8_metrics_is_one_line(run):
    run_dir, _ = run
    (run_dir / runs.METRICS).write_bytes(b'{"epoch": 1}\n\xff\xfe\n')
    with pytest.raises(SpatialmixError, match="metrics.jsonl is not UTF-8"):
        runs.Run(run_dir).metrics()


def test_a_line_cut_short_by_a_kill_is_left_out_but_damage_in_the_middle_is_not(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert runs.read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(SpatialmixError, match="line 2 is not JSON"):
        runs.read_jsonl(path)


# --------------------------------------------------------------------------- one "finished with this config"


def test_finished_summary_fills_fields_added_later_with_their_defaults(run):
    """A run made before a field existed counts as that field's default: the sweep and train agree."""
    run_dir, config = run
    edit_json(
        run_dir / runs.CONFIG,
        lambda r: {**r, "train": {k: v for k, v in r["train"].items() if k not in ("image_size", "workers")}},
    )
    summary = runs.Run(run_dir).finished_summary(config)
    assert summary == runs.read_json(run_dir / runs.SUMMARY)
    job = sweep.SweepJob("x", config, run_dir, {})
    assert finished_summary(job) == summary


def test_finished_summary_refuses_another_config_and_ignores_speed_settings(run):
    run_dir, config = run
    assert (
        runs.Run(run_dir).finished_summary(config.replace(device="cpu", progress=True, workers=3)) is not None
    )
    with pytest.raises(
        SpatialmixError, match=r"finished with another configuration \(epochs=2 there, 3 now\)"
    ):
        runs.Run(run_dir).finished_summary(config.replace(epochs=3))
    runs.atomic_write_json(run_dir / runs.STATUS, {"state": "running", "epoch": 2})
    assert runs.Run(run_dir).finished_summary(config) is None


def test_the_no_checkpoint_message_says_how_to_continue(tmp_path, tiny_data):
    config = TrainConfig(**TINY)
    run_dir = tmp_path / "run"
    fit(config, run_dir, data=tiny_data, max_steps=1)
    with pytest.raises(SpatialmixError) as err:
        runs.Run(run_dir).require_checkpoint()
    assert one_line(err) == runs.no_checkpoint_message(run_dir)
    assert f"`sm.train(sm.resume_config({str(run_dir)!r}), {str(run_dir)!r}, resume=True)`" in str(err.value)


def test_reproduce_does_not_reuse_a_finished_run_of_another_config(run, monkeypatch):
    """`reproduce --epochs 1` then `--epochs 2` used to reuse the 1-epoch runs; now it is an error."""
    from spatialmix.studies import context as study

    run_dir, config = run
    assert study.train_or_reuse(config, run_dir) == runs.read_json(run_dir / runs.SUMMARY)
    with pytest.raises(SpatialmixError, match="finished with another configuration"):
        study.train_or_reuse(config.replace(epochs=3), run_dir)


def test_config_types_are_checked_for_every_field():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"epochs", "lr", "progress", "model"} <= names
    for bad, pattern in [
        (dict(epochs=1.5), "epochs must be a whole number, got 1.5"),
        (dict(epochs="ten"), "epochs must be a whole number, got 'ten'"),
        (dict(lr="fast"), "lr must be a number, got 'fast'"),
        (dict(progress="yes"), "progress must be true or false"),
        (dict(model=3), "model must be a string"),
        (dict(lr=float("nan")), "lr must be a positive number, got nan"),
        (dict(lr=float("inf")), "lr must be a positive number, got inf"),
    ]:
        with pytest.raises(SpatialmixError, match=pattern):
            TrainConfig(**{**TINY, **bad}).validate()
    assert torch.isfinite(torch.tensor(TrainConfig().lr))


# --------------------------------------------------------------------------- the report reads run folders too


def test_report_never_embeds_a_file_outside_the_run_folder(run, tmp_path):
    import base64

    from spatialmix.report.document import write_report

    run_dir, _ = run
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"private key material " * 20)
    # the plot `spatialmix attack` draws beside its result robustness.json, here a link out of the folder
    (run_dir / "robustness.json").write_text(
        json.dumps({"label": "run", "budgets": [{"eps": 0.0, "robust_acc": 1.0}]})
    )
    os.symlink(secret, run_dir / "robustness.png")
    # A link out of the run folder is refused: the run is not reported, nothing of the secret is written.
    (tmp_path / "out").mkdir()  # the report's folder must exist: a typo in -o makes no folders
    with pytest.raises(SpatialmixError, match="robustness.png points outside its run folder"):
        write_report([run_dir], tmp_path / "out" / "report.html")
    assert not (tmp_path / "out" / "report.html").exists()
    # A file that really is in the folder is embedded.
    (run_dir / "robustness.png").unlink()
    (run_dir / "robustness.png").write_bytes(secret.read_bytes())
    page = write_report([run_dir], tmp_path / "out" / "report.html").html.read_text()
    assert base64.b64encode(secret.read_bytes()).decode()[:40] in page


def test_report_of_a_run_with_a_damaged_config_is_one_line(run, tmp_path):
    from spatialmix.report.document import write_report

    run_dir, _ = run
    edit_json(run_dir / runs.SUMMARY, lambda s: {**s, "test_acc": "0.9"})
    with pytest.raises(SpatialmixError) as err:
        write_report([run_dir], tmp_path / "report.html")
    assert "summary.json: field 'test_acc' must be a number" in one_line(err)
    (run_dir / runs.METRICS).write_bytes(b"\xff\xfe")
    (run_dir / runs.SUMMARY).unlink()
    with pytest.raises(SpatialmixError, match="metrics.jsonl is not UTF-8"):
        write_report([run_dir], tmp_path / "report.html")


def test_report_into_a_read_only_folder_fails_before_the_work(run, tmp_path, monkeypatch):
    from spatialmix.report import document as report

    run_dir, _ = run
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(read_only) else real_access(p, mode)
    )
    monkeypatch.setattr(report, "build_sections", lambda *a, **k: pytest.fail("built the report first"))
    with pytest.raises(SpatialmixError, match=f"{read_only} is not writable"):
        report.write_report([run_dir], read_only / "report.html")


# --------------------------------------------------------------------------- attack reads run folders


def test_evaluation_data_is_the_users_choice_never_the_configs(run, tmp_path, monkeypatch):
    """A config.json naming RUN/payload made `attack` read (and unpickle) files from there."""
    from conftest import write_fake_idx_dir
    from spatialmix.engine.loaders import load_evaluation_data

    run_dir, _ = run
    named, chosen = run_dir / "payload", tmp_path / "chosen"
    write_fake_idx_dir(named, n_train=20, n_test=10, seed=1)
    write_fake_idx_dir(chosen, n_train=20, n_test=12, seed=2)
    edit_json(run_dir / runs.CONFIG, lambda r: {**r, "train": {**r["train"], "data_dir": str(named)}})
    data = load_evaluation_data(run_dir, data_dir=str(chosen))
    assert data.source == str(chosen) and len(data.test_labels) == 12
    monkeypatch.setenv("SPATIALMIX_DATA", str(chosen))
    assert load_evaluation_data(run_dir).source == str(chosen)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpatialmixError) as err:
        load_evaluation_data(run_dir, data_dir=str(empty))
    assert "fashion-mnist not found" in one_line(err)


def test_attack_checks_that_results_can_be_written_before_attacking(run, monkeypatch):
    import sys

    from spatialmix.robustness.run_attacks import attack_runs

    run_dir, _ = run
    module = sys.modules[attack_runs.__module__]
    monkeypatch.setattr(module, "evaluate_run", lambda *a, **k: pytest.fail("attacked before checking"))
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(run_dir) else real_access(p, mode)
    )
    with pytest.raises(SpatialmixError, match=f"{run_dir} is not writable"):
        attack_runs([run_dir], plot=None)


def test_models_command_takes_a_patch_size(capsys):
    """`spatialmix models` told users to pass --patch-size but had no such option."""
    from spatialmix.cli import main as cli

    assert cli.main(["models", "timm:convnext_atto", "--image-size", "28", "--patch-size", "1"]) == 0
    assert "12 spatial mixers" in capsys.readouterr().out
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "imagefolder" in help_text and "--image-size" in help_text and "DataLoader processes" in help_text


@pytest.mark.parametrize("field", ["width", "depth", "kernel_size", "patch_size", "image_size"])
def test_training_refuses_the_sizes_a_run_folder_could_not_be_opened_with(field):
    """What trains must load again: TrainConfig.validate applies the run folder's size limits."""
    from spatialmix.engine.config import TrainConfig

    limit = limits.SIZE_LIMITS[field]
    value = limit + 1 if field != "kernel_size" else limit + 2  # kernels are odd
    with pytest.raises(SpatialmixError) as err:
        TrainConfig(**{field: value}).validate()
    assert f"at most {limit:,}" in one_line(err)
    TrainConfig(**{field: limit}).validate()  # the limit itself is allowed (following the advice works)


def test_inside_takes_both_paths_as_opened_and_follows_links(tmp_path, monkeypatch):
    """The one containment check: relative folders work (no prefix added twice), a way out by `..` or by
    a symbolic link does not."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study" / "a").mkdir(parents=True)
    (tmp_path / "study" / "a" / "f.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("s")
    (tmp_path / "study" / "a" / "leak.png").symlink_to(tmp_path / "secret.txt")
    base = Path("study")
    assert inside(base, base / "a" / "f.png") == base / "a" / "f.png"
    assert inside(tmp_path / "study", base / "a" / "f.png") is not None  # absolute base, relative path
    assert inside(base, Path("a") / "f.png") is None  # a bare name is not joined: it is not below study/
    assert inside(base, base / ".." / "secret.txt") is None
    assert inside(base, base / "a" / "leak.png") is None
    assert inside(base, base) is None  # the folder itself is not a file inside it

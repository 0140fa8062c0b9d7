"""Run and study folders from someone else: every hostile file is one line naming the file (and the
field), nothing outside the folder is read or deleted, and a full disk leaves the last checkpoint.

The catalogue runs each damage through the commands that read it (`train --resume`, `attack`,
`report`, `train --spatial-init covariance-from`), in process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from conftest import TINY, config_flags
from spatialmix.cli import main as cli
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.model_size import model_size
from spatialmix.engine.train import fit, load_trained_model
from spatialmix.errors import SpatialmixError
from spatialmix.io import limits, runs, storage, untrusted

COMMANDS = ("resume", "attack", "report", "covariance-from")
EPOCH1 = f"{runs.CKPT_DIR}/epoch-0001"


def command(name: str, run_dir: Path, data_dir: Path, config: TrainConfig, tmp_path: Path) -> list[str]:
    return {
        "resume": ["train", "--resume", "--out", str(run_dir)],
        "attack": [
            *("attack", str(run_dir), "--data-dir", str(data_dir), "--n-examples", "4", "--eps", "0,1/255"),
            *("--attacks", "fgsm", "--reference-examples", "0", "--no-progress", "--plot", "none"),
        ],
        "report": ["report", str(run_dir), "-o", str(tmp_path / "report.html")],
        "covariance-from": [
            *("train", *config_flags(config), "--spatial-init", "covariance-from"),
            *("--init-from", str(run_dir), "--out", str(tmp_path / "from-prior")),
        ],
    }[name]


def one_error_line(capsys, argv) -> str:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("spatialmix: error:"), err
    return lines[0]


def edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def deep(levels: int = 100_000) -> str:
    return "[" * levels + "]" * levels


# --------------------------------------------------------------------------- links out of the run

ELSEWHERE_JSON = {
    runs.SUMMARY: {"test_acc": 0.5, "epochs": 2},
    "robustness.json": {"label": "x", "budgets": []},
}

LINKS = [
    f"{EPOCH1}/{runs.MODEL_FILE}",
    f"{EPOCH1}/{runs.STATE_FILE}",
    runs.INIT,
    runs.METRICS,
    runs.STATUS,
    runs.CONFIG,
    runs.SUMMARY,
    "robustness.json",
    f"{runs.CKPT_DIR}/{runs.LATEST}",
    EPOCH1,
    runs.CKPT_DIR,
]


def link_out(run_dir: Path, name: str, target: Path) -> None:
    """Replace ``RUN/name`` by a link to ``target``: a readable file of another run, outside this one."""
    path = run_dir / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    os.symlink(target, path)


@pytest.fixture
def other_run(interrupted_run, tmp_path) -> Path:
    """Another complete run, outside the one under test: what a link out of it would read."""
    other = tmp_path / "elsewhere" / "other-run"
    shutil.copytree(interrupted_run[0], other)
    for name, content in ELSEWHERE_JSON.items():
        (other / name).write_text(json.dumps(content))
    return other


@pytest.mark.parametrize("name", LINKS)
@pytest.mark.parametrize("action", COMMANDS)
def test_a_link_out_of_the_run_is_refused_by_every_command(
    capsys, run_copy, other_run, fake_fashion_dir, tmp_path, name, action
):
    """A link to a readable file of another run was read (exit 0) by resume, attack, report and
    covariance-from; now any link whose target leaves the run folder is refused before anything is read."""
    run_dir, config = run_copy
    link_out(run_dir, name, other_run / name)
    line = one_error_line(capsys, command(action, run_dir, fake_fashion_dir, config, tmp_path))
    assert f"{run_dir / name} points outside its run folder" in line
    assert os.path.islink(run_dir / name)  # nothing of the folder changed: the user decides


@pytest.mark.parametrize("action", COMMANDS)
def test_a_link_to_a_device_is_never_opened(capsys, run_copy, fake_fashion_dir, tmp_path, action):
    run_dir, config = run_copy
    link_out(run_dir, f"{EPOCH1}/{runs.MODEL_FILE}", Path("/dev/zero"))
    line = one_error_line(capsys, command(action, run_dir, fake_fashion_dir, config, tmp_path))
    assert f"{EPOCH1}/{runs.MODEL_FILE} points outside its run folder (to /dev/zero)" in line


def test_a_link_that_stays_inside_the_run_is_read(run_copy):
    run_dir, _ = run_copy
    (run_dir / "status-copy.json").write_text((run_dir / runs.STATUS).read_text())
    link_out(run_dir, runs.STATUS, Path("status-copy.json"))
    assert runs.Run(run_dir).check().status()["state"] == "interrupted"


def test_a_fifo_in_the_run_is_refused_without_waiting_for_a_writer(run_copy):
    run_dir, _ = run_copy
    os.mkfifo(run_dir / runs.SUMMARY)
    with pytest.raises(SpatialmixError, match="summary.json is not a regular file"):
        untrusted.read_json(run_dir / runs.SUMMARY, base=run_dir)


def test_a_link_swapped_in_below_the_checked_path_is_not_followed(run_copy, other_run, monkeypatch):
    """Containment is checked on the resolved path, then every step is opened without following a
    link: a checkpoint folder replaced by a link between the two is refused, not read."""
    run_dir, _ = run_copy
    real_inside = untrusted.inside

    def inside_then_swap(base, path):
        found = real_inside(base, path)
        shutil.rmtree(run_dir / EPOCH1)
        os.symlink(other_run / EPOCH1, run_dir / EPOCH1)
        return found

    monkeypatch.setattr(untrusted, "inside", inside_then_swap)
    with pytest.raises(SpatialmixError, match="a link may have changed while it was read"):
        untrusted.load_weights(run_dir / EPOCH1 / runs.MODEL_FILE, base=run_dir)


# --------------------------------------------------------------------------- nothing outside is deleted


def test_resume_never_deletes_the_temporary_files_of_the_run_its_checkpoints_link_to(
    capsys, run_copy, other_run
):
    """`train --resume` removed the temporary files of the run RUN/checkpoints linked to, then refused."""
    run_dir, _ = run_copy
    victims = [other_run / runs.CKPT_DIR / ".latest.json.1.ab.tmp", other_run / EPOCH1 / ".model.1.cd.tmp"]
    for victim in victims:
        victim.write_text("another run's file")
    link_out(run_dir, runs.CKPT_DIR, other_run / runs.CKPT_DIR)
    line = one_error_line(capsys, ["train", "--resume", "--out", str(run_dir)])
    assert "checkpoints points outside its run folder" in line
    assert all(victim.read_text() == "another run's file" for victim in victims)
    with pytest.raises(SpatialmixError, match="points outside its run folder"):
        runs.Run(run_dir).remove_stray_temporaries()
    assert all(victim.exists() for victim in victims)


def test_stray_temporaries_of_the_run_itself_are_removed(run_copy):
    run_dir, _ = run_copy
    stray = [run_dir / ".status.json.1.ab.tmp", run_dir / EPOCH1 / ".model.safetensors.1.cd.tmp"]
    for path in stray:
        path.write_text("left by a kill")
    assert sorted(runs.Run(run_dir).remove_stray_temporaries()) == sorted(stray)
    assert not any(path.exists() for path in stray)


# --------------------------------------------------------------------------- hostile JSON


def _train_field(name, value):
    return lambda run_dir: edit_json(
        run_dir / runs.CONFIG, lambda r: {**r, "train": {**r["train"], name: value}}
    )


def _replace_text(name, old, new):
    def damage(run_dir):
        path = run_dir / name
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))

    return damage


def _write(name, text):
    return lambda run_dir: (run_dir / name).write_text(text)


def _mlp_mixer_of_many_tokens(run_dir):
    edit_json(
        run_dir / runs.CONFIG,
        lambda r: {
            **r,
            "train": {**r["train"], "model": "mlpmixer", "width": 512, "patch_size": 1, "token_hidden": 4096},
            "data": {**r["data"], "image_size": 2048},
        },
    )


def convmixer_parameters(c: int, w: int, p: int, depth: int, k: int, n: int) -> int:
    """ConvMixer's parameters, from its layers: patch conv + BatchNorm; per block a depthwise conv +
    BatchNorm and a pointwise conv + BatchNorm; the linear head."""
    return (c * w * p * p + w + 2 * w) + depth * ((w * k * k + w) + 2 * w + (w * w + w) + 2 * w) + (w * n + n)


def convmixer_activations(w: int, depth: int, tokens: int, n: int) -> int:
    """The outputs of ConvMixer's layers for one image: the stem's conv, activation and BatchNorm, six
    per block (depthwise and pointwise conv, each with activation and BatchNorm), pool, flatten, head."""
    return 3 * w * tokens + depth * 6 * w * tokens + 2 * w + n


def mlpmixer_parameters(c: int, w: int, p: int, depth: int, tokens: int, th: int, ch: int, n: int) -> int:
    """MLP-Mixer's parameters: patch conv; per block two LayerNorms, the token MLP (tokens -> th ->
    tokens) and the channel MLP (w -> ch -> w); the last LayerNorm and the head."""
    block = 2 * (2 * w) + (tokens * th + th + th * tokens + tokens) + (w * ch + ch + ch * w + w)
    return (c * w * p * p + w) + depth * block + 2 * w + (w * n + n)


JSON_DAMAGE = {  # name: (damage, commands, what the line says)
    "seed-of-5000-digits": (
        _replace_text(runs.CONFIG, '"seed": 0', '"seed": ' + "9" * 5000),
        COMMANDS,
        "config.json: field 'train.seed' is a whole number of 5,000 digits",
    ),
    "seed-beyond-64-bits": (
        _train_field("seed", 2**70),
        COMMANDS,
        "config.json: field 'seed' must be a whole number from -9,223,372,036,854,775,808 to "
        "18,446,744,073,709,551,615",
    ),
    "threads-10**12": (
        _train_field("threads", 10**12),
        ("resume",),
        "config.json: field 'threads' must be a whole number from 1 to 1,024",
    ),
    "config-nested": (
        _replace_text(runs.CONFIG, '"augment": null', '"augment": ' + deep()),
        COMMANDS,
        "config.json: field 'train.augment' nests arrays or objects more than 32 levels deep",
    ),
    "status-nested": (
        _write(runs.STATUS, deep()),
        ("resume", "report"),
        "status.json: field '(top level)' nests arrays or objects more than 32 levels deep",
    ),
    "latest-nested": (
        _write(f"{runs.CKPT_DIR}/{runs.LATEST}", '{"folder": ' + deep() + "}"),
        ("attack", "covariance-from"),
        "latest.json: field 'folder' nests arrays or objects more than 32 levels deep",
    ),
    "metrics-line-nested": (
        _write(runs.METRICS, deep() + "\n"),
        ("report",),
        "metrics.jsonl: line 1: field '(top level)' nests arrays or objects more than 32 levels deep",
    ),
    "summary-nested": (
        _write(runs.SUMMARY, '{"test_acc": 0.5, "x": ' + deep() + "}"),
        ("attack", "report"),
        "summary.json: field 'x' nests arrays or objects more than 32 levels deep",
    ),
    "summary-a-list": (
        _write(runs.SUMMARY, "[1, 2]"),
        ("attack", "report"),
        "summary.json must hold a JSON object, got list",
    ),
    "sizes-whose-product-is-huge": (
        lambda run_dir: edit_json(
            run_dir / runs.CONFIG,
            lambda r: {**r, "train": {**r["train"], "width": 4096, "depth": 256, "kernel_size": 63}},
        ),
        ("resume", "attack"),
        "config.json: fields model convmixer, width 4,096, depth 256, kernel_size 63, patch_size 4, "
        "in_chans 1, num_classes 10, image_size 28 make a model of "
        f"{convmixer_parameters(1, 4096, 4, 256, 63, 10):,} parameters (at most 2,147,483,648)",
    ),
    "activations-of-a-batch-too-many": (
        lambda run_dir: edit_json(
            run_dir / runs.CONFIG,
            lambda r: {
                **r,
                "train": {**r["train"], "width": 1024, "depth": 32, "patch_size": 1},
                "data": {**r["data"], "image_size": 2048},
            },
        ),
        ("resume", "attack"),
        f"batch_size 64 make a model of {64 * convmixer_activations(1024, 32, 2048**2, 10):,} activations "
        "in one batch (at most 68,719,476,736)",
    ),
    "mlp-mixer-of-4-million-tokens": (
        _mlp_mixer_of_many_tokens,
        ("resume", "attack"),
        f"patch_size 1, token_hidden 4,096, in_chans 1, num_classes 10, image_size 2,048 make a model of "
        f"{mlpmixer_parameters(1, 512, 1, 1, 2048**2, 4096, 2048, 10):,} parameters",
    ),
}


@pytest.mark.parametrize(
    "damage,action",
    [(damage, action) for damage, (_, actions, _) in JSON_DAMAGE.items() for action in actions],
)
def test_hostile_json_is_one_line_naming_the_file_and_the_field(
    capsys, run_copy, fake_fashion_dir, tmp_path, damage, action
):
    """5,000-digit numbers, seeds beyond 64 bits, 10**12 threads, nesting 100,000 deep, a summary that is
    a list and sizes that multiply past any memory were tracebacks (ValueError, RecursionError,
    AttributeError, MemoryError, DefaultCPUAllocator)."""
    run_dir, config = run_copy
    change, _, expected = JSON_DAMAGE[damage]
    change(run_dir)
    line = one_error_line(capsys, command(action, run_dir, fake_fashion_dir, config, tmp_path))
    assert str(run_dir) in line and expected in line, line


def test_the_parameter_count_is_the_models_own(tiny_config):
    """The meta-device count is the count of the model really built (no estimate that could drift)."""
    from spatialmix.engine.classification import ClassificationTask
    from spatialmix.models.factory import count_parameters, create_model

    config = tiny_config(model="mlpmixer", width=24, depth=2, patch_size=7, batch_size=3)
    info = {"in_chans": 1, "num_classes": 10, "image_size": 28}
    parameters, activations = model_size(config, info, ClassificationTask())
    model = create_model("mlpmixer", width=24, depth=2, patch_size=7, **info)
    assert parameters == count_parameters(model) == mlpmixer_parameters(1, 24, 7, 2, 16, 12, 96, 10)
    outputs = []
    for module in model.modules():
        if next(module.children(), None) is None:
            module.register_forward_hook(lambda m, i, o: outputs.append(o.numel()))
    model(torch.zeros(1, 1, 28, 28))
    assert activations == 3 * sum(outputs)


def test_training_refuses_a_model_it_could_not_load_again(tiny_data, tmp_path):
    config = TrainConfig(**{**TINY, "width": 4096, "depth": 256, "kernel_size": 63})
    with pytest.raises(SpatialmixError, match="the settings model convmixer, width 4,096, depth 256") as err:
        fit(config, tmp_path / "run", data=tiny_data)
    assert "parameters (at most 2,147,483,648); choose smaller sizes" in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[" * 32 + "]" * 32, None),
        ("[" * 33 + "]" * 33, "field '(top level)' nests arrays or objects more than 32 levels deep"),
        ('{"a": {"b": [[' + "1" * 40 + "]]}}", None),
        ('{"a": {"b": [[' + "1" * 41 + "]]}}", "field 'a.b[0][0]' is a whole number of 41 digits"),
        ('{"a": [-' + "1" * 41 + "]}", "field 'a[0]' is a whole number of 41 digits"),
        ('{"k": "[[[[", "a": {"b": ' + deep(5000) + "}}", "field 'a.b' nests"),
    ],
)
def test_json_bounds(tmp_path, text, expected):
    path = tmp_path / "f.json"
    path.write_text(text)
    if expected is None:
        assert untrusted.read_json(path) == json.loads(text)
    else:
        with pytest.raises(SpatialmixError) as err:
            untrusted.read_json(path)
        assert str(err.value).startswith(f"{path}: {expected}")


def test_files_larger_than_their_kind_are_refused_before_reading(run_copy):
    run_dir, _ = run_copy
    with open(run_dir / runs.STATUS, "ab") as f:
        f.truncate(limits.RECORD_BYTES + 1)  # sparse: nothing is written, nothing must be read
    with pytest.raises(SpatialmixError, match=f"status.json is {limits.RECORD_BYTES + 1:,} bytes, more than"):
        runs.Run(run_dir).status()


# --------------------------------------------------------------------------- study folders


@pytest.mark.parametrize("damage", ["nested", "link out"])
def test_a_hostile_results_json_of_a_study_folder_is_one_line(capsys, tmp_path, damage):
    study = tmp_path / "study"
    study.mkdir()
    if damage == "nested":
        (study / "results.json").write_text('{"studies": ' + deep() + "}")
        expected = "results.json: field 'studies' nests arrays or objects more than 32 levels deep"
    else:
        (tmp_path / "elsewhere.json").write_text(json.dumps({"studies": {}}))
        os.symlink(tmp_path / "elsewhere.json", study / "results.json")
        expected = f"results.json points outside {study}"
    line = one_error_line(capsys, ["report", str(study), "-o", str(tmp_path / "report.html")])
    assert str(study) in line and expected in line


# --------------------------------------------------------------------------- a checkpoint's progress

PROGRESS_DAMAGE = {
    "unknown-field": (
        lambda p: {"foo": 1},
        "field 'progress' holds fields this spatialmix does not know (foo)",
    ),
    "epoch-a-string": (
        lambda p: {**p, "epoch": "x"},
        "field 'progress.epoch' must be 1, its checkpoint's epoch",
    ),
    "epoch-10**9": (
        lambda p: {**p, "epoch": 10**9},
        "field 'progress.epoch' must be 1, its checkpoint's epoch",
    ),
    "history-short": (lambda p: {**p, "history": []}, "field 'progress.history' must be a list of 1 records"),
    "step-negative": (lambda p: {**p, "step": -1}, "field 'progress.step' must be a whole number >= 0"),
    "not-an-object": (lambda p: [1], "field 'progress' must be an object of training progress"),
}


@pytest.mark.parametrize("damage", list(PROGRESS_DAMAGE))
def test_crafted_training_progress_is_one_line_naming_the_field(capsys, run_copy, damage):
    """Values that load with weights_only ({"foo": 1}, {"epoch": "x"}, {"epoch": 10**9}) ended in
    TypeError or IndexError."""
    run_dir, _ = run_copy
    change, expected = PROGRESS_DAMAGE[damage]
    state_file = run_dir / EPOCH1 / runs.STATE_FILE
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "progress": change(state["progress"])}, state_file)
    line = one_error_line(capsys, ["train", "--resume", "--out", str(run_dir)])
    assert f"{state_file}: {expected}" in line


def test_a_damaged_optimizer_state_is_refused_before_training(capsys, run_copy):
    run_dir, _ = run_copy
    state_file = run_dir / EPOCH1 / runs.STATE_FILE
    state = torch.load(state_file, weights_only=True)
    moments = next(iter(state["optimizer"]["state"].values()))
    moments["exp_avg"] = torch.zeros(3)
    torch.save(state, state_file)
    line = one_error_line(capsys, ["train", "--resume", "--out", str(run_dir)])
    assert f"{state_file}: field 'optimizer.state.exp_avg' has shape (3,)" in line


# --------------------------------------------------------------------------- a full disk

TORCH_FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
SAFETENSORS_FULL_DISK = SafetensorError(
    "Error while serializing: I/O error: No space left on device (os error 28)"
)


@pytest.mark.parametrize("writer", ["torch", "safetensors"])
def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_resume(
    tiny_data, tmp_path, monkeypatch, writer
):
    """The writers' own words for a full disk (torch: "unexpected pos", safetensors: "os error 28")
    escaped as tracebacks; now one line, the incomplete checkpoint removed, the previous one intact
    and named by status.json, and the advised command continues the run."""
    run_dir = tmp_path / "run"
    config = TrainConfig(**{**TINY, "epochs": 2})
    real_save = runs.save_checkpoint

    def save_then_fill_the_disk(run_dir_, epoch, *args, **kwargs):
        if epoch == 2:
            if writer == "torch":
                monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(TORCH_FULL_DISK))
                monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0))
            else:
                monkeypatch.setattr(
                    storage, "save_file", lambda *a, **k: (_ for _ in ()).throw(SAFETENSORS_FULL_DISK)
                )
        return real_save(run_dir_, epoch, *args, **kwargs)

    monkeypatch.setattr(runs, "save_checkpoint", save_then_fill_the_disk)
    with pytest.raises(SpatialmixError) as err:
        fit(config, run_dir, data=tiny_data)
    message = str(err.value)
    advice = (
        "the last complete checkpoint is kept: free space and resume with "
        f"`sm.train(sm.resume_config({str(run_dir)!r}), {str(run_dir)!r}, resume=True)`"
    )
    assert "\n" not in message and message.startswith(
        f"no space left on device while writing {run_dir / runs.CKPT_DIR}/epoch-0002/"
    )
    assert message.endswith(advice)
    status = runs.read_json(run_dir / runs.STATUS)
    assert status["state"] == "interrupted" and status["epoch"] == 1
    assert status["reason"].startswith("no space left on device while writing")
    assert runs.read_json(run_dir / runs.CKPT_DIR / runs.LATEST)["epoch"] == 1
    assert not (run_dir / runs.CKPT_DIR / "epoch-0002").exists() and not list(run_dir.rglob("*.tmp"))
    monkeypatch.undo()
    assert fit(config, run_dir, resume=True, data=tiny_data)["epochs"] == 2
    load_trained_model(run_dir)


def test_a_write_error_survives_pickling():
    """A sweep's worker hands its error back to the parent process pickled."""
    import pickle

    error = storage.write_error(Path("/x/y"), OSError(errno.ENOSPC, "No space left on device"))
    again = pickle.loads(pickle.dumps(error.advise("resume it")))
    assert str(again) == "no space left on device while writing /x/y; resume it" and again.full

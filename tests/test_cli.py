"""The command line: bad input gives one clear line and exit code 2, and never damages a run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conftest import config_flags, run_cli, snapshot_files
from spatialmix.cli import main as cli
from spatialmix.io import runs
from spatialmix.models.factory import count_parameters, create_model


def run_main(capsys, argv) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse errors exit from parse_args
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, prefix="spatialmix: error:") -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    return lines[0]


# (id, arguments, substrings the message must contain). The base command is a valid tiny run.
# The first ones are checked from the options alone, before any run folder is looked at.
BAD_INPUTS = [
    (
        "unknown-model",
        ["--model", "convmixer-42/7"],
        ["unknown model 'convmixer-42/7'", "convmixer-256/8", "resnet18-sep"],
    ),
    ("unknown-mode", ["--mode", "spatial"], ["unknown mode 'spatial'", "chans, full, space"]),
    (
        "unknown-dataset",
        ["--dataset", "svhn"],
        ["unknown dataset 'svhn'", "cifar10", "fashion-mnist", "mnist"],
    ),
    (
        "unknown-spatial-init",
        ["--spatial-init", "kaiming"],
        ["unknown init 'kaiming'", "default, gaussian, uniform"],
    ),
    (
        "unknown-channel-init",
        ["--channel-init", "xavier"],
        ["unknown init 'xavier'", "default, gaussian, uniform"],
    ),
    ("even-kernel", ["--kernel-size", "4"], ["kernel size 4 is even", "3 or 5"]),
    ("patch-too-large", ["--patch-size", "29"], ["patch size 29 is larger than the 28 x 28 image"]),
    ("zero-epochs", ["--epochs", "0"], ["epochs must be a positive number, got 0"]),
    ("negative-epochs", ["--epochs=-3"], ["epochs must be a positive number, got -3"]),
    ("zero-width", ["--width", "0"], ["width must be a positive number, got 0"]),
    ("negative-depth", ["--depth=-1"], ["depth must be a positive number, got -1"]),
    ("zero-batch", ["--batch-size", "0"], ["batch size must be a positive number, got 0"]),
    ("negative-batch", ["--batch-size=-8"], ["batch size must be a positive number, got -8"]),
    ("nan-lr", ["--lr", "nan"], ["lr must be a positive number, got nan"]),
    ("inf-lr", ["--lr", "inf"], ["lr must be a positive number, got inf"]),
    ("nan-init-std", ["--init-std", "nan"], ["init std must be >= 0, got nan"]),
    # These need the data or the model: for an existing run, the differing field is named instead.
    ("batch-larger-than-data", ["--batch-size", "100000"], ["larger than the", "lower --batch-size"]),
]
NEEDS_MODEL = {
    "even-kernel": "kernel_size",
    "patch-too-large": "patch_size",
    "batch-larger-than-data": "batch_size",
}


@pytest.fixture
def base_flags(interrupted_run):
    """Flags of a valid tiny run on the fake data set (the same config as the saved run)."""
    return config_flags(interrupted_run[1])


@pytest.mark.parametrize("case,args,expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_into_a_new_run(capsys, tmp_path, base_flags, case, args, expected):
    out = tmp_path / "new-run"
    code, stdout, err = run_main(capsys, ["train", *base_flags, *args, "--out", str(out)])
    line = assert_one_error_line(code, err)
    for text in expected:
        assert text in line
    assert not out.exists(), "a failed start must not leave a run directory behind"


@pytest.mark.parametrize("case,args,expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "no-resume"])
def test_bad_input_leaves_an_existing_run_untouched(capsys, run_copy, case, args, expected, resume):
    run_dir, config = run_copy
    before = snapshot_files(run_dir)
    argv = ["train", *config_flags(config), *args, "--out", str(run_dir)] + (["--resume"] if resume else [])
    code, _, err = run_main(capsys, argv)
    line = assert_one_error_line(code, err)
    # Names and signs are checked before anything else; a problem that needs the model or the data
    # is reported as the field that differs from the saved run (resume) or as an existing run.
    if case in NEEDS_MODEL:
        expected = ["different config", f"{NEEDS_MODEL[case]}="] if resume else ["already holds a run"]
    for text in expected:
        assert text in line
    assert snapshot_files(run_dir) == before


def test_missing_data_directory(capsys, tmp_path, base_flags, run_copy):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "new-run"
    code, _, err = run_main(capsys, ["train", *base_flags, "--data-dir", str(empty), "--out", str(out)])
    line = assert_one_error_line(code, err)
    assert "fashion-mnist not found" in line and str(empty) in line and "--data-dir" in line
    assert not out.exists()
    # Resuming an existing run with the data gone: the same message, the run untouched.
    run_dir, config = run_copy
    before = snapshot_files(run_dir)
    code, _, err = run_main(
        capsys, ["train", *config_flags(config), "--data-dir", str(empty), "--out", str(run_dir), "--resume"]
    )
    assert "fashion-mnist not found" in assert_one_error_line(code, err)
    assert snapshot_files(run_dir) == before


@pytest.mark.parametrize("damage", ["model-junk", "model-truncated", "state-junk", "config-junk"])
def test_corrupt_checkpoint_on_resume(capsys, run_copy, damage):
    run_dir, config = run_copy
    folder = runs.latest_checkpoint(run_dir)
    if damage == "model-junk":
        (folder / runs.MODEL_FILE).write_bytes(b"this is not a safetensors file" * 10)
    elif damage == "model-truncated":
        data = (folder / runs.MODEL_FILE).read_bytes()
        (folder / runs.MODEL_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "state-junk":
        (folder / runs.STATE_FILE).write_bytes(b"\x00junk")
    elif damage == "config-junk":
        (run_dir / runs.CONFIG).write_text("{not json")
    before = snapshot_files(run_dir)
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--out", str(run_dir), "--resume"])
    line = assert_one_error_line(code, err)
    expected = {
        "model-junk": "not a readable safetensors file",
        "model-truncated": "not a readable safetensors",
        "state-junk": "train_state.pt is corrupt",
        "config-junk": "corrupt (not JSON)",
    }[damage]
    assert expected in line
    assert snapshot_files(run_dir) == before
    if damage == "config-junk":
        return
    # The advice works: following it, the same command trains the run from the beginning.
    assert f"delete {run_dir / runs.CKPT_DIR} and resume" in line
    import shutil

    shutil.rmtree(run_dir / runs.CKPT_DIR)
    code, out, err = run_main(capsys, ["train", "--out", str(run_dir), "--resume"])
    assert code == 0, err
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "finished"
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]


def test_latest_naming_a_missing_folder_falls_back_to_the_newest_complete_checkpoint(capsys, run_copy):
    run_dir, _ = run_copy
    runs.atomic_write_json(run_dir / runs.CKPT_DIR / runs.LATEST, {"folder": "epoch-0099", "epoch": 99})
    code, out, err = run_main(capsys, ["train", "--out", str(run_dir), "--resume"])
    assert code == 0, err
    assert "epoch-0099, which is missing; continuing from the newest complete checkpoint, epoch-0001" in err
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]
    assert runs.read_json(run_dir / runs.CKPT_DIR / runs.LATEST) == {"folder": "epoch-0002", "epoch": 2}


def test_checkpoint_of_another_model_on_resume(capsys, run_copy):
    """Weights that load as safetensors but belong to another model."""
    run_dir, config = run_copy
    folder = runs.latest_checkpoint(run_dir)
    save_file({"head.weight": torch.zeros(3, 3)}, str(folder / runs.MODEL_FILE))
    before = snapshot_files(run_dir)
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--out", str(run_dir), "--resume"])
    assert "does not match this run's model" in assert_one_error_line(code, err)
    assert snapshot_files(run_dir) == before


def test_resume_with_a_different_config(capsys, run_copy):
    run_dir, config = run_copy
    before = snapshot_files(run_dir)
    code, _, err = run_main(
        capsys, ["train", *config_flags(config), "--lr", "0.5", "--out", str(run_dir), "--resume"]
    )
    line = assert_one_error_line(code, err)
    assert "different config" in line and "lr=0.01 (saved) vs 0.5" in line
    assert snapshot_files(run_dir) == before


def test_start_into_an_existing_run_without_resume(capsys, run_copy, tmp_path):
    run_dir, config = run_copy
    before = snapshot_files(run_dir)
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--out", str(run_dir)])
    assert "already holds a run; pass --resume" in assert_one_error_line(code, err)
    assert snapshot_files(run_dir) == before
    # A folder with someone else's files is not a run, and not ours to fill either.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    code, _, err = run_main(capsys, ["train", *config_flags(config), "--out", str(other)])
    assert "already holds a run" in assert_one_error_line(code, err)
    assert snapshot_files(other) == {"todo.txt": b"keep me"}


def test_resume_of_something_that_is_not_a_run(capsys, tmp_path, base_flags):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    code, _, err = run_main(capsys, ["train", *base_flags, "--out", str(tmp_path / "notes"), "--resume"])
    assert "is not a spatialmix run" in assert_one_error_line(code, err)
    assert snapshot_files(tmp_path / "notes") == {"todo.txt": b"keep me"}


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "restart"])
@pytest.mark.parametrize("state", ["missing", "empty", "cut-short-config", "lock-only"])
def test_resume_starts_a_run_when_nothing_was_saved(capsys, tmp_path, base_flags, state, resume):
    """Killed before its first file (or while writing config.json): the run starts,
    with or without --resume."""
    out = tmp_path / "run"
    if state != "missing":
        out.mkdir()
    if state == "cut-short-config":
        (out / ".config.json.x7.tmp").write_text('{"format_ver')
    if state == "lock-only":
        (out / runs.LOCK).write_text("")
    code, stdout, err = run_main(
        capsys, ["train", *base_flags, "--out", str(out)] + (["--resume"] if resume else [])
    )
    assert code == 0, err
    assert runs.read_json(out / runs.STATUS)["state"] == "finished"
    assert not list(out.glob(".*.tmp"))


def test_resume_through_the_cli_finishes_the_run(capsys, run_copy):
    run_dir, config = run_copy
    code, out, err = run_main(capsys, ["train", *config_flags(config), "--out", str(run_dir), "--resume"])
    assert code == 0, err
    assert f"run saved in {run_dir}" in out
    assert runs.read_json(run_dir / runs.STATUS)["state"] == "finished"
    assert [m["epoch"] for m in runs.read_jsonl(run_dir / runs.METRICS)] == [1, 2]


def test_non_finite_loss_through_the_cli(capsys, tmp_path, base_flags):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", *base_flags, "--lr", "1e30", "--out", str(out)])
    line = assert_one_error_line(code, err)
    assert "training stopped: loss became" in line and "lower --lr" in line
    assert runs.read_json(out / runs.STATUS)["state"] == "failed"


def test_argparse_errors_are_one_line(capsys, base_flags, tmp_path):
    code, _, err = run_main(capsys, ["train", *base_flags, "--epochs", "two", "--out", str(tmp_path / "r")])
    line = assert_one_error_line(code, err, prefix="spatialmix")
    assert "error:" in line and "invalid int value: 'two'" in line
    code, _, err = run_main(capsys, ["fly"])
    assert "invalid choice: 'fly'" in assert_one_error_line(code, err, prefix="spatialmix")


def test_models_command(capsys):
    code, out, _ = run_main(capsys, ["models"])
    assert code == 0 and "convmixer-256/8" in out and "resnet18-sep" in out
    code, out, _ = run_main(
        capsys, ["models", "convmixer-256/8", "--num-classes", "10", "--image-size", "32"]
    )
    n = count_parameters(create_model("convmixer-256/8", in_chans=3, num_classes=10, image_size=32))
    assert code == 0 and f"{n:,} parameters" in out
    code, _, err = run_main(capsys, ["models", "convmixer-1/1"])
    assert "unknown model" in assert_one_error_line(code, err)


@pytest.mark.slow
def test_bad_input_in_a_real_process(tmp_path):
    """What a user sees: no traceback, no warnings, one line, exit code 2."""
    proc = run_cli(["train", "--model", "nosuch", "--out", str(tmp_path / "r")])
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("spatialmix: error: unknown model 'nosuch'; choose one of:")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# ------------------------------------------------------------------ options generated from dataclasses


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _command_parsers():
    return cli.build_parser()._subparsers._group_actions[0].choices


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_field_of_a_command_is_in_its_help_with_its_text(command, monkeypatch):
    """--help is generated from the dataclasses: every field, its flag, its help text; and nothing else."""
    import dataclasses

    from spatialmix.options import help_text, option_strings

    monkeypatch.setenv("COLUMNS", "100000")  # no line breaks inside a help text
    parser = _command_parsers()[command]
    shown = _normalized(parser.format_help())
    from_fields = set()
    for cls, skip in cli.COMMANDS[command].settings:
        for field in dataclasses.fields(cls):
            if field.name in skip:
                continue
            assert field.metadata["help"], f"{cls.__name__}.{field.name} has an empty help text"
            assert _normalized(help_text(cls, field)) in shown, (command, field.name)
            for flag in option_strings(field):
                if flag.startswith("-"):
                    assert flag in shown, (command, flag)
            from_fields.add(field.name)
    # ... and every option of the command is one of those fields (no option written by hand).
    dests = {action.dest for action in parser._actions if action.dest != "help"}
    assert dests == from_fields


def _option_help(command: str, flag: str) -> str:
    parser = _command_parsers()[command]
    action = next(a for a in parser._actions if flag in a.option_strings)
    return action.help


def test_names_listed_in_help_texts_are_the_names_the_library_knows():
    """A help text that lists names by hand must list every name (`--dataset` once forgot imagefolder)."""
    from spatialmix.data.datasets import DATASETS
    from spatialmix.engine.unshuffle import LOSSES, UNSHUFFLE_PRESETS
    from spatialmix.names import AUGMENTATIONS, INITS, MODES
    from spatialmix.robustness.settings import ATTACKS, NORMS
    from spatialmix.studies.context import PRESETS

    listed = {
        ("train", "--dataset"): DATASETS,
        ("train", "--mode"): MODES,
        ("train", "--spatial-init"): INITS,
        ("train", "--augment"): AUGMENTATIONS,
        ("attack", "--attacks"): ATTACKS,
        ("attack", "--norm"): NORMS,
        ("reproduce", "--preset"): PRESETS,
        ("sweep", "--preset"): PRESETS,
        ("unshuffle", "--loss"): LOSSES,
        ("unshuffle", "--preset"): UNSHUFFLE_PRESETS,
        ("unshuffle", "--modes"): MODES,
    }
    for (command, flag), names in listed.items():
        text = _option_help(command, flag)
        for name in names:
            assert name in text, (command, flag, name)  # (--modes: in its default)
    # channel inits are the non-covariance ones (covariance is for depthwise filters only)
    assert all(name in _option_help("train", "--channel-init") for name in INITS if "covariance" not in name)


def test_unshuffle_settings_mirror_the_study_function():
    """UnshuffleSettings holds exactly the keyword arguments of unshuffle_study
    (and TrainConfig overrides)."""
    import inspect

    from spatialmix.engine.config import TrainConfig
    from spatialmix.studies.unshuffle import unshuffle_study as study
    from spatialmix.studies.unshuffle_settings import UnshuffleSettings

    named = {name for name, p in inspect.signature(study).parameters.items() if p.kind is not p.VAR_KEYWORD}
    kwargs = UnshuffleSettings().study_kwargs()
    assert named <= set(kwargs), named - set(kwargs)
    assert set(kwargs) - named <= set(TrainConfig().to_dict())
    # the training overrides are passed only when given (None: the preset's), the others always
    assert (
        "epochs" not in kwargs
        and kwargs["out_dir"] == "runs/unshuffle"
        and kwargs["modes"] == ("full", "chans", "space")
    )
    assert UnshuffleSettings(epochs=2, out="x").study_kwargs()["epochs"] == 2


def test_reproduce_settings_mirror_the_reproduce_functions():
    import dataclasses
    import inspect

    from spatialmix.cli.settings import ReproduceSettings
    from spatialmix.studies.reproduce import reproduce
    from spatialmix.studies.sequential import reproduce_until_decided

    def named(fn, leave_out=()):
        parameters = inspect.signature(fn).parameters.items()
        return {
            {"out_dir": "out"}.get(name, name)
            for name, p in parameters
            if p.kind is not p.VAR_KEYWORD and name not in leave_out
        }

    fields = {f.name for f in dataclasses.fields(ReproduceSettings)}
    assert fields == named(reproduce, ("sequential",)) | named(reproduce_until_decided) | {"until_decided"}
    defaults = {name: p.default for name, p in inspect.signature(reproduce).parameters.items()}
    assert ReproduceSettings().preset == defaults["preset"] and ReproduceSettings().out == defaults["out_dir"]


def test_until_decided_options_without_until_decided_are_refused(capsys, tmp_path):
    for flag, value in (("--budget", "30m"), ("--max-seeds", "8"), ("--seed-step", "1")):
        code, _, err = run_main(capsys, ["reproduce", "--out", str(tmp_path / "x"), flag, value])
        line = assert_one_error_line(code, err)
        assert f"{flag} only applies with --until-decided" in line
    assert not (tmp_path / "x").exists()
    code, _, err = run_main(capsys, ["reproduce", "--until-decided", "--budget", "soon"])
    assert "a duration must be like 90s, 30m" in assert_one_error_line(code, err)


def test_the_generator_turns_field_types_into_options():
    import dataclasses

    from spatialmix.errors import SpatialmixError
    from spatialmix.options import ArgumentParser, add_options, given_values, int_or_all, option

    @dataclasses.dataclass
    class Example:
        flag: bool = option(True, "a switch")
        count: int | None = option(None, "how many", minimum=1)
        rate: float = option(0.5, "a rate")
        seeds: tuple[int, ...] = option((0,), "seeds")
        names: tuple[str, ...] = option(("a", "b"), "names")
        sizes: tuple[float, ...] = option((1.0,), "sizes")
        limit: int | None = option(10, "a limit or all", parse=int_or_all("--limit"))
        kind: str = option("x", "one of x, y", choices=("x", "y"))

    parser = ArgumentParser(prog="p")
    add_options(parser, Example)
    assert given_values(Example, parser.parse_args([])) == {}  # nothing given: the dataclass's defaults
    args = parser.parse_args(
        [
            "--no-flag",
            "--count",
            "3",
            "--rate",
            "1e-3",
            "--seeds",
            "1",
            "2",
            "--names",
            "c,,d",
            "--sizes",
            "0.5,2",
            "--limit",
            "all",
            "--kind",
            "y",
        ]
    )
    assert given_values(Example, args) == dict(
        flag=False,
        count=3,
        rate=0.001,
        seeds=(1, 2),
        names=("c", "d"),
        sizes=(0.5, 2.0),
        limit=None,
        kind="y",
    )
    assert given_values(Example, parser.parse_args(["--flag", "--limit", "7"])) == dict(flag=True, limit=7)
    help_text = _normalized(parser.format_help())
    for text in (
        "a switch (default: on)",
        "--no-flag",
        "how many",
        "(default: 0.5)",
        "seeds (default: 0)",
        "names (default: a,b)",
        "{x,y}",
    ):
        assert text in help_text
    for bad in (["--names"], ["--count", "0"], ["--count", "x"], ["--kind", "z"], ["--rate", "fast"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(SpatialmixError, match="--sizes takes comma-separated float values, got 'a,b'"):
        given_values(Example, parser.parse_args(["--sizes", "a,b"]))
    with pytest.raises(SpatialmixError, match="--limit must be a whole number or 'all', got 'many'"):
        given_values(Example, parser.parse_args(["--limit", "many"]))

    @dataclasses.dataclass
    class Undocumented:
        silent: int = 0

    with pytest.raises(TypeError, match="Undocumented.silent has no help text"):
        add_options(ArgumentParser(prog="q"), Undocumented)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["attack", "RUN", "--n-examples", "many"],
            "--n-examples must be a whole number or 'all', got 'many'",
        ),
        (
            ["attack", "RUN", "--reference-examples", "some"],
            "--reference-examples must be a whole number or 'all'",
        ),
        (["unshuffle", "--modes", ",", "--no-references"], "nothing to train"),
        (["train", "--out", ""], "--out is an empty string"),
    ],
)
def test_values_the_library_refuses_are_one_line(capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, argv)
    assert message in assert_one_error_line(code, err)
    assert list(tmp_path.iterdir()) == []


def test_argparse_refuses_a_value_outside_a_fixed_set(capsys):
    code, _, err = run_main(capsys, ["train", "--amp", "fp8"])
    line = assert_one_error_line(code, err, prefix="spatialmix train: error:")
    assert "argument --amp: invalid choice: 'fp8'" in line and "'auto', 'bf16', 'none'" in line


# --------------------------------------------------------------------------- decisions the library makes


def test_default_run_dir_names_dataset_model_mode_and_seed():
    from spatialmix.engine.config import TrainConfig, default_run_dir, run_dir_for
    from spatialmix.errors import SpatialmixError

    config = TrainConfig(dataset="cifar10", model="timm:convnext_atto", mode="chans", seed=3)
    assert default_run_dir(config) == "runs/cifar10-timm-convnext_atto-chans-seed3"
    assert default_run_dir(TrainConfig()) == "runs/fashion-mnist-convmixer-128-6-full-seed0"
    assert run_dir_for(None, config) == default_run_dir(config)
    assert run_dir_for("runs/mine", config) == "runs/mine"
    with pytest.raises(SpatialmixError, match="--out is an empty string"):
        run_dir_for("", config)


def test_supported_modes_need_a_layer_of_the_kind_they_freeze():
    from spatialmix.core.mixing import MixingSummary
    from spatialmix.models.info import supported_modes

    def summary(**layers):
        return MixingSummary([dict(kind=k, layers=n, trainable=1, frozen=0) for k, n in layers.items() if n])

    assert supported_modes(summary(spatial=4, channel=8, head=1)) == {
        "full": None,
        "chans": None,
        "space": None,
    }
    assert supported_modes(summary(channel=3, head=1)) == {
        "full": None,
        "chans": "chans needs depthwise convolutions to freeze",
        "space": None,
    }
    assert supported_modes(summary(spatial=2)) == {
        "full": None,
        "chans": None,
        "space": "space needs 1 x 1 convolutions to freeze",
    }


def test_describe_model_counts_parameters_and_mixers():
    from spatialmix.models.info import describe_model

    info = describe_model("convmixer-256/8", in_chans=1, num_classes=10, image_size=28)
    assert info.parameters == count_parameters(
        create_model("convmixer-256/8", in_chans=1, num_classes=10, image_size=28)
    )
    assert info.layers("spatial") == 8 and info.layers("channel") == 8
    assert {k: n for k, n in info.spatial_counts.items() if n} == {"depthwise convolutions": 8}
    assert info.modes == {"full": None, "chans": None, "space": None}


def _readme_commands() -> list[str]:
    """The `spatialmix ...` command lines of the README's code blocks (continuations joined, comments cut)."""
    import re

    from conftest import SRC_DIR

    readme = SRC_DIR.parent / "README.md"
    if not readme.is_file():
        pytest.skip(f"no README.md beside {SRC_DIR}")
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", readme.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#", line)[0].strip()
            match = re.search(
                r"(?:^spatialmix|\s-m spatialmix\.cli) (.*)", line
            )  # (not `spatialmix: error:`)
            if match:
                commands.append(match.group(1))
    return commands


def test_the_commands_in_the_readme_are_valid():
    """Every flag the README's examples use exists; the examples without placeholders parse as written."""
    import re
    import shlex

    parser = cli.build_parser()
    commands = _readme_commands()
    assert {"models", "train", "attack", "report"} <= {line.split()[0] for line in commands}
    for line in commands:
        name = line.split()[0]
        known = {flag for action in _command_parsers()[name]._actions for flag in action.option_strings}
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
        assert flags <= known, (line, flags - known)
        if not re.search(r"[\[|]|\.\.\.|[A-Z]{3,}", line):  # no [optional], a|b, ... or PLACEHOLDER
            parser.parse_args(shlex.split(line))


@pytest.mark.parametrize("state", ["missing", "lock-only", "cut-short-config"])
def test_a_bare_resume_where_nothing_was_saved_is_refused(capsys, tmp_path, base_flags, state):
    """Without config.json a bare --resume cannot know the run's options: it must not start a
    default run; giving the options again (the advice) starts it."""
    out = tmp_path / "run"
    if state != "missing":
        out.mkdir()
        (out / runs.LOCK).write_text("")
    if state == "cut-short-config":
        (out / ".config.json.x7.tmp").write_text('{"format_ver')
    code, _, err = run_main(capsys, ["train", "--resume", "--out", str(out)])
    line = assert_one_error_line(code, err)
    assert "nothing of this run was saved" in line and "give its options again with --resume" in line
    assert not (out / runs.CONFIG).exists() and not (out / runs.STATUS).exists()
    code, _, err = run_main(capsys, ["train", *base_flags, "--out", str(out), "--resume"])
    assert code == 0, err
    assert runs.read_json(out / runs.STATUS)["state"] == "finished"


# ------------------------------------------------------------------ near misses


@pytest.mark.parametrize(
    ("argv", "typo", "meant"),
    [
        (["trian"], "trian", "train"),
        (["train", "--widht", "8"], "--widht", "--width"),
        (["models", "convmixr"], "convmixr", "convmixer"),
        (["models", "ConvMixer"], "ConvMixer", "convmixer"),
        (["attack", "--device", "cpux"], "cpux", "cpu"),
    ],
)
def test_a_near_miss_gets_a_suggestion_that_works(capsys, argv, typo, meant):
    """ "did you mean" names the intended spelling, and the command with it parses (up to --help)."""
    code, _, err = run_main(capsys, argv)
    line = assert_one_error_line(code, err, prefix="spatialmix")
    assert f"did you mean {meant!r}?" in line
    fixed = [meant if a == typo else a for a in argv]
    code, _, err = run_main(capsys, [*fixed, "--help"])
    assert code == 0, err


def test_no_suggestion_for_a_name_far_from_every_choice(capsys):
    code, _, err = run_main(capsys, ["models", "--widht", "8"])
    assert "did you mean" not in assert_one_error_line(code, err)


def test_help_groups_the_options(monkeypatch):
    """`train --help` shows its 45 options in named groups, each option in the group its field sits in."""
    monkeypatch.setenv("COLUMNS", "100000")
    parser = _command_parsers()["train"]
    titles = [group.title for group in parser._action_groups]
    mixing = "mixing (what is frozen, how it is initialized)"
    for title in ("run folder", "data", "model", mixing, "optimization", "speed and devices"):
        assert title in titles
    where = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    assert where["out"] == "run folder" and where["dataset"] == where["train_subset"] == "data"
    assert where["width"] == "model" and where["spatial_init"].startswith("mixing")
    assert where["lr"] == "optimization" and where["threads"] == "speed and devices"
    text = parser.format_help()
    headings = [text.index(f"\n{title}:") for title in ("run folder", "data", "model")]
    assert headings == sorted(headings) and headings[-1] < text.index("  --width")


@pytest.mark.parametrize(
    "fields, name",
    [
        ({}, "convmixer-128/6"),
        ({"width": 16, "depth": 2}, "convmixer-16/2"),
        ({"width": 16}, "convmixer-16/6"),
        ({"model": "mlpmixer-256/8", "depth": 3}, "mlpmixer-256/3"),
        ({"model": "convmixer", "width": 16, "depth": 1}, "convmixer-16/1"),
        ({"model": "convmixer", "width": 16}, "convmixer"),
        ({"model": "resnet18", "width": 32}, "resnet18"),
        ({"model": "timm:convnext_atto"}, "timm:convnext_atto"),
    ],
)
def test_the_model_name_carries_the_width_and_depth_that_override_the_named_ones(fields, name):
    from spatialmix.engine.config import TrainConfig

    assert TrainConfig(**fields).model_name == name


def test_train_names_the_model_with_the_sizes_it_was_given(capsys, tmp_path, fake_fashion_dir):
    """--width 16 --depth 2 over the default convmixer-128/6 trains a ConvMixer-16/2: the progress
    lines, config.json, summary.json and the default run folder say so."""
    import json

    from spatialmix.engine.config import TrainConfig, default_run_dir

    out = tmp_path / "run"
    code, _, err = run_main(
        capsys,
        ["train", "--width", "16", "--depth", "2", "--epochs", "1", "--train-subset", "128"]
        + ["--test-subset", "32", "--data-dir", str(fake_fashion_dir), "--out", str(out)],
    )
    assert code == 0, err
    assert "convmixer-16/2 full epoch 1/1" in err and "128/6" not in err
    record = json.loads((out / "config.json").read_text())
    assert record["model_name"] == "convmixer-16/2"
    assert (record["train"]["width"], record["train"]["depth"]) == (16, 2)
    assert json.loads((out / "summary.json").read_text())["model"] == "convmixer-16/2"
    assert default_run_dir(TrainConfig(width=16, depth=2)) == "runs/fashion-mnist-convmixer-16-2-full-seed0"


def test_version_prints_the_package_version(capsys):
    from spatialmix.version import __version__

    code, out, err = run_main(capsys, ["--version"])
    assert (code, out, err) == (0, f"spatialmix {__version__}\n", "")

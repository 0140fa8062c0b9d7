"""Published results: README.md and docs/ render from results/, a study folder publishes into it,
and a damaged stored file is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from spatialmix.cli.main import main
from spatialmix.errors import SpatialmixError
from spatialmix.io import storage
from spatialmix.io.environment import cpu_tag, machine_stamp
from spatialmix.report.published import publish_results, published_runs
from spatialmix.report.render_docs import render_docs, render_text
from spatialmix.studies.reproduce import reproduce_command

ROOT = Path(__file__).resolve().parents[1]
XEON = ("Intel(R) Xeon(R) Platinum 8480+", "AVX512")
EPYC = ("AMD EPYC 9R14 96-Core Processor", "AVX512")
FULL = [0.880, 0.884, 0.879]
CHANS = [0.875, 0.878, 0.876]
REGION = "<!-- results:quick-verdicts -->\nanything typed here\n<!-- /results -->\n"


def test_the_documentation_is_what_the_published_results_render():
    """A number typed into a published table of README.md or docs/, or a table left stale after
    `spatialmix publish`, fails here: run `spatialmix render-docs`."""
    outcome = render_docs(ROOT, check=True)
    assert outcome.regions > 0, "README.md and docs/ have no published region"
    assert not outcome.changed, outcome.summary() + "; run `spatialmix render-docs`"


# --------------------------------------------------------------------------- a generated study folder


def _stamp(cpu=XEON, command="spatialmix reproduce --preset quick --out runs/q --seeds 0 1 2") -> dict:
    return {
        "command": command,
        "processes": 2,
        "threads": 1,
        "cpu": {"model": cpu[0], "capability": cpu[1], "cores": 2},
        "gpu": None,
        "versions": {"spatialmix": "0.1.0", "torch": "2.14.1", "numpy": "2.3.0"},
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "dirty": False,
        "date": "2025-06-01T10:00:00+00:00",
    }


def _study_folder(folder: Path, full=FULL, chans=CHANS, cpu=XEON, verdicts=True) -> Path:
    """A `reproduce` folder of classification and robustness numbers (no run folders, no bits)."""
    runs = {
        "full": [{"seed": s, "test_acc": a, "test_examples": 10000} for s, a in enumerate(full)],
        "chans": [{"seed": s, "test_acc": a, "test_examples": 10000} for s, a in enumerate(chans)],
    }
    robust = [
        {
            "mode": mode,
            "seed": s,
            "run": str(folder / "classification" / f"{mode}-seed{s}"),
            "robust_acc": acc,
        }
        for s in range(3)
        for mode, acc in (
            ("full", {"2/255": 0.70 + s / 100, "8/255": 0.20}),
            ("chans", {"2/255": 0.72 + s / 50, "8/255": 0.19 + s / 100}),
        )
    ]
    studies = {
        "classification": {
            "section": "classification",
            "data": {"runs": runs, "time_s": 300.0, "machine": _stamp(cpu)},
            "tables": [[{"mode": "Full", "acc": [0.881, 0.002]}, {"mode": "Chans", "acc": 0.876}]],
            "table_titles": ["Classification"],
            "table_columns": [[["mode", "mode", ""], ["acc", "test acc", ".4f"]]],
        },
        "robustness": {
            "section": "robustness",
            "data": {"runs": robust, "time_s": 120.0, "machine": _stamp(cpu)},
        },
    }
    if verdicts:
        studies["verdicts"] = {
            "section": None,
            "data": {"verdicts": [], "time_s": 0.5, "machine": _stamp(cpu)},
        }
    payload = {"preset": "quick", "seeds": [0, 1, 2], "overrides": {}, "studies": studies}
    storage.atomic_write_json(folder / "results.json", payload)
    return folder


def _t_interval(values) -> tuple[float, float, float]:
    values = np.asarray(values) * 100
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return values.mean(), values.mean() - half, values.mean() + half


def test_publish_then_render_gives_the_verdicts_of_the_folder(tmp_path):
    study = _study_folder(tmp_path / "run")
    folder = publish_results(study, tmp_path / "results")
    assert folder == tmp_path / "results" / "quick" / "intel-xeon-avx512"
    assert sorted(p.name for p in folder.iterdir()) == ["stamp.json", "studies.json", "verdicts.json"]

    stored = json.loads((folder / "verdicts.json").read_text())
    line = next(v for v in stored["verdicts"] if v["fields"]["claim"] == "1a")
    mean, low, high = _t_interval(np.subtract(CHANS, FULL))  # computed here, not by spatialmix
    assert line["fields"]["estimate"]["value"] == pytest.approx(mean)
    assert line["fields"]["estimate"]["low"] == pytest.approx(low)
    assert line["fields"]["estimate"]["high"] == pytest.approx(high)
    assert line["fields"]["estimate"]["n_seeds"] == 3 and line["fields"]["estimate"]["n_examples"] == 10000
    assert line["shown"]["estimate"] == f"{mean:+.2f} pts"
    assert line["shown"]["verdict"] == "supports" and low > -1  # the interval lies above the -1 point margin

    stamp = json.loads((folder / "stamp.json").read_text())
    assert stamp["wall_s"] == pytest.approx(420.5)
    assert stamp["studies"]["classification"]["time_s"] == 300.0
    assert stamp["machine"]["cpu"] == {"model": XEON[0], "capability": "AVX512", "cores": 2}
    text = json.dumps(json.loads((folder / "studies.json").read_text()))
    assert str(tmp_path) not in text and "RUN_DIR/classification/full-seed0" in text

    rendered, names = render_text(REGION, tmp_path / "results")
    assert names == ["quick-verdicts"] and "anything typed here" not in rendered
    assert (
        f"| 1a Chans reaches nearly Full's accuracy | Chans − Full clean test accuracy | {mean:+.2f} pts |"
        in (rendered)
    )
    assert f"[{low:+.2f}, {high:+.2f}] pts" in rendered and "**supports**" in rendered
    assert "| 2a | ... at eps 8/255 |" in rendered  # the second budget continues its claim's line
    stamp_line = rendered.strip().splitlines()[-2]
    assert stamp_line.startswith("*`spatialmix reproduce --preset quick --out runs/q --seeds 0 1 2` on ")
    assert "Intel(R) Xeon(R) Platinum 8480+ (AVX512), 2 processes x 1 thread" in stamp_line
    assert "commit 0123456789, torch 2.14.1; wall time 7 min 00 s (classification 5 min 00 s" in stamp_line
    assert "`results/quick/intel-xeon-avx512/`" in stamp_line


def test_a_study_region_renders_the_tables_the_study_printed(tmp_path):
    publish_results(_study_folder(tmp_path / "run"), tmp_path / "results")
    text = "<!-- results:quick-classification -->\n<!-- /results -->"
    rendered, _ = render_text(text, tmp_path / "results")
    assert (
        "*Classification*\n\n| mode | test acc |\n|---|---|\n| Full | 0.8810 ± 0.0020 |\n| Chans | 0.8760 |"
        in rendered
    )


def test_two_cpu_kinds_render_both_tables_and_how_the_verdicts_move(tmp_path):
    results = tmp_path / "results"
    publish_results(_study_folder(tmp_path / "xeon"), results)
    moved = [a - 0.004 for a in CHANS]  # every Chans accuracy 0.4 points lower on the other CPU
    publish_results(_study_folder(tmp_path / "epyc", chans=moved, cpu=EPYC), results)
    assert [r.tag for r in published_runs(results, "quick")] == ["amd-epyc-avx512", "intel-xeon-avx512"]

    rendered, _ = render_text(REGION, results)
    assert "**AMD EPYC 9R14 96-Core Processor (AVX512)** (`amd-epyc-avx512`):" in rendered
    assert "**Intel(R) Xeon(R) Platinum 8480+ (AVX512)** (`intel-xeon-avx512`):" in rendered
    assert rendered.count("| claim | effect measured |") == 2
    assert "`results/quick/amd-epyc-avx512/`" in rendered and "`results/quick/intel-xeon-avx512/`" in rendered
    comparison = rendered.split("How the verdicts move between CPU kinds:")[1]
    row = next(line for line in comparison.splitlines() if line.startswith("| 1a |"))
    # the shift, and the word it changes: the other CPU's interval reaches the -1 point margin
    assert row.endswith("| 0.40 pts | **no** |")
    assert "pts inconclusive |" in row and "pts supports |" in row
    row_2a = next(
        line
        for line in comparison.splitlines()
        if line.startswith("| 2a | Chans − Full robust accuracy at eps 8/255")
    )
    assert row_2a.endswith("| 0.00 pts | yes |")


def test_a_malformed_stored_file_is_one_line_naming_the_file_and_the_field(tmp_path, capsys):
    results = tmp_path / "results"
    folder = publish_results(_study_folder(tmp_path / "run"), results)
    stored = json.loads((folder / "verdicts.json").read_text())
    stored["verdicts"][1]["shown"] = 5
    (folder / "verdicts.json").write_text(json.dumps(stored))
    with pytest.raises(SpatialmixError) as err:
        published_runs(results, "quick")
    assert str(err.value) == (
        f"{folder / 'verdicts.json'}: field 'verdicts[1].shown' must be an object of printed cells, got 5; "
        f"the file is damaged or not spatialmix's"
    )

    (tmp_path / "README.md").write_text(REGION)
    assert main(["render-docs", "--root", str(tmp_path), "--check"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "verdicts[1].shown" in lines[0] and "verdicts.json" in lines[0]


def test_a_stamp_without_its_cpu_is_refused_by_name(tmp_path):
    results = tmp_path / "results"
    folder = publish_results(_study_folder(tmp_path / "run"), results)
    stamp = json.loads((folder / "stamp.json").read_text())
    del stamp["machine"]["cpu"]["capability"]
    (folder / "stamp.json").write_text(json.dumps(stamp))
    with pytest.raises(
        SpatialmixError, match=r"stamp\.json: field 'machine\.cpu\.capability' must be a string"
    ):
        published_runs(results, "quick")


def test_check_mode_names_the_region_that_differs_and_writes_nothing(tmp_path, capsys):
    publish_results(_study_folder(tmp_path / "run"), tmp_path / "results")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "claims.md"
    page.write_text("# Claims\n\n" + REGION + "\nthe rest\n")
    assert main(["render-docs", "--root", str(tmp_path)]) == 0
    rendered = page.read_text()
    assert rendered.startswith("# Claims\n\n<!-- results:quick-verdicts -->\n| claim |")
    assert rendered.endswith("<!-- /results -->\n\nthe rest\n")
    assert render_docs(tmp_path, check=True).changed == {}

    typed = rendered.replace("**supports**", "**contradicts**", 1)
    page.write_text(typed)
    capsys.readouterr()
    assert main(["render-docs", "--root", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "1 of 1 published region(s) differ from what results/ renders: docs/claims.md (quick-verdicts); "
        "run `spatialmix render-docs`"
    ]
    assert page.read_text() == typed  # check mode writes nothing


def test_a_preset_without_published_results_says_how_to_publish_it(tmp_path):
    rendered, _ = render_text("<!-- results:standard-verdicts -->\n<!-- /results -->", tmp_path / "results")
    assert (
        "No results of the standard preset are published: run `spatialmix reproduce --preset standard"
        in rendered
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "\n\n<!-- results:quick-verdicts -->\nno end\n",
            "README.md:3: <!-- results:quick-verdicts --> has no closing",
        ),
        (
            "x\n<!-- results:quick -->\n<!-- /results -->",
            "README.md:2: region 'quick' is not PRESET-verdicts",
        ),
        ("x\n\n\n<!-- /results -->\n", "README.md:4: <!-- /results --> closes no region"),
    ],
)
def test_a_broken_region_is_one_line_naming_the_file_and_line(tmp_path, text, message):
    (tmp_path / "README.md").write_text(text)
    with pytest.raises(SpatialmixError, match="^" + message.replace("(", r"\(")):
        render_docs(tmp_path, check=True)


# --------------------------------------------------------------------------- publishing refuses


def test_publish_refuses_a_folder_without_verdicts_and_one_of_two_cpus(tmp_path):
    study = _study_folder(tmp_path / "run", verdicts=False)
    with pytest.raises(
        SpatialmixError, match="has no verdicts; run `spatialmix reproduce --out .* --studies verdicts`"
    ):
        publish_results(study, tmp_path / "results")
    _study_folder(study)
    results = json.loads((study / "results.json").read_text())
    results["studies"]["robustness"]["data"]["machine"] = _stamp(EPYC)
    (study / "results.json").write_text(json.dumps(results))
    with pytest.raises(SpatialmixError, match="ran on different CPUs .*robustness on AMD EPYC"):
        publish_results(study, tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_publish_from_the_command_line_with_a_tag_and_a_note(tmp_path, capsys):
    study = _study_folder(tmp_path / "run")
    results = tmp_path / "results"
    args = ["publish", str(study), "--results", str(results), "--tag", "ci-box", "--note", "a placeholder"]
    assert main(args) == 0
    assert "results/quick/ci-box" in capsys.readouterr().out
    (run,) = published_runs(results, "quick")
    assert run.stamp["note"] == "a placeholder"
    rendered, _ = render_text(REGION, results)
    assert rendered.rstrip().splitlines()[-2].endswith("**Note**: a placeholder.")
    assert main(["publish", str(study), "--results", str(results), "--tag", "Bad Tag"]) == 2


# --------------------------------------------------------------------------- the stamp


def test_the_cpu_tag_names_vendor_family_and_capability():
    assert cpu_tag(*XEON) == "intel-xeon-avx512"
    assert cpu_tag(*EPYC) == "amd-epyc-avx512"
    assert cpu_tag("Apple M2", "DEFAULT") == "apple-m2-default"


def test_a_study_stamp_names_its_command_machine_and_versions():
    command = reproduce_command(
        "quick",
        "runs/q",
        (0, 1),
        ["classification", "verdicts"],
        1,
        None,
        {"progress": False, "train_subset": 3000},
    )
    assert command == (
        "spatialmix reproduce --preset quick --out runs/q --seeds 0 1 --studies classification,verdicts "
        "--processes 1 --no-progress --train-subset 3000"
    )
    stamp = machine_stamp(command, 1, 1)
    assert stamp["command"] == command and stamp["processes"] == 1 and stamp["threads"] == 1
    assert set(stamp["versions"]) == {"spatialmix", "torch", "torchvision", "timm", "numpy", "scipy"}
    import torch

    assert (
        stamp["versions"]["torch"] == torch.__version__.split("+")[0]
        or stamp["versions"]["torch"] == torch.__version__
    )
    assert stamp["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert stamp["commit"] is None or len(stamp["commit"]) == 40


def test_the_repository_results_hold_only_small_json():
    files = [p for p in (ROOT / "results").rglob("*") if p.is_file()]
    assert files, "results/ holds no published results"
    for path in files:
        assert path.suffix == ".json" and path.stat().st_size < 200_000, path


def test_a_study_not_published_yet_is_said_and_a_misspelt_one_refused(tmp_path):
    publish_results(_study_folder(tmp_path / "run"), tmp_path / "results")
    rendered, _ = render_text("<!-- results:quick-unshuffle -->\n<!-- /results -->", tmp_path / "results")
    assert (
        "The published `intel-xeon-avx512` results of the quick preset hold no unshuffle study." in rendered
    )
    with pytest.raises(SpatialmixError, match="region 'quick-unshufle' names no study; name one of verdicts"):
        render_text("<!-- results:quick-unshufle -->\n<!-- /results -->", tmp_path / "results")


def test_a_marker_in_a_sentence_or_a_code_block_is_text(tmp_path):
    publish_results(_study_folder(tmp_path / "run"), tmp_path / "results")
    example = "A region starts with `<!-- results:NAME -->`.\n\n```text\n" + REGION + "```\n\n"
    rendered, changed = render_text(example + REGION, tmp_path / "results")
    assert changed == ["quick-verdicts"]
    assert rendered.startswith(example)
    assert rendered.count("anything typed here") == 1 and rendered.count("| claim |") == 1


def test_a_bad_region_in_one_file_leaves_every_file_as_it_was(tmp_path):
    publish_results(_study_folder(tmp_path / "run"), tmp_path / "results")
    (tmp_path / "README.md").write_text(REGION)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "claims.md").write_text("<!-- results:quick-nothing -->\n<!-- /results -->\n")
    with pytest.raises(SpatialmixError, match="^docs/claims.md:1: region 'quick-nothing' names no study"):
        render_docs(tmp_path)
    assert (tmp_path / "README.md").read_text() == REGION


def test_an_until_decided_folder_is_stamped_with_its_limits_and_levels(tmp_path):
    study = _study_folder(tmp_path / "run")
    results = json.loads((study / "results.json").read_text())
    results["overrides"] = {"train_subset": 3000, "progress": False}
    results["sequential"] = {
        "max_seeds": 12,
        "step": 2,
        "budget_s": 1800.0,
        "studies": {"classification": {"level": 0.99}},
    }
    (study / "results.json").write_text(json.dumps(results))
    folder = publish_results(study, tmp_path / "results")
    stamp = json.loads((folder / "stamp.json").read_text())
    assert stamp["command"] == (
        "spatialmix reproduce --preset quick --out RUN_DIR --until-decided --max-seeds 12 --seed-step 2 "
        "--budget 1800s --no-progress --train-subset 3000"
    )
    line = json.loads((folder / "verdicts.json").read_text())["verdicts"][0]
    assert line["fields"]["claim"] == "1a" and line["fields"]["estimate"]["level"] == 0.99
    mean, _, _ = _t_interval(np.subtract(CHANS, FULL))
    half = stats.t.ppf(0.995, 2) * np.std(np.subtract(CHANS, FULL) * 100, ddof=1) / np.sqrt(3)
    assert line["shown"]["interval"] == f"[{mean - half:+.2f}, {mean + half:+.2f}] pts"
    rendered, _ = render_text(REGION, tmp_path / "results")  # levels differ: each interval names its own
    assert "| interval (level in how) |" in rendered
    assert f"[{mean - half:+.2f}, {mean + half:+.2f}] pts (99%) |" in rendered and "pts (95%) |" in rendered

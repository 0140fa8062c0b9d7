"""The HTML report: valid, self-contained, every section with results present, the rest noted absent."""

import base64
import importlib.util
import io
import json
import re
import shutil
import sys
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialmix.analysis.filters import FilterAnalysis, LayerSpectrum
from spatialmix.cli.main import main
from spatialmix.data.datasets import ImageData
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.train import fit
from spatialmix.io import runs
from spatialmix.io.paths import inside
from spatialmix.io.study_results import Figure, StudyResult
from spatialmix.report import document as report
from spatialmix.report import filters as report_filters
from spatialmix.report import html_tables, page, sections, study_files
from spatialmix.report.tables import classification_table
from spatialmix.studies.context import PRESETS, StudyContext
from spatialmix.studies.reproduce import STUDIES, reproduce, save_results, study_function
from spatialmix.ui.display import ResultTable

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
ALL_SECTIONS = (
    "verdicts",
    "classification",
    "curves",
    "robustness",
    "smoothing",
    "unshuffle",
    "filters",
    "configuration",
)


class StrictParser(HTMLParser):
    """Fails on any unbalanced tag; collects every src/href and tag name."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.urls, self.tags, self.ids = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href"):
                self.urls.append(value)
            if name == "id":
                self.ids.append(value)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_page(page: str) -> StrictParser:
    """Assert the page parses with balanced tags and needs nothing outside itself."""
    assert page.startswith("<!DOCTYPE html>")
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert "http://" not in page and "https://" not in page
    assert "link" not in parser.tags and "script" not in parser.tags and "iframe" not in parser.tags
    for url in parser.urls:
        assert url.startswith(("data:image/", "#")), url
        if url.startswith("#"):
            assert url[1:] in parser.ids
    return parser


def section_html(page: str, section_id: str) -> str:
    """One section of the page, its cells without their labels (``<td>x</td>``; the labels, which
    narrow windows show, are checked by the tests of the stacked tables)."""
    start = page.index(f'<section id="{section_id}"')
    return without_labels(page[start : page.index("</section>", start)])


def without_labels(page: str) -> str:
    return re.sub(r' data-label="[^"]*"', "", page)


def png_bytes(color: str) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=20)
    fig.add_subplot().plot([0, 1], [0, 1], color=color)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# --------------------------------------------------------------------------- fixtures: a small study folder


def random_data() -> ImageData:
    gen = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 1, 16, 16), generator=gen, dtype=torch.uint8)
    labels = lambda n: torch.randint(0, 4, (n,), generator=gen)
    return ImageData(
        "fashion-mnist", images(64), labels(64), images(32), labels(32), (0.5,), (0.25,), ["a", "b", "c", "d"]
    )


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """A study folder like `spatialmix reproduce` makes: classification runs and results.json."""
    out = tmp_path_factory.mktemp("study")
    base = TrainConfig(
        dataset="fashion-mnist",
        model="convmixer",
        width=8,
        depth=2,
        kernel_size=3,
        patch_size=4,
        epochs=2,
        batch_size=32,
        progress=False,
        device="cpu",
    )
    data = random_data()
    summaries = {}
    for mode in ("full", "chans"):
        for seed in (0, 1):
            run_dir = out / "classification" / f"{mode}-seed{seed}"
            summaries.setdefault(mode, []).append(fit(base.replace(mode=mode, seed=seed), run_dir, data=data))
    smoothed = out / "robustness" / "chans-sigma1-seed0"
    fit(base.replace(mode="chans", smooth_sigma=1.0), smoothed, data=data)
    ctx = StudyContext(PRESETS["quick"], out, (0, 1), {"epochs": 2})
    ctx.results["classification"] = StudyResult(
        "classification",
        [classification_table(summaries, "cls")],
        {"runs": summaries},
        section="classification",
    )
    save_results(ctx)
    return out


def with_studies(study_dir: Path, dest: Path, entries: dict) -> Path:
    """A copy of ``study_dir`` whose results.json also holds ``entries`` (name -> tables, files)."""
    shutil.copytree(study_dir, dest)
    results = json.loads((dest / "results.json").read_text())
    results["studies"].update(entries)
    (dest / "results.json").write_text(json.dumps(results))
    return dest


# --------------------------------------------------------------------------- contents


@pytest.fixture(scope="module")
def study_report(study_dir, tmp_path_factory):
    """The report step of `spatialmix reproduce`, run on a copy of the study folder."""
    dest = tmp_path_factory.mktemp("reproduced") / "study"
    shutil.copytree(study_dir, dest)
    result = study_function("report")(StudyContext(PRESETS["quick"], dest, (0, 1), {}))
    return dest, result


def test_report_study_is_registered_last_and_writes_into_the_study(study_report):
    dest, result = study_report
    # `reproduce` runs the studies in this order, so the report sees every other study's results
    assert list(STUDIES)[-1] == "report"
    assert result.name == "report" and result.tables == []
    assert result.files == [str(dest / "report.html"), str(dest / "report.md")]
    assert result.data["absent"] == ["robustness", "smoothing", "unshuffle"]


def test_report_of_a_classification_study(study_dir, study_report):
    dest, result = study_report
    page = (dest / "report.html").read_text()
    parser = check_page(page)
    assert result.data["present"] == ["verdicts", "classification", "curves", "filters", "configuration"]
    for section in ALL_SECTIONS:
        assert section in parser.ids
    for section in result.data["absent"]:
        assert "Absent: " + sections.ABSENT[section] in section_html(page, section)
        assert "<img" not in section_html(page, section)
    for section in result.data["present"]:
        assert "Absent:" not in section_html(page, section)
    # mean ± std over the two seeds of the classification study
    summaries = json.loads((study_dir / "results.json").read_text())["studies"]["classification"]["data"][
        "runs"
    ]
    accs = [s["test_acc"] for s in summaries["full"]]
    mean = sum(accs) / 2
    std = (sum((a - mean) ** 2 for a in accs)) ** 0.5  # sample std of two values: |a - b| / sqrt(2)
    cls = section_html(page, "classification")
    assert f"{mean:.4f} ± {std:.4f}" in cls or (std == 0 and f"{mean:.4f}" in cls)
    # filter analysis: three figures, learned vs frozen vs smoothed random, and the frozen check
    filters = section_html(page, "filters")
    assert filters.count("<img") == 3
    for state in ("learned", "frozen random", "frozen smoothed random"):
        assert f"<td>{state}</td>" in filters
    assert "frozen layers are bit-for-bit at their initialization" in filters
    assert "robustness: Chans σ=1 seed 0" in filters
    assert section_html(page, "curves").count("<img") == 1
    # the Markdown tables beside it
    markdown = (dest / "report.md").read_text()
    assert "## Filter analysis" in markdown and "| low/high energy" in markdown
    assert "_Absent: " + sections.ABSENT["robustness"] in markdown


def test_the_report_leads_with_the_verdicts_and_ends_with_the_configuration(study_report):
    dest, _ = study_report
    page = (dest / "report.html").read_text()
    sections = [
        page[i + len('<section id="') :].split('"')[0]
        for i in range(len(page))
        if page.startswith('<section id="', i)
    ]
    assert sections[0] == "verdicts" and sections[-1] == "configuration"
    verdicts = section_html(page, "verdicts")
    # claim 1a: Chans - Full clean accuracy, seed by seed, from the study's own summaries
    runs_data = json.loads((dest / "results.json").read_text())["studies"]["classification"]["data"]["runs"]
    full, chans = ({s["seed"]: s["test_acc"] for s in runs_data[m]} for m in ("full", "chans"))
    effect = sum(chans[s] - full[s] for s in (0, 1)) / 2
    start = verdicts.rindex("<tr", 0, verdicts.index("<td>1a</td>"))
    row = verdicts[start : verdicts.index("</tr>", start)]
    assert f'<td class="nowrap">{100 * effect:+.2f} pts</td>' in row and "<td>2</td>" in row
    # how the interval was made: the row's tooltip and its numbered note under the table
    how = "t over 2 seeds + test-set variance of 32 test examples (crossed)"
    assert row.startswith(f'<tr title="{how}') and '<td class="note">1</td>' in row
    assert "<td>32</td>" in row  # test_correct_bits of the 32 test images
    assert "<th>how</th>" not in verdicts and f'<ol class="notes"><li>{how}' in verdicts
    word = next(w for w in ("supports", "contradicts", "inconclusive") if f'"verdict-{w}">{w}</td>' in row)
    assert verdicts.count('<td class="verdict-not-run">not run</td>') == 5  # 1b (no Space), 2a, 2b, 3a, 3b
    # the study folder is named, not the machine's path to it
    assert "spatialmix reproduce --out study --studies unshuffle" in verdicts and str(dest.parent) not in page
    # a headline per claim above the table, in the page and in the Markdown
    markdown = (dest / "report.md").read_text()
    assert "## Verdicts" in markdown.split("## Classification")[0]
    headline = re.search(
        r"^- Claim 1a — Chans reaches nearly Full's accuracy: (.*)\.$", markdown, re.MULTILINE
    )
    assert headline is not None and headline.group(1).startswith(f"{word}, {100 * effect:+.2f} [")
    assert headline.group(1).endswith("] pts, 2 seeds") and verdicts.index("Claim 1a —") < verdicts.index(
        "<table"
    )
    assert "- Claim 2b — smoothing Chans's frozen filters adds robustness: not run (" in markdown


def test_no_table_is_wider_than_the_page(study_dir, tmp_path):
    # a run that differs from another in many settings: still one narrow runs table
    other = tmp_path / "other-settings"
    shutil.copytree(study_dir / "classification" / "full-seed0", other)
    record = json.loads((other / runs.CONFIG).read_text())
    record["train"].update(
        lr=0.5,
        batch_size=7,
        weight_decay=0.5,
        label_smoothing=0.0,
        clip_grad=3.0,
        epochs=9,
        augment="none",
        init_std=0.3,
        spatial_init="gaussian",
        amp="none",
    )
    (other / runs.CONFIG).write_text(json.dumps(record))
    files = report.write_report([study_dir / "classification" / "full-seed0", other], tmp_path / "wide.html")
    page = files.html.read_text()
    check_page(page)
    assert page.count("<table") == page.count('<div class="table-wrap"><table')
    assert ".table-wrap { max-width: 100%; overflow-x: auto;" in page and "overflow-wrap: anywhere" in page
    config = section_html(page, "configuration")
    runs_table = config[config.index("<caption>Runs</caption>") : config.index("</table>")]
    assert runs_table.count("<th>") == 6 and "<th>settings</th>" in runs_table
    groups = config[config.index("<caption>Settings that differ between runs</caption>") :]
    groups = groups[: groups.index("</table>")]
    assert groups.count("<th>") == 3 and "lr=0.5" in groups and "batch_size=7" in groups


def table_rows(page: str, caption: str) -> list[list[str]]:
    """The cells of each body row of the table captioned ``caption``, as text."""
    table = page[page.index(f"<caption>{caption}</caption>") :]
    body = table[table.index("<tbody>") : table.index("</tbody>")]
    return [
        [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)
    ]


def test_the_configuration_shows_each_distinct_setting_once(study_dir, tmp_path):
    """Four classification runs share their settings, the smoothed run differs in smooth_sigma: two
    groups, each set of values in one row, and every run names its group."""
    page = report.write_report([study_dir], tmp_path / "r.html").html.read_text()
    config = section_html(page, "configuration")
    groups = table_rows(config, "Settings that differ between runs")
    assert groups == [["A", "4", "smooth_sigma=0"], ["B", "1", "smooth_sigma=1"]]
    runs_rows = table_rows(config, "Runs")
    by_folder = {row[1].rsplit("/", 1)[-1]: row[-1] for row in runs_rows}
    assert by_folder == {
        **{f"{mode}-seed{seed}": "A" for mode in ("full", "chans") for seed in (0, 1)},
        "chans-sigma1-seed0": "B",
    }
    assert config.count("smooth_sigma=") == 2


def test_verdicts_that_cannot_be_computed_leave_the_rest_of_the_report(study_dir, tmp_path):
    dest = with_studies(study_dir, tmp_path / "damaged", {})
    (dest / "unshuffle").mkdir()
    (dest / "unshuffle" / "unshuffle.json").write_text("{oops")
    files = report.write_report([dest], tmp_path / "report.html")
    verdicts = section_html(files.html.read_text(), "verdicts")
    assert "Verdicts of damaged could not be computed" in verdicts and "is corrupt (not JSON)" in verdicts
    assert "verdicts" in files.absent and "classification" in files.present and files.verdicts == []


def test_a_study_entry_without_its_section_is_refused_in_one_line(study_dir, tmp_path, capsys):
    """Every entry `reproduce` writes declares its section; one without it is a damaged file, not a guess."""
    dest = with_studies(study_dir, tmp_path / "bad", {"robustness": {"data": {}, "tables": [], "files": []}})
    out = tmp_path / "report.html"
    assert main(["report", str(dest), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"spatialmix: error: {dest / 'results.json'}: field 'studies.robustness.section' is missing; the "
        "file is damaged or not spatialmix's\n"
    )
    assert not out.exists()


def _declared_study(study_dir: Path, dest: Path) -> Path:
    """A copy of ``study_dir`` to which `reproduce` saved studies that declare their sections and figures
    (named so that no study name or file name hints at the section)."""
    shutil.copytree(study_dir, dest)
    ctx = StudyContext(PRESETS["quick"], dest, (0, 1), {"epochs": 2})
    pngs = {}
    for folder, name in (("a", "sigma-robust.png"), ("b", "attack.png"), ("c", "filters.png")):
        (dest / folder).mkdir()
        pngs[name] = png_bytes({"a": "red", "b": "green", "c": "blue"}[folder])
        (dest / folder / name).write_bytes(pngs[name])
    (dest / "b" / "numbers.csv").write_text("sigma,acc\n")
    first = ResultTable("Budgets of study one", [("eps", "eps", ".3f"), ("acc", "robust acc", ".2f")])
    first.add(eps=8 / 255, acc=(0.41, 0.02))
    second = ResultTable("Sigmas of study two", [("sigma", "sigma", ".2g"), ("acc", "robust acc", ".2f")])
    second.add(sigma=1.0, acc=0.57)
    ctx.results["one"] = StudyResult(
        "one",
        [first],
        {"warnings": ["check X"]},
        section="robustness",
        figures=[Figure(dest / "a" / "sigma-robust.png", "Caption of figure one")],
    )
    ctx.results["two"] = StudyResult(
        "two",
        [second],
        {},
        section="smoothing",
        figures=[Figure(dest / "b" / "attack.png", "Caption of figure two")],
        files=[str(dest / "b" / "numbers.csv")],
    )
    ctx.results["three"] = StudyResult(
        "three",
        [],
        {},
        section="init",
        figures=[
            Figure(dest / "c" / "filters.png", "Caption of figure three"),
            Figure(dest / "c" / "deleted.png", "never drawn"),
        ],
    )
    ctx.results["four"] = StudyResult("four", [second], {}, section=None)
    save_results(ctx)
    return dest


def test_declared_sections_and_figures_round_trip_through_results_json_and_the_report_places_them(
    study_dir, tmp_path
):
    dest = _declared_study(study_dir, tmp_path / "made-here")
    saved = json.loads((dest / "results.json").read_text())["studies"]
    # results.json keeps each declaration, with paths relative to the study folder
    assert saved["one"]["section"] == "robustness" and saved["four"]["section"] is None
    assert saved["one"]["figures"] == [{"file": "a/sigma-robust.png", "caption": "Caption of figure one"}]
    assert saved["two"]["files"] == ["b/numbers.csv"]
    assert saved["classification"]["section"] == "classification"
    # ... so the folder can move: the report of the moved copy finds every figure
    moved = tmp_path / "moved" / "elsewhere"
    shutil.copytree(dest, moved)
    shutil.rmtree(dest)
    files = report.write_report([moved], tmp_path / "report.html")
    page = files.html.read_text()
    check_page(page)
    assert files.present == [
        "verdicts",
        "classification",
        "curves",
        "robustness",
        "smoothing",
        "init",
        "filters",
        "configuration",
    ]
    assert files.absent == ["unshuffle"]
    b64 = lambda data: base64.b64encode(data).decode()
    robustness, smoothing, init = (section_html(page, s) for s in ("robustness", "smoothing", "init"))
    one, two, three = (
        (moved / f).read_bytes() for f in ("a/sigma-robust.png", "b/attack.png", "c/filters.png")
    )
    assert (
        b64(one) in robustness
        and b64(two) not in robustness
        and "<figcaption>Caption of figure one" in robustness
    )
    assert (
        "<caption>Budgets of study one (elsewhere)</caption>" in robustness
        and "<td>0.41 ± 0.02</td>" in robustness
    )
    assert "Warning from the one study: check X" in robustness
    assert (
        b64(two) in smoothing
        and b64(one) not in smoothing
        and "<figcaption>Caption of figure two" in smoothing
    )
    assert "Other files of this study: b/numbers.csv." in smoothing and str(tmp_path) not in page
    assert b64(three) in init and "Listed in results.json but not found: c/deleted.png" in init
    assert "<h2>Priors of the frozen random filters</h2>" in init
    assert page.count("Sigmas of study two") == 1  # study four declared no section: shown nowhere
    assert "_Figure in the HTML report: Caption of figure three_" in files.markdown.read_text()


def test_a_study_folder_given_as_a_relative_path_shows_its_declared_figures(study_dir, tmp_path, monkeypatch):
    """`make reproduce` writes its report with the relative study folder runs/reproduce: every declared
    figure is found there too (a relative folder was once prefixed to its own files twice)."""
    dest = _declared_study(study_dir, tmp_path / "made-here")
    monkeypatch.chdir(tmp_path)
    files = report.write_report([Path("made-here")], Path("report.html"))
    page = files.html.read_text()
    one, two, three = (
        (dest / f).read_bytes() for f in ("a/sigma-robust.png", "b/attack.png", "c/filters.png")
    )
    b64 = lambda data: base64.b64encode(data).decode()
    robustness, smoothing, init = (section_html(page, s) for s in ("robustness", "smoothing", "init"))
    assert b64(one) in robustness and b64(two) in smoothing and b64(three) in init
    assert "not found: a/sigma-robust.png" not in page and "not found: c/filters.png" not in page
    assert "Listed in results.json but not found: c/deleted.png" in init


def test_a_study_declares_a_known_section():
    with pytest.raises(ValueError, match="section 'robust' is not one of"):
        StudyResult("x", section="robust")
    assert StudyResult("x").section == "other"  # a study that declares nothing: shown under "Other results"


def _results_with(dest: Path, name: str, **fields) -> Path:
    results = json.loads((dest / "results.json").read_text())
    results["studies"][name] = {
        "section": "robustness",
        "tables": [],
        "figures": [],
        "files": [],
        "data": {},
        **fields,
    }
    (dest / "results.json").write_text(json.dumps(results))
    return dest


@pytest.mark.parametrize(
    "fields, field, shown",
    [
        (
            {"figures": [{"file": "../x.png", "caption": "c"}]},
            "studies.robustness.figures[0].file",
            "'../x.png'",
        ),
        (
            {"figures": [{"file": "/etc/x.png", "caption": "c"}]},
            "studies.robustness.figures[0].file",
            "'/etc/x.png'",
        ),
        (
            {"figures": [{"file": "a/../../x.png", "caption": "c"}]},
            "studies.robustness.figures[0].file",
            "'a/../../x.png'",
        ),
        ({"files": ["/etc/passwd"]}, "studies.robustness.files[0]", "'/etc/passwd'"),
        ({"figures": [{"file": "a.png", "caption": 3}]}, "studies.robustness.figures[0].caption", "3"),
        ({"figures": "a.png"}, "studies.robustness.figures", "'a.png'"),
        ({"section": 7}, "studies.robustness.section", "7"),
        ({"tables": [["row"]]}, "studies.robustness.tables[0]", "['row']"),
        (
            {"tables": [[{"a": 1}]], "table_columns": [[["a", "b"]]]},
            "studies.robustness.table_columns[0]",
            "[['a', 'b']]",
        ),
        ({"data": []}, "studies.robustness.data", "[]"),
    ],
)
def test_a_malformed_study_entry_is_refused_in_one_line(fields, field, shown, study_dir, tmp_path, capsys):
    dest = with_studies(study_dir, tmp_path / "bad", {})
    _results_with(dest, "robustness", **fields)
    out = tmp_path / "report.html"
    out.write_text("previous report")
    assert main(["report", str(dest), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spatialmix: error: {dest / 'results.json'}: field '{field}' must be ")
    assert f"got {shown}" in err and err.count("\n") == 1 and "Traceback" not in err
    assert out.read_text() == "previous report"


@pytest.mark.parametrize(
    "field, value", [("overrides", [1]), ("seeds", "0,1"), ("preset", {"name": "quick"})]
)
def test_a_malformed_study_setting_in_results_json_is_one_line(field, value, study_dir, tmp_path, capsys):
    dest = with_studies(study_dir, tmp_path / "bad", {})
    results = json.loads((dest / "results.json").read_text())
    (dest / "results.json").write_text(json.dumps({**results, field: value}))
    assert main(["report", str(dest), "-o", str(tmp_path / "report.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spatialmix: error: {dest / 'results.json'}: field '{field}' must be ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_unknown_section_from_a_newer_spatialmix_goes_to_other_results(study_dir, tmp_path):
    dest = _results_with(
        with_studies(study_dir, tmp_path / "newer", {}),
        "future",
        section="some-new-section",
        tables=[[{"answer": 42}]],
    )
    page = report.write_report([dest], tmp_path / "report.html").html.read_text()
    assert "<td>42</td>" in section_html(page, "other")


def test_report_of_single_runs_and_an_interrupted_study(study_dir, tmp_path):
    # a run evaluated by `spatialmix attack`: its robustness.json and plot sit in the run directory
    attacked = tmp_path / "attacked"
    shutil.copytree(study_dir / "classification" / "full-seed0", attacked)
    result = {
        "label": "Full seed 0",
        "settings": {"norm": "Linf"},
        "clean_acc": 0.75,
        "budgets": [
            {"eps": 0.0, "eps_label": "0", "robust_acc": 0.75, "attacks": {}, "warnings": []},
            {"eps": 8 / 255, "eps_label": "8/255", "robust_acc": 0.4531, "attacks": {}, "warnings": []},
        ],
        "warnings": ["robust accuracy rises with eps"],
    }
    (attacked / "robustness.json").write_text(json.dumps(result))
    plot = png_bytes("black")
    (attacked / "robustness.png").write_bytes(plot)
    files = report.write_report(
        [attacked, study_dir / "classification" / "chans-seed1"], tmp_path / "runs.html"
    )
    page = files.html.read_text()
    check_page(page)
    assert files.present == ["verdicts", "classification", "curves", "robustness", "filters", "configuration"]
    cells = without_labels(page)
    assert "Classification, runs given" in page and "<td>Full</td>" in cells and "<td>Chans</td>" in cells
    robustness = section_html(page, "robustness")
    assert "<td>0.4531</td>" in robustness and "8/255" in robustness and "rises with eps" in robustness
    assert base64.b64encode(plot).decode() in robustness
    # a study folder without results.json: its runs are still found
    interrupted = tmp_path / "interrupted"
    shutil.copytree(study_dir / "classification", interrupted / "classification")
    inputs = report.read_inputs([interrupted])
    assert inputs.loose_runs == [] and inputs.studies[0].results == {}
    assert [r.label for r in inputs.runs] == ["Full seed 0", "Full seed 1", "Chans seed 0", "Chans seed 1"]
    assert report.classification_section(inputs).present


def test_page_check_catches_broken_or_external_pages():
    good = (
        '<!DOCTYPE html><html><body><p id="a"><a href="#a">x</a>'
        '<img src="data:image/png;base64,AA"></p></body></html>'
    )
    check_page(good)
    for bad in (
        good.replace("</p>", ""),
        good.replace("#a", "https://example.com"),
        good.replace("data:image/png;base64,AA", "//cdn.example.com/x.png"),
        good.replace("<body>", '<body><script src="x.js"></script>'),
        good.replace('href="#a"', 'href="#b"'),
    ):
        with pytest.raises(AssertionError):
            check_page(bad)


# --------------------------------------------------------------------------- command line


def test_cli_writes_the_report(study_dir, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", str(study_dir), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report written to {out}" in printed and "robustness, smoothing, unshuffle" in printed
    assert printed.index("Verdicts") < printed.index("report written to") and "│ 1a " in printed
    check_page(out.read_text())


def _incompatible_run(study_dir: Path, dest: Path) -> Path:
    shutil.copytree(study_dir / "classification" / "full-seed0", dest)
    config = json.loads((dest / runs.CONFIG).read_text())
    config["format_version"] = 99
    (dest / runs.CONFIG).write_text(json.dumps(config))
    return dest


def _run_config_not_an_object(study_dir: Path, dest: Path) -> Path:
    """A study folder one of whose runs has a config.json that is JSON but not an object."""
    shutil.copytree(study_dir, dest)
    (dest / "classification" / "chans-seed1" / runs.CONFIG).write_text("[1, 2]")
    return dest


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("empty", "is an empty directory"),
        ("file", "is a file, not a run directory"),
        ("junk", "is neither a spatialmix run"),
        ("incompatible", "incompatible spatialmix (run format 99"),
        ("corrupt_results", "is corrupt (not JSON)"),
        ("bad_output", "must end in .html"),
        ("fft", "FFT size 2 is smaller than the 3 x 3 filters"),
        ("run_config_not_an_object", "config.json must hold a JSON object, got list"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_keeps_the_old_report(
    case, message, study_dir, tmp_path, capsys
):
    out = tmp_path / "report.html"
    out.write_text("previous report")
    args = {
        "missing": lambda: [str(tmp_path / "nope")],
        "empty": lambda: [str((tmp_path / "empty").mkdir() or tmp_path / "empty")],
        "file": lambda: [str(out)],
        "junk": lambda: [
            str(
                (tmp_path / "junk").mkdir()
                or (tmp_path / "junk" / "notes.txt").write_text("x")
                and tmp_path / "junk"
            )
        ],
        "incompatible": lambda: [str(_incompatible_run(study_dir, tmp_path / "old-run"))],
        "corrupt_results": lambda: [
            str(
                with_studies(study_dir, tmp_path / "c", {})
                and (tmp_path / "c" / "results.json").write_text("{oops")
                and tmp_path / "c"
            )
        ],
        "bad_output": lambda: [str(study_dir), "-o", str(tmp_path / "report.txt")],
        "fft": lambda: [str(study_dir / "classification" / "full-seed0"), "--fft-size", "2"],
        "run_config_not_an_object": lambda: [str(_run_config_not_an_object(study_dir, tmp_path / "listed"))],
    }[case]()
    if "-o" not in args:
        args += ["-o", str(out)]
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spatialmix: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out.read_text() == "previous report"
    assert not (tmp_path / "report.md").exists()


# --------------------------------------------------------------------------- `make reproduce`, end to end


def _embedded_images(page: str) -> list[str]:
    """The base64 data of every image embedded in ``page``."""
    return re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)


@pytest.mark.slow
def test_reproduce_and_report_of_a_relative_study_folder_embed_every_listed_figure(
    fake_fashion_dir, tmp_path, monkeypatch
):
    """`make reproduce` runs in the repository with the relative default folder runs/reproduce: the report
    it writes, and `spatialmix report runs/reproduce`, embed each figure results.json lists, once."""
    tiny = replace(
        PRESETS["quick"],
        name="tiny",
        on_request=frozenset({"init"}),  # robustness and smoothing too: their figures are listed
        seeds=(0, 1),
        seed_counts={"space": 1, "robustness": 1, "smoothing": 1, "unshuffle": 1},
        options={
            "robustness": {
                "eps": (0.0, 8 / 255),
                "n_examples": 16,
                "reference_examples": 4,
                "square_queries": 10,
            },
            "smoothing": {"sigmas": (0.0, 2.0)},
            "unshuffle": {"train_subset": 64, "test_subset": 32, "epochs": 1, "references": False},
        },
    )
    monkeypatch.setitem(PRESETS, "tiny", tiny)
    monkeypatch.chdir(tmp_path)
    folder = Path("runs/reproduce")
    overrides = dict(train_subset=256, test_subset=64, epochs=1, width=8, depth=1, progress=False)
    reproduce("tiny", folder, processes=1, data_dir=str(fake_fashion_dir), **overrides)
    assert main(["report", str(folder), "-o", "report.html"]) == 0
    studies = json.loads((folder / "results.json").read_text())["studies"]
    listed = [f["file"] for entry in studies.values() for f in entry.get("figures", [])]
    assert len(listed) == 5  # robustness, smoothing (2), un-shuffling (2)
    wanted = sorted(base64.b64encode((folder / name).read_bytes()).decode() for name in listed)
    for html in (folder / "report.html").read_text(), Path("report.html").read_text():
        check_page(html)
        assert "not found" not in html
        assert sorted(image for image in _embedded_images(html) if image in wanted) == wanted


# --------------------------------------------------------------------------- files leading out of the folder


def test_a_figure_that_links_out_of_the_study_folder_is_skipped_with_a_line(study_dir, tmp_path):
    """A shared report.html must never carry a file from outside the folder reported on: a listed PNG
    that is a link to a private file is not read, and the page says it was skipped; the rest stands."""
    dest = _declared_study(study_dir, tmp_path / "study")
    secret = tmp_path / "private.png"
    secret.write_bytes(png_bytes("purple"))
    (dest / "a" / "sigma-robust.png").unlink()
    (dest / "a" / "sigma-robust.png").symlink_to(secret)
    files = report.write_report([dest], tmp_path / "report.html")
    page = files.html.read_text()
    check_page(page)
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    robustness = section_html(page, "robustness")
    skipped = (
        "Skipped, a link that leads out of the study folder (never read into this page): a/sigma-robust.png."
    )
    assert f"<p>{skipped}</p>" in robustness and page.count(skipped) == 1
    assert base64.b64encode((dest / "b" / "attack.png").read_bytes()).decode() in section_html(
        page, "smoothing"
    )
    # a link that stays inside the folder is a figure like any other
    (dest / "a" / "sigma-robust.png").unlink()
    (dest / "a" / "sigma-robust.png").symlink_to(dest / "c" / "filters.png")
    page = report.write_report([dest], tmp_path / "report.html").html.read_text()
    assert base64.b64encode((dest / "c" / "filters.png").read_bytes()).decode() in section_html(
        page, "robustness"
    )


def test_a_figure_swapped_for_a_link_after_the_check_is_not_followed(study_dir, tmp_path, monkeypatch):
    """The check and the read are two steps: a file replaced by a link between them is refused when opened
    (O_NOFOLLOW), not followed out of the folder."""
    dest = _declared_study(study_dir, tmp_path / "study")
    secret = tmp_path / "private.png"
    secret.write_bytes(png_bytes("purple"))
    figure = dest / "a" / "sigma-robust.png"

    def check_then_swap(base, path):
        found = inside(base, path)
        if Path(path).name == figure.name and not figure.is_symlink():
            figure.unlink()
            figure.symlink_to(secret)
        return found

    monkeypatch.setattr(study_files, "inside", check_then_swap)
    page = report.write_report([dest], tmp_path / "report.html").html.read_text()
    assert figure.is_symlink() and base64.b64encode(secret.read_bytes()).decode() not in page
    assert (
        "Skipped, a link that leads out of the study folder (never read into this page): a/sigma-robust.png."
        in page
    )


# --------------------------------------------------------------------------- layout


def test_table_cells_never_break_a_word_and_long_tables_fold(study_dir, tmp_path, monkeypatch):
    html = report.write_report([study_dir], tmp_path / "report.html").html.read_text()
    style = html[html.index("<style>") : html.index("</style>")]
    cells = style[style.index("th, td {") : style.index("}", style.index("th, td {"))]
    assert "overflow-wrap: normal" in cells and "word-break: normal" in cells and "hyphens: none" in cells
    assert "anywhere" not in cells and "td.nowrap, .nb { white-space: nowrap; }" in style
    # a line may break after a slash: a word with one is kept whole
    nb = '<span class="nb">'
    kept = html_tables.whole_words("≥ 4.04 pts/σ; at 2/255")
    assert kept == f"≥ 4.04 {nb}pts/σ;</span> at {nb}2/255</span>"
    # the per-layer spectrum table, longer than LONG_TABLE rows: a row per setting and layer, all rows behind
    monkeypatch.setattr(report_filters, "LONG_TABLE", 4)
    filters = section_html(report.write_report([study_dir], tmp_path / "r.html").html.read_text(), "filters")
    summary = filters[filters.index("<caption>Frequency content of the spatial filters: mean") :]
    summary = summary[: summary.index("</table>")]
    assert summary.count("<tr>") == 1 + 3 * 2  # header; Full, Chans, Chans σ=1 x 2 layers
    assert "<tr><td>Full</td><td>blocks.0.0.fn.0</td><td>learned</td><td>2</td>" in summary
    chans = re.search(
        r"<tr><td>Chans</td><td>blocks.1.0.fn.0</td><td>frozen random</td><td>2</td>(.*)</tr>", summary
    )
    numbers = re.findall(r"<td>([^<]*)</td>", chans.group(1))
    assert (
        len(numbers) == 4 and numbers[:2] == numbers[2:]
    )  # frozen filters: their spectrum is the one they started with
    folded = filters[filters.index("<details><summary>Frequency content of the spatial filters (10 rows)") :]
    assert folded.index("<caption>Frequency content of the spatial filters</caption>") < folded.index(
        "</details>"
    )


def test_spectrum_summary_is_the_mean_and_sd_over_the_runs_of_a_setting():
    def analysis(label, group, ratios):
        spectra = [
            LayerSpectrum(f"layer{i}", 4, (3, 3), None, None, None, ratio, 1 / (1 + ratio))
            for i, ratio in enumerate(ratios)
        ]
        return FilterAnalysis(label, f"study|{group}", {}, spectra, [], init_spectra=spectra[:1])

    table = report_filters.spectrum_summary(
        [analysis("Full seed 0", "Full", [1.0, 2.0]), analysis("Full seed 1", "Full", [3.0, 6.0])]
    )
    first, second = table.rows
    assert (first["setting"], first["layer"], first["runs"]) == ("Full", "layer0", 2)
    assert first["ratio"] == pytest.approx((2.0, 2**0.5)) and second["ratio"] == pytest.approx((4.0, 8**0.5))
    assert first["ratio_init"] == pytest.approx((2.0, 2**0.5)) and second["ratio_init"] is None


def _one_epoch_run(study_dir: Path, dest: Path) -> Path:
    config = TrainConfig(
        **{
            **json.loads((study_dir / "classification" / "full-seed0" / runs.CONFIG).read_text())["train"],
            "epochs": 1,
        }
    )
    fit(config, dest, data=random_data())
    return dest


def test_runs_of_a_single_epoch_get_a_line_not_a_curve_of_one_dot(study_dir, tmp_path):
    single = _one_epoch_run(study_dir, tmp_path / "one-epoch")
    curves = section_html(report.write_report([single], tmp_path / "r.html").html.read_text(), "curves")
    assert "<img" not in curves
    assert "classification: 1 run trained a single epoch, so there is no curve to draw" in curves
    # beside runs of two epochs: their curves are drawn, the single-epoch run is counted
    both = report.write_report([single, study_dir / "classification" / "full-seed0"], tmp_path / "r.html")
    curves = section_html(both.html.read_text(), "curves")
    assert curves.count("<img") == 1 and "1 run trained a single epoch" in curves


def test_a_strip_of_panels_is_cut_into_rows_and_a_tall_figure_folds(tmp_path):
    """An older study's figure of 44 square panels in one row was 16,456 pixels wide: its text a few
    pixels tall at page width, and past Chromium's 16,384 pixels not drawn at all."""
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.image import imread, imsave

    strip = np.random.default_rng(0).random((200, 2000, 3))  # ten square panels of 200 pixels
    imsave(tmp_path / "strip.png", strip)
    image = study_files.read_image(tmp_path, tmp_path / "strip.png", "ten runs")
    assert (image.width, image.height) == (800, 600)  # four panels a row, three rows
    wrapped = imread(io.BytesIO(image.png))[..., :3]
    for r in range(3):  # each row is the next 800 pixels of the strip; the end of the last row is blank
        piece = strip[:, 800 * r : 800 * (r + 1)]
        assert np.abs(wrapped[200 * r : 200 * (r + 1), : piece.shape[1]] - piece).max() < 1 / 255
    assert (wrapped[400:, 400:] == 1).all() and "cut into rows of 4 panels" in image.caption

    def png(width, height):
        return page.save_png(MplFigure(figsize=(width / 100, height / 100), dpi=100))

    tall, plain = page.Image(png(600, 1200), "t"), page.Image(png(900, 400), "p")
    assert page.html_item(tall).startswith("<details><summary>Figure (open it): t</summary>")
    assert page.html_item(plain).startswith("<figure><img") and page.png_size(b"not a png") == (0, 0)


def test_many_warnings_fold_behind_their_count():
    one, many = (
        study_files.warning_items("the x study", ["a"]),
        study_files.warning_items("the x study", ["a", "b"]),
    )
    assert one == ["Warning from the x study: a"]
    assert page.html_item(many[0]) == (
        "<details><summary>2 warnings from the x study (open to read them)</summary>\n"
        "<ul><li>a</li><li>b</li></ul>\n</details>"
    )


def test_the_robustness_section_draws_each_modes_interval_over_seeds(study_dir, tmp_path):
    numbers = [
        {"mode": mode, "seed": seed, "robust_acc": {"0": 0.9, "8/255": 0.3 + 0.01 * seed}}
        for mode in ("full", "chans")
        for seed in (0, 1, 2)
    ]
    dest = _results_with(
        with_studies(study_dir, tmp_path / "study", {}),
        "robustness",
        tables=[[{"mode": "Full", "robust 8/255": 0.31}]],
        data={"runs": numbers},
    )
    robustness = section_html(report.write_report([dest], tmp_path / "r.html").html.read_text(), "robustness")
    assert (
        robustness.count("<img") == 1
        and "Robust accuracy against the attack budget. Left: each mode" in robustness
    )
    assert robustness.index("</table>") < robustness.index("<img")  # after the study's tables
    # one seed has no interval: no figure
    one_seed = _results_with(dest, "robustness", data={"runs": [r for r in numbers if r["seed"] == 0]})
    assert "<img" not in section_html(
        report.write_report([one_seed], tmp_path / "r.html").html.read_text(), "robustness"
    )


def _screenshots_script():
    """scripts/report_screenshots.py, loaded as a module (scripts/ is no package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "report_screenshots.py"
    spec = importlib.util.spec_from_file_location("report_screenshots", path)
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def test_the_report_in_a_real_browser_is_never_wider_than_the_window(study_dir, tmp_path):
    """Rendered by headless Chromium at a desktop and a narrow width: no horizontal overflow and no table
    cropped, even with a strip of panels 3,000 pixels wide and the wide verdict table (a block per row at
    800 pixels); the screenshot's right margin is blank."""
    screenshots = _screenshots_script()
    browser = screenshots.find_browser()
    if browser is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium)")
    from matplotlib.figure import Figure as MplFigure
    from PIL import Image as PILImage

    dest = _declared_study(study_dir, tmp_path / "study")
    (dest / "a" / "sigma-robust.png").write_bytes(page.save_png(MplFigure(figsize=(30, 2), dpi=100)))
    html = report.write_report([dest], tmp_path / "report.html").html
    for width in (1400, 800):
        layout = screenshots.measure(browser, html, width, 1000)
        assert layout.fits and layout.scroll_width == layout.inner_width == width, layout
        assert layout.cropped_tables == 0, layout  # none scrolls in its wrapper or reaches past the window
    shot = screenshots.screenshot(browser, html, tmp_path / "shot.png", 800, 1500)
    image = PILImage.open(shot).convert("L")
    assert image.size == (800, 1500)
    margin = image.crop((792, 0, 800, 1500))
    assert margin.getextrema()[0] >= 250  # nothing drawn into the page's right margin
    assert image.crop((0, 0, 792, 1500)).getextrema()[0] < 100  # while the page itself has text


def test_an_attack_result_nested_too_deep_is_one_line_and_the_report_goes_on(study_dir, tmp_path):
    """A robustness.json of 100,000 nested arrays ended the report in a RecursionError."""
    attacked = tmp_path / "attacked"
    shutil.copytree(study_dir / "classification" / "full-seed0", attacked)
    (attacked / "robustness.json").write_text("[" * 100_000 + "]" * 100_000)
    page = report.write_report([attacked], tmp_path / "r.html").html.read_text()
    check_page(page)
    assert "robustness.json" in page and "left out" in page and "nest" in page


def test_a_table_wider_than_the_window_shows_a_block_per_row_with_its_headers(study_dir, tmp_path):
    """Each cell carries its column's header; a window narrower than the table's columns need (words
    whole, estimates and verdicts on one line) shows each row as a block of labelled lines."""
    html = report.write_report([study_dir], tmp_path / "r.html").html.read_text()
    verdicts = html[html.index('<section id="verdicts"') :]
    opening = re.search(r'<table class="stack-below-(\d+)">\n<caption>Verdicts</caption>', verdicts)
    assert opening is not None
    below = int(opening.group(1))
    assert 800 < below < 1400  # a block per row at 800 pixels, the columns side by side at 1400
    style = html[html.index("<style>") : html.index("</style>")]
    media = style[style.index(f"@media (max-width: {below - 1}px)") :]
    assert f"table.stack-below-{below} td::before {{ content: attr(data-label);" in media
    row = verdicts[verdicts.index("<tr", verdicts.index("<tbody>")) :]
    row = row[: row.index("</tr>")]
    labels = re.findall(r'<td[^>]* data-label="([^"]*)"', row)
    thead = verdicts[verdicts.index("<thead>") : verdicts.index("</thead>")]
    assert labels == re.findall(r"<th>([^<]*)</th>", thead) and labels[0] == "claim" and labels[-1] == "note"

"""The HTML report: valid, self-contained, every section with results present, the rest noted absent."""

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from spatialmix.cli.main import main
from spatialmix.data.datasets import ImageData
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.train import fit
from spatialmix.io import runs
from spatialmix.io.study_results import Figure, StudyResult
from spatialmix.report import document as report
from spatialmix.report import sections
from spatialmix.report.tables import classification_table
from spatialmix.studies.context import PRESETS, StudyContext
from spatialmix.studies.reproduce import STUDIES, save_results, study_function
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
    start = page.index(f'<section id="{section_id}"')
    return page[start : page.index("</section>", start)]


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
    row = verdicts[verdicts.index("<td>1a</td>") :]
    row = row[: row.index("</tr>")]
    assert f"<td>{100 * effect:+.2f} pts</td>" in row and "<td>2</td>" in row
    assert (
        "t over 2 seed-paired differences" in row and "<td>32</td>" in row
    )  # test_correct_bits of the 32 test images
    assert any(
        f'<td class="verdict-{word}">{word}</td>' in row
        for word in ("supports", "contradicts", "inconclusive")
    )
    assert verdicts.count('<td class="verdict-not-run">not run</td>') == 5  # 1b (no Space), 2a, 2b, 3a, 3b
    assert f"spatialmix reproduce --out {dest} --studies robustness" in verdicts
    assert "## Verdicts" in (dest / "report.md").read_text().split("## Classification")[0]


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
    assert page.count("<table>") == page.count('<div class="table-wrap"><table>')
    assert ".table-wrap { max-width: 100%; overflow-x: auto;" in page and "overflow-wrap: anywhere" in page
    config = section_html(page, "configuration")
    runs_table = config[config.index("<caption>Runs</caption>") : config.index("</table>")]
    assert runs_table.count("<th>") == 6 and "lr=0.5" in runs_table and "batch_size=7" in runs_table


def test_verdicts_that_cannot_be_computed_leave_the_rest_of_the_report(study_dir, tmp_path):
    dest = with_studies(study_dir, tmp_path / "damaged", {})
    (dest / "unshuffle").mkdir()
    (dest / "unshuffle" / "unshuffle.json").write_text("{oops")
    files = report.write_report([dest], tmp_path / "report.html")
    verdicts = section_html(files.html.read_text(), "verdicts")
    assert "Verdicts of damaged could not be computed" in verdicts and "is corrupt (not JSON)" in verdicts
    assert "verdicts" in files.absent and "classification" in files.present and files.verdicts == []


def test_an_older_results_json_without_sections_still_reports(study_dir, tmp_path):
    """Entries written before studies declared their section go to the section of their study's name, and
    nowhere else: a robustness entry's sigma table and smoothing.png stay in Robustness (nothing is placed
    by what a file or a column is called)."""
    robust_png, smooth_png, recon_png = png_bytes("red"), png_bytes("green"), png_bytes("blue")
    dest = tmp_path / "full-study"
    entries = {
        "robustness": {
            "data": {"warnings": ["Space: accuracy rises with eps"]},
            "files": [str(dest / "robustness" / "robust_acc.png"), "robustness/smoothing.png"],
            "tables": [
                [
                    {"run": "Full", "eps": 0.0, "robust_acc": [0.81, 0.01]},
                    {"run": "Full", "eps": 8 / 255, "robust_acc": [0.12, 0.02]},
                ],
                [
                    {"sigma": 0.0, "clean_acc": 0.7, "robust_acc": 0.2},
                    {"sigma": 1.0, "clean_acc": 0.68, "robust_acc": 0.31},
                ],
            ],
        },
        "unshuffle": {
            "data": {},
            "files": ["unshuffle/reconstructions.png", "unshuffle/table.csv", "gone.png"],
            "tables": [[{"mode": "Chans", "psnr": [31.25, 0.5], "ssim": 0.9712}]],
            # titles and column formats, where results.json keeps them
            "table_titles": ["Pixel un-shuffling (tiny)"],
            "table_columns": [[["mode", "mode", ""], ["psnr", "PSNR (dB)", ".2f"], ["ssim", "SSIM", ".3f"]]],
        },
        "sweep": {"data": {}, "files": [], "tables": [[{"job": 1, "state": "done"}]]},
        "verdicts": {
            "data": {"verdicts": []},
            "files": [],
            "tables": [[{"claim": "1a", "verdict": "saved"}]],
        },
    }
    with_studies(study_dir, dest, entries)
    (dest / "robustness" / "robust_acc.png").write_bytes(robust_png)
    (dest / "robustness" / "smoothing.png").write_bytes(smooth_png)
    (dest / "unshuffle").mkdir()
    (dest / "unshuffle" / "reconstructions.png").write_bytes(recon_png)
    (dest / "unshuffle" / "table.csv").write_text("mode,psnr\n")
    files = report.write_report([dest], tmp_path / "report.html")
    page = files.html.read_text()
    check_page(page)
    assert files.absent == ["smoothing"]
    assert files.present == [
        "verdicts",
        "classification",
        "curves",
        "robustness",
        "unshuffle",
        "filters",
        "other",
        "configuration",
    ]
    b64 = lambda data: base64.b64encode(data).decode()
    robustness, unshuffle = section_html(page, "robustness"), section_html(page, "unshuffle")
    assert b64(robust_png) in robustness and b64(smooth_png) in robustness
    assert (
        "<td>0.81 ± 0.01</td>" in robustness
        and "<td>0.03137</td>" in robustness
        and "<td>0.31</td>" in robustness
    )
    assert "accuracy rises with eps" in robustness
    assert "<img" not in section_html(page, "smoothing")
    assert b64(recon_png) in unshuffle and "table.csv" in unshuffle
    assert "<caption>Pixel un-shuffling (tiny) (full-study)</caption>" in unshuffle
    assert (
        "<th>PSNR (dB)</th>" in unshuffle
        and "<td>31.25 ± 0.50</td>" in unshuffle
        and "<td>0.971</td>" in unshuffle
    )
    assert "Listed in results.json but not found: gone.png" in unshuffle
    assert (
        "<td>done</td>" in section_html(page, "other") and "saved" not in page
    )  # verdicts: recomputed, first
    assert "| Chans | 31.25 ± 0.50 | 0.971 |" in files.markdown.read_text()


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
    assert "Warnings from the one study: check X" in robustness
    assert (
        b64(two) in smoothing
        and b64(one) not in smoothing
        and "<figcaption>Caption of figure two" in smoothing
    )
    assert f"Other files of this study: {moved / 'b' / 'numbers.csv'}" in smoothing
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
        (
            {"figures": [{"file": "link.png", "caption": "c"}]},
            "studies.robustness.figures[0].file",
            "'link.png'",
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
    (tmp_path / "outside.png").write_bytes(png_bytes("red"))
    (dest / "link.png").symlink_to(tmp_path / "outside.png")  # inside by name, outside once followed
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
    assert "Classification, runs given" in page and "<td>Full</td>" in page and "<td>Chans</td>" in page
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

"""One page for every result: ``spatialmix report RUN_DIR_OR_STUDY_DIR ... -o report.html``.

The page leads with the answer: the verdict of every claim of the paper
(`spatialmix.analysis.decision`), then each claim's tables and figures, the filter analysis, and the
configuration last. It is a single HTML file that needs nothing else to be read; its tables are
also written as Markdown next to it (``report.md``) for a README or a paper draft.

The report is made in three steps, each in its own module:

* `spatialmix.report.inputs` reads and checks the inputs: run directories (``spatialmix
  train``) and study folders (``spatialmix reproduce``: ``results.json`` plus the runs below it);
* `spatialmix.report.sections` fills each section from whatever results exist (with
  `verdicts`, `curves`,
  `robustness`, `filters` and the study files of
  `study_files`): a study's results go to the section it declared in
  ``results.json``; a section with nothing to show keeps its heading and says so, so a report of
  a single run or of an interrupted study is still a report;
* `spatialmix.report.page` writes the sections out as HTML and Markdown.

The page names each input as given when that is a relative path, else by its folder's name, also
in the messages and commands it quotes: a report is shared, the folders of its machine are not.

This module holds the entry points and keeps the names of those modules that callers use.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from spatialmix.analysis.filters import FFT_SIZE
from spatialmix.engine.user_model import check_rebuildable, user_code
from spatialmix.errors import SpatialmixError
from spatialmix.io import storage
from spatialmix.io.paths import check_writable
from spatialmix.report.curves import curves_section
from spatialmix.report.filters import filters_section
from spatialmix.report.inputs import Inputs, path_names, read_inputs, shown_path, skipped_links
from spatialmix.report.page import Section, hide_paths, render_html, render_markdown
from spatialmix.report.sections import classification_section, configuration_section, study_section
from spatialmix.report.verdicts import verdicts_section
from spatialmix.ui.display import ResultTable


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    present: list[str]  # ids of the sections with results
    absent: list[str]  # ids of the sections left out with a note
    verdicts: list[ResultTable] = field(default_factory=list)  # the verdict tables, for the terminal
    # one line per study folder whose links that lead out of it were skipped ("STUDY: skipped up, ...")
    skipped: list[str] = field(default_factory=list)


def build_sections(inputs: Inputs, paths: list[str | Path], fft_size: int = FFT_SIZE) -> list[Section]:
    """Every section of the report of ``inputs``, read from ``paths`` (run directories and study folders),
    in page order; the inputs named as `spatialmix.report.inputs.shown_path` names them."""
    for run in inputs.runs:  # a run of a model of its own is refused unless its code is given or trusted
        check_rebuildable(run.path)
    sections = [
        verdicts_section(inputs),
        classification_section(inputs),
        curves_section(inputs),
        study_section(inputs, "robustness"),
        study_section(inputs, "smoothing"),
        study_section(inputs, "init"),
        study_section(inputs, "unshuffle"),
        filters_section(inputs, fft_size),
        study_section(inputs, "other"),
        configuration_section(inputs),
    ]
    sections = [s for s in sections if s is not None]  # init and other appear only with results
    hide_paths(sections, path_names(paths))
    return sections


def write_report(
    paths: list[str | Path],
    out_html: str | Path,
    fft_size: int = FFT_SIZE,
    *,
    model=None,
    trust_code: bool = False,
) -> ReportFiles:
    """Write the HTML report of ``paths`` to ``out_html`` and its tables to the ``.md`` file beside it.

    Everything is computed before anything is written, and both files are written atomically,
    so a failed report leaves the previous one intact. ``model`` / ``trust_code``: what rebuilds the
    runs trained with a model of their own (see `load_trained_model`).
    """
    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise SpatialmixError(
            f"the report file must end in .html, got {out_html}; the Markdown tables are "
            f"written beside it as .md"
        )
    if out_html.is_dir():
        raise SpatialmixError(
            f"{out_html} is a directory; pass a file name such as {out_html / 'report.html'}"
        )
    if not out_html.parent.is_dir():  # made only when the user names it: a typo must not make folders
        raise SpatialmixError(
            f"the folder {out_html.parent} of the report file does not exist; create it first or "
            f"choose another -o"
        )
    if not isinstance(fft_size, int) or fft_size <= 0:
        raise SpatialmixError(f"FFT size must be a positive integer, got {fft_size}")
    check_writable(out_html.parent)  # before the work, not after it
    paths = [str(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    inputs = read_inputs(paths)
    with user_code(model, trust_code):
        sections = build_sections(inputs, paths, fft_size)
    created = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    markdown = out_html.with_suffix(".md")
    sources = [shown_path(p) for p in paths]
    page = render_html(sections, sources, created)
    storage.atomic_write_bytes(markdown, render_markdown(sections, sources, created).encode())
    storage.atomic_write_bytes(out_html, page.encode())
    verdicts = [i for s in sections if s.id == "verdicts" for i in s.items if isinstance(i, ResultTable)]
    return ReportFiles(
        out_html,
        markdown,
        [s.id for s in sections if s.present],
        [s.id for s in sections if not s.present],
        verdicts,
        [
            f"{study.path}: {skipped_links(study.path, study.outside)}"
            for study in inputs.studies
            if study.outside
        ],
    )

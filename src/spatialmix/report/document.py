"""One page for every result: ``spatialmix report RUN_DIR_OR_STUDY_DIR ... -o report.html``.

The page leads with the answer: the verdict of every claim of the paper (:mod:`spatialmix.analysis.verdicts`),
then each claim's tables and figures, the filter analysis, and the configuration last. It is a
single HTML file that needs nothing else to be read; its tables are also written as Markdown
next to it (``report.md``) for a README or a paper draft.

The report is made in three steps, each in its own module:

* :mod:`spatialmix.report.inputs` reads and checks the inputs: run directories (``spatialmix
  train``) and study folders (``spatialmix reproduce``: ``results.json`` plus the runs below it);
* :mod:`spatialmix.report.sections` (and :mod:`spatialmix.report.filters`) fill each section
  from whatever results exist: a study's results go to the section it declared in
  ``results.json``; a section with nothing to show keeps its heading and says so, so a report of
  a single run or of an interrupted study is still a report;
* :mod:`spatialmix.report.page` writes the sections out as HTML and Markdown.

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
from spatialmix.report.filters import filters_section
from spatialmix.report.inputs import read_inputs
from spatialmix.report.page import Section, render_html, render_markdown
from spatialmix.report.sections import (
    classification_section,
    configuration_section,
    curves_section,
    study_section,
    verdicts_section,
)
from spatialmix.ui.display import ResultTable


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    present: list[str]  # ids of the sections with results
    absent: list[str]  # ids of the sections left out with a note
    verdicts: list[ResultTable] = field(default_factory=list)  # the verdict tables, for the terminal


def build_sections(paths: list[str | Path], fft_size: int = FFT_SIZE) -> list[Section]:
    """Every section of the report of ``paths`` (run directories and study folders), in page order."""
    if not isinstance(fft_size, int) or fft_size <= 0:
        raise SpatialmixError(f"FFT size must be a positive integer, got {fft_size}")
    inputs = read_inputs(paths)
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
    return [s for s in sections if s is not None]  # init and other appear only with results


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
    runs trained with a model of their own (see :func:`~spatialmix.engine.train.load_trained_model`).
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
    check_writable(out_html.parent)  # before the work, not after it
    paths = [str(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    with user_code(model, trust_code):
        sections = build_sections(paths, fft_size)
    created = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    markdown = out_html.with_suffix(".md")
    page = render_html(sections, paths, created)
    storage.atomic_write_bytes(markdown, render_markdown(sections, paths, created).encode())
    storage.atomic_write_bytes(out_html, page.encode())
    verdicts = [i for s in sections if s.id == "verdicts" for i in s.items if isinstance(i, ResultTable)]
    return ReportFiles(
        out_html,
        markdown,
        [s.id for s in sections if s.present],
        [s.id for s in sections if not s.present],
        verdicts,
    )

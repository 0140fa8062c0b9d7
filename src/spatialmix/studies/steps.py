"""The closing steps of ``spatialmix reproduce``: one verdict per claim, then the report."""

from __future__ import annotations

from spatialmix.analysis.verdict_text import verdict_table
from spatialmix.analysis.verdicts_from_folders import verdict_record, verdicts_for_study
from spatialmix.io.study_results import StudyResult
from spatialmix.report.document import write_report
from spatialmix.studies.context import StudyContext
from spatialmix.ui.display import say


def report_study(ctx: StudyContext) -> StudyResult:
    """The last step of ``spatialmix reproduce``: the report of the study folder (nothing for the report
    itself to show: ``section=None``)."""
    files = write_report([ctx.out_dir], ctx.out_dir / "report.html")
    say(f"[bold]report[/]: {files.html} (tables: {files.markdown})")
    return StudyResult(
        "report",
        [],
        {
            "html": str(files.html),
            "markdown": str(files.markdown),
            "present": files.present,
            "absent": files.absent,
        },
        section=None,
        files=[str(files.html), str(files.markdown)],
    )


def verdicts_study(ctx) -> StudyResult:
    """The step of ``spatialmix reproduce`` after the studies: every claim's verdict from the study folder
    (the studies' results as saved so far, so claims whose study did not run say "not run")."""

    verdicts = verdicts_for_study(ctx.out_dir)
    # section=None: the report recomputes the verdicts from the folder rather than showing this saved table
    return StudyResult(
        "verdicts",
        [verdict_table(verdicts)],
        {"verdicts": [verdict_record(v) for v in verdicts]},
        section=None,
    )

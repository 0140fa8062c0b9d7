"""The report's first section: one headline per claim of the paper, then the verdict table behind them.

The verdicts are computed afresh from the inputs (`spatialmix.analysis.verdicts_from_folders`), never
read from a saved table. Each claim gets one sentence that answers it ("Claim 1a — Chans reaches nearly
Full's accuracy: supports, -0.81 [-0.91, -0.71] pts, 20 seeds."), a claim judged at several budgets
one clause per budget; the table below holds every number, and how each interval was made is a
note of its line (`spatialmix.report.html_tables.NOTE_COLUMNS`).
"""

from __future__ import annotations

from spatialmix.analysis.claims import NOT_RUN
from spatialmix.analysis.verdict_text import verdict_table
from spatialmix.analysis.verdicts_from_folders import verdicts_for_runs, verdicts_for_study
from spatialmix.errors import SpatialmixError
from spatialmix.report.inputs import Inputs
from spatialmix.report.page import Bullets, Section
from spatialmix.report.sections import ABSENT, SECTIONS
from spatialmix.ui.display import ResultTable

VERDICTS_INTRO = (
    "Each claim of the paper against the data: the effect, its interval, and the seeds and examples "
    "behind it. supports: the whole interval lies on the paper's side of the threshold in "
    "'supports if interval'; contradicts: the whole interval lies on the other side; inconclusive: "
    "the interval covers the threshold, or cannot be computed (one seed); not run: no data for this "
    "claim yet (the line names the command that tests it). Every interval rests on one effect per "
    "seed (two models of a seed compared on the same examples, McNemar's exact test per seed "
    "beside it) and a t-interval over the seeds, df = seeds - 1; '80% power' says what an "
    "inconclusive line's seeds could decide and how many seeds its spread needs."
)


def verdicts_section(inputs: Inputs) -> Section:
    """The answer first: per study folder (and for the runs given directly) a headline per claim and the
    verdict table."""
    section = Section("verdicts", SECTIONS["verdicts"])
    sources = [
        (study.path.name, lambda study=study: verdicts_for_study(study.path)) for study in inputs.studies
    ]
    if inputs.loose_runs:
        sources.append(("runs given", lambda: verdicts_for_runs([r.path for r in inputs.loose_runs])))
    for name, compute in sources:
        try:
            verdicts = compute()
        except SpatialmixError as err:  # a damaged result file: the rest of the report still stands
            section.items.append(f"Verdicts of {name} could not be computed: {err}")
            continue
        if verdicts:
            table = verdict_table(verdicts, title="Verdicts" + (f": {name}" if len(sources) > 1 else ""))
            section.items += [Bullets(headlines(table)), table]
    if any(isinstance(i, ResultTable) for i in section.items):
        section.items.insert(0, VERDICTS_INTRO)
    else:
        section.absent = ABSENT["verdicts"]
    return section


def headlines(table: ResultTable) -> list[str]:
    """One sentence per claim (and setting) of a verdict table, its lines in the order of the table."""
    claims: dict[tuple[str, str], list[dict]] = {}
    for row in table.rows:
        claims.setdefault((str(row["claim"]), str(row.get("scope") or "-")), []).append(row)
    sentences = []
    for (claim, scope), rows in claims.items():
        name = f"Claim {claim}" + (f" ({scope})" if scope != "-" else "")
        seeds = {str(r["seeds"]) for r in rows}
        common = seeds.pop() if len(seeds) == 1 else None
        if len(rows) == 1:
            answer = _answer(rows[0], with_seeds=True)
        else:
            answer = "; ".join(
                f"{_where(r['effect'])}: {_answer(r, with_seeds=common is None)}" for r in rows
            )
            if common is not None and common != "-":
                answer += f"; {_seeds(common)}"
        sentences.append(f"{name} — {rows[0]['paper']}: {answer}.")
    return sentences


def _answer(row: dict, with_seeds: bool) -> str:
    """ "supports, -0.81 [-0.91, -0.71] pts, 20 seeds"; a line not run names what runs it."""
    if row["verdict"] == NOT_RUN:
        return NOT_RUN + (f" ({row['how']})" if row.get("how") else "")
    estimate, interval = str(row["estimate"]), str(row["interval"])
    if interval.startswith("["):  # the interval carries the unit: the estimate's number suffices
        text = f"{row['verdict']}, {estimate.partition(' ')[0]} {interval}"
    else:
        text = f"{row['verdict']}, {estimate}, no interval"
    return text + (f", {_seeds(row['seeds'])}" if with_seeds and str(row["seeds"]) != "-" else "")


def _seeds(count) -> str:
    return f"{count} seed" + ("" if str(count) == "1" else "s")


def _where(effect: str) -> str:
    """Which of a claim's lines this is: the budget of "... robust accuracy at eps 2/255"."""
    before, at, where = str(effect).rpartition(" at ")
    return where if at else str(effect)

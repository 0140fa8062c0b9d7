"""``spatialmix reproduce --until-decided``: add seeds in rounds until every claim is decided.

A round trains (or reuses) ``step`` more seeds for each study whose claims are still open, then
looks at the verdicts again. Looking after every round and stopping when an interval clears its
threshold would inflate the error rate if every look used a 95% interval; instead the number of
looks is fixed by ``max_seeds`` before the first one, and look ``j`` uses the level
:func:`spatialmix.analysis.statistics.spending_levels` gives it (alpha spending, Kim & DeMets's
power family with rho = 2, made valid for any stopping rule by the union bound): the intervals
of all looks hold together with 95% probability, so the one a study stops at does too.

Each study stops for one reason: ``decided`` (every line of its claims supports or contradicts),
``max seeds`` (the last look was taken), or ``budget`` (the next round would not finish within
``budget``, estimated from the slowest round so far). Results.json keeps each study's look, seeds,
level and reason (``sequential``), and the verdicts and the report use those levels. Started again,
the finished runs of every round are reused.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from spatialmix.analysis.claims import CLAIMS, CONTRADICTS, SUPPORTS
from spatialmix.analysis.statistics import LEVEL, SPENDING_RHO, spending_levels
from spatialmix.analysis.verdicts import verdicts_for_study
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.options import parse_duration
from spatialmix.studies.context import PRESETS
from spatialmix.studies.reproduce import ON_REQUEST, STUDIES, check_count, check_seeds, reproduce
from spatialmix.ui.display import ResultTable, say

CLAIM_STUDIES = tuple(dict.fromkeys(c.studies for c in CLAIMS.values()))  # in the order of the claims
CLOSING_STEPS = ("verdicts", "report")
DECIDED, MAX_SEEDS, BUDGET = "decided", "max seeds", "budget"
METHOD = (
    "alpha spending over a fixed number of looks (Kim & DeMets 1987 power family, rho = 2), "
    "Bonferroni across looks: valid under optional stopping"
)


@dataclass(frozen=True)
class SeedRounds:
    """The fixed schedule of looks: ``start`` seeds, then ``step`` more per round, up to ``max_seeds``."""

    start: int
    step: int
    max_seeds: int

    def __post_init__(self):
        for name in ("start", "step", "max_seeds"):
            check_count(name, getattr(self, name))
        if self.max_seeds < self.start:
            raise SpatialmixError(
                f"--max-seeds {self.max_seeds} is below the {self.start} seeds of the first round; "
                f"give --max-seeds {self.start} or more"
            )

    @property
    def looks(self) -> int:
        return 1 + math.ceil((self.max_seeds - self.start) / self.step)

    def seeds_at(self, look: int) -> int:
        """How many seeds look ``look`` (1, 2, ...) sees."""
        return min(self.start + (look - 1) * self.step, self.max_seeds)


def more_seeds(seeds: tuple[int, ...], count: int) -> tuple[int, ...]:
    """``seeds`` extended with the next unused whole numbers up to ``count`` seeds."""
    out, candidate = list(seeds[:count]), 0
    while len(out) < count:
        if candidate not in out:
            out.append(candidate)
        candidate += 1
    return tuple(out)


def _decided(verdicts, study: str) -> bool:
    lines = [v for v in verdicts if CLAIMS[v.claim].studies == study]
    return bool(lines) and all(v.verdict in (SUPPORTS, CONTRADICTS) for v in lines)


def reproduce_until_decided(
    preset: str = "quick",
    out_dir: str | Path = "runs/reproduce",
    seeds: tuple[int, ...] | None = None,
    studies: list[str] | None = None,
    budget: float | str | None = None,
    max_seeds: int | None = None,
    seed_step: int = 2,
    processes: int | None = None,
    threads: int | None = None,
    **overrides,
) -> dict:
    """Run the studies of ``preset`` like :func:`spatialmix.studies.reproduce.reproduce`, then add
    ``seed_step`` seeds per round to the studies whose claims are still open, until each is decided, the
    ``max_seeds`` look was taken (default: 4 x the first round's seeds) or the next round would end
    after ``budget`` (seconds, or "30m", "1h30m"; default: no limit). Returns results.json's
    ``sequential`` record: per study its look, seeds, level and why it stopped.
    """
    if preset not in PRESETS:
        raise unknown_name("preset", preset, PRESETS)
    check_seeds(seeds)
    first = tuple(seeds or PRESETS[preset].seeds)
    budget_s = None if budget is None else parse_duration(budget)
    chosen = [s for s in STUDIES if s not in ON_REQUEST] if studies is None else list(studies)
    claim_studies = [s for s in CLAIM_STUDIES if s in chosen]
    if not claim_studies:
        raise SpatialmixError(
            f"--until-decided adds seeds to the studies of the claims ({', '.join(CLAIM_STUDIES)}); "
            f"--studies {','.join(chosen)} names none of them"
        )
    # Each study starts from the seeds it uses in the first round (a preset may give a study fewer)
    # and has its own fixed schedule of looks.
    counts = {} if seeds else PRESETS[preset].seed_counts
    limit = 4 * len(first) if max_seeds is None else max_seeds
    schedule = {s: SeedRounds(counts.get(s, len(first)), seed_step, limit) for s in claim_studies}
    levels = {s: spending_levels(rounds.looks) for s, rounds in schedule.items()}
    record = {
        "method": METHOD,
        "alpha": round(1 - LEVEL, 10),
        "rho": SPENDING_RHO,
        "step": seed_step,
        "max_seeds": limit,
        "budget_s": budget_s,
        "studies": {
            s: {"look": 1, "looks": r.looks, "seeds": r.start, "level": levels[s][0], "stopped": None}
            for s, r in schedule.items()
        },
    }
    common = dict(processes=processes, threads=threads, **overrides)
    start = time.perf_counter()
    results = reproduce(
        preset, out_dir, seeds, [s for s in chosen if s not in CLOSING_STEPS], sequential=record, **common
    )
    per_seed = {s: results[s].data["time_s"] / schedule[s].start for s in claim_studies}
    while True:
        verdicts = verdicts_for_study(out_dir)
        open_studies = []
        for s in claim_studies:
            entry = record["studies"][s]
            if entry["stopped"] is None and _decided(verdicts, s):
                entry["stopped"] = DECIDED
            elif entry["stopped"] is None and entry["look"] == entry["looks"]:
                entry["stopped"] = MAX_SEEDS
            if entry["stopped"] is None:
                open_studies.append(s)
        if not open_studies:
            break
        added = {
            s: schedule[s].seeds_at(record["studies"][s]["look"] + 1) - record["studies"][s]["seeds"]
            for s in open_studies
        }
        next_round = sum(per_seed[s] * added[s] for s in open_studies)
        elapsed = time.perf_counter() - start
        if budget_s is not None and elapsed + next_round > budget_s:
            for s in open_studies:
                record["studies"][s]["stopped"] = BUDGET
            record["budget_note"] = (
                f"the next round (more seeds of {', '.join(open_studies)}) needs about "
                f"{next_round / 60:.1f} min; {max(0.0, budget_s - elapsed) / 60:.1f} min were left"
            )
            break
        for s in open_studies:
            entry = record["studies"][s]
            entry["look"] += 1
            entry.update(seeds=schedule[s].seeds_at(entry["look"]), level=levels[s][entry["look"] - 1])
        by_count: dict[int, list[str]] = {}
        for s in open_studies:
            by_count.setdefault(record["studies"][s]["seeds"], []).append(s)
        for count, group in by_count.items():
            say(
                f"[bold]until decided[/]: {count} seeds for {', '.join(group)} (look "
                + ", ".join(f"{record['studies'][s]['look']} of {schedule[s].looks}" for s in group)
                + ")"
            )
            results = reproduce(preset, out_dir, more_seeds(first, count), group, sequential=record, **common)
            for s in group:  # the slowest round so far prices the next one
                per_seed[s] = max(per_seed[s], results[s].data["time_s"] / max(1, added[s]))
    record["time_s"] = time.perf_counter() - start
    closing = [s for s in chosen if s in CLOSING_STEPS]
    most = more_seeds(first, max(entry["seeds"] for entry in record["studies"].values()))
    reproduce(preset, out_dir, most, closing or ["verdicts"], sequential=record, **common)
    sequential_table(record).print()
    return record


def sequential_table(record: dict) -> ResultTable:
    """Per study: the claims it answers, its seeds and looks, the level of its intervals, why it stopped."""
    table = ResultTable(
        f"Seeds on demand: {record['method']}",
        [
            ("study", "study", ""),
            ("claims", "claims", ""),
            ("seeds", "seeds", ""),
            ("look", "look", ""),
            ("level", "interval level", ""),
            ("stopped", "stopped", ""),
        ],
    )
    for study, entry in record["studies"].items():
        why = entry["stopped"]
        if why == BUDGET and "budget_note" in record:
            why += f" ({record['budget_note']})"
        table.add(
            study=study,
            claims=", ".join(c.id for c in CLAIMS.values() if c.studies == study),
            seeds=entry["seeds"],
            look=f"{entry['look']} of {entry['looks']}",
            level=f"{100 * entry['level']:.2f}%",
            stopped=why,
        )
    return table

"""``spatialmix reproduce --until-decided``: add seeds in rounds until every claim is decided.

A round trains (or reuses) ``step`` more seeds for each study whose claims are still open, then
looks at the verdicts again. Looking after every round and stopping when an interval clears its
threshold would inflate the error rate if every look used a 95% interval; instead the number of
looks is fixed by ``max_seeds`` before the first one, and look ``j`` uses the level
`spatialmix.analysis.statistics.spending_levels` gives it (alpha spending, Kim & DeMets's
power family with rho = 2, made valid for any stopping rule by the union bound): the intervals
of all looks hold together with 95% probability, so the one a study stops at does too.

Each study stops for one reason: ``decided`` (every line of its claims supports or contradicts),
``max seeds`` (the last look was taken), or ``budget`` (the next round would not finish within
``budget``, estimated from the slowest round so far). Results.json keeps each study's look, seeds,
level, the error rate its looks have spent and why it stopped (``sequential``), and the verdicts
and the report use those levels.

Started again on the same folder, a study **continues its spending**: the looks it took keep their
levels, it resumes at its last look (the finished runs of every round are reused), and what is
left of the error rate is spread over the looks still to come, up to the new ``max_seeds``
(`spatialmix.analysis.statistics.continued_levels`). A study whose last look spent the whole
error rate gets no more seeds, whatever ``max_seeds`` says: more looks at the same seeds would
spend it a second time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from spatialmix.analysis.claims import CLAIMS, CONTRADICTS, SUPPORTS
from spatialmix.analysis.decision import finite_number
from spatialmix.analysis.statistics import LEVEL, SPENDING_RHO, continued_levels, spending_levels
from spatialmix.analysis.verdicts_from_folders import verdicts_for_study
from spatialmix.errors import SpatialmixError, unknown_name
from spatialmix.io.untrusted import read_json
from spatialmix.options import parse_duration
from spatialmix.studies.context import PRESETS
from spatialmix.studies.reproduce import check_count, check_seeds, default_studies, reproduce
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
    """The fixed schedule of looks: look ``first_look`` at ``start`` seeds, then ``step`` more per
    round, up to ``max_seeds`` (``first_look`` > 1: a schedule continued from an earlier run)."""

    start: int
    step: int
    max_seeds: int
    first_look: int = 1

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
        return self.first_look + math.ceil((self.max_seeds - self.start) / self.step)

    def seeds_at(self, look: int) -> int:
        """How many seeds look ``look`` (``first_look``, ...) sees."""
        return min(self.start + (look - self.first_look) * self.step, self.max_seeds)


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


@dataclass(frozen=True)
class LookPlan:
    """One study's looks in this run: its schedule, the level of each look from ``look`` on, and the
    error rate spent up to and including look ``look``, the first this run takes."""

    rounds: SeedRounds
    levels: dict[int, float]
    look: int
    spent: float

    def entry(self) -> dict:
        """The study's entry of results.json's ``sequential`` record at its first look."""
        return {
            "look": self.look,
            "looks": self.rounds.looks,
            "seeds": self.rounds.seeds_at(self.look),
            "level": self.levels[self.look],
            "spent": self.spent,
            "max_seeds": self.rounds.max_seeds,
            "stopped": None,
        }


def plan_looks(start: int, step: int, max_seeds: int | None, earlier: dict | None = None) -> LookPlan:
    """A fresh schedule from ``start`` seeds up to ``max_seeds`` (default 4 x ``start``), or, given
    the ``earlier`` entry of a study's record, the same spending continued: its last look keeps its
    level and the error rate it left is spread over the looks up to ``max_seeds`` (default: the
    earlier run's). A study that spent all of it gets no further look."""
    if earlier is None:
        rounds = SeedRounds(start, step, 4 * start if max_seeds is None else max_seeds)
        levels = dict(enumerate(spending_levels(rounds.looks), start=1))
        return LookPlan(rounds, levels, 1, round(1 - levels[1], 12))
    look, seeds, spent = earlier["look"], earlier["seeds"], earlier["spent"]
    limit = max(seeds, earlier["max_seeds"] if max_seeds is None else max_seeds)
    if spent >= (1 - LEVEL) - 1e-9:
        limit = seeds  # nothing left to spend: no look beyond the last one
    rounds = SeedRounds(seeds, step, limit, first_look=look)
    after = continued_levels(rounds.looks, look, spent)
    levels = {look: earlier["level"], **dict(enumerate(after, start=look + 1))}
    return LookPlan(rounds, levels, look, spent)


def earlier_record(out_dir: Path, preset: str) -> dict[str, dict]:
    """Each study's entry of the ``sequential`` record an earlier ``--until-decided`` run of ``preset``
    left in ``out_dir``'s results.json, checked field by field ({} when there is none)."""
    path = out_dir / "results.json"
    if not path.is_file():
        return {}
    results = read_json(path, "study results")
    record = results.get("sequential") if isinstance(results, dict) else None
    if record is None or results.get("preset") != preset:
        return {}
    studies = record.get("studies") if isinstance(record, dict) else None
    if not isinstance(studies, dict):
        raise SpatialmixError(f"{path}: field sequential.studies must be an object of studies")
    return {name: _checked(studies[name], record, path, name) for name in CLAIM_STUDIES if name in studies}


def _checked(entry, record: dict, path: Path, name: str) -> dict:
    """A study's entry of an earlier record with every field the continuation needs (untrusted);
    ``spent`` and ``max_seeds``, absent from records written before they were kept, are rebuilt."""
    entry = entry if isinstance(entry, dict) else {}
    alpha, rho = 1 - LEVEL, finite_number(record.get("rho")) or SPENDING_RHO
    step = record.get("step") if _whole(record.get("step")) else 2
    look = _field(entry, "look", _whole, "a whole number of at least 1", path, name)
    looks = _field(
        entry, "looks", lambda v: _whole(v) and v >= look, f"a whole number of at least {look}", path, name
    )
    seeds = _field(entry, "seeds", _whole, "a whole number of at least 1", path, name)
    level = _field(entry, "level", lambda v: _number(v) and 0 < v < 1, "a number between 0 and 1", path, name)
    rebuilt = {"spent": alpha * (look / looks) ** rho, "max_seeds": seeds + (looks - look) * step}
    entry = {**rebuilt, **entry}
    spent = _field(
        entry, "spent", lambda v: _number(v) and 0 <= v <= alpha + 1e-9, f"from 0 to {alpha:g}", path, name
    )
    limit = _field(entry, "max_seeds", lambda v: _whole(v) and v >= seeds, f"at least {seeds}", path, name)
    return {
        "look": look,
        "looks": looks,
        "seeds": seeds,
        "level": level,
        "spent": float(spent),
        "max_seeds": limit,
    }


def _field(entry: dict, key: str, ok, what: str, path: Path, name: str):
    value = entry.get(key)
    if not ok(value):
        raise SpatialmixError(
            f"{path}: field sequential.studies.{name}.{key} must be {what}, got {str(value)[:40]}; "
            "restore the file or start in a new --out folder"
        )
    return value


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value) -> bool:
    return finite_number(value) is not None


def _by_count(record: dict, studies: list[str]) -> dict[int, list[str]]:
    """The ``studies`` grouped by the seeds their current look sees."""
    groups: dict[int, list[str]] = {}
    for s in studies:
        groups.setdefault(record["studies"][s]["seeds"], []).append(s)
    return groups


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
    """Run the studies of ``preset`` like `spatialmix.studies.reproduce.reproduce`, then add
    ``seed_step`` seeds per round to the studies whose claims are still open, until each is decided, its
    ``max_seeds`` look was taken (default: 4 x the seeds of that study's first round, e.g. 24 for the
    quick preset's classification study and 12 for its robustness study) or the next round would end
    after ``budget`` (seconds, or "30m", "1h30m"; default: no limit). A folder that holds an earlier
    run's record continues its spending (see the module's docstring). Returns results.json's
    ``sequential`` record: per study its look, seeds, level, spent error rate and why it stopped.
    """
    if preset not in PRESETS:
        raise unknown_name("preset", preset, PRESETS)
    check_seeds(seeds)
    first = tuple(seeds or PRESETS[preset].seeds)
    budget_s = None if budget is None else parse_duration(budget)
    chosen = default_studies(preset) if studies is None else list(studies)
    claim_studies = [s for s in CLAIM_STUDIES if s in chosen]
    if not claim_studies:
        raise SpatialmixError(
            f"--until-decided adds seeds to the studies of the claims ({', '.join(CLAIM_STUDIES)}); "
            f"--studies {','.join(chosen)} names none of them"
        )
    if max_seeds is not None:
        check_count("max_seeds", max_seeds)
    # Each study starts from the seeds it uses in the first round (a preset may give a study fewer)
    # and has its own fixed schedule of looks, or goes on with the one an earlier run left.
    counts = {} if seeds else PRESETS[preset].seed_counts
    earlier = earlier_record(Path(out_dir), preset)
    plans = {
        s: plan_looks(counts.get(s, len(first)), seed_step, max_seeds, earlier.get(s)) for s in claim_studies
    }
    schedule = {s: plan.rounds for s, plan in plans.items()}
    levels = {s: plan.levels for s, plan in plans.items()}
    record = {
        "method": METHOD,
        "alpha": round(1 - LEVEL, 10),
        "rho": SPENDING_RHO,
        "step": seed_step,
        "max_seeds": max_seeds,
        "budget_s": budget_s,
        "studies": {s: plan.entry() for s, plan in plans.items()},
    }
    common = dict(processes=processes, threads=threads, **overrides)
    start = time.perf_counter()
    results = reproduce(
        preset, out_dir, seeds, [s for s in chosen if s not in CLOSING_STEPS], sequential=record, **common
    )
    # a continued study looks first at the seeds its earlier run ended with (their runs are reused)
    continued = [s for s in claim_studies if schedule[s].start > counts.get(s, len(first))]
    for count, group in _by_count(record, continued).items():
        more = reproduce(preset, out_dir, more_seeds(first, count), group, sequential=record, **common)
        results.update(more)
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
            level = levels[s][entry["look"]]
            entry.update(seeds=schedule[s].seeds_at(entry["look"]), level=level)
            entry["spent"] = round(entry["spent"] + (1 - level), 12)
        for count, group in _by_count(record, open_studies).items():
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
        elif why == MAX_SEEDS and entry.get("spent", 0.0) >= record["alpha"] - 1e-9:
            why += " (its whole error rate is spent: a larger --max-seeds adds no look at these seeds)"
        table.add(
            study=study,
            claims=", ".join(c.id for c in CLAIMS.values() if c.studies == study),
            seeds=entry["seeds"],
            look=f"{entry['look']} of {entry['looks']}",
            level=f"{100 * entry['level']:.2f}%",
            stopped=why,
        )
    return table

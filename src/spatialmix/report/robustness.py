"""The report's robustness figures and the results ``spatialmix attack`` left in a run directory.

`interval_figure` draws, from the per-run numbers a robustness study keeps in ``results.json``
(mode, seed and robust accuracy per budget), each mode's mean robust accuracy over seeds with its
95% t-interval against the budget, and beside it each mode minus Full paired by seed: what claim 2a
asks, where the modes' own intervals overlap because seeds differ more than modes do.
"""

from __future__ import annotations

import json
import math

from spatialmix.analysis.statistics import LEVEL, Estimate, mean_interval, paired_t_interval
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.io.study_results import SavedStudy, json_rows
from spatialmix.io.untrusted import parse_json
from spatialmix.names import MODES
from spatialmix.report.inputs import RunInfo
from spatialmix.report.page import figure_image, rows_table
from spatialmix.report.study_files import OUTSIDE, NotShown, read_image, read_inside
from spatialmix.robustness.results import result_rows
from spatialmix.robustness.settings import eps_label, parse_eps

# {mode: {eps: {seed: robust accuracy}}}
RobustBySeed = dict[str, dict[float, dict[int, float]]]

INTERVAL_CAPTION = (
    "Robust accuracy against the attack budget. Left: each mode's mean over seeds with its {level}% "
    "t-interval (df = seeds - 1; a single seed has none). Then each mode minus Full, paired by seed, "
    "with the t-interval of the per-seed differences (claim 2a: Chans - Full above 0). From the "
    "per-run numbers in results.json."
)


def robust_by_seed(entry: SavedStudy) -> RobustBySeed:
    """The well-formed per-run numbers of a robustness study's entry (others are left out)."""
    found: RobustBySeed = {}
    saved = entry.data.get("runs")
    for run in saved if isinstance(saved, list) else []:
        if not isinstance(run, dict) or run.get("mode") not in MODES or not isinstance(run.get("seed"), int):
            continue
        accuracies = run.get("robust_acc")
        for label, acc in accuracies.items() if isinstance(accuracies, dict) else []:
            if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not math.isfinite(acc):
                continue
            try:
                eps = parse_eps(label)
            except SpatialmixError:
                continue
            found.setdefault(run["mode"], {}).setdefault(eps, {})[run["seed"]] = float(acc)
    return {mode: found[mode] for mode in MODES if mode in found}


def interval_items(entry: SavedStudy) -> list:
    """The interval figure of a robustness study's entry, when it kept numbers of two seeds or more."""
    numbers = robust_by_seed(entry)
    seeds = {seed for by_eps in numbers.values() for by_seed in by_eps.values() for seed in by_seed}
    if not numbers or len(seeds) < 2:
        return []
    return [figure_image(interval_figure(numbers), INTERVAL_CAPTION.format(level=f"{100 * LEVEL:g}"))]


def _points(estimates: dict[float, Estimate], ax, offset: float, color: str, label: str) -> None:
    eps = sorted(estimates)
    values = [100 * estimates[e].value for e in eps]
    ax.plot([e + offset for e in eps], values, marker="o", color=color, label=label)
    spans = [(e, estimates[e]) for e in eps if estimates[e].defined]
    if spans:
        ax.errorbar(
            [e + offset for e, _ in spans],
            [100 * est.value for _, est in spans],
            yerr=[
                [100 * (est.value - est.low) for _, est in spans],
                [100 * (est.high - est.value) for _, est in spans],
            ],
            fmt="none",
            ecolor=color,
            capsize=4,
            lw=1.5,
        )


def interval_figure(numbers: RobustBySeed):
    """Left: each mode's mean and interval against eps; then one panel per mode minus Full (each on its
    own scale: three seeds of Space have an interval ten times as wide as twenty of Chans)."""
    from matplotlib.figure import Figure

    budgets = sorted({eps for by_eps in numbers.values() for eps in by_eps})
    step = (budgets[-1] - budgets[0]) / 60 if len(budgets) > 1 else 0.0  # keep the modes' bars apart
    compared = [mode for mode in numbers if mode != "full"] if "full" in numbers else []
    fig = Figure(figsize=(3.4 * (1 + len(compared)), 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 1 + len(compared), squeeze=False)[0]
    for i, (mode, by_eps) in enumerate(numbers.items()):
        estimates = {eps: mean_interval(list(by_seed.values())) for eps, by_seed in by_eps.items()}
        n = max(len(by_seed) for by_seed in by_eps.values())
        offset = (i - (len(numbers) - 1) / 2) * step
        _points(estimates, axes[0], offset, _color(mode), f"{mode.capitalize()} ({n} seeds)")
    axes[0].set_ylabel("robust accuracy (%)")
    axes[0].set_title("each mode, over seeds")
    axes[0].legend()
    for ax, mode in zip(axes[1:], compared):
        differences = {
            eps: paired_t_interval(by_seed, numbers["full"][eps])
            for eps, by_seed in numbers[mode].items()
            if set(by_seed) & set(numbers["full"].get(eps, {}))
        }
        seeds = max((d.n_seeds for d in differences.values()), default=0)
        _points(differences, ax, 0.0, _color(mode), "")
        ax.axhline(0, color="0.4", lw=1, ls="--")
        ax.set_ylabel("difference (points)")
        ax.set_title(f"{mode.capitalize()} - Full, paired ({seeds} seeds)")
    for ax in axes:
        ax.set_xticks(budgets, [eps_label(e) for e in budgets])
        ax.set_xlabel("eps (attack budget)")
        ax.grid(alpha=0.3)
    return fig


def _color(mode: str) -> str:
    return f"C{MODES.index(mode)}"


# --------------------------------------------------------------------------- `spatialmix attack` results


def run_robustness_items(run: RunInfo) -> list:
    """What `spatialmix attack` saved in a run directory: each result JSON (one with per-budget results) as a
    table, and the plot it drew beside it (the same name, .png)."""
    items: list = []
    for path in sorted(run.path.glob("*.json")):
        if path.name in (runs.CONFIG, runs.STATUS, runs.SUMMARY):
            continue
        try:
            saved = parse_json(read_inside(run.path, path).decode(), f"{run.label}/{path.name}")
        except NotShown:  # a link out of the run folder, or a file too large for a result: not ours
            continue
        except (json.JSONDecodeError, UnicodeDecodeError):
            items.append(f"{run.label}: {path.name} is not valid JSON; left out.")
            continue
        except SpatialmixError as err:  # nested too deep, a number too long: one line, the rest shown
            items.append(f"{err}; left out.")
            continue
        if not (isinstance(saved, dict) and isinstance(saved.get("budgets"), list)):
            continue  # not an attack result
        rows = attack_result_rows(saved)
        if rows:
            items.append(rows_table(f"{run.label}: {path.name}", rows))
            if isinstance(saved.get("warnings"), list):
                items += [f"{run.label}: {w}" for w in saved["warnings"]]
        plot = path.with_suffix(".png")
        try:
            items.append(read_image(run.path, plot, f"{run.label}: {plot.name}"))
        except NotShown as reason:
            if reason.why == OUTSIDE:
                items.append(f"{run.label}: {plot.name} skipped, a link that leads out of the run folder.")
    return items


def attack_result_rows(result: dict) -> list[dict] | None:
    """One row per budget of a `spatialmix attack` result, as the attack module lays them out."""
    try:
        return result_rows(result)
    except (KeyError, TypeError, AttributeError):  # written by another version: show what is there
        return json_rows(result.get("budgets"))

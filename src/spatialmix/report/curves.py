"""The report's training curves: each run's per-epoch numbers, one figure per task.

The numbers are those of each run's ``metrics.jsonl``; a classifier's loss and an un-shuffler's are
not comparable, so each task has its own figure.

Only runs of two epochs or more have a curve; runs of a single epoch are counted in a line instead
of being drawn as lone dots. Runs of one setting (mode, sigma) share a colour, thin, with their mean
over seeds drawn thick, so that twenty seeds make one legible legend entry rather than twenty.
"""

from __future__ import annotations

import math

from spatialmix.report.inputs import Inputs, RunInfo, task_name
from spatialmix.report.page import Section, figure_image
from spatialmix.report.sections import ABSENT, SECTIONS

MAX_CURVE_PANELS = 4


def epochs(run: RunInfo) -> int:
    return len({m["epoch"] for m in run.metrics if "epoch" in m})


def curve_keys(run_infos: list[RunInfo]) -> list[str]:
    """The per-epoch numbers worth a panel: train loss, then every test metric, in first-seen order."""
    keys = ["train_loss"]
    for r in run_infos:
        for m in r.metrics:
            keys += [
                k
                for k, v in m.items()
                if k.startswith("test_") and isinstance(v, (int, float)) and k not in keys
            ]
    return keys[:MAX_CURVE_PANELS]


def curves_section(inputs: Inputs) -> Section:
    """One figure per task of the runs with two epochs or more; a line for those with one."""
    section = Section("curves", SECTIONS["curves"])
    by_task: dict[str, list[RunInfo]] = {}
    for r in inputs.runs:
        if epochs(r):
            by_task.setdefault(task_name(r), []).append(r)
    if not by_task:
        section.absent = ABSENT["curves"]
        return section
    for task, run_infos in by_task.items():
        curves = [r for r in run_infos if epochs(r) > 1]
        single = len(run_infos) - len(curves)
        if curves:
            section.items.append(
                figure_image(
                    curves_figure(curves, curve_keys(curves)),
                    f"{task}: per-epoch metrics from each run's metrics.jsonl; thin: one run, thick: "
                    "the mean of a setting's runs.",
                )
            )
        if single:
            section.items.append(
                f"{task}: {single} run{'s' if single > 1 else ''} trained a single epoch, so there is no "
                f"curve to draw; {'their' if single > 1 else 'its'} final numbers are in the tables of "
                "this report."
            )
    return section


def _series(run: RunInfo, key: str) -> dict[int, float]:
    return {
        m["epoch"]: float(m[key])
        for m in run.metrics
        if "epoch" in m and isinstance(m.get(key), (int, float)) and math.isfinite(m[key])
    }


def curves_figure(run_infos: list[RunInfo], keys: list[str]):
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.ticker import MaxNLocator

    cols = 2 if len(keys) == 4 else len(keys)
    rows = math.ceil(len(keys) / cols)
    fig = MplFigure(figsize=(10, 3.2 * rows + 0.4), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    groups: dict[str, list[RunInfo]] = {}
    for r in run_infos:
        groups.setdefault(r.group, []).append(r)
    for ax, key in zip(axes, keys):
        for i, (group, members) in enumerate(groups.items()):
            color, style = f"C{i % 10}", "-" if i < 10 else "--"
            series = [s for s in (_series(r, key) for r in members) if s]
            for s in series if len(series) > 1 else []:
                ax.plot(list(s), list(s.values()), color=color, ls=style, lw=0.8, alpha=0.35)
            if series:
                steps = sorted({e for s in series for e in s})
                mean = [sum(s[e] for s in series if e in s) / sum(e in s for s in series) for e in steps]
                label = members[0].label if len(members) == 1 else f"{group} ({len(members)} runs)"
                ax.plot(steps, mean, color=color, ls=style, lw=2, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    axes[0].legend(fontsize=9)
    return fig

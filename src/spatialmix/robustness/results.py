"""Robustness results: the result dict (``robustness.json``), saved runs, tables, plots, progress.

The result dict is a contract other modules read (``report``, ``statistics``, ``verdicts``):
``clean_acc``, ``n_examples``, ``settings``, ``checks`` (the masking checks' and the gradient
check, which every evaluation runs), ``warnings``, ``examples_sha256`` (the
evaluated images and labels; equal for two results that saw the same examples, so their
comparison can be paired), ``reference_check`` (the default's agreement with the strong reference
on a sample: ``n``, ``eps``, ``default_acc``, ``reference_acc``, ``max_gap``) and ``budgets``:
per budget ``eps``, ``eps_label``, ``robust_acc``, ``n_robust`` and ``robust_bits``, one '0'/'1'
per example in the evaluation's fixed order (1: correctly classified under the worst case of every
attack at this budget or any smaller one; at eps 0, clean correctness).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from spatialmix.io.figures import save_png
from spatialmix.robustness.attacks import Attacker, Budget
from spatialmix.robustness.settings import AttackSettings, eps_label
from spatialmix.ui.display import ResultTable

# --------------------------------------------------------------------------- the result dict


def result_dict(
    label: str, s: AttackSettings, attacker: Attacker, budgets: list[Budget], report, always=()
) -> dict:
    """The JSON-able result of one evaluation (``report``: the masking checks', or None; ``always``:
    the checks every evaluation runs)."""
    checks = [c.to_dict() for c in [*(report.checks if report else []), *always]]
    failed = [c for c in checks if not c["ok"]]
    rows = []
    for b in budgets:
        robust = attacker.robust(b.eps)
        broken_by = {**b.broken_by, **(report.broken_by_checks.get(b.eps, {}) if report else {})}
        rows.append(
            {
                "eps": b.eps,
                "eps_label": eps_label(b.eps),
                "robust_acc": float(robust.float().mean()),
                "n_robust": int(robust.sum()),
                "default_acc": float(b.default_robust.float().mean()),
                "broken_by": broken_by,
                "max_perturbation": attacker.max_perturbation.get(b.eps, 0.0),
                # A check that makes every number doubtful flags every row, not just the budget it ran at.
                "warnings": list(
                    dict.fromkeys(
                        c["name"] for c in failed if (c["all_rows"] and b.eps > 0) or c["eps"] == b.eps
                    )
                ),
                "robust_bits": "".join("1" if r else "0" for r in robust.tolist()),
            }
        )
    warnings = [c["message"] for c in failed]
    if attacker.outside_ball:
        warnings.append(
            f"attacks returned {attacker.outside_ball} adversarial examples outside the eps ball or "
            f"[0, 1]; they were projected back before being counted"
        )
    return {
        "label": label,
        "settings": s.to_dict(),
        "n_examples": len(attacker.y),
        "num_classes": attacker.num_classes,
        "clean_acc": float(attacker.correct.float().mean()),
        "examples_sha256": examples_digest(attacker.x, attacker.y),
        "budgets": rows,
        "reference_check": report.reference.to_dict() if report and report.reference else None,
        "check_eps": report.check_eps if report else None,
        "chance": report.chance if report else None,
        "checks": checks,
        "warnings": warnings,
        "outside_ball": attacker.outside_ball,
        "gradient_steps": attacker.gradient_steps,
        "device": str(attacker.device),
    }


def examples_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the evaluated images (float32, [0, 1]) and labels, in order."""
    digest = hashlib.sha256(images.float().contiguous().numpy().tobytes())
    digest.update(labels.long().contiguous().numpy().tobytes())
    return digest.hexdigest()


def result_rows(result: dict) -> list[dict]:
    """One flat row per budget (what the tables and the report show); a check that failed at a
    budget outside the list (the chance check) is shown on every row, as it concerns them all."""
    rows = []
    listed = set(result["settings"]["eps"])
    elsewhere = [c["name"] for c in result.get("checks", []) if not c["ok"] and c.get("eps") not in listed]
    reference = result.get("reference_check") or {}
    gaps = dict(zip(reference.get("eps", []), reference.get("gaps", [])))
    for b in result["budgets"]:
        rows.append(
            {
                "run": result.get("label", "?"),
                "norm": result["settings"].get("norm", "Linf"),
                "eps": b["eps_label"],
                "clean_acc": result["clean_acc"],
                "robust_acc": b["robust_acc"],
                "default_acc": b.get("default_acc"),
                "reference_gap": gaps.get(b["eps"]),
                "warnings": ", ".join(dict.fromkeys([*b.get("warnings", []), *elsewhere])) or "ok",
            }
        )
    return rows


def robustness_table(results: list[dict], title: str | None = None):
    """Clean and robust accuracy per run and budget, the reference's gap and the check warnings."""

    norm = results[0]["settings"]["norm"] if results else "Linf"
    table = ResultTable(
        title or f"Robust accuracy ({norm}, worst case over every attack)",
        [
            ("run", "run", ""),
            ("eps", "eps", ""),
            ("clean_acc", "clean acc", ".3f"),
            ("robust_acc", "robust acc", ".3f"),
            ("default_acc", "default attacks", ".3f"),
            ("reference_gap", "reference gap", ".3f"),
            ("warnings", "checks", ""),
        ],
    )
    for result in results:
        for row in result.get("rows") or result_rows(result):
            table.add(**row)
    return table


# At most this many panels side by side: shown at a page's width (about 1,000 pixels) a wider row
# shrinks its text below legibility (a strip of 44 panels was 16,456 pixels wide).
PANELS_PER_ROW = 4


def plot_robustness(results: list[dict], path: str | Path) -> Path:
    """Robust accuracy against eps: all runs together, then one panel per run, at most
    `PANELS_PER_ROW` to a row (PNG, written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = len(results) + 1
    cols = min(PANELS_PER_ROW, panels)
    rows = -(-panels // cols)
    fig = Figure(figsize=(2.6 * cols + 0.6, 2.5 * rows + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).reshape(-1)
    _plot_overview(axes[0], results)
    for ax, result in zip(axes[1:], results):
        _plot_run(ax, result)
    ticks = sorted({b["eps"] for r in results for b in r["budgets"]})
    norm = results[0]["settings"]["norm"] if results else "Linf"
    for i, ax in enumerate(axes[:panels]):
        ax.set_xticks(ticks, [eps_label(e) for e in ticks], rotation=45, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if i >= panels - cols:  # the bottom panel of each column
            ax.set_xlabel(f"eps ({norm})", fontsize=9)
        if i % cols == 0:
            ax.set_ylabel("accuracy", fontsize=9)
    for ax in axes[panels:]:
        ax.set_axis_off()
    legend = {}  # what the lines of the runs' own panels are: once, under the figure
    for ax in axes[1:panels]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(
            legend.values(), legend.keys(), loc="outside lower center", ncol=min(len(legend), 3), fontsize=9
        )
    save_png(fig, path, dpi=110)
    return Path(path)


def _plot_overview(ax, results: list[dict]) -> None:
    """Every run's worst case; with many runs one colour (and one legend entry) per setting."""
    settings = [_setting(r) for r in results]
    by_setting = len(results) > 6 and None not in settings
    named = list(dict.fromkeys(settings))
    for i, result in enumerate(results):
        eps = [b["eps"] for b in result["budgets"]]
        accuracy = [b["robust_acc"] for b in result["budgets"]]
        if by_setting:
            setting = settings[i]
            label = f"{setting} ({settings.count(setting)} runs)" if settings.index(setting) == i else None
            ax.plot(eps, accuracy, color=f"C{named.index(setting) % 10}", lw=1, alpha=0.6, label=label)
        else:
            ax.plot(eps, accuracy, marker="o", label=result["label"])
    ax.set_title("all runs (worst case)", fontsize=10)
    ax.legend(fontsize=8)


def _setting(result: dict) -> str | None:
    """A run's mode and smoothing sigma ("Chans σ=2"), None when the result does not say."""
    mode, sigma = result.get("mode"), result.get("smooth_sigma") or 0
    if not isinstance(mode, str) or not isinstance(sigma, (int, float)):
        return None
    return mode.capitalize() + (f" σ={sigma:g}" if sigma else "")


def _plot_run(ax, result: dict) -> None:
    budgets = result["budgets"]
    eps = [b["eps"] for b in budgets]
    ax.plot(eps, [b["robust_acc"] for b in budgets], marker="o", color="black", label="worst case")
    points = [(b["eps"], b["default_acc"]) for b in budgets if b.get("default_acc") is not None]
    if points:
        ax.plot(*zip(*points), "--", marker=".", color="C0", label="default attacks alone")
    reference = result.get("reference_check")
    if reference:
        ax.plot(
            reference["eps"],
            reference["reference_acc"],
            ":",
            marker="x",
            color="C1",
            label=f"reference sample (n={reference['n']})",
        )
    if result.get("chance"):
        ax.axhline(result["chance"]["bound"], color="gray", lw=0.8, ls="-.", label="gray-image bound")
    warned = [b for b in budgets if b.get("warnings")]
    if warned:
        ax.scatter(
            [b["eps"] for b in warned],
            [b["robust_acc"] for b in warned],
            s=120,
            facecolors="none",
            edgecolors="red",
            label="check warning",
        )
    title = result["label"] + (f"\n{len(result['warnings'])} warning(s)" if result["warnings"] else "")
    ax.set_title(title, fontsize=9, color="red" if result["warnings"] else "black")


# --------------------------------------------------------------------------- progress


# --------------------------------------------------------------------------- saved runs

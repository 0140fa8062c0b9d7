"""Robustness results: the result dict (``robustness.json``), saved runs, tables, plots, progress.

The result dict is a contract other modules read (``report``, ``statistics``, ``verdicts``):
``clean_acc``, ``n_examples``, ``settings``, ``checks``, ``warnings``, ``examples_sha256`` (the
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


def result_dict(label: str, s: AttackSettings, attacker: Attacker, budgets: list[Budget], report) -> dict:
    """The JSON-able result of one evaluation (``report``: the masking checks', or None)."""
    import torchattacks

    checks = [c.to_dict() for c in report.checks] if report else []
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
        "torchattacks_version": torchattacks.__version__,
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


def plot_robustness(results: list[dict], path: str | Path) -> Path:
    """Robust accuracy against eps: all runs together, then one panel per run (PNG, written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = len(results) + 1
    fig = Figure(figsize=(3.4 * panels, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    for result in results:
        eps = [b["eps"] for b in result["budgets"]]
        axes[0].plot(eps, [b["robust_acc"] for b in result["budgets"]], marker="o", label=result["label"])
    axes[0].set_title("all runs (worst case)", fontsize=9)
    axes[0].legend(fontsize=6)
    for ax, result in zip(axes[1:], results):
        budgets = result["budgets"]
        eps = [b["eps"] for b in budgets]
        ax.plot(eps, [b["robust_acc"] for b in budgets], marker="o", color="black", label="worst case")
        points = [(b["eps"], b["default_acc"]) for b in budgets if b.get("default_acc") is not None]
        if points:
            ax.plot(*zip(*points), "--", marker=".", label="default attacks alone")
        reference = result.get("reference_check")
        if reference:
            ax.plot(
                reference["eps"],
                reference["reference_acc"],
                ":",
                marker="x",
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
        ax.set_title(title, fontsize=8, color="red" if result["warnings"] else "black")
        ax.legend(fontsize=6)
    for ax in axes:
        ticks = sorted({b["eps"] for r in results for b in r["budgets"]})
        ax.set_xticks(ticks, [eps_label(e) for e in ticks], rotation=45, fontsize=7)
        ax.set_xlabel(f"eps ({results[0]['settings']['norm'] if results else 'Linf'})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    save_png(fig, path, dpi=110)
    return Path(path)


# --------------------------------------------------------------------------- progress


# --------------------------------------------------------------------------- saved runs

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
import os
import re
import time
from pathlib import Path

import torch

from . import runs
from .attacks import RESULT_NAME, AttackSettings, Attacker, Budget, eps_label, evaluate_robustness
from .errors import SpatialmixError
from .figures import save_png


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
        rows.append({
            "eps": b.eps, "eps_label": eps_label(b.eps), "robust_acc": float(robust.float().mean()),
            "n_robust": int(robust.sum()), "default_acc": float(b.default_robust.float().mean()),
            "broken_by": broken_by, "max_perturbation": attacker.max_perturbation.get(b.eps, 0.0),
            # A check that makes every number doubtful flags every row, not just the budget it ran at.
            "warnings": list(dict.fromkeys(c["name"] for c in failed
                                           if (c["all_rows"] and b.eps > 0) or c["eps"] == b.eps)),
            "robust_bits": "".join("1" if r else "0" for r in robust.tolist()),
        })
    warnings = [c["message"] for c in failed]
    if attacker.outside_ball:
        warnings.append(f"attacks returned {attacker.outside_ball} adversarial examples outside the eps ball or "
                        f"[0, 1]; they were projected back before being counted")
    return {"label": label, "settings": s.to_dict(), "n_examples": len(attacker.y),
            "num_classes": attacker.num_classes, "clean_acc": float(attacker.correct.float().mean()),
            "examples_sha256": examples_digest(attacker.x, attacker.y), "budgets": rows,
            "reference_check": report.reference.to_dict() if report and report.reference else None,
            "check_eps": report.check_eps if report else None, "chance": report.chance if report else None,
            "checks": checks, "warnings": warnings, "outside_ball": attacker.outside_ball,
            "gradient_steps": attacker.gradient_steps, "device": str(attacker.device),
            "torchattacks_version": torchattacks.__version__}


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
        rows.append({"run": result.get("label", "?"), "norm": result["settings"].get("norm", "Linf"),
                     "eps": b["eps_label"], "clean_acc": result["clean_acc"], "robust_acc": b["robust_acc"],
                     "default_acc": b.get("default_acc"), "reference_gap": gaps.get(b["eps"]),
                     "warnings": ", ".join(dict.fromkeys([*b.get("warnings", []), *elsewhere])) or "ok"})
    return rows


def robustness_table(results: list[dict], title: str | None = None):
    """Clean and robust accuracy per run and budget, the reference's gap and the check warnings."""
    from .display import ResultTable

    norm = results[0]["settings"]["norm"] if results else "Linf"
    table = ResultTable(title or f"Robust accuracy ({norm}, worst case over every attack)",
                        [("run", "run", ""), ("eps", "eps", ""), ("clean_acc", "clean acc", ".3f"),
                         ("robust_acc", "robust acc", ".3f"), ("default_acc", "default attacks", ".3f"),
                         ("reference_gap", "reference gap", ".3f"), ("warnings", "checks", "")])
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
            ax.plot(reference["eps"], reference["reference_acc"], ":", marker="x",
                    label=f"reference sample (n={reference['n']})")
        if result.get("chance"):
            ax.axhline(result["chance"]["bound"], color="gray", lw=0.8, ls="-.", label="gray-image bound")
        warned = [b for b in budgets if b.get("warnings")]
        if warned:
            ax.scatter([b["eps"] for b in warned], [b["robust_acc"] for b in warned], s=120, facecolors="none",
                       edgecolors="red", label="check warning")
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

class ProgressBar:
    """The progress callback of :func:`evaluate_robustness`: what runs, gradient steps spent, steps/s.

    The engine only says what it is doing; how that is shown (and any estimate of the time left)
    is decided here.
    """

    def __init__(self, label: str):
        self.label = label
        self._bar = None
        self._last = 0.0

    @classmethod
    def for_setting(cls, progress, label: str):
        if callable(progress) and not isinstance(progress, bool):
            return _Passthrough(progress)
        return cls(label) if progress else _Passthrough(None)

    def __enter__(self):
        from rich.progress import Progress, TextColumn, TimeElapsedColumn

        from .display import console

        self._started = time.perf_counter()
        self._bar = Progress(TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console,
                             transient=True)
        self._bar.__enter__()
        self._task = self._bar.add_task(self.label, total=None)
        return self

    def __exit__(self, *exc):
        self._bar.__exit__(*exc)

    def __call__(self, stage: str, gradient_steps: int) -> None:
        now = time.perf_counter()
        if now - self._last < 0.2:
            return
        self._last = now
        rate = gradient_steps / max(now - self._started, 1e-9)
        self._bar.update(self._task, description=f"{self.label}: {stage} ({gradient_steps:,} steps, "
                                                 f"{rate:,.0f} steps/s)")


class _Passthrough:
    def __init__(self, callback):
        self.callback = callback

    def __enter__(self):
        return self.callback

    def __exit__(self, *exc):
        return None


# --------------------------------------------------------------------------- saved runs

def select_examples(data, n_examples: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed seeded subset of the test set (all of it for None), as [0, 1] floats and labels.

    The same ``n_examples`` and ``seed`` give the same images for every model of a data set, so
    comparisons between models are paired.
    """
    from .batches import to_unit_range

    if n_examples is not None and n_examples <= 0:
        raise SpatialmixError(f"--n-examples must be at least 1, got {n_examples}")
    subset = data.subset(None, n_examples, seed=seed)
    return to_unit_range(subset.test_images), subset.test_labels


def run_label(record: dict, run_dir: Path) -> str:
    """``Chans σ=1 seed 0 (chans-sigma1-seed0)``: the mode, smoothing and seed, then the folder."""
    train = record.get("train", {})
    mode = str(train.get("mode", "?")).capitalize()
    sigma = train.get("smooth_sigma") or 0
    return f"{mode}{f' σ={sigma:g}' if sigma else ''} seed {train.get('seed', '?')} ({Path(run_dir).name})"


def weights_fingerprint(run_dir: Path) -> dict:
    """The newest checkpoint's folder and SHA-256 (read in chunks, from a regular file inside the run only)."""
    return runs.Run(run_dir).weights_fingerprint()


def _check_out_name(out_name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", out_name or "") or out_name.endswith((".json", ".png")):
        raise SpatialmixError(f"--out-name {out_name!r} must be a plain file stem like 'robustness' "
                              f"(letters, digits, '-', '_', '.'; no folder, no extension)")
    return out_name


def evaluate_run(run_dir: str | Path, settings: AttackSettings | None = None, *, data=None, progress: bool = True,
                 data_dir: str | None = None, **changes) -> dict:
    """Load a saved run and evaluate it (see :func:`evaluate_robustness`); the run's folder, mode,
    smoothing, seed and checkpoint are added to the result."""
    from .train import load_trained_model

    settings = (settings or AttackSettings()).replace(**changes).validate()
    run_dir = runs.check_run_dir(Path(run_dir))
    fingerprint = weights_fingerprint(run_dir)
    model, record = load_trained_model(run_dir, device="cpu")
    data = data if data is not None else _data_for_run(run_dir, {}, data_dir)
    images, labels = select_examples(data, settings.n_examples, settings.seed)
    d = record["data"]
    result = evaluate_robustness(model, images, labels, settings, mean=d["mean"], std=d["std"],
                                 label=run_label(record, run_dir), progress=progress)
    train = record["train"]
    summary = runs.read_json(run_dir / runs.SUMMARY, "run summary") if (run_dir / runs.SUMMARY).is_file() else {}
    result.update({"run": str(run_dir), "mode": train.get("mode"), "seed": train.get("seed"),
                   "smooth_sigma": train.get("smooth_sigma"), "dataset": train.get("dataset"),
                   "test_acc": summary.get("test_acc"), "weights": fingerprint})
    result["rows"] = result_rows(result)
    return result


def attack_runs(run_dirs, settings: AttackSettings | None = None, *, out_name: str = RESULT_NAME,
                plot: str | Path | None = "auto", progress: bool = True, reuse: bool = False,
                data_dir: str | None = None, **changes) -> list[dict]:
    """Evaluate saved runs, save ``OUT_NAME.json`` in each run directory and plot them side by side.

    Everything is checked before anything is computed or written, so bad input leaves existing
    results untouched. ``plot="auto"`` writes ``OUT_NAME.png`` in the run directory (one run) or
    in the runs' common parent folder; ``None`` draws nothing. ``reuse=True`` reads a saved
    result back instead of recomputing it when it was made with the same settings and weights.
    ``data_dir``: where the test set is (default: ``$SPATIALMIX_DATA``, the OS package, the
    download cache; never the folder a run's config names). Returns the results, in the order of
    ``run_dirs``.
    """
    settings = (settings or AttackSettings()).replace(**changes).validate()
    out_name = _check_out_name(out_name)
    run_dirs = [Path(r) for r in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    if not run_dirs:
        raise SpatialmixError("no run directory given; pass folders made by `spatialmix train` or `reproduce`")
    fingerprints = []
    for run_dir in run_dirs:
        runs.check_run_dir(run_dir)
        runs.check_writable(run_dir)   # the results go there: fail now, not after the attacks
        fingerprints.append(weights_fingerprint(run_dir))
    results, datasets = [], {}
    for run_dir, fingerprint in zip(run_dirs, fingerprints):
        path = run_dir / f"{out_name}.json"
        saved = _reusable(path, settings, fingerprint) if reuse else None
        if saved is not None:
            results.append(saved)
            continue
        data = _data_for_run(run_dir, datasets, data_dir)
        result = evaluate_run(run_dir, settings, data=data, progress=progress)
        runs.atomic_write_json(path, result)
        results.append(result)
    if plot is not None:
        plot_path = _default_plot_path(run_dirs, out_name) if plot == "auto" else Path(plot)
        plot_robustness(results, plot_path)
        for result in results:
            result["plot"] = str(plot_path)
    return results


def _reusable(path: Path, settings: AttackSettings, fingerprint: dict) -> dict | None:
    """The saved result at ``path`` if it was made with these settings from these weights."""
    if not path.is_file():
        return None
    try:
        saved = runs.read_json(path, "robustness result")
    except SpatialmixError:
        return None
    from .tasks import resolve_device

    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        return None
    saved_settings = {k: v for k, v in saved["settings"].items() if k != "device"}
    # The device matters too: the random starts come from its generator.
    same_device = saved.get("device") == str(resolve_device(settings.device))
    if saved_settings == settings.identity() and same_device and saved.get("weights") == fingerprint:
        return saved
    return None


def _data_for_run(run_dir: Path, cache: dict, data_dir: str | None = None):
    """The full data set of a run (loaded once per data set for all runs), from where the user says
    (``data_dir``, ``$SPATIALMIX_DATA``, ...), never from the run's own config (a run folder is untrusted)."""
    from . import train

    record = runs.read_json(run_dir / runs.CONFIG, "run")
    key = (record.get("train", {}).get("dataset"), data_dir)
    if key not in cache:
        if hasattr(train, "load_evaluation_data"):
            cache[key] = train.load_evaluation_data(run_dir, data_dir)
        else:   # (an older train module)
            config = train.TrainConfig.from_dict(record["train"]).replace(train_subset=None, test_subset=None,
                                                                          data_dir=data_dir)
            cache[key] = train.load_data_for(config)
    return cache[key]


def _default_plot_path(run_dirs: list[Path], out_name: str) -> Path:
    if len(run_dirs) == 1:
        return run_dirs[0] / f"{out_name}.png"
    parent = Path(os.path.commonpath([str(p.resolve()) for p in run_dirs]))
    return parent / f"{out_name}.png"

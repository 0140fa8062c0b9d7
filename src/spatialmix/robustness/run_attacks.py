"""Adversarial evaluation of saved runs: ``spatialmix attack`` and the robustness studies.

Each run's model is rebuilt from its folder, attacked on a fixed, seeded choice of test images,
and its result saved as ``robustness.json`` beside it; a saved result of the same settings and
weights is reused instead of attacking again.

Saving into the run folder makes an attack one of its writers, so `attack_runs` holds each run's lock
(`spatialmix.io.runs.locked`, the one `train` holds) from reading its newest checkpoint to writing
the result: a run that a training or another attack holds is refused at once, in one line naming
that process, and no checkpoint can change while it is attacked.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch

from spatialmix.data.batches import to_unit_range
from spatialmix.engine.device import resolve_device
from spatialmix.engine.loaders import load_evaluation_data
from spatialmix.engine.train import load_trained_model
from spatialmix.engine.user_model import check_rebuildable, user_code
from spatialmix.errors import SpatialmixError
from spatialmix.io import runs
from spatialmix.io.paths import check_writable
from spatialmix.robustness.attacks import RESULT_NAME
from spatialmix.robustness.evaluate import evaluate_robustness
from spatialmix.robustness.results import plot_robustness, result_rows
from spatialmix.robustness.settings import AttackSettings

# How a run held by another process is refused to an attack (the line begins "RUN is in use by ...").
HELD_ADVICE = "attack it when that process (a training or another attack) has finished"


def select_examples(data, n_examples: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed seeded subset of the test set (all of it for None), as [0, 1] floats and labels.

    The same ``n_examples`` and ``seed`` give the same images for every model of a data set, so
    comparisons between models are paired.
    """

    if n_examples is not None and n_examples <= 0:
        raise SpatialmixError(f"--n-examples must be at least 1, got {n_examples}")
    available = len(data.test_labels)
    if n_examples is not None and n_examples > available:
        # attacking all of them instead would save settings that say more images than were attacked
        raise SpatialmixError(
            f"--n-examples {n_examples:,} is more than the {available:,} test images of {data.name}; "
            f"pass --n-examples {available} or --n-examples all"
        )
    subset = data.subset(None, n_examples, seed=seed)
    return to_unit_range(subset.test_images), subset.test_labels


def run_label(record: dict, run_dir: Path) -> str:
    """``Chans σ=1 seed 0 (chans-sigma1-seed0)``: the mode, smoothing and seed, then the folder."""
    train = record.get("train", {})
    mode = str(train.get("mode", "?")).capitalize()
    sigma = train.get("smooth_sigma") or 0
    return f"{mode}{f' σ={sigma:g}' if sigma else ''} seed {train.get('seed', '?')} ({Path(run_dir).name})"


def weights_fingerprint(run_dir: Path) -> dict:
    """The newest checkpoint's folder and SHA-256 (read in chunks, from a regular file inside the run
    only)."""
    return runs.Run(run_dir).weights_fingerprint()


def _check_out_name(out_name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", out_name or "") or out_name.endswith(
        (".json", ".png")
    ):
        raise SpatialmixError(
            f"--out-name {out_name!r} must be a plain file stem like 'robustness' "
            f"(letters, digits, '-', '_', '.'; no folder, no extension)"
        )
    return out_name


def evaluate_run(
    run_dir: str | Path,
    settings: AttackSettings | None = None,
    *,
    data=None,
    progress: bool = True,
    data_dir: str | None = None,
    model=None,
    trust_code: bool = False,
    **changes,
) -> dict:
    """Load a saved run and evaluate it (see `evaluate_robustness`); the run's folder, mode,
    smoothing, seed and checkpoint are added to the result. ``model`` / ``trust_code``: for a run
    trained with a model of its own, see `spatialmix.engine.train.load_trained_model`.

    It writes nothing and takes no lock (`attack_runs` holds the run's); a checkpoint written while
    it loads the weights (a training of the run) is refused in one line, so the result never names
    other weights than it attacked."""

    settings = (settings or AttackSettings()).replace(**changes).validate()
    run_dir = runs.check_run_dir(Path(run_dir))
    fingerprint = weights_fingerprint(run_dir)
    model, record = load_trained_model(run_dir, device="cpu", model=model, trust_code=trust_code)
    if runs.Run(run_dir).require_checkpoint().name != fingerprint["checkpoint"]:
        raise SpatialmixError(
            f"{run_dir} got a new checkpoint while it was read (a training is writing it); evaluate it "
            f"again when the training has finished"
        )
    data = data if data is not None else _data_for_run(run_dir, {}, data_dir)
    images, labels = select_examples(data, settings.n_examples, settings.seed)
    result = evaluate_robustness(  # the model normalizes its [0, 1] inputs itself
        model,
        images,
        labels,
        settings,
        label=run_label(record, run_dir),
        progress=progress,
    )
    train = record["train"]
    summary = runs.Run(run_dir).summary() or {}  # validated: a JSON object of numbers
    result.update(
        {
            "run": str(run_dir),
            "mode": train.get("mode"),
            "seed": train.get("seed"),
            "smooth_sigma": train.get("smooth_sigma"),
            "dataset": train.get("dataset"),
            "test_acc": summary.get("test_acc"),
            "weights": fingerprint,
        }
    )
    result["rows"] = result_rows(result)
    return result


def attack_runs(
    run_dirs,
    settings: AttackSettings | None = None,
    *,
    out_name: str = RESULT_NAME,
    plot: str | Path | None = "auto",
    progress: bool = True,
    reuse: bool = False,
    data_dir: str | None = None,
    model=None,
    trust_code: bool = False,
    **changes,
) -> list[dict]:
    """Evaluate saved runs, save ``OUT_NAME.json`` in each run directory and plot them side by side.

    Everything is checked before anything is computed or written, so bad input leaves existing
    results untouched. ``plot="auto"`` writes ``OUT_NAME.png`` in the run directory (one run) or
    in the runs' common parent folder; ``None`` draws nothing. ``reuse=True`` reads a saved
    result back instead of recomputing it when it was made with the same settings and weights.
    ``data_dir``: where the test set is (default: ``$SPATIALMIX_DATA``, the OS package, the
    download cache; never the folder a run's config names). ``model`` / ``trust_code``: what rebuilds
    the runs trained with a model of their own (the others ignore them; see
    `load_trained_model`). Returns the results, in the order of
    ``run_dirs``.

    Each run's lock (the one `train` holds) is held from before its checkpoint is read until its
    result is written: a run that another process is training or attacking is refused before
    anything is computed, in one line naming that process.
    """
    with user_code(model, trust_code):
        return _attack_runs(run_dirs, settings, out_name, plot, progress, reuse, data_dir, changes)


def _attack_runs(run_dirs, settings, out_name, plot, progress, reuse, data_dir, changes) -> list[dict]:
    settings = (settings or AttackSettings()).replace(**changes).validate()
    out_name = _check_out_name(out_name)
    if plot not in (None, "auto"):
        _check_plot_path(Path(plot))
    run_dirs = [Path(r) for r in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    if not run_dirs:
        raise SpatialmixError(
            "no run directory given; pass folders made by `spatialmix train` or `reproduce`"
        )
    for run_dir in run_dirs:
        runs.check_run_dir(run_dir)
        check_writable(run_dir)  # the results go there: fail now, not after the attacks
        check_rebuildable(run_dir)  # a model of its own needs its factory (or trusted code): say so now
    with contextlib.ExitStack() as held:
        for run_dir in run_dirs:  # every run before any attack: one held elsewhere is refused at once
            held.enter_context(runs.locked(run_dir, HELD_ADVICE))
        results = _attack_held_runs(run_dirs, settings, out_name, progress, reuse, data_dir)
    if plot is not None:
        plot_path = _default_plot_path(run_dirs, out_name) if plot == "auto" else Path(plot)
        plot_robustness(results, plot_path)
        for result in results:
            result["plot"] = str(plot_path)
    return results


def _attack_held_runs(run_dirs, settings, out_name, progress, reuse, data_dir) -> list[dict]:
    """Attack each run (its lock held) and save its result, or reuse a saved one of these weights."""
    fingerprints = [weights_fingerprint(run_dir) for run_dir in run_dirs]  # each has a checkpoint
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
    return results


def _check_plot_path(plot: Path) -> None:
    """Refuse a --plot in a folder that does not exist (a typo made /nonexistent/dir at the root), or one
    that is a folder."""
    if not plot.parent.is_dir():
        raise SpatialmixError(
            f"the folder {plot.parent} of --plot does not exist; create it first or choose another --plot"
        )
    if plot.is_dir():
        raise SpatialmixError(
            f"--plot {plot} is a folder; pass a file name such as {plot / 'robustness.png'}"
        )


def _reusable(path: Path, settings: AttackSettings, fingerprint: dict) -> dict | None:
    """The saved result at ``path`` if it was made with these settings from these weights."""
    if not path.is_file():
        return None
    try:  # inside the run folder only, of bounded size and depth
        saved = runs.read_json(path, "robustness result", base=path.parent)
    except SpatialmixError:
        return None  # damaged or hostile: attacked again, and replaced
    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        return None
    saved_settings = {k: v for k, v in saved["settings"].items() if k != "device"}
    # The device matters too: the random starts come from its generator.
    same_device = saved.get("device") == str(resolve_device(settings.device))
    if saved_settings != settings.identity() or not same_device or saved.get("weights") != fingerprint:
        return None
    try:
        saved["rows"] = result_rows(saved)  # what the table shows: a result of another shape is redone
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    numbers = [row[k] for row in saved["rows"] for k in ("clean_acc", "robust_acc")]
    return saved if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers) else None


def _data_for_run(run_dir: Path, cache: dict, data_dir: str | None = None):
    """The full data set of a run (loaded once per data set for all runs), from where the user says
    (``data_dir``, ``$SPATIALMIX_DATA``, ...), never from the run's own config (a run folder is untrusted)."""

    record = runs.Run(run_dir).record()  # validated: its training settings are an object
    key = (record["train"].get("dataset"), data_dir)
    if key not in cache:
        cache[key] = load_evaluation_data(run_dir, data_dir)
    return cache[key]


def _default_plot_path(run_dirs: list[Path], out_name: str) -> Path:
    if len(run_dirs) == 1:
        return run_dirs[0] / f"{out_name}.png"
    parent = Path(os.path.commonpath([str(p.resolve()) for p in run_dirs]))
    return parent / f"{out_name}.png"

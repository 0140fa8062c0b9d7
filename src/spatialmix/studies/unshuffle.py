"""The un-shuffling study (claim 3): Full / Chans / Space against two references, one table, one figure.

`unshuffle_study` plans one run per mode and seed (plus the no-spatial-mixing reference,
kernel size 1), checks every run folder before writing anything, trains them (side by side with
``processes``), and compares them with the floor of the scrambled input itself. The task it
trains (metrics, `UnshuffleNet`, presets) lives in
`spatialmix.engine.unshuffle`, the scrambling in `spatialmix.data.permutation`;
`unshuffle_reproduce_study` is its entry in `spatialmix.studies.reproduce.STUDIES`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spatialmix.data.datasets import ImageData
from spatialmix.data.permutation import PERMUTATION_FILE, PixelPermutation, check_or_save_permutation
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.loaders import load_data_for
from spatialmix.engine.parallel import run_side_by_side
from spatialmix.engine.resume import prepare_run_dir
from spatialmix.engine.train import load_trained_model
from spatialmix.engine.unshuffle import UnshuffleTask, reconstruct, scrambled_floor, unshuffle_config
from spatialmix.engine.unshuffle_train import train_unshuffle
from spatialmix.errors import SpatialmixError, check_positive, unknown_name
from spatialmix.io import runs, storage
from spatialmix.io.figures import save_png
from spatialmix.io.study_results import Figure as StudyFigure  # (matplotlib's Figure is used below)
from spatialmix.io.study_results import StudyResult
from spatialmix.names import MODES
from spatialmix.studies.context import StudyContext
from spatialmix.ui.display import ResultTable, mean_std, say

FIGURE_FILE = "unshuffle.png"
CURVES_FILE = "unshuffle-curves.png"
TABLE_FILES = ("unshuffle.md", "unshuffle.csv", "unshuffle.json")
REFERENCE = "kernel1"  # run-directory name of the no-spatial-mixing reference
# Settings of `spatialmix reproduce` that also apply to its un-shuffling study (not the classifier's sizes).
REPRODUCE_SETTINGS = (
    "dataset",
    "data_dir",
    "download",
    "train_subset",
    "test_subset",
    "epochs",
    "amp",
    "device",
    "channels_last",
    "progress",
)

FLOOR_LABEL = "Scrambled input (floor)"
REFERENCE_LABEL = "No spatial mixing (k=1)"


@dataclass
class _PlannedRun:
    label: str
    seed: int
    config: TrainConfig
    run_dir: Path


def _plan(out_dir: Path, preset: str, modes, seeds, references: bool, overrides: dict) -> list[_PlannedRun]:
    plan = []
    for seed in seeds:
        for mode in modes:
            plan.append(
                _PlannedRun(
                    mode.capitalize(),
                    seed,
                    unshuffle_config(preset, mode, seed, **overrides),
                    out_dir / f"{mode}-seed{seed}",
                )
            )
        if references:
            reference = unshuffle_config(preset, "full", seed, **{**overrides, "kernel_size": 1})
            plan.append(_PlannedRun(REFERENCE_LABEL, seed, reference, out_dir / f"{REFERENCE}-seed{seed}"))
    return plan


def unshuffle_study(
    out_dir: str | Path = "runs/unshuffle",
    preset: str = "small",
    modes=MODES,
    window: int | None = None,
    loss: str = "mse",
    perm_seed: int = 0,
    seeds=(0,),
    references: bool = True,
    figure_images: int = 8,
    processes: int = 1,
    threads: int | None = None,
    **overrides,
) -> ResultTable:
    """Train Full / Chans / Space (and the kernel-1 reference) to un-shuffle, and compare them.

    Returns the table (mode, trainable and frozen parameters, test PSNR and SSIM, train time), with
    the scrambled input itself as the floor. Writes into ``out_dir``: one run directory per mode
    and seed, ``permutation.safetensors``, the table as ``unshuffle.md/.csv/.json`` and the figure
    ``unshuffle.png`` (ground truth, scrambled, each model's reconstruction of the same test
    images). Finished runs are reused and interrupted ones resumed; everything is checked before
    anything is written, so a bad setting leaves ``out_dir`` as it was. ``processes`` runs train
    side by side with ``threads`` threads each (see `spatialmix.engine.parallel`).
    """
    out_dir = Path(out_dir)
    task = UnshuffleTask(perm_seed, window, loss)
    for name, instead in (("mode", "modes=[...]"), ("seed", "seeds=[...]")):
        if name in overrides:
            raise SpatialmixError(f"unshuffle_study trains several runs: pass {instead} instead of {name}=")
    modes, seeds = tuple(modes), tuple(seeds)
    for mode in modes:
        if mode not in MODES:
            raise unknown_name("mode", mode, MODES)
    if not modes and not references:
        raise SpatialmixError("nothing to train: pass at least one mode")
    if not seeds:
        raise SpatialmixError("pass at least one seed")
    check_positive(figure_images=figure_images)
    plan = _plan(out_dir, preset, modes, seeds, references, overrides)
    data = {seed: load_data_for(next(r.config for r in plan if r.seed == seed)) for seed in seeds}
    permutation = task.permutation_for(data[seeds[0]].image_size)
    if (out_dir / PERMUTATION_FILE).exists():
        check_or_save_permutation(out_dir / PERMUTATION_FILE, permutation)
    for run in plan:
        prepare_run_dir(run.run_dir, run.config, resume=runs.is_run_dir(run.run_dir), task=task)
        if (run.run_dir / PERMUTATION_FILE).exists():
            check_or_save_permutation(run.run_dir / PERMUTATION_FILE, permutation)

    out_dir.mkdir(parents=True, exist_ok=True)
    check_or_save_permutation(out_dir / PERMUTATION_FILE, permutation)
    summaries: dict[str, list[dict]] = {}
    if processes > 1 and len(plan) > 1:
        jobs = [
            (
                _train_planned,
                (run.config.replace(threads=threads, progress=False), run.run_dir, perm_seed, window, loss),
            )
            for run in plan
        ]
        done = run_side_by_side(
            jobs,
            processes=processes,
            threads=threads or 1,
            on_done=lambda i, _: say(
                f"[bold]unshuffle[/] {i + 1}/{len(plan)}: {plan[i].label} seed {plan[i].seed} -> "
                f"{plan[i].run_dir}"
            ),
        )
        for run, summary in zip(plan, done):
            summaries.setdefault(run.label, []).append(summary)
    else:
        for run in plan:
            say(f"[bold]unshuffle[/]: {run.label} seed {run.seed} -> {run.run_dir}")
            summary = train_unshuffle(
                run.config,
                run.run_dir,
                UnshuffleTask(perm_seed, window, loss),
                resume=runs.is_run_dir(run.run_dir),
                data=data[run.seed],
            )
            summaries.setdefault(run.label, []).append(summary)
    floors = [scrambled_floor(data[seed].test_images, permutation) for seed in seeds]

    settings = {
        "preset": preset,
        "dataset": plan[0].config.dataset,
        "window": window,
        "loss": loss,
        "perm_seed": perm_seed,
        "seeds": list(seeds),
        "moved_fraction": permutation.moved_fraction(),
    }
    table = unshuffle_table(summaries, floors, title=_title(settings, plan[0].config))
    first = data[seeds[0]]
    models = {run.label: run.run_dir for run in plan if run.seed == seeds[0]}
    save_figure(out_dir / FIGURE_FILE, first, permutation, models, table, n=figure_images)
    curves = test_curves(plan)
    save_curves(out_dir / CURVES_FILE, curves, floors)
    _save_table(out_dir, table, {"settings": settings, "runs": summaries, "floor": floors, "curves": curves})
    return table


def test_curves(plan: list[_PlannedRun]) -> dict[str, dict[str, list]]:
    """Per label: the epochs and the test PSNR / SSIM after each, averaged over the label's seeds."""
    per_label: dict[str, list[dict[int, dict]]] = {}
    for run in plan:
        metrics = {
            m["epoch"]: m
            for m in runs.Run(run.run_dir).metrics()
            if isinstance(m.get("epoch"), int)
            and all(isinstance(m.get(f"test_{k}"), (int, float)) for k in ("psnr", "ssim"))
        }
        per_label.setdefault(run.label, []).append(metrics)
    curves = {}
    for label, seeds in per_label.items():
        epochs = sorted(set.intersection(*(set(m) for m in seeds)))
        curves[label] = {
            "epoch": epochs,
            **{
                key: [sum(m[e][f"test_{key}"] for m in seeds) / len(seeds) for e in epochs]
                for key in ("psnr", "ssim")
            },
        }
    return curves


def save_curves(path: Path, curves: dict[str, dict[str, list]], floors: list[dict]) -> None:
    """Test PSNR and SSIM after each epoch, one line per mode, the scrambled input dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), dpi=110, layout="constrained")
    for ax, key, name in zip(fig.subplots(1, 2), ("psnr", "ssim"), ("test PSNR (dB)", "test SSIM")):
        for i, (label, curve) in enumerate(curves.items()):
            ax.plot(curve["epoch"], curve[key], marker="o", color=f"C{i}", label=label)
        ax.axhline(sum(f[key] for f in floors) / len(floors), color="gray", ls="--", label=FLOOR_LABEL)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    save_png(fig, path)


def _train_planned(config: TrainConfig, run_dir: Path, perm_seed: int, window: int | None, loss: str) -> dict:
    """One run of the study in a worker process (it loads its own data)."""
    return train_unshuffle(
        config, run_dir, UnshuffleTask(perm_seed, window, loss), resume=runs.is_run_dir(run_dir)
    )


def _title(settings: dict, config: TrainConfig) -> str:
    scrambling = (
        "whole image" if settings["window"] is None else f"{settings['window']}x{settings['window']} windows"
    )
    model = f"UnshuffleNet-{config.width}/{config.depth} k{config.kernel_size}"
    return (
        f"Pixel un-shuffling ({settings['dataset']}, {model}, "
        f"{scrambling}, {settings['loss'].upper()} loss, {len(settings['seeds'])} seed(s))"
    )


def unshuffle_table(summaries: dict[str, list[dict]], floors: list[dict], title: str) -> ResultTable:
    table = ResultTable(
        title,
        [
            ("mode", "mode", ""),
            ("trainable", "trainable params", ","),
            ("frozen", "frozen params", ","),
            ("psnr", "PSNR (dB)", ".2f"),
            ("ssim", "SSIM", ".4f"),
            ("train_time", "train time (s)", ".1f"),
            ("seeds", "seeds", ""),
        ],
    )
    table.add(
        mode=FLOOR_LABEL,
        psnr=mean_std([f["psnr"] for f in floors]),
        ssim=mean_std([f["ssim"] for f in floors]),
        seeds=len(floors),
    )
    for label, rows in summaries.items():
        table.add(
            mode=label,
            trainable=rows[0]["trainable_params"],
            frozen=rows[0]["frozen_params"],
            psnr=mean_std([r["test_psnr"] for r in rows]),
            ssim=mean_std([r["test_ssim"] for r in rows]),
            train_time=mean_std([r["train_time"] for r in rows]),
            seeds=len(rows),
        )
    return table


def _save_table(out_dir: Path, table: ResultTable, data: dict) -> None:
    md, csv_name, json_name = TABLE_FILES
    storage.atomic_write_bytes(out_dir / md, table.to_markdown().encode())
    storage.atomic_write_bytes(out_dir / csv_name, table.to_csv().encode())
    payload = {"title": table.title, "rows": table.rows, **data}
    storage.atomic_write_bytes(out_dir / json_name, json.dumps(payload, indent=2, default=str).encode())


def save_figure(
    path: Path,
    data: ImageData,
    permutation: PixelPermutation,
    run_dirs: dict[str, Path],
    table: ResultTable,
    n: int = 8,
) -> Path:
    """Rows: ground truth, scrambled, then each run's reconstruction of the same ``n`` test images."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = data.test_images[:n]
    truth = images.float() / 255
    psnr_of = {row["mode"]: row["psnr"] for row in table.rows}
    rows = [
        ("Ground truth", truth),
        (f"Scrambled\n{_db(psnr_of.get(FLOOR_LABEL))}", permutation.scramble(truth)),
    ]
    for label, run_dir in run_dirs.items():
        model, record = load_trained_model(run_dir, device="cpu")
        d = record["data"]  # reconstruct normalizes (and scrambles) the images for the trained network
        rows.append(
            (
                f"{label}\n{_db(psnr_of.get(label))}",
                reconstruct(model.model, images, permutation, d["mean"], d["std"]),
            )
        )
    fig = Figure(figsize=(1.0 * len(images) + 1.6, 1.05 * len(rows)), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(images), squeeze=False)
    for r, (label, batch) in enumerate(rows):
        for c in range(len(images)):
            ax = axes[r][c]
            picture = batch[c].permute(1, 2, 0).numpy()
            if picture.shape[-1] == 1:
                ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(picture.clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(table.title, fontsize=8)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.9, bottom=0.01, wspace=0.05, hspace=0.08)
    save_png(fig, path)
    return Path(path)


def _db(value) -> str:
    if value is None:
        return ""
    mean = value[0] if isinstance(value, tuple) else value
    return f"{mean:.1f} dB"


def unshuffle_reproduce_study(ctx: StudyContext) -> StudyResult:
    """Claim 3: un-shuffling with the small preset (settings in ``preset.options['unshuffle']``)."""
    options = dict(ctx.preset.options.get("unshuffle", {}))
    settings = {k: v for k, v in ctx.overrides.items() if k in REPRODUCE_SETTINGS}
    settings.setdefault("dataset", ctx.preset.base.dataset)
    settings.update(options)
    out_dir = ctx.out_dir / "unshuffle"
    table = unshuffle_study(
        out_dir, seeds=ctx.seeds_for("unshuffle"), processes=ctx.processes, threads=ctx.threads, **settings
    )
    caption = (
        "Rows: the test images, their scrambled pixels (the PSNR of doing nothing), then each mode's "
        "reconstruction of them (its PSNR in dB)."
    )
    figure = StudyFigure(out_dir / FIGURE_FILE, caption)
    curves = StudyFigure(
        out_dir / CURVES_FILE,
        "Test PSNR and SSIM after each epoch (mean over seeds); dashed: the scrambled input itself.",
    )
    return StudyResult(
        "unshuffle",
        [table],
        {"rows": table.rows, "settings": settings},
        section="unshuffle",
        figures=[figure, curves],
        files=[str(out_dir / name) for name in TABLE_FILES],
    )

"""The paper's second claim, as two studies of ``spatialmix reproduce``.

* ``robustness``: the classification study's Full, Chans and Space runs under attack
  (`spatialmix.robustness.attacks`): clean and robust accuracy per budget, with the gradient-masking
  checks of every evaluation.
* ``smoothing``: Chans models whose frozen random spatial filters are Gaussian-smoothed at a
  list of sigmas (``smooth_sigma``, see `spatialmix.core.inits.InitSpec`), trained and
  attacked the same way; clean and robust accuracy against sigma (table and plot).

Settings come from ``Preset.options["robustness"]`` and ``Preset.options["smoothing"]``; every
key is optional (defaults below, sized for the quick preset on 2 CPU cores). Beside the attack
settings, ``options["robustness"]["modes"]`` names the modes the robustness study attacks (default:
the preset's). The attack results are saved in each run directory (``robustness.json``) and read
back when ``reproduce`` runs again with the same settings and weights, so an interrupted study
loses no attack either.
"""

from __future__ import annotations

from pathlib import Path

from spatialmix.engine.parallel import run_side_by_side
from spatialmix.errors import SpatialmixError
from spatialmix.io.figures import save_png
from spatialmix.io.study_results import Figure, StudyResult
from spatialmix.robustness.attacks import RESULT_NAME
from spatialmix.robustness.run_attacks import attack_runs
from spatialmix.robustness.settings import DEFAULT_EPS, AttackSettings, eps_label
from spatialmix.studies.context import StudyContext, classification_run_dir, train_all, train_or_reuse
from spatialmix.ui.display import ResultTable, mean_std, say

# Defaults for a preset that sets no robustness options (the quick preset sets its own): a fixed
# subset of 500 test images and the standard strength of AttackSettings (APGD-CE-10 and APGD-T-10 on
# one target class on the examples still standing, then 30-step APGD-CE and APGD-T on every other
# class for the 50 nearest the decision boundary: within 1 point of 100-step AutoAttack at every
# budget on the quick preset's models, README); the reference (one target, to fit the time) on the
# 50 survivors nearest the boundary after those, the masking checks on the first 50.
ROBUSTNESS_DEFAULTS = {
    "eps": DEFAULT_EPS,
    "norm": "Linf",
    "n_examples": 500,
    "reference_examples": 50,
    "reference_targets": 1,
    "square_queries": 300,
    "seed": 0,
}
SMOOTHING_DEFAULTS = {"sigmas": (0.0, 0.5, 1.0, 2.0)}
ATTACK_PLOT_CAPTION = (
    "Robust accuracy against the attack budget: every run's worst case together, then "
    "each run alone beside the default attacks alone and the reference sample; red circles "
    "mark budgets where a gradient-masking check warned."
)


def attack_settings(ctx: StudyContext) -> AttackSettings:
    """The attack settings of the preset (``options["robustness"]``), on the study's device."""
    options = ctx.preset.options.get("robustness", {})
    names = [f for f in AttackSettings.__dataclass_fields__ if f != "device"]
    _check_keys("robustness", options, [*names, "modes"])
    values = {
        name: options.get(name, ROBUSTNESS_DEFAULTS.get(name, getattr(AttackSettings, name)))
        for name in names
    }
    return AttackSettings(**values, device=ctx.config().device).validate()


def robustness_modes(ctx: StudyContext) -> tuple[str, ...]:
    """The modes the robustness study attacks: ``options["robustness"]["modes"]`` or the preset's."""
    modes = tuple(ctx.preset.options.get("robustness", {}).get("modes", ctx.preset.modes))
    unknown = [m for m in modes if m not in ctx.preset.modes]
    if not modes or unknown:
        raise SpatialmixError(
            f"preset option robustness.modes must name some of the preset's modes "
            f"({', '.join(ctx.preset.modes)}), got {list(modes)}"
        )
    return modes


def smoothing_sigmas(ctx: StudyContext) -> tuple[float, ...]:
    options = ctx.preset.options.get("smoothing", {})
    _check_keys("smoothing", options, SMOOTHING_DEFAULTS)
    sigmas = tuple(float(s) for s in options.get("sigmas", SMOOTHING_DEFAULTS["sigmas"]))
    if not sigmas or any(not s >= 0 for s in sigmas):
        raise SpatialmixError(
            f"smoothing sigmas must be a non-empty list of numbers >= 0, got {list(sigmas)}"
        )
    return sigmas


def _check_keys(study: str, options: dict, valid) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SpatialmixError(
            f"preset option {study}.{unknown[0]} is unknown; valid ones: {', '.join(sorted(valid))}"
        )


def _train_and_attack(config, run_dir: Path, settings: AttackSettings) -> None:
    """One job of a study: train (or reuse) the run, then evaluate it (saved in its folder)."""
    train_or_reuse(config, run_dir)
    attack_runs(
        [run_dir],
        settings,
        out_name=RESULT_NAME,
        plot=None,
        reuse=True,
        progress=False,
        data_dir=config.data_dir,
    )  # the study's own data folder (a run's config.json is not trusted)


def attack_all(
    ctx: StudyContext, study: str, jobs: list[tuple[object, Path]], settings: AttackSettings, plot: Path
) -> list[dict]:
    """Train (or reuse) and attack every ``(config, run_dir)`` job; return the attack results in order.

    Side by side (``ctx.processes`` > 1) each worker trains a run and attacks it at once, so the
    cores stay busy; the results are then read back here (reused, not recomputed) for the plot.
    """
    run_dirs = [Path(run_dir) for _, run_dir in jobs]
    if plot is not None:  # the study's own folder (its runs may all live in another study's)
        plot.parent.mkdir(parents=True, exist_ok=True)
    if ctx.processes > 1 and len(jobs) > 1:
        work = [
            (_train_and_attack, (config.replace(threads=ctx.threads, progress=False), run_dir, settings))
            for config, run_dir in jobs
        ]
        run_side_by_side(
            work,
            processes=ctx.processes,
            threads=ctx.threads or 1,
            on_done=lambda i, _: say(f"[bold]{study}[/] {i + 1}/{len(jobs)}: evaluated {run_dirs[i]}"),
        )
    else:
        train_all(ctx, study, jobs)
    return attack_runs(
        run_dirs,
        settings,
        out_name=RESULT_NAME,
        plot=plot,
        reuse=True,
        progress=ctx.config().progress and ctx.processes == 1,
        data_dir=ctx.config().data_dir,
    )


def robustness_study(ctx: StudyContext) -> StudyResult:
    """Claim 2: are models with random frozen spatial mixers (Chans) more robust than Full ones?"""
    settings = attack_settings(ctx)
    jobs = [
        (ctx.config(mode=mode, seed=seed), classification_run_dir(ctx.out_dir, mode, seed))
        for seed in ctx.seeds_for("robustness")
        for mode in robustness_modes(ctx)
        if seed in ctx.seeds_for("robustness", mode)
    ]
    folder = ctx.out_dir / "robustness"
    # (the classification study's runs: reused when finished)
    results = attack_all(ctx, "robustness", jobs, settings, folder / "robustness.png")
    groups = {}
    for result in results:
        groups.setdefault(str(result["mode"]).capitalize(), []).append(result)
    title = (
        f"Robustness ({ctx.config().dataset}, {settings.norm}, {settings.n_examples or 'all'} test images, "
        f"worst case of {describe_attacks(settings)})"
    )
    tables = [
        accuracy_table(groups, "mode", title, settings),
        survival_table(groups, "mode", "Share of the correctly classified images that stay robust", settings),
    ]
    return StudyResult(
        "robustness",
        tables,
        study_data(results, settings, "mode"),
        section="robustness",
        figures=[Figure(folder / "robustness.png", ATTACK_PLOT_CAPTION)],
    )


def smoothing_study(ctx: StudyContext) -> StudyResult:
    """Claim 2, second half: does smoothing the frozen random filters make Chans models more robust?"""
    settings = attack_settings(ctx)
    sigmas = smoothing_sigmas(ctx)
    jobs = []
    for seed in ctx.seeds_for("smoothing"):
        for sigma in sigmas:
            config = ctx.config(mode="chans", seed=seed, smooth_sigma=sigma)
            if config == ctx.config(mode="chans", seed=seed):
                run_dir = classification_run_dir(ctx.out_dir, "chans", seed)  # the same run: train it once
            else:
                run_dir = ctx.out_dir / "smoothing" / f"chans-sigma{sigma:g}-seed{seed}"
            jobs.append((config, run_dir))
    folder = ctx.out_dir / "smoothing"
    results = attack_all(ctx, "smoothing", jobs, settings, folder / "smoothing-robustness.png")
    groups = {}
    for result in results:
        groups.setdefault(float(result["smooth_sigma"] or 0.0), []).append(result)
    groups = dict(sorted(groups.items()))
    title = (
        f"Smoothed frozen filters (Chans, {ctx.config().dataset}, {settings.norm}, worst case of "
        f"{describe_attacks(settings)})"
    )
    tables = [
        accuracy_table(groups, "sigma", title, settings),
        survival_table(
            groups, "sigma", "Smoothing: share of the correctly classified images that stay robust", settings
        ),
    ]
    plot = plot_against_sigma(groups, settings, folder / "smoothing.png")
    return StudyResult(
        "smoothing",
        tables,
        study_data(results, settings, "smooth_sigma"),
        section="smoothing",
        figures=[
            Figure(
                plot,
                "Chans: clean and robust accuracy (mean over seeds, one line per budget) "
                "against the smoothing sigma of the frozen random filters.",
            ),
            Figure(folder / "smoothing-robustness.png", ATTACK_PLOT_CAPTION),
        ],
    )


# --------------------------------------------------------------------------- tables, data, plot


def describe_attacks(settings: AttackSettings) -> str:
    names = {
        "apgd-ce": f"APGD-CE-{settings.steps}",
        "apgd-t": f"APGD-T-{settings.steps} x{settings.targets}",
        "pgd": f"PGD-{settings.steps}",
        "fgsm": "FGSM",
    }
    text = ", ".join(names[a] for a in settings.attacks)
    if settings.boundary_stage():
        steps, targets = settings.boundary_steps, settings.boundary_targets
        targets = "every other class" if targets is None else f"the {targets} classes ranked next after it"
        near = settings.boundary_examples or "all"
        text += f", then APGD-CE-{steps} + APGD-T-{steps} on {targets} for the {near} nearest the boundary"
    return (
        text
        + (f" (x{settings.restarts} restarts)" if settings.restarts > 1 else "")
        + " and the checks' attacks"
    )


def _budget(result: dict, eps: float) -> dict:
    return next(b for b in result["budgets"] if b["eps"] == eps)


def accuracy_table(groups: dict, key: str, title: str, settings: AttackSettings) -> ResultTable:
    """Clean and robust accuracy per group (mode or sigma), mean ± std over seeds."""
    budgets = [e for e in settings.eps if e > 0]
    columns = [(key, key, ".2g" if key == "sigma" else ""), ("clean_acc", "clean acc", ".3f")]
    columns += [(f"robust {eps_label(e)}", f"robust {eps_label(e)}", ".3f") for e in budgets]
    columns += [("warnings", "checks", ""), ("seeds", "seeds", "")]
    table = ResultTable(title, columns)
    for group, results in groups.items():
        row = {
            key: group,
            "clean_acc": mean_std([r["clean_acc"] for r in results]),
            "seeds": len(results),
            "warnings": ", ".join(
                dict.fromkeys(c["name"] for r in results for c in r["checks"] if not c["ok"])
            )
            or "ok",
        }
        for e in budgets:
            row[f"robust {eps_label(e)}"] = mean_std([_budget(r, e)["robust_acc"] for r in results])
        table.add(**row)
    return table


def survival_table(groups: dict, key: str, title: str, settings: AttackSettings) -> ResultTable:
    """Robust accuracy divided by clean accuracy: compares models of different clean accuracy fairly."""
    budgets = [e for e in settings.eps if e > 0]
    table = ResultTable(
        title,
        [(key, key, ".2g" if key == "sigma" else "")]
        + [(f"kept {eps_label(e)}", f"kept {eps_label(e)}", ".3f") for e in budgets],
    )
    for group, results in groups.items():
        row = {key: group}
        for e in budgets:
            row[f"kept {eps_label(e)}"] = mean_std(
                [_budget(r, e)["robust_acc"] / r["clean_acc"] for r in results if r["clean_acc"] > 0]
            )
        table.add(**row)
    return table


def study_data(results: list[dict], settings: AttackSettings, key: str) -> dict:
    """What results.json keeps: the settings, per run its numbers, and every warning."""
    runs_data = [
        {
            "run": r["run"],
            key: r[key],
            "mode": r["mode"],
            "seed": r["seed"],
            "clean_acc": r["clean_acc"],
            "robust_acc": {b["eps_label"]: b["robust_acc"] for b in r["budgets"]},
            "warnings": r["warnings"],
            "failed_checks": [c["name"] for c in r.get("checks", []) if not c["ok"]],
            "time_s": r.get("time_s"),
        }
        for r in results
    ]
    warnings = [f"{r['label']}: {w}" for r in results for w in r["warnings"]]
    return {"settings": settings.to_dict(), "runs": runs_data, "warnings": warnings}


def plot_against_sigma(groups: dict, settings: AttackSettings, path: Path) -> Path:
    """Clean and robust accuracy (mean over seeds, one line per budget) against the smoothing sigma."""
    save_png(sigma_figure(groups, settings), path, dpi=110)
    return path


def sigma_figure(groups: dict, settings: AttackSettings):
    """The figure of `plot_against_sigma`; its legend sits under the axes, where it covers no curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sigmas = list(groups)
    for eps in settings.eps:
        means = [mean_std([_budget(r, eps)["robust_acc"] for r in groups[s]])[0] for s in sigmas]
        ax.plot(sigmas, means, marker="o", label="clean" if eps == 0 else f"eps {eps_label(eps)}")
    ax.set_xlabel("smoothing sigma of the frozen spatial filters (pixels)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Chans: accuracy vs smoothing ({settings.norm})", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=7)
    return fig

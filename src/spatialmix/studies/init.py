"""The init study: how much of the Full-Chans gap, and of the robustness gain, comes from the prior
of the random spatial filters?

Chans models (spatial filters frozen at init, channel mixers learned) whose frozen filters come
from four priors, beside the classification study's Full and Space runs of the same seeds:

* ``default``: PyTorch's i.i.d. uniform init (the classification study's Chans run, reused);
* ``smoothed``: the same filters Gaussian-smoothed with the best sigma of the smoothing study
  (highest mean robust accuracy at the largest budget among its sigmas > 0) when it ran in this
  or an earlier ``reproduce`` call of the same preset, else `DEFAULT_SIGMA` (the run folder
  is the smoothing study's, so a run both studies need is trained once);
* ``covariance``: the closed-form covariance of Trockman et al. (ICLR 2023), `spatialmix.core.priors`;
* ``covariance-from-Full``: each layer's filters drawn from the Gaussian fit of the trained
  filters of the classification study's Full run of the same seed.

Every run is attacked with the robustness study's settings
(`spatialmix.studies.robustness.attack_settings`,
`spatialmix.robustness.run_attacks.attack_runs`; results saved as ``robustness.json`` in each run
folder and
reused). The result has a table of clean and robust accuracy (mean ± std over seeds), a table of
what each prior buys over the default one, the first seed's frozen filters side by side with
their radial spectra, and per run the numbers and the path of its ``robustness.json`` (whose
per-example ``robust_bits`` allow paired statistics).

The filters and spectra need depthwise convolutions: on a token-mixing model (mlpmixer) the
covariance priors are refused with a clear line (they are defined for k x k filters).
"""

from __future__ import annotations

from pathlib import Path

from spatialmix.analysis.filter_plots import plot_filter_grids, plot_radial_profiles
from spatialmix.analysis.filters import analyze_run
from spatialmix.errors import SpatialmixError
from spatialmix.io.figures import save_png
from spatialmix.io.study_results import Figure, StudyResult
from spatialmix.io.untrusted import read_json
from spatialmix.robustness.attacks import RESULT_NAME
from spatialmix.robustness.run_attacks import attack_runs
from spatialmix.robustness.settings import eps_label
from spatialmix.studies.context import StudyContext, classification_run_dir
from spatialmix.studies.robustness import (
    ATTACK_PLOT_CAPTION,
    accuracy_table,
    attack_all,
    attack_settings,
    describe_attacks,
)
from spatialmix.ui.display import ResultTable, mean_std, say

DEFAULT_SIGMA = 1.0  # pixels; the middle of the smoothing study's default sigmas (0.5, 1, 2)
FULL, SPACE, DEFAULT, SMOOTHED, COVARIANCE, COVARIANCE_FROM = (
    "Full",
    "Space",
    "Chans: default",
    "Chans: smoothed",
    "Chans: covariance",
    "Chans: covariance from Full",
)


def init_study(ctx: StudyContext) -> StudyResult:
    """Chans with default, smoothed, covariance and covariance-from-Full frozen filters, beside Full and
    Space."""
    settings = attack_settings(ctx)
    sigma, sigma_source = best_smoothing_sigma(ctx, settings)
    smoothed = f"{SMOOTHED} σ={sigma:g}"
    folder = ctx.out_dir / "init"
    first, second = [], []  # covariance-from-Full needs the Full run trained first
    for seed in ctx.seeds_for("init"):
        full_dir = classification_run_dir(ctx.out_dir, "full", seed)
        first += [
            (
                COVARIANCE,
                ctx.config(mode="chans", seed=seed, spatial_init="covariance"),
                folder / f"chans-covariance-seed{seed}",
            ),  # first: a model it does not fit fails at once
            (FULL, ctx.config(mode="full", seed=seed), full_dir),
            (SPACE, ctx.config(mode="space", seed=seed), classification_run_dir(ctx.out_dir, "space", seed)),
            (
                DEFAULT,
                ctx.config(mode="chans", seed=seed),
                classification_run_dir(ctx.out_dir, "chans", seed),
            ),
            (
                smoothed,
                ctx.config(mode="chans", seed=seed, smooth_sigma=sigma),
                ctx.out_dir / "smoothing" / f"chans-sigma{sigma:g}-seed{seed}",
            ),
        ]
        second.append(
            (
                COVARIANCE_FROM,
                ctx.config(mode="chans", seed=seed, spatial_init="covariance-from", init_from=str(full_dir)),
                folder / f"chans-covariance-from-full-seed{seed}",
            )
        )
    for jobs in (first, second):  # trained and attacked (side by side where ctx.processes > 1)
        attack_all(ctx, "init", [(config, run_dir) for _, config, run_dir in jobs], settings, plot=None)
    jobs = first + second
    results = attack_runs(
        [run_dir for _, _, run_dir in jobs],
        settings,
        out_name=RESULT_NAME,  # read back
        plot=folder / "init-robustness.png",
        reuse=True,
        progress=False,
        data_dir=ctx.config().data_dir,
    )
    order = [FULL, SPACE, DEFAULT, smoothed, COVARIANCE, COVARIANCE_FROM]
    groups = {name: [r for (group, _, _), r in zip(jobs, results) if group == name] for name in order}
    title = (
        f"Priors of the frozen random filters (Chans, {ctx.config().dataset}, {ctx.config().model}, "
        f"{settings.norm}, worst case of {describe_attacks(settings)}; smoothing σ={sigma:g} from "
        f"{sigma_source})"
    )
    tables = [
        accuracy_table(groups, "filters", title, settings),
        prior_gain_table(groups, settings, smoothed),
    ]
    figures = [Figure(folder / "init-robustness.png", ATTACK_PLOT_CAPTION)] + draw_filters(
        {name: runs_[0]["run"] for name, runs_ in groups.items() if runs_}, folder
    )
    data = {
        "settings": settings.to_dict(),
        "smoothing_sigma": sigma,
        "sigma_source": sigma_source,
        "groups": order,
        "runs": [run_entry(group, r) for (group, _, _), r in zip(jobs, results)],
        "warnings": [f"{r['label']}: {w}" for r in results for w in r["warnings"]],
    }
    return StudyResult("init", tables, data, section="init", figures=figures)


# --------------------------------------------------------------------------- the smoothing sigma


def best_smoothing_sigma(ctx: StudyContext, settings) -> tuple[float, str]:
    """The smoothing study's sigma > 0 of highest mean robust accuracy at the largest budget (ties: the
    higher clean accuracy, then the smaller sigma), and where it came from."""
    data = None
    if "smoothing" in ctx.results:
        data = ctx.results["smoothing"].data
    else:
        path = ctx.out_dir / "results.json"
        try:  # bounded and inside the study folder (results.json is untrusted)
            saved = read_json(path, "study results") if path.is_file() else {}
            if saved.get("preset") == ctx.preset.name:
                data = saved.get("studies", {}).get("smoothing", {}).get("data")
        except (SpatialmixError, AttributeError):
            data = None  # unreadable: fall back to the default
    budget = eps_label(max(settings.eps))
    scores = {}
    for run in (data or {}).get("runs", []) if isinstance(data, dict) else []:
        try:
            sigma, robust, clean = (
                float(run["smooth_sigma"] or 0),
                float(run["robust_acc"][budget]),
                float(run["clean_acc"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        if sigma > 0:
            scores.setdefault(sigma, []).append((robust, clean))
    if not scores:
        return DEFAULT_SIGMA, "the default (the smoothing study has not run)"
    mean = {s: (sum(r for r, _ in v) / len(v), sum(c for _, c in v) / len(v)) for s, v in scores.items()}
    best = max(mean, key=lambda s: (mean[s][0], mean[s][1], -s))
    return best, f"the smoothing study (best robust acc at {budget})"


# --------------------------------------------------------------------------- tables and data


def _budget_acc(result: dict, eps: float) -> float:
    return next(b["robust_acc"] for b in result["budgets"] if b["eps"] == eps)


def prior_gain_table(groups: dict, settings, smoothed: str) -> ResultTable:
    """Per prior: its gain over the default Chans filters (paired by seed), and the share of the Full - Chans
    clean-accuracy gap it closes (from the means; none where Chans with default filters is not behind
    Full)."""
    top = max(settings.eps)
    label = eps_label(top)
    table = ResultTable(
        "What the prior of the frozen filters buys (over Chans with default filters; paired by seed)",
        [
            ("filters", "filters", ""),
            ("clean_gain", "clean acc gain", ".3f"),
            ("robust_gain", f"robust gain {label}", ".3f"),
            ("gap_closed", "Full−Chans gap closed", ".2f"),
            ("seeds", "seeds", ""),
        ],
    )
    default = {r["seed"]: r for r in groups.get(DEFAULT, [])}
    full_mean = mean_std([r["clean_acc"] for r in groups.get(FULL, [])])[0] if groups.get(FULL) else None
    default_mean = mean_std([r["clean_acc"] for r in default.values()])[0] if default else None
    for name in (smoothed, COVARIANCE, COVARIANCE_FROM):
        paired = [(r, default[r["seed"]]) for r in groups.get(name, []) if r["seed"] in default]
        if not paired:
            continue
        gap = (full_mean - default_mean) if full_mean is not None else None
        prior_mean = mean_std([r["clean_acc"] for r, _ in paired])[0]
        table.add(
            filters=name,
            clean_gain=mean_std([r["clean_acc"] - d["clean_acc"] for r, d in paired]),
            robust_gain=mean_std([_budget_acc(r, top) - _budget_acc(d, top) for r, d in paired]),
            # no gap to close (shown as "-") where the default Chans filters already match Full
            gap_closed=(prior_mean - default_mean) / gap if gap is not None and gap > 0 else None,
            seeds=len(paired),
        )
    return table


def run_entry(group: str, result: dict) -> dict:
    """What results.json keeps of one run: its numbers and where its per-example results are."""
    return {
        "run": result["run"],
        "filters": group,
        "mode": result["mode"],
        "seed": result["seed"],
        "smooth_sigma": result.get("smooth_sigma"),
        "clean_acc": result["clean_acc"],
        "robust_acc": {b["eps_label"]: b["robust_acc"] for b in result["budgets"]},
        "robustness_json": str(Path(result["run"]) / f"{RESULT_NAME}.json"),
        "warnings": result["warnings"],
    }


# --------------------------------------------------------------------------- figures


def draw_filters(run_dirs: dict[str, str], folder: Path) -> list[Figure]:
    """The first seed's spatial filters of each group side by side, and their radial power spectra."""

    try:
        analyses = [analyze_run(run_dir, label=name) for name, run_dir in run_dirs.items()]
    except SpatialmixError as err:  # e.g. a model without depthwise filters: the tables stand alone
        say(f"[yellow]init[/]: no filter figures ({err})")
        return []
    figures = []
    for figure, name, caption in (
        (
            plot_filter_grids(analyses),
            "init-filters.png",
            "The first seed's spatial filters: learned (Full, Space) and frozen at each prior (Chans), each "
            "filter scaled by its own largest |weight|.",
        ),
        (
            plot_radial_profiles(analyses),
            "init-spectra.png",
            "Radial power spectra of those filters, relative to each layer's mean power (flat: white).",
        ),
    ):
        save_png(figure, folder / name, dpi=110)
        figures.append(Figure(folder / name, caption))
    return figures

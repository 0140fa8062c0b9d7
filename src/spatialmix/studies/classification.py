"""The classification study (claim 1): Full, Chans and Space trained on the same seeds."""

from __future__ import annotations

from spatialmix.io.study_results import StudyResult
from spatialmix.report.tables import classification_table
from spatialmix.studies.context import StudyContext, classification_run_dir, train_all


def classification_study(ctx: StudyContext) -> StudyResult:
    """Claim 1: the same model and seed trained in Full, Chans and Space mode."""
    jobs = [
        (ctx.config(mode=mode, seed=seed), classification_run_dir(ctx.out_dir, mode, seed))
        for seed in ctx.seeds_for("classification")
        for mode in ctx.preset.modes
        if seed in ctx.seeds_for("classification", mode)
    ]
    summaries = {mode: [] for mode in ctx.preset.modes}
    for (config, _), summary in zip(jobs, train_all(ctx, "classification", jobs)):
        summaries[config.mode].append(summary)
    table = classification_table(
        summaries,
        title=f"Classification ({ctx.preset.base.dataset}, {ctx.config().model}, {_seeds_text(ctx)})",
    )
    return StudyResult("classification", [table], {"runs": summaries}, section="classification")


def _seeds_text(ctx: StudyContext) -> str:
    counts = {mode: len(ctx.seeds_for("classification", mode)) for mode in ctx.preset.modes}
    if len(set(counts.values())) == 1:
        return f"{counts[ctx.preset.modes[0]]} seed(s)"
    return "seeds: " + ", ".join(f"{mode} {n}" for mode, n in counts.items())

"""The classification study (claim 1): Full, Chans and Space trained on the same seeds."""

from __future__ import annotations

from spatialmix.io.study_results import StudyResult
from spatialmix.report.tables import classification_table
from spatialmix.studies.context import StudyContext, classification_run_dir, train_all


def classification_study(ctx: StudyContext) -> StudyResult:
    """Claim 1: the same model and seed trained in Full, Chans and Space mode."""
    jobs = [
        (ctx.config(mode=mode, seed=seed), classification_run_dir(ctx.out_dir, mode, seed))
        for seed in ctx.seeds
        for mode in ctx.preset.modes
    ]
    summaries = {mode: [] for mode in ctx.preset.modes}
    for (config, _), summary in zip(jobs, train_all(ctx, "classification", jobs)):
        summaries[config.mode].append(summary)
    table = classification_table(
        summaries,
        title=f"Classification ({ctx.preset.base.dataset}, {ctx.config().model}, {len(ctx.seeds)} seed(s))",
    )
    return StudyResult("classification", [table], {"runs": summaries}, section="classification")

"""spatialmix: which parts of a vision network need to be learned?

Reproduce and extend "Rethinking the Role of Spatial Mixing" (Cazenavette, Julin, Lucey, 2025):

    import spatialmix as sm

    model = sm.create_model("convmixer-256/8", in_chans=3, num_classes=10)
    sm.apply_mixing(model, "chans", seed=0)      # spatial mixers frozen at their random init
    print(sm.summarize(model))

Every name below lives in one module of the package (see `spatialmix.api` for which).
"""

from spatialmix.version import __version__

__all__ = [
    "__version__",
    "analyze_run",
    "applied_inits",
    "apply_mixing",
    "Attack",
    "attack_runs",
    "ATTACKS",
    "AttackSettings",
    "build_model",
    "Callback",
    "CHANNEL",
    "CLAIMS",
    "ClassificationTask",
    "classify_layers",
    "count_parameters",
    "create_model",
    "crossed_interval",
    "crossed_ratio_interval",
    "DATASETS",
    "describe_model",
    "empirical_prior",
    "Estimate",
    "evaluate_robustness",
    "evaluate_run",
    "frozen_fingerprint",
    "ImageData",
    "InitSpec",
    "InputSpaceModel",
    "JobResources",
    "layers_of_kind",
    "LayerSelector",
    "list_models",
    "make_attack",
    "load_dataset",
    "load_image_folder",
    "load_trained_model",
    "make_permutation",
    "hartung_knapp",
    "mean_interval",
    "model_catalog",
    "MODEL_REGISTRY",
    "ModelInfo",
    "MODES",
    "paired_t_interval",
    "seed_slopes",
    "seeds_needed",
    "detectable_distance",
    "PixelPermutation",
    "plan_sweep",
    "Preset",
    "PRESETS",
    "psnr",
    "publish_results",
    "published_runs",
    "register_model",
    "render_docs",
    "reproduce",
    "resume_config",
    "robustness_table",
    "Run",
    "run_sweep",
    "SPATIAL",
    "SpatialmixError",
    "ssim",
    "STUDIES",
    "StudyResult",
    "summarize",
    "SweepSettings",
    "TensorBoardLogger",
    "train",
    "train_unshuffle",
    "trainable_parameters",
    "TrainConfig",
    "unshuffle_config",
    "unshuffle_study",
    "UnshuffleSettings",
    "UnshuffleTask",
    "Verdict",
    "verdict_table",
    "verdicts_for_runs",
    "verdicts_for_study",
    "WandbLogger",
    "write_report",
]


def __getattr__(name: str):
    # The library's names import torch (seconds); they load on first use, so that the command line
    # can build its options and answer --help without torch (spatialmix.cli imports no torch).
    if name not in __all__ or name == "__version__":
        raise AttributeError(f"module 'spatialmix' has no attribute {name!r}")
    from spatialmix import api

    value = getattr(api, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

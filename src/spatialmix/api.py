"""The public API: every name ``import spatialmix as sm`` gives, each from the one module it lives in.

``spatialmix/__init__.py`` lists these names in ``__all__`` and loads this module on the first use
of one of them (importing it pulls in torch, which takes seconds; the command line answers
``--help`` without it).
"""

from spatialmix.analysis.claims import CLAIMS, Verdict
from spatialmix.analysis.crossed import crossed_interval, crossed_ratio_interval
from spatialmix.analysis.filters import analyze_run
from spatialmix.analysis.statistics import (
    Estimate,
    detectable_distance,
    hartung_knapp,
    mean_interval,
    paired_t_interval,
    seed_slopes,
    seeds_needed,
)
from spatialmix.analysis.verdict_text import verdict_table
from spatialmix.analysis.verdicts_from_folders import verdicts_for_runs, verdicts_for_study
from spatialmix.core.inits import InitSpec
from spatialmix.core.mixing import (
    CHANNEL,
    MODES,
    SPATIAL,
    LayerSelector,
    applied_inits,
    apply_mixing,
    classify_layers,
    frozen_fingerprint,
    layers_of_kind,
    summarize,
    trainable_parameters,
)
from spatialmix.data.batches import InputSpaceModel
from spatialmix.data.datasets import DATASETS, ImageData, load_dataset
from spatialmix.data.imagefolder import load_image_folder
from spatialmix.data.permutation import PixelPermutation, make_permutation
from spatialmix.engine.callbacks import Callback, TensorBoardLogger, WandbLogger
from spatialmix.engine.classification import ClassificationTask
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.init_source import empirical_prior
from spatialmix.engine.resume import resume_config
from spatialmix.engine.tasks import build_model
from spatialmix.engine.train import load_trained_model
from spatialmix.engine.unshuffle import UnshuffleTask, psnr, ssim, unshuffle_config
from spatialmix.engine.unshuffle_train import train_unshuffle
from spatialmix.errors import SpatialmixError
from spatialmix.io.study_results import StudyResult
from spatialmix.models.factory import count_parameters, create_model, list_models
from spatialmix.models.info import ModelInfo, describe_model, model_catalog
from spatialmix.models.registry import MODEL_REGISTRY, register_model
from spatialmix.report.document import write_report
from spatialmix.report.published import publish_results, published_runs
from spatialmix.report.render_docs import render_docs
from spatialmix.robustness.catalog import ATTACKS, Attack, make_attack
from spatialmix.robustness.evaluate import evaluate_robustness
from spatialmix.robustness.results import robustness_table
from spatialmix.robustness.run_attacks import attack_runs, evaluate_run
from spatialmix.robustness.settings import AttackSettings
from spatialmix.studies.context import PRESETS, Preset
from spatialmix.studies.reproduce import STUDIES, reproduce
from spatialmix.studies.unshuffle import unshuffle_study
from spatialmix.studies.unshuffle_settings import UnshuffleSettings
from spatialmix.sweep.plan import plan_sweep
from spatialmix.sweep.run import run_sweep
from spatialmix.sweep.settings import JobResources, SweepSettings
from spatialmix.workflow.handle import Run
from spatialmix.workflow.training import train

"""Training: recipes by name (one module each), training jobs, and the loop that trains,
checkpoints, resumes and caches paired models."""

from . import distillation, fgsm_rs, pgd_at, robust_features, standard, trades  # noqa: F401  (registration)
from ..seeds import derive_seed
from .base import RECIPES, EpochReport, Recipe, frozen_parameters
from .distillation import DistillationRecipe, TeacherAtTemperature
from .fgsm_rs import FGSMRSRecipe
from .jobs import TrainJob, plan_jobs, recipe_class, training_code
from .loop import FitContext, TrainedModel, build_model, data_identity, fit
from .pgd_at import PGDATRecipe
from .standard import StandardRecipe
from .trades import TradesRecipe

__all__ = [
    "RECIPES",
    "DistillationRecipe",
    "EpochReport",
    "FGSMRSRecipe",
    "FitContext",
    "PGDATRecipe",
    "Recipe",
    "StandardRecipe",
    "TeacherAtTemperature",
    "TradesRecipe",
    "TrainJob",
    "TrainedModel",
    "build_model",
    "data_identity",
    "derive_seed",
    "fit",
    "frozen_parameters",
    "plan_jobs",
    "recipe_class",
    "training_code",
]

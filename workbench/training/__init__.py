"""Training: recipes by name (one module each) and the loop that trains, checkpoints,
resumes and caches paired models."""

from . import distillation, fgsm_rs, pgd_at, standard, trades  # noqa: F401  (registration)
from ..seeds import derive_seed
from .base import RECIPES, EpochReport, Recipe, frozen_parameters
from .loop import FitContext, TrainJob, TrainedModel, build_model, fit
from .distillation import TeacherAtTemperature

__all__ = [
    "RECIPES",
    "EpochReport",
    "FitContext",
    "Recipe",
    "TeacherAtTemperature",
    "TrainJob",
    "TrainedModel",
    "build_model",
    "derive_seed",
    "fit",
    "frozen_parameters",
]

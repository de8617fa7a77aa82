"""Training: recipes by name (one module each), training jobs, and the loop that trains,
checkpoints, resumes and caches paired models.

Importing the package registers the recipes (each module: its typed config and its loss),
which is what the study schema needs. The loop (:mod:`.loop`) and the job planning
(:mod:`.jobs`) are imported when one of their names is first asked for here: reading a
run folder builds the schema, and must not import the training code."""

from typing import Any

from . import distillation, fgsm_rs, pgd_at, robust_features, standard, trades  # noqa: F401  (registration)
from ..seeds import derive_seed
from .base import RECIPES, EpochReport, Recipe, frozen_parameters
from .distillation import DistillationRecipe, TeacherAtTemperature
from .fgsm_rs import FGSMRSRecipe
from .pgd_at import PGDATRecipe
from .standard import StandardRecipe
from .trades import TradesRecipe

_JOBS = ("TrainJob", "plan_jobs", "recipe_class", "training_code")
_LOOP = ("FitContext", "TrainedModel", "build_model", "data_identity", "fit")


def __getattr__(name: str) -> Any:
    if name in _JOBS:
        # the training code, on first use: the study schema imports this package for the recipes
        from . import jobs

        return getattr(jobs, name)
    if name in _LOOP:
        # the training code, on first use (as above)
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

"""What robust representations encode: inversion, feature visualisation, class-conditional
synthesis, perceptually aligned gradients scored by a judge (docs/methods.md, "Robust
representations"). Plain functions in :mod:`.core`, the judge in :mod:`.judge`, intervals
and paired tests in :mod:`.measures`, the whole probe's work in :func:`.run.represent`
(the study stage ``probe:represent`` wraps it)."""

from .core import (
    class_gaussian_seeds,
    class_mean_cosine,
    fit_class_gaussians,
    image_agreement,
    invert,
    noise_seeds,
    synthesise,
    targeted_l2,
    visualise_features,
)
from .judge import JudgeConfig, PixelJudge, fit_judge

__all__ = [
    "JudgeConfig",
    "PixelJudge",
    "class_gaussian_seeds",
    "class_mean_cosine",
    "fit_class_gaussians",
    "fit_judge",
    "image_agreement",
    "invert",
    "noise_seeds",
    "synthesise",
    "targeted_l2",
    "visualise_features",
]

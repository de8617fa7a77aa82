"""Attacks on models taking inputs in [0, 1]; ε and α in pixel units.

``ATTACKS.get(name)(model, x, y, eps, **options)`` is the uniform call (names: fgsm, pgd,
autoattack);
``LOSSES`` holds the per-example losses they ascend (ce, margin, dlr).
"""

from .base import (
    ATTACKS,
    NORMS,
    PRECISIONS,
    attack_mode,
    compile_for_attacks,
    default_alpha,
    perturbation_norm,
    project,
    random_perturbation,
)
from . import autoattack  # noqa: F401  (registers 'autoattack'; the module keeps its name)
from .fgsm import fgsm
from .losses import LOSSES
from .pgd import pgd

__all__ = [
    "ATTACKS",
    "LOSSES",
    "NORMS",
    "PRECISIONS",
    "attack_mode",
    "compile_for_attacks",
    "default_alpha",
    "fgsm",
    "perturbation_norm",
    "pgd",
    "project",
    "random_perturbation",
]

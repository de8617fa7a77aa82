"""Attacks on models taking inputs in [0, 1]; ε and α in pixel units.

``ATTACKS.get(name)(model, x, y, eps, **options)`` is the uniform call (``workbench list attacks``);
``LOSSES`` holds the per-example losses they ascend (ce, margin, dlr). Each attack is one
module that registers its function with its typed study config (``FGSMAttack``, ``PGDAttack``, ``AutoAttackAttack``):
the study schema's ``evaluation.attacks`` is built from them, and every module of this
package is imported (so registered) with it.
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
from .autoattack import AutoAttackAttack  # the module keeps its name (workbench.attacks.autoattack)
from .fgsm import FGSMAttack, fgsm
from .losses import LOSSES
from .pgd import PGDAttack, pgd
from ..registry import import_submodules  # isort: skip

import_submodules(__name__, __path__)  # every other attack module registers itself

__all__ = [
    "ATTACKS",
    "AutoAttackAttack",
    "FGSMAttack",
    "PGDAttack",
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

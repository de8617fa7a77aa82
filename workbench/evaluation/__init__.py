"""Evaluation: accuracy and adversarial risk under every declared attack over its ε grid,
transfer between the models of each pair, and soundness checks. Importing the package
registers its stages (``evaluate``, ``apgd_cascade``, ``soundness``), the ``evaluation:`` section
the worst-case and per-class table steps."""

from .robustness import EvalResult, EvaluationConfig, attack_batched, evaluate, evaluation_subset, score
from .soundness import SoundnessConfig
from .worst_case import WorstCaseConfig  # registers the APGD cascade's stage and the worst-case table step
from . import per_class  # noqa: F401  registers the per-class table step and its figures

__all__ = ["EvalResult", "EvaluationConfig", "SoundnessConfig", "WorstCaseConfig", "attack_batched", "evaluate", "evaluation_subset", "score"]

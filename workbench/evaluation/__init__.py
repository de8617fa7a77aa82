"""Evaluation: accuracy and adversarial risk under every declared attack over its ε grid,
transfer between the models of each pair, and soundness checks. Importing the package
registers its stages (``evaluate``, ``soundness``) and the ``evaluation:`` section."""

from .robustness import EvalResult, EvaluationConfig, attack_batched, evaluate, evaluation_subset, score
from .soundness import SoundnessConfig

__all__ = ["EvalResult", "EvaluationConfig", "SoundnessConfig", "attack_batched", "evaluate", "evaluation_subset", "score"]

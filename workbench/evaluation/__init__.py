"""Evaluation: accuracy and adversarial risk under every declared attack over its ε grid,
transfer between the models of each pair, and soundness checks. Importing the package
registers its stages (``evaluate``, ``soundness``), the ``evaluation:`` section and the
worst-case table step."""

from .robustness import EvalResult, EvaluationConfig, attack_batched, evaluate, evaluation_subset, score
from .soundness import SoundnessConfig
from . import worst_case  # noqa: F401  isort: skip  (registers the worst-case table step)

__all__ = ["EvalResult", "EvaluationConfig", "SoundnessConfig", "attack_batched", "evaluate", "evaluation_subset", "score"]

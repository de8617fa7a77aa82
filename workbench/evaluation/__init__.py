"""Evaluation: accuracy and adversarial risk under every declared attack over its ε grid,
transfer between the models of each pair, and soundness checks."""

from .robustness import EvalResult, attack_batched, evaluate, evaluation_subset, score

__all__ = ["EvalResult", "attack_batched", "evaluate", "evaluation_subset", "score"]

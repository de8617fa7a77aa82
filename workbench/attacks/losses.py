"""Per-example attack losses, registered by name in :data:`LOSSES` (kind ``"loss"``).

Every entry maps ``(logits (N, K) float, y (N,) int64) -> (N,)`` and is *maximised* by the
attacks, which ascend the sum over the batch (so an example's gradient does not depend on
the batch size). Larger means "more adversarial" for all three.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..registry import Registry
from ..types import Labels, Tensor

#: Attack losses by name: ``LOSSES.get("margin")(logits, y) -> (N,)``.
LOSSES: Registry[Callable[..., Tensor]] = Registry("loss")


def _true_and_best_other(logits: Tensor, y: Labels) -> tuple[Tensor, Tensor]:
    """z_y and max_{i≠y} z_i, both (N,)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    is_y = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
    z_other = logits.masked_fill(is_y, -math.inf).amax(dim=1)
    return z_y, z_other


@LOSSES.register("ce")
def cross_entropy(logits: Tensor, y: Labels) -> Tensor:
    """Cross-entropy −log softmax(z)_y per example (Goodfellow et al. 2015; Madry et al. 2018)."""
    return F.cross_entropy(logits, y, reduction="none")


@LOSSES.register("margin")
def margin(logits: Tensor, y: Labels, kappa: float = math.inf) -> Tensor:
    """C&W logit margin max(max_{i≠y} z_i − z_y, −κ) per example (Carlini & Wagner 2017).

    Positive exactly when the example is misclassified. The default κ = ∞ means *no
    clamp*: the loss keeps growing after the example is fooled, so it stays informative
    (and restarts can rank fooling perturbations). It is in logit units and does not
    saturate like softmax, which is what breaks defensive distillation's gradient masking.
    """
    z_y, z_other = _true_and_best_other(logits, y)
    m = z_other - z_y
    return m if math.isinf(kappa) else m.clamp(min=-kappa)


@LOSSES.register("dlr")
def dlr(logits: Tensor, y: Labels) -> Tensor:
    """Difference of Logits Ratio −(z_y − max_{i≠y} z_i)/(z_π1 − z_π3 + 1e−12) (Croce & Hein 2020).

    π sorts the logits in decreasing order. Invariant to shifting and (positively)
    rescaling the logits; needs at least 3 classes.
    """
    if logits.dim() != 2 or logits.shape[1] < 3:
        raise ValueError(f"the dlr loss needs logits of shape (N, K) with K >= 3, got {tuple(logits.shape)}")
    z_y, z_other = _true_and_best_other(logits, y)
    top = logits.topk(3, dim=1).values
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)

"""Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy 2015, arXiv:1412.6572)."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from ..config import AttackBase, Norm
from ..types import Images, Labels, Tensor
from .ascent import ascend
from .base import ATTACKS, check_batch, check_eps, check_precision, loss_objective, run_attack
from .losses import LOSSES


class FGSMAttack(AttackBase):
    """Goodfellow et al. 2015; L∞ only."""

    name: Literal["fgsm"]

    @property
    def norm(self) -> Norm:
        return "linf"

    @property
    def id(self) -> str:
        return self.label or ("fgsm" if self.loss == "ce" else f"fgsm-{self.loss}")

    def options(self) -> dict[str, Any]:
        return {"loss": self.loss}


@ATTACKS.register("fgsm", config=FGSMAttack)
def fgsm(
    model: nn.Module,
    x: Images,
    y: Labels,
    eps: float,
    *,
    loss: str = "ce",
    precision: str = "fp32",
) -> Tensor:
    """One signed-gradient step: x' = clip₀₁(x + ε·sign ∇ₓℓ(x, y)) (Goodfellow et al. 2015).

    Args:
        model: maps x (N, ...) in [0, 1] to logits (N, K); normalisation inside it.
        x: clean inputs in [0, 1], shape (N, ...).
        y: int64 labels, shape (N,).
        eps: L∞ budget in pixel units (8/255 = 8/255 of the [0, 1] range).
        loss: a :data:`~workbench.attacks.LOSSES` name; the attack ascends its batch sum.
        precision: ``"fp32"`` or ``"bf16"`` (autocast forward; the update stays float32).

    Returns:
        Detached adversarial inputs, same shape/dtype/device as ``x``. ``eps == 0``
        returns a clone of ``x`` without running the model. Deterministic. The model's
        train/eval mode and parameters' ``requires_grad`` are left as they were.
    """
    check_batch(x, y)
    eps = check_eps(eps)
    check_precision(precision)
    loss_fn = LOSSES.get(loss)
    if eps == 0.0:
        return x.detach().clone()

    def craft(x0: Tensor, y: Labels) -> Tensor:
        # one step of size ε from x: the ε-box clamp is the [0, 1] clip (x ± ε lies on the box)
        return ascend(loss_objective(model, y, loss_fn), x0, eps, 1, alpha=eps, starts=["clean"], precision=precision, model=model).x

    return run_attack(model, x, y, craft)

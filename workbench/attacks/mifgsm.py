"""Momentum Iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum",
arXiv:1710.06081), L∞."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt
from torch import nn

from ..config import AttackBase, Norm
from ..types import Images, Labels, Tensor
from .ascent import Momentum, ascend
from .base import ATTACKS, check_batch, check_eps, check_precision, loss_objective, run_attack
from .losses import LOSSES


class MIFGSMAttack(AttackBase):
    """Dong et al. 2018: iterative FGSM steps of ε/steps along the sign of an accumulated,
    L1-normalised gradient; L∞ only. (NI-FGSM's config is this one under its own name.)"""

    name: Literal["mifgsm"]
    steps: PositiveInt = Field(10, description="iterations T; each step is ε/T")
    decay: float = Field(1.0, ge=0, description="momentum μ (0: iterative FGSM, as Kurakin et al.'s BIM with α = ε/T)")

    @property
    def norm(self) -> Norm:
        return "linf"

    @property
    def id(self) -> str:
        if self.label:
            return self.label
        tag = f"{self.name}{self.steps}"
        return tag if self.loss == "ce" else f"{tag}-{self.loss}"

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps, "decay": self.decay, "loss": self.loss}


def momentum_fgsm(model: nn.Module, x: Images, y: Labels, eps: float, rule: type[Momentum], *, steps: int,
                  decay: float, loss: str, precision: str) -> Tensor:
    """T steps of α = ε/T from x on the engine with the momentum ``rule`` (MI-FGSM's
    :class:`~workbench.attacks.ascent.Momentum` or a subclass, e.g. NI-FGSM's look-ahead);
    the arguments are checked here. Deterministic (no random start); ``eps == 0`` returns a
    clone of ``x``."""
    check_batch(x, y)
    eps = check_eps(eps)
    check_precision(precision)
    loss_fn = LOSSES.get(loss)
    steps, decay = int(steps), float(decay)
    if steps < 1 or decay < 0:
        raise ValueError(f"need steps >= 1 and decay >= 0, got steps={steps}, decay={decay}")
    if eps == 0.0:
        return x.detach().clone()

    def craft(x0: Tensor, y: Labels) -> Tensor:
        # the engine's loop with the momentum step rule: projection, eval mode and (on CUDA)
        # graph replay come from the engine
        return ascend(loss_objective(model, y, loss_fn), x0, eps, steps, alpha=eps / steps, starts=["clean"],
                      rule=rule(decay), precision=precision, model=model).x

    return run_attack(model, x, y, craft)


@ATTACKS.register("mifgsm", config=MIFGSMAttack)
def mifgsm(
    model: nn.Module,
    x: Images,
    y: Labels,
    eps: float,
    *,
    steps: int = 10,
    decay: float = 1.0,
    loss: str = "ce",
    precision: str = "fp32",
) -> Tensor:
    """MI-FGSM (Dong et al. 2018, Algorithm 1): iterative FGSM with momentum on the
    L1-normalised gradient, T steps of α = ε/T.

    From x⁰ = x:

        gᵗ⁺¹ = μ·gᵗ + ∇ℓ(xᵗ) / ‖∇ℓ(xᵗ)‖₁   (per example; g⁰ = 0)
        xᵗ⁺¹ = clip₀₁(Π_{B∞(x,ε)}(xᵗ + α·sign gᵗ⁺¹))

    Args:
        model: maps x (N, ...) in [0, 1] to logits (N, K).
        x: clean inputs in [0, 1]; y: int64 labels (N,).
        eps: L∞ budget in pixel units.
        steps: T; decay: μ (1.0 in the paper; 0 gives iterative FGSM with α = ε/T).
        loss: a :data:`~workbench.attacks.LOSSES` name; precision: ``"fp32"`` or ``"bf16"``.

    Returns:
        Detached adversarial inputs like ``x``; deterministic (no random start). ``eps == 0``
        returns a clone of ``x``. The model's mode and ``requires_grad`` flags are restored.
    """
    return momentum_fgsm(model, x, y, eps, Momentum, steps=steps, decay=decay, loss=loss, precision=precision)

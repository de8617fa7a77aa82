"""Nesterov Iterative FGSM (Lin et al. 2020, "Nesterov Accelerated Gradient and Scale
Invariance for Adversarial Attacks", arXiv:1908.06281), L∞: MI-FGSM with the gradient taken
at a look-ahead point. One module: its config, its step rule and the attack function."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ..config import AttackBase, Norm
from ..types import Images, Labels, Tensor
from .ascent import Ball, Momentum, ascend
from .base import ATTACKS, _per_example, check_batch, check_eps, check_precision, loss_objective, run_attack
from .losses import LOSSES


class Nesterov(Momentum):
    """NI-FGSM's rule: ``m ← μ·m + g/mean|g|`` per example and ``x ← x + α·sign m`` (MI-FGSM's),
    with g taken at the look-ahead point ``x + α·μ·m`` (not clipped, as in the paper).

    The gradient is scaled by its mean absolute value, as the authors' code does: the scale
    sets how far the look-ahead reaches (with ‖g‖₁, as the paper's equation reads, α·μ·m is
    about α·t/d, a look-ahead of nothing on images); the sign step itself ignores it."""

    lookahead = True

    def begin(self, ball: Ball, x_adv: Tensor) -> None:
        super().begin(ball, x_adv)
        self.ahead = x_adv.clone()  # a buffer updated in place (CUDA-graph replay)

    def point(self, ball: Ball, x_adv: Tensor, alpha: float) -> Tensor:
        return torch.add(x_adv, self.m, alpha=alpha * self.decay, out=self.ahead)

    def move(self, ball: Ball, x_adv: Tensor, grad: Tensor, alpha: float) -> None:
        mean = grad.flatten(1).abs().mean(1).clamp_min(torch.finfo(grad.dtype).tiny)  # 0 / tiny: a zero step
        self.m.mul_(self.decay).add_(grad / _per_example(mean, ball.x))
        x_adv.add_(self.m.sign(), alpha=alpha)


class NIFGSMAttack(AttackBase):
    """Lin et al. 2020: MI-FGSM whose gradient is taken at the look-ahead x + α·μ·m; L∞ only."""

    name: Literal["nifgsm"]
    steps: PositiveInt = Field(10, description="iterations T; each step is ε/T")
    decay: float = Field(1.0, ge=0, description="momentum μ (0: iterative FGSM with α = ε/T)")

    @property
    def norm(self) -> Norm:
        return "linf"

    @property
    def id(self) -> str:
        if self.label:
            return self.label
        tag = f"nifgsm{self.steps}"
        return tag if self.loss == "ce" else f"{tag}-{self.loss}"

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps, "decay": self.decay, "loss": self.loss}


@ATTACKS.register("nifgsm", config=NIFGSMAttack)
def nifgsm(
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
    """NI-FGSM (Lin et al. 2020, eqs. 6–8): MI-FGSM with the gradient taken at the Nesterov
    look-ahead xᵗ + α·μ·mᵗ, T steps of α = ε/T.

    From x⁰ = x, m⁰ = 0:

        gᵗ = ∇ℓ(xᵗ + α·μ·mᵗ)
        mᵗ⁺¹ = μ·mᵗ + gᵗ / mean|gᵗ|   (per example; the authors' code)
        xᵗ⁺¹ = clip₀₁(Π_{B∞(x,ε)}(xᵗ + α·sign mᵗ⁺¹))

    Arguments and result as :func:`~workbench.attacks.mifgsm.mifgsm` (deterministic; ``eps == 0``
    returns a clone of ``x``; ``decay=0`` is iterative FGSM, equal to MI-FGSM's).
    """
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
        return ascend(loss_objective(model, y, loss_fn), x0, eps, steps, alpha=eps / steps, starts=["clean"],
                      rule=Nesterov(decay), precision=precision, model=model).x

    return run_attack(model, x, y, craft)

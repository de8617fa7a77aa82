"""Nesterov Iterative FGSM (Lin et al. 2020, "Nesterov Accelerated Gradient and Scale
Invariance for Adversarial Attacks", arXiv:1908.06281), L∞: MI-FGSM with the gradient taken
at a look-ahead point. One module: its config (MI-FGSM's settings), its step rule and the attack
function."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..types import Images, Labels, Tensor
from .ascent import Ball, Momentum
from .base import ATTACKS, _per_example
from .mifgsm import MIFGSMAttack, momentum_fgsm


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


class NIFGSMAttack(MIFGSMAttack):
    """Lin et al. 2020: MI-FGSM whose gradient is taken at the look-ahead x + α·μ·m; L∞ only
    (MI-FGSM's settings: steps T, decay μ, loss)."""

    name: Literal["nifgsm"]  # type: ignore[assignment]


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
    return momentum_fgsm(model, x, y, eps, Nesterov, steps=steps, decay=decay, loss=loss, precision=precision)

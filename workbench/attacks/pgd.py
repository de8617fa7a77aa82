"""Projected Gradient Descent (Madry et al. 2018, arXiv:1706.06083), L∞, L2 and L1 (SLIDE's sparse
steps, Tramèr & Boneh 2019), with restarts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ..config import AttackBase, AttackNorm, Eps

from ..types import Images, Labels, Tensor
from .ascent import SparseL1, ascend
from .base import (
    ATTACKS,
    LossFn,
    check_batch,
    check_eps,
    check_norm,
    check_precision,
    default_alpha,
    loss_objective,
    run_attack,
)
from .losses import LOSSES


class PGDAttack(AttackBase):
    """Madry et al. 2018."""

    name: Literal["pgd"]
    norm: AttackNorm = "linf"
    steps: PositiveInt = 20
    alpha: Eps | None = Field(None, description="step size (default 2.5·eps/steps)")
    restarts: PositiveInt = 1
    random_start: bool = True
    sparsity: float = Field(99.0, ge=0, lt=100, description="L1 only: SLIDE's percentile q; each step moves the "
                            "top (100 − q) % of the gradient's coordinates")

    @property
    def id(self) -> str:
        if self.label:
            return self.label
        tag = f"pgd{self.steps}-{self.norm}"
        if self.restarts > 1:
            tag += f"-r{self.restarts}"
        return tag if self.loss == "ce" else f"{tag}-{self.loss}"

    def options(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "alpha": self.alpha,
            "norm": self.norm,
            "restarts": self.restarts,
            "random_start": self.random_start,
            "loss": self.loss,
            **({"sparsity": self.sparsity} if self.norm == "l1" else {}),
        }


def pgd_starts(norm: str, restarts: int, random_start: bool = True) -> list[str]:
    """The start of each restart: random (or all clean without ``random_start``); at L2 with
    several restarts the first starts from the clean input. At L2 the clean start is often the
    strongest single one (its first step is a full step along the gradient, none spent
    leaving a random offset), and a random start alone can miss it (issue 19). L1 likewise
    (SLIDE starts at x)."""
    if not random_start:
        return ["clean"] * restarts
    if norm in ("l2", "l1") and restarts > 1:
        return ["clean"] + ["random"] * (restarts - 1)
    return ["random"] * restarts


@ATTACKS.register("pgd", config=PGDAttack)
def pgd(
    model: nn.Module,
    x: Images,
    y: Labels,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    *,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    precision: str = "fp32",
    generator: torch.Generator | None = None,
    sparsity: float = 99.0,
    trace: Callable[[int, int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Projected gradient ascent on ℓ within the ε-ball around x (Madry et al. 2018).

    L∞: x⁰ = clip₀₁(x + U[−ε, ε]); xᵗ⁺¹ = clip₀₁(Π_{B∞(x,ε)}(xᵗ + α·sign ∇ℓ)).
    L2: x⁰ = clip₀₁(x + δ₀), δ₀ a Gaussian direction at radius ε·U[0, 1] (torchattacks'
    PGDL2; the first of several restarts starts at x); steps α·g/‖g‖₂ per example;
    Π rescales δ to ‖δ‖₂ ≤ ε; then clip₀₁.
    L1 (SLIDE, Tramèr & Boneh 2019): steps α·e, e = sign g on the top (100 − ``sparsity``) %
    of |g| (box-blocked coordinates left out), L1-normalised; Π the exact projection onto
    the L1 ball ∩ [0, 1]; random starts a Gaussian direction at L1 radius ε·U[0, 1], projected
    (the first of several restarts starts at x).

    Args:
        model: maps x (N, ...) in [0, 1] to logits (N, K); normalisation inside it.
        x: clean inputs in [0, 1], shape (N, ...).
        y: int64 labels, shape (N,).
        eps: budget in pixel units (L∞: per coordinate; L2: Euclidean norm per example; L1: the
            sum of |δᵢ| per example).
        alpha: step size in the same units; default 2.5·ε/steps (docs/methods.md).
        steps: gradient steps per restart (0 returns the start point).
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        random_start: start from a random point of the ball (else from x); at L2 with
            several restarts the first starts from x (:func:`pgd_starts`).
        restarts: independent runs; per example the worst case is kept: a perturbation
            that fools the model (argmax ≠ y) beats one that does not, and among equal
            status the higher loss wins (the first restart on ties). This is "mean over x
            of the worst case". Decided by one extra forward per restart (only if > 1),
            at the attack's precision; no host synchronisation.
        loss: a :data:`~workbench.attacks.LOSSES` name; the attack ascends its batch sum.
        precision: ``"fp32"`` or ``"bf16"`` (autocast forward, meant for CUDA); δ and every
            update stay float32.
        generator: makes random starts reproducible; it may live on another device than x.
        sparsity: L1 only: SLIDE's percentile q in [0, 100).
        trace: ``trace(restart, t, loss, correct)`` at every iterate t = 0 … steps of every
            restart (t = steps: the final one), with the per-example loss the attack ascends
            and whether the model still classifies the iterate correctly (detached; from the
            engine's own forwards, see :func:`~.ascent.ascend`). The steps then run eagerly.

    Returns:
        Detached adversarial inputs, same shape/dtype/device as ``x``. ``eps == 0``
        returns a clone of ``x`` without running the model. The model's train/eval mode
        and parameters' ``requires_grad`` are left as they were; no parameter ``.grad`` is
        written, so it is safe inside a training loop.

    Speed (see :mod:`workbench.attacks.base`): in-place updates with the ε-box clamp
    precomputed (three elementwise passes per L∞ step), channels_last for conv nets, and
    on CUDA one captured step replayed as a CUDA graph; results are those of the plain
    eager loop up to the summation order inside convolutions.
    """
    check_batch(x, y)
    eps = check_eps(eps)
    check_norm(norm)
    rule = SparseL1(sparsity) if norm == "l1" else None  # None: the engine's rule for the norm
    check_precision(precision)
    loss_fn: LossFn = LOSSES.get(loss)
    steps, restarts = int(steps), int(restarts)
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    alpha = default_alpha(eps, steps) if alpha is None else float(alpha)
    if not alpha >= 0.0:
        raise ValueError(f"alpha must be >= 0 (pixel units), got {alpha!r}")
    if eps == 0.0:
        return x.detach().clone()

    def craft(x0: Tensor, y: Labels) -> Tensor:
        def worst_case(x_adv: Tensor) -> tuple[Tensor, Tensor]:
            # fooling beats not fooling; among equal status the higher loss wins
            logits = model(x_adv).float()
            return logits.argmax(dim=1) != y, loss_fn(logits, y)

        objective, on_step = loss_objective(model, y, loss_fn), None
        if trace is not None:
            def objective(x_adv: Tensor) -> tuple[Tensor, Tensor]:  # the loss, and the iterate's correctness
                logits = model(x_adv).float()
                return loss_fn(logits, y), logits.argmax(dim=1) == y

            def on_step(start: int, t: int, x_adv: Tensor, out: tuple[Tensor, Tensor]) -> None:
                trace(start, t, out[0].detach(), out[1].detach())

        return ascend(objective, x0, eps, steps, norm=norm, alpha=alpha,
                      starts=pgd_starts(norm, restarts, random_start), keep="last",
                      score=worst_case, generator=generator, precision=precision, model=model, rule=rule,
                      trace=on_step).x

    return run_attack(model, x, y, craft, generator)

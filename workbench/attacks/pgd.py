"""Projected Gradient Descent (Madry et al. 2018, arXiv:1706.06083), L∞ and L2, with restarts."""

from __future__ import annotations

import torch
from torch import nn

from ..types import Images, Labels, Tensor
from .base import (
    ATTACKS,
    LossFn,
    _per_example,
    check_batch,
    check_eps,
    check_norm,
    check_precision,
    default_alpha,
    evaluate,
    input_gradient,
    perturbation_norm,
    random_start as _random_start,
    run_attack,
    run_steps,
)
from .losses import LOSSES


def _pgd_linf(model, x, y, eps, alpha, steps, start, loss_fn, precision, generator) -> Tensor:
    # The ε-box intersected with [0, 1], computed once: projection and clip01 are then a
    # single clamp per step, identical to clip01(Π_ε(·)) because the box contains x.
    lo = (x - eps).clamp_(min=0.0)
    hi = (x + eps).clamp_(max=1.0)
    x_adv = _random_start(x, eps, "linf", generator) if start else x.clone()

    def step() -> None:  # in place: sign, add, clamp = three elementwise passes
        grad = input_gradient(model, x_adv, y, loss_fn, precision)
        x_adv.add_(grad.sign(), alpha=alpha).clamp_(lo, hi)

    run_steps(step, steps, model, x)
    return x_adv


def _pgd_l2(model, x, y, eps, alpha, steps, start, loss_fn, precision, generator) -> Tensor:
    x_adv = _random_start(x, eps, "l2", generator) if start else x.clone()
    tiny = torch.finfo(x.dtype).tiny

    def step() -> None:  # in place throughout
        grad = input_gradient(model, x_adv, y, loss_fn, precision)
        # α·g/‖g‖₂ per example, evaluated as (α·g)/‖g‖: a zero gradient gives a zero step,
        # never 0·∞ = NaN (the clamp only touches norms below the smallest normal float).
        g_norm = _per_example(perturbation_norm(grad, "l2"), x).clamp_min(tiny)
        x_adv.addcdiv_(grad, g_norm, value=alpha)
        # Π: rescale δ to ‖δ‖₂ ≤ ε, then clip01 (which only shortens δ, so ‖δ‖₂ ≤ ε holds).
        delta = x_adv.sub_(x)
        d_norm = _per_example(perturbation_norm(delta, "l2"), x).clamp_min(tiny)
        torch.addcmul(x, delta, (eps / d_norm).clamp_(max=1.0), out=x_adv).clamp_(0.0, 1.0)

    run_steps(step, steps, model, x)
    return x_adv


@ATTACKS.register("pgd")
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
) -> Tensor:
    """Projected gradient ascent on ℓ within the ε-ball around x (Madry et al. 2018).

    L∞: x⁰ = clip₀₁(x + U[−ε, ε]); xᵗ⁺¹ = clip₀₁(Π_{B∞(x,ε)}(xᵗ + α·sign ∇ℓ)).
    L2: x⁰ = clip₀₁(x + δ₀), δ₀ uniform in the L2 ball; steps α·g/‖g‖₂ per example;
    Π rescales δ to ‖δ‖₂ ≤ ε; then clip₀₁.

    Args:
        model: maps x (N, ...) in [0, 1] to logits (N, K); normalisation inside it.
        x: clean inputs in [0, 1], shape (N, ...).
        y: int64 labels, shape (N,).
        eps: budget in pixel units (L∞: per coordinate; L2: Euclidean norm per example).
        alpha: step size in the same units; default 2.5·ε/steps (docs/methods.md).
        steps: gradient steps per restart (0 returns the start point).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a random point of the ball (else from x).
        restarts: independent runs; per example the worst case is kept: a perturbation
            that fools the model (argmax ≠ y) beats one that does not, and among equal
            status the higher loss wins (the first restart on ties). This is "mean over x
            of the worst case". Decided by one extra forward per restart (only if > 1),
            at the attack's precision; no host synchronisation.
        loss: a :data:`~workbench.attacks.LOSSES` name; the attack ascends its batch sum.
        precision: ``"fp32"`` or ``"bf16"`` (autocast forward, meant for CUDA); δ and every
            update stay float32.
        generator: makes random starts reproducible; it may live on another device than x.

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

    run = _pgd_linf if norm == "linf" else _pgd_l2

    def craft(x0: Tensor, y: Labels) -> Tensor:
        best = run(model, x0, y, eps, alpha, steps, random_start, loss_fn, precision, generator)
        if restarts == 1:
            return best
        # Worst case per example: fooling beats not fooling; among equal status the higher
        # loss wins. Tensor ops only (no host sync); one extra forward per restart.
        best_loss, best_fooled = evaluate(model, best, y, loss_fn, precision)
        for _ in range(restarts - 1):
            cand = run(model, x0, y, eps, alpha, steps, random_start, loss_fn, precision, generator)
            loss_r, fooled_r = evaluate(model, cand, y, loss_fn, precision)
            better = (fooled_r & ~best_fooled) | ((fooled_r == best_fooled) & (loss_r > best_loss))
            best = torch.where(_per_example(better, x0), cand, best)
            best_loss = torch.where(better, loss_r, best_loss)
            best_fooled = best_fooled | fooled_r
        return best

    return run_attack(model, x, y, craft, generator)

"""The one ascent engine: projected (sign-)gradient ascent over an ε-ball ∩ [0, 1].

Every gradient search of the workbench runs here: PGD (and FGSM, one step from x), the
Lipschitz feature search and logit-Lipschitz ascent, the linearity γ search, TRADES' inner
maximisation and the training monitors. What differs between them is a callback:

- ``objective(x_adv) -> (N,)``: per-example values; the engine ascends their *sum* (so an
  example's step does not depend on the batch), or ``(values, score)``;
- the score that decides which iterate is kept per example (:data:`KEEP` below).

The step rule, written once (METHODS.md, "PGD"): L∞ ``x ← clip_{B∞(x,ε)∩[0,1]}(x + α·sign g)``;
L2 ``x ← clip₀₁(Π_{B₂(x,ε)}(x + α·g/‖g‖₂))`` per example, with α = 2.5·ε/steps by default
(:func:`default_alpha`). Starts (one per restart): a random point of the ball (:func:`~.base.random_start`), the
clean input, a given tensor, or a callable. Random draws come from the caller's generator
(or torch's global one when it passes none), in the order the starts are listed.

The engine does not touch the model's mode or memory layout: callers run it inside
:func:`~workbench.attacks.base.run_attack` (eval mode, frozen parameters, channels_last) or
:func:`~workbench.attacks.base.attack_mode`. The iterate is updated in place; with
``keep="last"`` on CUDA the step is replayed as a CUDA graph (:func:`run_steps`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from ..types import Tensor
from .base import (
    _per_example,
    check_norm,
    default_alpha,
    forward_context,
    perturbation_norm,
    random_start,
    run_steps,
)

#: ``"last"``: each start's final iterate; among several starts, per example the best by
#: ``score(x_adv)`` (one extra forward per start, only when there are several).
#: ``"best"``: the best iterate over every step of every start (the start and the final
#: iterate included: steps + 1 forwards per start), scored by the objective's own forward.
KEEP = ("last", "best")

Score = Union[Tensor, tuple[Tensor, ...]]
#: a start: "random" (:func:`~workbench.attacks.base.random_start`), "clean" (x itself), a tensor x + δ₀, or
#: ``start(ball, generator) -> x + δ₀``
Start = Union[str, Tensor, Callable[["Ball", Union[torch.Generator, None]], Tensor]]


@dataclass
class Ball:
    """The feasible set B_norm(x, ε) ∩ [0, 1] around clean inputs ``x`` (N, ...)."""

    x: Tensor
    eps: float
    norm: str

    def __post_init__(self) -> None:
        check_norm(self.norm)
        # The L∞ box ∩ [0, 1], computed once: projection and clip01 are then one clamp per
        # step, identical to clip01(Π_ε(·)) because the box contains x.
        if self.norm == "linf":
            self.lo = (self.x - self.eps).clamp_(min=0.0)
            self.hi = (self.x + self.eps).clamp_(max=1.0)

    def clip(self, x_adv: Tensor) -> Tensor:
        """Project ``x_adv`` into the ball ∩ [0, 1] in place (L2: rescale δ, then clip01)."""
        if self.norm == "linf":
            return x_adv.clamp_(self.lo, self.hi)
        tiny = torch.finfo(x_adv.dtype).tiny
        delta = x_adv.sub_(self.x)
        d_norm = _per_example(perturbation_norm(delta, "l2"), self.x).clamp_min(tiny)
        # clip01 only shortens δ, so ‖δ‖₂ ≤ ε still holds after it
        return torch.addcmul(self.x, delta, (self.eps / d_norm).clamp_(max=1.0), out=x_adv).clamp_(0.0, 1.0)

    def step(self, x_adv: Tensor, grad: Tensor, alpha: float) -> None:
        """One ascent step of size ``alpha`` along ``grad``, projected, in place."""
        if self.norm == "linf":
            x_adv.add_(grad.sign(), alpha=alpha).clamp_(self.lo, self.hi)
            return
        # α·g/‖g‖₂ per example, evaluated as (α·g)/‖g‖: a zero gradient gives a zero step,
        # never 0·∞ = NaN (the clamp only touches norms below the smallest normal float).
        g_norm = _per_example(perturbation_norm(grad, "l2"), self.x).clamp_min(torch.finfo(grad.dtype).tiny)
        x_adv.addcdiv_(grad, g_norm, value=alpha)
        self.clip(x_adv)

    def start(self, start: Start, generator: torch.Generator | None) -> Tensor:
        """A fresh iterate for one restart, in ``x``'s dtype and memory layout."""
        if isinstance(start, str):
            if start == "random":
                return random_start(self.x, self.eps, self.norm, generator)
            if start == "clean":
                return self.x.clone()
            raise ValueError(f"unknown start {start!r}; valid: random, clean, a tensor or a callable")
        x0 = start(self, generator) if callable(start) else start
        return torch.empty_like(self.x).copy_(x0.detach())


def gaussian_start(std: float) -> Callable[[Ball, torch.Generator | None], Tensor]:
    """Start at x + N(0, std²) projected into the ball ∩ [0, 1] (a small random start that
    breaks the symmetry at δ = 0, e.g. Yang et al.'s logit ascent)."""

    def start(ball: Ball, generator: torch.Generator | None) -> Tensor:
        x = ball.x
        dev = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
        return ball.clip(x + std * noise)

    return start


@dataclass
class Ascent:
    """What :func:`ascend` found: per example the kept iterate and its score (None when
    no score was computed: one start with ``keep="last"``)."""

    x: Tensor
    score: Score | None


def _better(new: Score, old: Score) -> Tensor:
    """Strictly better per example; tuples compare lexicographically (first on ties)."""
    if isinstance(new, Tensor):
        return new > old
    out = new[-1] > old[-1]
    for n, o in zip(reversed(new[:-1]), reversed(old[:-1])):
        out = (n > o) | ((n == o) & out)
    return out


def _take(better: Tensor, new: Score, old: Score) -> Score:
    if isinstance(new, Tensor):
        return torch.where(better, new, old)
    return tuple(torch.where(better, n, o) for n, o in zip(new, old))


def _split(out: Score) -> tuple[Tensor, Tensor]:
    return (out[0], out[1]) if isinstance(out, tuple) else (out, out)


def ascend(
    objective: Callable[[Tensor], Score],
    x: Tensor,
    eps: float,
    steps: int,
    *,
    norm: str = "linf",
    alpha: float | None = None,
    starts: Sequence[Start] = ("random",),
    keep: str = "last",
    score: Callable[[Tensor], Score] | None = None,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    model: nn.Module | None = None,
) -> Ascent:
    """Projected gradient ascent of Σᵢ objective(x_adv)ᵢ over B_norm(x, ε) ∩ [0, 1].

    Args:
        objective: ``x_adv -> values (N,)``, differentiable in x_adv, called under the
            forward precision; with ``keep="best"`` it may return ``(values, score)``
            (the score of that iterate, from the same forward; default the values).
        x: clean inputs in [0, 1], float32/64, (N, ...); the iterates keep its layout.
        eps, norm: the ball (pixel units; L∞ per coordinate, L2 per example).
        steps: gradient steps per start.
        alpha: step size; default 2.5·ε/steps.
        starts: one entry per restart (see :data:`Start`).
        keep: ``"last"`` or ``"best"`` (see :data:`KEEP`).
        score: with ``keep="last"``, ``x_adv -> (N,)`` or a tuple of (N,) compared
            lexicographically (PGD: (fooled, loss)); evaluated without gradients.
        generator: random starts; torch's global generator when None.
        precision: ``"fp32"`` or ``"bf16"`` (autocast) for every objective/score call.
        model: the model behind the objective, for the CUDA-graph safety check.
    """
    if keep not in KEEP:
        raise ValueError(f"unknown keep {keep!r}; valid: {', '.join(KEEP)}")
    ball = Ball(x, float(eps), norm)
    alpha = default_alpha(eps, steps) if alpha is None else float(alpha)
    ctx = lambda: forward_context(x.device, precision)  # noqa: E731
    graph_model = model if model is not None else nn.Module()

    def gradient(x_adv: Tensor) -> tuple[Tensor, Score]:
        # x_adv is a leaf updated in place: it requires grad only for this call
        x_adv.requires_grad_(True)
        try:
            with torch.enable_grad(), ctx():
                out = objective(x_adv)
            (grad,) = torch.autograd.grad(_split(out)[0].sum(), x_adv)
        finally:
            x_adv.requires_grad_(False)
        return grad, out

    best: Tensor | None = None
    best_score: Score | None = None
    if keep == "best":
        best = x.clone()
        best_score = torch.full((x.shape[0],), -math.inf, device=x.device)

    for start in starts:
        x_adv = ball.start(start, generator)
        if keep == "last":
            run_steps(lambda: ball.step(x_adv, gradient(x_adv)[0], alpha), steps, graph_model, x)
            if best is None:
                best = x_adv
                if score is not None and len(starts) > 1:
                    with torch.no_grad(), ctx():
                        best_score = score(best)
                continue
            if score is None:  # several starts but nothing to rank them by: the last one
                best = x_adv
                continue
            with torch.no_grad(), ctx():
                s = score(x_adv)
            better = _better(s, best_score)
            best = torch.where(_per_example(better, x), x_adv, best)
            best_score = _take(better, s, best_score)
            continue
        for t in range(steps + 1):
            if t < steps:
                grad, out = gradient(x_adv)
            else:  # the final iterate is scored, not stepped from
                with torch.no_grad(), ctx():
                    grad, out = None, objective(x_adv)
            with torch.no_grad():
                s = _split(out)[1].detach()
                better = _better(s, best_score)
                best = torch.where(_per_example(better, x), x_adv, best)
                best_score = _take(better, s, best_score)
                if grad is not None:
                    ball.step(x_adv, grad, alpha)
    assert best is not None, "ascend needs at least one start"
    return Ascent(best, best_score)

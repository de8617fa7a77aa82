"""The one ascent engine: projected gradient ascent over an ε-ball ∩ [0, 1].

Every gradient search of the workbench runs here: PGD, FGSM (one step from x), MI-FGSM,
FGSM-RS's training step, the Lipschitz feature search and logit-Lipschitz ascent, the
linearity γ search, TRADES' inner maximisation and the training monitors. What differs
between them is a callback and a step rule:

- ``objective(x_adv) -> (N,)``: per-example values; the engine ascends their *sum* (so an
  example's step does not depend on the batch), or ``(values, score)``;
- the score that decides which iterate is kept per example (:data:`KEEP` below);
- the :class:`StepRule`: how a step moves the iterate along the gradient. The engine
  projects after every move, so a rule never clips. Rules here: :class:`Sign` (L∞
  steepest ascent, the default for ``norm="linf"``), :class:`L2Normalised` (the default for
  ``"l2"``), :class:`Momentum` (MI-FGSM's L1-normalised accumulated gradient) and
  :class:`RandomStartSign` (FGSM-RS's uniform start and δ-space sign step). A new rule is
  a subclass (docs/development.md, "Adding a component: Attack").

The projection, written once (METHODS.md, "PGD"): L∞ ``x ← clip_{B∞(x,ε)∩[0,1]}(x + α·d)``;
L2 ``x ← clip₀₁(Π_{B₂(x,ε)}(x + α·d))`` per example, with α = 2.5·ε/steps by default
(:func:`default_alpha`). Starts (one per restart): a random point of the ball (:func:`~.base.random_start`), the
clean input, a given tensor, or a callable. Random draws come from the caller's generator
(or torch's global one when it passes none), in the order the starts are listed.

Given the ``model``, the engine runs it in :func:`~workbench.attacks.base.attack_mode`
(eval mode, frozen parameters; ``keep_mode=True`` freezes only); attacks add the memory
layout and input copies with :func:`~workbench.attacks.base.run_attack`. The iterate is
updated in place; with ``keep="last"`` on CUDA the step is replayed as a CUDA graph
(:func:`run_steps`), so a rule keeps its state in tensors it updates in place.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from ..types import Tensor
from .base import (
    _per_example,
    attack_mode,
    check_norm,
    default_alpha,
    forward_context,
    input_gradient,
    perturbation_norm,
    rand_like,
    random_start,
    run_steps,
    uniform_like,
)
from .l1 import project_l1_box, sparse_l1_direction

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
        """Project ``x_adv`` into the ball ∩ [0, 1] in place (L2: rescale δ, then clip01; L1: the
        exact projection onto the intersection)."""
        if self.norm == "linf":
            return x_adv.clamp_(self.lo, self.hi)
        if self.norm == "l1":
            # the exact projection onto the L1 ball ∩ [0, 1] (clipping after the ball's
            # projection would not be the projection: workbench/attacks/l1.py)
            delta = project_l1_box(x_adv.sub_(self.x), self.x, self.eps)
            return torch.add(self.x, delta, out=x_adv).clamp_(0.0, 1.0)
        tiny = torch.finfo(x_adv.dtype).tiny
        delta = x_adv.sub_(self.x)
        d_norm = _per_example(perturbation_norm(delta, "l2"), self.x).clamp_min(tiny)
        # clip01 only shortens δ, so ‖δ‖₂ ≤ ε still holds after it
        return torch.addcmul(self.x, delta, (self.eps / d_norm).clamp_(max=1.0), out=x_adv).clamp_(0.0, 1.0)

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


# --------------------------------------------------------------------------- step rules
class StepRule:
    """How one ascent step moves the iterate ``x_adv`` along the gradient, in place.

    The engine computes the gradient, calls :meth:`move`, then projects onto the ball ∩
    [0, 1]; a rule never clips. A rule object serves one :func:`ascend` call: :meth:`begin`
    runs once per start (before the first step) and resets any state, which lives in
    tensors allocated there and updated in place (the step may be replayed as a CUDA
    graph). :meth:`start` makes a start's first iterate (by default the engine's starts);
    :meth:`point` is where the gradient is taken (by default the iterate itself; a
    look-ahead rule, e.g. NI-FGSM's Nesterov step, returns another point and sets
    ``lookahead``).
    """

    #: the gradient is taken away from the iterate, so the objective's forward there does
    #: not score the iterate: only ``keep="last"``
    lookahead: bool = False

    def start(self, ball: Ball, start: Start, generator: torch.Generator | None) -> Tensor:
        return ball.start(start, generator)

    def begin(self, ball: Ball, x_adv: Tensor) -> None:
        pass

    def point(self, ball: Ball, x_adv: Tensor, alpha: float) -> Tensor:
        return x_adv

    def move(self, ball: Ball, x_adv: Tensor, grad: Tensor, alpha: float) -> None:
        raise NotImplementedError


class Sign(StepRule):
    """``x ← x + α·sign g``: steepest ascent for the L∞ ball (PGD, FGSM)."""

    def move(self, ball: Ball, x_adv: Tensor, grad: Tensor, alpha: float) -> None:
        x_adv.add_(grad.sign(), alpha=alpha)


class L2Normalised(StepRule):
    """``x ← x + α·g/‖g‖₂`` per example: steepest ascent for the L2 ball."""

    def move(self, ball: Ball, x_adv: Tensor, grad: Tensor, alpha: float) -> None:
        # evaluated as (α·g)/‖g‖: a zero gradient gives a zero step, never 0·∞ = NaN (the
        # clamp only touches norms below the smallest normal float)
        g_norm = _per_example(perturbation_norm(grad, "l2"), ball.x).clamp_min(torch.finfo(grad.dtype).tiny)
        x_adv.addcdiv_(grad, g_norm, value=alpha)


class Momentum(StepRule):
    """MI-FGSM's rule (Dong et al. 2018): ``m ← μ·m + g/‖g‖₁`` per example (m = 0 at each
    start), then ``x ← x + α·sign m``. μ = 0 is the sign rule."""

    def __init__(self, decay: float):
        self.decay = float(decay)

    def begin(self, ball: Ball, x_adv: Tensor) -> None:
        self.m = torch.zeros_like(x_adv)

    def move(self, ball: Ball, x_adv: Tensor, grad: Tensor, alpha: float) -> None:
        # a zero gradient adds nothing (0 / tiny)
        l1 = _per_example(grad.flatten(1).abs().sum(1), ball.x).clamp_min(torch.finfo(grad.dtype).tiny)
        self.m.mul_(self.decay).add_(grad / l1)
        x_adv.add_(self.m.sign(), alpha=alpha)


class RandomStartSign(StepRule):
    """Fast AT's step (Wong et al. 2020): a ``"random"`` start draws δ₀ ~ U[−ε, ε] (from
    :func:`~workbench.attacks.base.rand_like` on torch's global generator, so data-parallel
    ranks draw their rows of the global batch) with x + δ₀ clipped to [0, 1]; each step is
    ``δ ← clip_{[−ε, ε]}(δ + α·sign g)``, ``x ← x + δ`` (then the engine's clip to [0, 1]),
    the reference code's arithmetic in δ, so the iterates are its bits. Meant for one step
    (α = 1.25ε); later steps continue from δ = x − x₀. L∞ only."""

    def start(self, ball: Ball, start: Start, generator: torch.Generator | None) -> Tensor:
        self.delta = None
        if start != "random":
            return ball.start(start, generator)
        if ball.norm != "linf":
            raise ValueError("RandomStartSign is an L∞ rule")
        x, eps = ball.x, ball.eps
        u = rand_like(x) if generator is None else uniform_like(x, 0.0, 1.0, generator)
        self.delta = (x + (u * 2 - 1) * eps).clamp_(0, 1) - x
        return x + self.delta

    def move(self, ball: Ball, x_adv: Tensor, grad: Tensor, alpha: float) -> None:
        delta = self.delta if self.delta is not None else x_adv - ball.x
        self.delta = None
        # x + clip_ε(δ) then clip₀₁ equals the engine's clamp to max(x−ε, 0) … min(x+ε, 1)
        # of x + δ exactly (rounding is monotone), so the projection is left to the engine.
        delta.add_(grad.sign(), alpha=alpha).clamp_(-ball.eps, ball.eps)
        torch.add(ball.x, delta, out=x_adv)


class SparseL1(StepRule):
    """SLIDE's step for the L1 ball (Tramèr & Boneh 2019): ``x ← x + α·e``, e = sign(g) on the
    top (100 − q) % of |g| (ties included, at least one coordinate), L1-normalised, so a step
    moves the iterate by α in L1 (:func:`~workbench.attacks.l1.sparse_l1_direction`).
    Coordinates the box blocks (at 0 with g < 0, at 1 with g > 0) are left out first
    (``mask_box``), as cleverhans' SparseL1Descent with ``clip_grad``. The engine then projects
    exactly onto the L1 ball ∩ [0, 1]."""

    def __init__(self, q: float = 99.0, mask_box: bool = True):
        if not 0.0 <= float(q) < 100.0:
            raise ValueError(f"the sparsity percentile q is in [0, 100), got {q!r}")
        self.q = float(q)
        self.mask_box = bool(mask_box)

    def move(self, ball: Ball, x_adv: Tensor, grad: Tensor, alpha: float) -> None:
        x_adv.add_(sparse_l1_direction(grad, self.q, x_adv if self.mask_box else None), alpha=alpha)


def default_rule(norm: str) -> StepRule:
    """The steepest-ascent rule of the norm's ball: :class:`Sign` (L∞), :class:`L2Normalised`
    (L2), :class:`SparseL1` with q = 99 (L1)."""
    norm = check_norm(norm)
    if norm == "l1":
        return SparseL1()
    return Sign() if norm == "linf" else L2Normalised()


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
    rule: StepRule | None = None,
    keep_mode: bool = False,
    trace: Callable[[int, int, Tensor, Score], None] | None = None,
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
        model: the model behind the objective: run in eval mode with frozen parameters
            (:func:`~workbench.attacks.base.attack_mode`) and checked for CUDA-graph safety.
        rule: the :class:`StepRule`; default :func:`default_rule` of ``norm``.
        keep_mode: freeze the model's parameters but leave its train/eval mode (FGSM-RS).
        trace: ``trace(start, t, x_adv, out)`` for t = 0 … steps of every start: the iterate
            before step t (t = steps: the final one) and the objective's output there (detach
            it; from the gradient's own forward, plus one forward of the final iterate, or
            one per step for a look-ahead rule). It must not modify ``x_adv``. With a trace
            the steps run eagerly (no CUDA-graph replay), so every step calls back.
    """
    if keep not in KEEP:
        raise ValueError(f"unknown keep {keep!r}; valid: {', '.join(KEEP)}")
    ball = Ball(x, float(eps), norm)
    rule = default_rule(norm) if rule is None else rule
    alpha = default_alpha(eps, steps) if alpha is None else float(alpha)
    ctx = lambda: forward_context(x.device, precision)  # noqa: E731
    graph_model = model if model is not None else nn.Module()

    if rule.lookahead and keep != "last":
        raise ValueError(f"{type(rule).__name__} takes its gradient away from the iterate: use keep='last'")

    def step(x_adv: Tensor) -> None:
        rule.move(ball, x_adv, input_gradient(objective, rule.point(ball, x_adv, alpha), precision)[0], alpha)
        ball.clip(x_adv)

    def traced_steps(i: int, x_adv: Tensor) -> None:
        """The steps of start ``i``, calling ``trace`` at every iterate (the final one included)."""
        assert trace is not None
        for t in range(steps):
            grad, out = input_gradient(objective, rule.point(ball, x_adv, alpha), precision)
            if rule.lookahead:  # the gradient's forward was not at the iterate
                with torch.no_grad(), ctx():
                    out = objective(x_adv)
            trace(i, t, x_adv, out)
            rule.move(ball, x_adv, grad, alpha)
            ball.clip(x_adv)
        with torch.no_grad(), ctx():
            trace(i, steps, x_adv, objective(x_adv))

    best: Tensor | None = None
    best_score: Score | None = None
    if keep == "best":
        best = x.clone()
        best_score = torch.full((x.shape[0],), -math.inf, device=x.device)

    with attack_mode(model, keep_mode) if model is not None else contextlib.nullcontext():
        for i, start in enumerate(starts):
            x_adv = rule.start(ball, start, generator)
            rule.begin(ball, x_adv)
            if keep == "last":
                if trace is not None:
                    traced_steps(i, x_adv)
                else:
                    run_steps(lambda: step(x_adv), steps, graph_model, x)
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
                    grad, out = input_gradient(objective, x_adv, precision)
                else:  # the final iterate is scored, not stepped from
                    with torch.no_grad(), ctx():
                        grad, out = None, objective(x_adv)
                if trace is not None:
                    trace(i, t, x_adv, out)
                with torch.no_grad():
                    s = _split(out)[1].detach()
                    better = _better(s, best_score)
                    best = torch.where(_per_example(better, x), x_adv, best)
                    best_score = _take(better, s, best_score)
                    if grad is not None:
                        rule.move(ball, x_adv, grad, alpha)
                        ball.clip(x_adv)
    assert best is not None, "ascend needs at least one start"
    return Ascent(best, best_score)

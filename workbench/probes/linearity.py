"""How locally linear is the loss? Four views (docs/methods.md, "Linearity probes").

- :func:`local_linearity` (Qin et al. 2019, arXiv:1907.02610): g(δ; x) = ℓ(x+δ) − ℓ(x) −
  δᵀ∇ₓℓ(x), γ(ε, x) = max_{‖δ‖∞≤ε} |g(δ; x)|, found by PGD on |g|;
- :func:`gradient_alignment` (Andriushchenko & Flammarion 2020, arXiv:2007.02617):
  cos(∇ₓℓ(x), ∇ₓℓ(x+η)), η ~ U[−ε, ε]^d; zero-norm gradients are excluded (NaN), never 1;
- :func:`fgsm_pgd_gap`: FGSM and PGD accuracy at the same ε (a gap near zero ⇔ the loss is
  locally linear enough for one step to find what many steps find);
- :func:`loss_slices`: ℓ(clip(x + a·ε·d₁ + b·ε·d₂)) on a grid, d₁ = sign ∇ℓ(x), d₂ a random
  sign vector made orthogonal to d₁ (Gram–Schmidt) and rescaled to ‖d₁‖₂; and 1-D slices
  along each direction.

Every function works on inputs x (N, C, H, W) in [0, 1] (ε in pixel units), runs the model
in eval mode with frozen parameters (restored afterwards) and batches over examples. The
loss is per example: ``loss_fn(model, x, y) -> (N,)``, by default cross-entropy of the
logits, so tests can plug in a loss whose γ is known in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from .. import distributed
from ..attacks import fgsm, pgd
from ..attacks.ascent import ascend
from ..attacks.base import attack_mode, crafting, input_gradient, uniform_like
from ..config import Eps, Strict
from ..errors import WorkbenchError
from ..registry import TableSchema
from ..seeds import seeded_generator
from ..state import eval_mode
from .base import PROBES, ProbeContext
from .lipschitz import _device, summarize
from ..views import FigureSpec, Measure, register_figure, register_measure


class SurfaceConfig(Strict):
    """Loss-surface slices ℓ(clip(x + a·ε·d₁ + b·ε·d₂)) at the study's main ε."""

    grid: PositiveInt = Field(21, description="points per axis of the 2-D surface (odd: the grid contains a = b = 0)")
    span: float = Field(2.0, gt=0, description="half-width of the slice in units of ε")
    examples: PositiveInt = Field(4, description="probe examples (the first ones) with a surface and slices")
    refine: PositiveInt = Field(
        4, description="1-D slices have refine·(grid − 1) + 1 points: the surface axis refined, every grid point kept"
    )


class LinearityProbe(Strict):
    """Local linearity γ(ε) (Qin et al. 2019), gradient alignment (Andriushchenko & Flammarion
    2020), FGSM–PGD gap and loss-surface slices."""

    eps: tuple[Eps, ...] | None = Field(None, description="L∞ ε grid (default: evaluation.eps)")
    steps: PositiveInt = Field(10, description="PGD steps (step 2.5·ε/steps) of the search for γ = max |g(δ)|")
    restarts: PositiveInt = Field(
        3, description="random starts of the search for γ (the best iterate of all is kept); γ is a lower bound "
        "whatever the budget: docs/methods.md gives the default's measured shortfall",
    )
    pgd_steps: PositiveInt = Field(20, description="steps of the PGD (L∞, CE) of the FGSM–PGD gap")
    surface: SurfaceConfig = Field(default_factory=SurfaceConfig)


#: the tables this component writes (collected by workbench.tables)
TABLES_LINEARITY: dict[str, TableSchema] = {
    "linearity": (
        "local linearity γ(ε) (Qin et al.) and gradient alignment (Andriushchenko & Flammarion): model × ε × metric",
        {
            "model": "model id",
            "eps": "ε (L∞)",
            "metric": "`gamma` (a lower bound: the best |g| the search found) or `grad_alignment`",
            "n": "examples (gradient alignment excludes zero-norm gradients)",
            "mean": "mean",
            "median": "median",
            "q10": "10% quantile",
            "q90": "90% quantile",
            "sem": "standard error",
            "ci_low": "95% bootstrap interval of the mean over examples: lower end",
            "ci_high": "upper end",
        },
    ),
    "linearity_per_example": (
        "per-example γ and gradient alignment behind `linearity` (the paired tests of `significance` use them)",
        {
            "model": "model id",
            "eps": "ε (L∞)",
            "metric": "`gamma` or `grad_alignment`",
            "example": "example number within the probe set",
            "index": "position in the test split",
            "value": "the example's γ or cosine (NaN: excluded, e.g. a zero gradient)",
        },
    ),
    "fgsm_pgd_gap": (
        "FGSM − PGD accuracy at the same ε (near zero ⇔ locally linear loss)",
        {
            "model": "model id",
            "eps": "ε (L∞)",
            "fgsm_acc": "FGSM accuracy",
            "pgd_acc": "PGD accuracy (L∞, CE, `linearity.pgd_steps` steps) on the probe examples",
            "gap": "fgsm_acc − pgd_acc",
        },
    ),
    "loss_surface": (
        "2-D loss surface ℓ(x + a·d₁ + b·d₂), d₁ = sign ∇ℓ, d₂ random ⊥ d₁ (a, b in units of ε)",
        {
            "model": "model id",
            "example": "example number within the probe set",
            "eps": "ε that scales the axes",
            "a": "coordinate along sign-gradient (units of ε)",
            "b": "coordinate along the random direction (units of ε)",
            "loss": "cross-entropy",
        },
    ),
    "loss_slice": (
        "1-D loss slices along the sign-gradient and a random direction",
        {
            "model": "model id",
            "example": "example number within the probe set",
            "eps": "ε that scales the axis",
            "direction": "`gradient` or `random`",
            "t": "step along the direction (units of ε)",
            "loss": "cross-entropy",
        },
    ),
}


#: per-example loss: (model, x (N, ...), y (N,)) -> (N,)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of the model's logits (float32), shape (N,)."""
    return F.cross_entropy(model(x).float(), y, reduction="none")


def _check(x: torch.Tensor, y: torch.Tensor, eps: float | None = None) -> None:
    if len(x) == 0 or len(x) != len(y):
        raise WorkbenchError(f"need as many labels as examples (N > 0), got {len(x)} and {len(y)}")
    if eps is not None and not (math.isfinite(float(eps)) and eps > 0):
        raise WorkbenchError(f"ε must be positive (pixel units), got {eps!r}")


def _flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(ℓ(x) (N,), ∇ₓℓ(x) like x), both detached; gradient of the *sum* of per-example losses,
    so an example's gradient does not depend on the batch."""
    grad, loss = input_gradient(lambda xg: loss_fn(model, xg, y), x.detach().clone())
    return loss.detach(), grad


def _per_batch(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
               fn: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor], what: str) -> torch.Tensor:
    """``fn(start, x batch as float32 on device, y batch)`` (a CPU tensor per example) over the
    batches, concatenated in order. Under torchrun each rank computes its share of the
    batches (:func:`~workbench.distributed.run_sharded`); ``fn`` seeds itself by ``start``,
    so a batch's values do not depend on the rank that computes it."""
    starts = range(0, len(x), batch_size)

    def one(b: int) -> torch.Tensor:
        start = starts[b]
        return fn(start, x[start:start + batch_size].to(device).detach().float(), y[start:start + batch_size].to(device))

    return torch.cat(distributed.run_sharded(len(starts), one, what))


# --------------------------------------------------------------------------- local linearity


def local_linearity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    loss_fn: LossFn | None = None,
    *,
    alpha: float | None = None,
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Per-example local linearity γ(ε, x) = max_{‖δ‖∞≤ε} |g(δ; x)| (Qin et al. 2019).

    g(δ; x) = ℓ(x+δ) − ℓ(x) − δᵀ∇ₓℓ(x) is the error of the first-order Taylor model. The
    maximum is searched by PGD on |g|: a uniform random start in the ε-box (at δ = 0, g and
    its gradient vanish), ``steps`` sign steps of ``alpha`` (default 2.5·ε/steps), each
    projected onto the box ∩ [0, 1]; ``restarts`` such starts; per example the best iterate
    of all is kept. δ is x' − x after the clip, in the Taylor term too. Every value is a lower
    bound on γ (docs/methods.md gives the default budget's measured shortfall).

    Returns a float32 CPU tensor (N,) ≥ 0, in the loss's units (nats for cross-entropy).
    """
    _check(x, y, eps)
    if steps < 0 or batch_size < 1 or restarts < 1:
        raise WorkbenchError("need steps >= 0, restarts >= 1 and batch_size >= 1")
    loss_fn = loss_fn or cross_entropy
    eps = float(eps)
    device = _device(model)

    def one(start: int, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        g = seeded_generator(device, seed, "local-linearity", start, eps)
        l0, g0 = _loss_and_grad(model, xb, yb, loss_fn)

        def gap(x_adv: torch.Tensor) -> torch.Tensor:
            return (loss_fn(model, x_adv, yb) - l0 - _flat_dot(x_adv - xb, g0)).abs()

        return ascend(gap, xb, eps, steps, alpha=alpha, starts=["random"] * restarts, keep="best",
                      generator=g).score.float().cpu()

    with crafting(), attack_mode(model):
        return _per_batch(x, y, batch_size, device, one, "the local linearity probe")


# --------------------------------------------------------------------------- gradient alignment


def gradient_alignment(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """Per-example cos(∇ₓℓ(x), ∇ₓℓ(x+η)), η ~ U[−ε, ε]^d, x+η clipped to [0, 1]
    (Andriushchenko & Flammarion 2020).

    Returns a float32 CPU tensor (N,) in [−1, 1]; NaN where either gradient is exactly zero
    (the cosine is undefined: :func:`summarize` excludes it rather than counting it as
    aligned, which would flatter gradient-masked models).
    """
    _check(x, y, eps)
    loss_fn = loss_fn or cross_entropy
    eps = float(eps)
    device = _device(model)

    def one(start: int, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        g = seeded_generator(device, seed, "grad-alignment", start, eps)
        _, g1 = _loss_and_grad(model, xb, yb, loss_fn)
        _, g2 = _loss_and_grad(model, (xb + uniform_like(xb, -eps, eps, g)).clamp(0.0, 1.0), yb, loss_fn)
        g1, g2 = g1.reshape(len(xb), -1).double(), g2.reshape(len(xb), -1).double()
        n1, n2 = torch.linalg.vector_norm(g1, dim=1), torch.linalg.vector_norm(g2, dim=1)
        cos = (g1 * g2).sum(dim=1) / (n1 * n2).clamp_min(1e-300)
        return torch.where((n1 > 0) & (n2 > 0), cos.clamp(-1.0, 1.0), torch.nan).float().cpu()

    with crafting(), attack_mode(model):
        return _per_batch(x, y, batch_size, device, one, "the gradient alignment probe")


# --------------------------------------------------------------------------- FGSM–PGD gap


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example correctness (CPU, bool) in eval mode."""
    with eval_mode(model):
        return (model(x).argmax(1) == y).cpu()


def fgsm_pgd_gap(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | Sequence[float],
    pgd_steps: int = 20,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> pd.DataFrame:
    """FGSM and PGD (L∞, cross-entropy, ``pgd_steps`` steps of 2.5·ε/steps, random start)
    accuracy on ``x`` at each ε: the ``fgsm_pgd_gap`` table, ``model`` = ``model.name``.

    gap = fgsm_acc − pgd_acc: near zero when the loss is locally linear (one step finds what
    many find); large for a model whose loss curves within the ball (Wong et al. 2020's
    catastrophic overfitting shows as FGSM accuracy far above PGD accuracy).
    """
    grid = (float(eps),) if isinstance(eps, (int, float)) else tuple(float(e) for e in eps)
    for e in grid:
        _check(x, y, e)
    device = _device(model)
    rows = []
    for e in grid:

        def correct(start: int, xb: torch.Tensor, yb: torch.Tensor, e: float = e) -> torch.Tensor:
            # each batch its own stream (the first keeps the ε's own seed), so the batches can
            # go to different ranks
            g = seeded_generator(device, seed, "fgsm-pgd-gap", e, *((start,) if start else ()))
            x_f = fgsm(model, xb, yb, e)
            x_p = pgd(model, xb, yb, e, steps=pgd_steps, norm="linf", generator=g)
            return torch.stack([_correct(model, x_f, yb), _correct(model, x_p, yb)], dim=1)

        hits = _per_batch(x, y, batch_size, device, correct, "the FGSM–PGD gap")  # (N, 2): FGSM, PGD correct
        acc_f, acc_p = (hits[:, 0].sum().item() / len(y), hits[:, 1].sum().item() / len(y))
        rows.append({"model": getattr(model, "name", "model"), "eps": e, "fgsm_acc": acc_f, "pgd_acc": acc_p,
                     "gap": acc_f - acc_p})
    return pd.DataFrame(rows, columns=list(TABLES_LINEARITY["fgsm_pgd_gap"][1]))


# --------------------------------------------------------------------------- loss slices


def slice_directions(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0, loss_fn: LossFn | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d₁, d₂), both like x: d₁ = sign ∇ₓℓ(x); d₂ = a random sign vector minus its projection
    on d₁ (Gram–Schmidt, per example), rescaled to ‖d₂‖₂ = ‖d₁‖₂ so both axes have the same
    length. Where ∇ℓ(x) = 0, d₁ = 0 and d₂ is the raw sign vector (nothing to be orthogonal
    to, no length to match)."""
    _check(x, y)
    loss_fn = loss_fn or cross_entropy
    device = _device(model)
    xb = x.to(device).detach().float()
    with crafting(), attack_mode(model):
        _, grad = _loss_and_grad(model, xb, y.to(device), loss_fn)
    d1 = grad.sign()
    g = seeded_generator(device, seed, "slice-direction")
    r = torch.randn(xb.shape, generator=g, device=device).sign()
    r = torch.where(r == 0, torch.ones_like(r), r)
    n = len(xb)
    d1f, rf = d1.reshape(n, -1).double(), r.reshape(n, -1).double()
    d1_sq = (d1f * d1f).sum(dim=1, keepdim=True)
    has_grad = d1_sq > 0
    d2f = torch.where(has_grad, rf - (rf * d1f).sum(dim=1, keepdim=True) / d1_sq.clamp_min(1) * d1f, rf)
    d2_norm = torch.linalg.vector_norm(d2f, dim=1, keepdim=True)
    scale = torch.where(has_grad & (d2_norm > 0), d1_sq.sqrt() / d2_norm.clamp_min(1e-300), torch.ones_like(d2_norm))
    return d1, (d2f * scale).reshape(xb.shape).to(xb.dtype)


def _symmetric(span: float, points: int) -> torch.Tensor:
    """linspace(−span, span, points) in float64 whose middle point (odd ``points``) is exactly 0
    (torch.linspace may leave it at ~1e-16, and the surface should contain the clean input)."""
    if points == 1:
        return torch.zeros(1, dtype=torch.float64)
    k = torch.arange(points, dtype=torch.float64)
    return span * (2 * k - (points - 1)) / (points - 1)


@torch.no_grad()
def _losses_at(model: nn.Module, points: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, batch_size: int) -> torch.Tensor:
    """ℓ at each of ``points`` (P, ...) for one label y (scalar tensor); (P,) float64 CPU."""
    out = []
    for i in range(0, len(points), batch_size):
        chunk = points[i:i + batch_size]
        out.append(loss_fn(model, chunk, y.expand(len(chunk))).double().cpu())
    return torch.cat(out)


def loss_slices(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    grid: int = 21,
    span: float = 2.0,
    *,
    refine: int = 4,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    batch_size: int = 256,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loss surface and 1-D slices around each example (the ``loss_surface`` and
    ``loss_slice`` tables, ``model`` = ``model.name``, ``example`` = position in ``x``).

    Surface: ℓ(clip₀₁(x + a·ε·d₁ + b·ε·d₂)) for a, b in linspace(−span, span, grid), with
    (d₁, d₂) from :func:`slice_directions` (a = 1 is an FGSM step of size ε). Slices: the
    same along d₁ (``gradient``) and d₂ (``random``) alone at refine·(grid − 1) + 1 values
    of t, a refinement of the surface axis that keeps every grid point. Costs
    N·(grid² + 2·refine·grid) forward passes.
    """
    _check(x, y, eps)
    if grid < 1 or refine < 1 or not span > 0:
        raise WorkbenchError("need grid >= 1, refine >= 1 and span > 0")
    loss_fn = loss_fn or cross_entropy
    eps = float(eps)
    device = _device(model)
    d1, d2 = slice_directions(model, x, y, seed, loss_fn)
    axis, fine = _symmetric(span, grid), _symmetric(span, refine * (grid - 1) + 1)
    aa, bb = torch.meshgrid(axis, axis, indexing="ij")
    name = getattr(model, "name", "model")
    surface, slices = [], []
    with eval_mode(model):
        for i in range(len(x)):
            xi, yi = x[i:i + 1].to(device).float(), y[i].to(device)
            shape = (-1,) + (1,) * (xi.dim() - 1)

            def points(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                a = a.to(device=device, dtype=xi.dtype).reshape(shape)
                b = b.to(device=device, dtype=xi.dtype).reshape(shape)
                return (xi + a * eps * d1[i:i + 1] + b * eps * d2[i:i + 1]).clamp(0.0, 1.0)

            loss = _losses_at(model, points(aa.flatten(), bb.flatten()), yi, loss_fn, batch_size)
            surface.append(pd.DataFrame({"model": name, "example": i, "eps": eps, "a": aa.flatten().numpy(),
                                         "b": bb.flatten().numpy(), "loss": loss.numpy()}))
            zeros = torch.zeros_like(fine)
            for direction, (a, b) in (("gradient", (fine, zeros)), ("random", (zeros, fine))):
                loss = _losses_at(model, points(a, b), yi, loss_fn, batch_size)
                slices.append(pd.DataFrame({"model": name, "example": i, "eps": eps, "direction": direction,
                                            "t": fine.numpy(), "loss": loss.numpy()}))
    return (pd.DataFrame(pd.concat(surface, ignore_index=True), columns=list(TABLES_LINEARITY["loss_surface"][1])),
            pd.DataFrame(pd.concat(slices, ignore_index=True), columns=list(TABLES_LINEARITY["loss_slice"][1])))


# --------------------------------------------------------------------------- study runner


def _empty(name: str) -> pd.DataFrame:
    return pd.DataFrame(columns=list(TABLES_LINEARITY[name][1]))


@PROBES.register("linearity", config=LinearityProbe, tables=TABLES_LINEARITY, sharded=True, facts=("main_eps",))
def run_linearity(ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """γ(ε) and gradient alignment on the L∞ grid, the FGSM–PGD gap, and loss surfaces and
    slices at the study's main ε, for every model. Random starts, noise and the slice
    direction d₂ are seeded by ε only, so every model sees the same ones (common random
    numbers for the paired comparison)."""
    cfg = ctx.cfg
    grid = ctx.eps_grid("linf")
    main_eps = ctx.main_eps
    k = min(cfg.surface.examples, len(ctx.x))
    lin, per_example, gap, surf, sl = [], [], [], [], []
    index = ctx.index.cpu().numpy()
    for model_id, model in ctx.models.items():
        with ctx.progress.task(f"linearity {model_id}", len(grid) + (main_eps > 0)) as advance:
            for e in grid:
                gamma = local_linearity(model, ctx.x, ctx.y, e, cfg.steps, restarts=cfg.restarts,
                                        batch_size=ctx.batch_size, seed=ctx.seed_for("local-linearity"))
                align = gradient_alignment(model, ctx.x, ctx.y, e, ctx.seed_for("grad-alignment"), batch_size=ctx.batch_size)
                for metric, values in (("gamma", gamma), ("grad_alignment", align)):
                    lin.append({"model": model_id, "eps": e, "metric": metric, **summarize(values)})
                    per_example.append(pd.DataFrame({
                        "model": model_id, "eps": e, "metric": metric, "example": range(len(values)),
                        "index": index, "value": values.double().numpy()}))
                advance(1, status=f"ε={e:g}")
            if grid:
                gap.append(fgsm_pgd_gap(model, ctx.x, ctx.y, grid, cfg.pgd_steps, batch_size=ctx.batch_size,
                                        seed=ctx.seed_for("fgsm-pgd-gap")).assign(model=model_id))
            if main_eps > 0:
                s, t = loss_slices(model, ctx.x[:k], ctx.y[:k], main_eps, cfg.surface.grid, cfg.surface.span,
                                   refine=cfg.surface.refine, seed=ctx.seed_for("loss-slices"), batch_size=ctx.batch_size)
                surf.append(s.assign(model=model_id))
                sl.append(t.assign(model=model_id))
                advance(1, status="surfaces")
    cat = lambda frames, name: pd.concat(frames, ignore_index=True) if frames else _empty(name)  # noqa: E731
    return {
        "linearity": pd.DataFrame(lin, columns=list(TABLES_LINEARITY["linearity"][1])),
        "linearity_per_example": cat(per_example, "linearity_per_example"),
        "fgsm_pgd_gap": cat(gap, "fgsm_pgd_gap"),
        "loss_surface": cat(surf, "loss_surface"),
        "loss_slice": cat(sl, "loss_slice"),
    }


# --------------------------------------------------------------------------- report figures
# drawn by the report from these tables (workbench/views.py; the drawing code is imported only then)

register_figure(FigureSpec(
    "fgsm_pgd_gap",
    "FGSM – PGD gap",
    "FGSM accuracy minus PGD accuracy at each ε (left) with both accuracies (right): a gap near zero means one "
        "gradient step already finds what PGD finds (a locally linear loss), a large gap at the training ε of an "
        "FGSM-trained model is the signature of catastrophic overfitting.",
    "robustness",
    "workbench.report.figures:fgsm_pgd_gap",
    ("fgsm_pgd_gap",),
    order=10))

register_figure(FigureSpec(
    "linearity",
    "Local linearity and gradient alignment",
    "Left: γ(ε), the largest deviation of the loss from its first-order Taylor expansion in the ε-ball (lower "
        "is more linear; a lower bound: the best a 10-step, 3-start search found, about 10 % below a 50-step, "
        "5-start one on the quickstart); right: cosine between the input gradient at x and at a random point of the ball (near 1: "
        "the gradient is stable); bands span the 10–90% quantiles over examples.",
    "representations",
    "workbench.report.figures:linearity",
    ("linearity",),
    order=50))

register_figure(FigureSpec(
    "loss_surface",
    "Loss surfaces",
    "Cross-entropy on a 2-D slice x + a·ε·d₁ + b·ε·d₂ around each example (rows; + marks the clean input), with "
        "d₁ the sign of the loss gradient (horizontal) and d₂ a random orthogonal direction (vertical); the colour "
        "scale is shared within a row, so a uniformly dark panel is a flat loss an attacker cannot climb.",
    "representations",
    "workbench.report.figures:loss_surface",
    ("loss_surface",),
    order=60))

register_figure(FigureSpec(
    "loss_slice",
    "Loss slices",
    "Cross-entropy along the sign-gradient and along a random direction (t in units of ε): thin lines are "
        "examples, thick lines their mean; a steep rise along the gradient but not along the random direction is "
        "what adversarial vulnerability looks like.",
    "representations",
    "workbench.report.figures:loss_slice",
    ("loss_slice",),
    order=70))

# the measures workbench compare correlates with robustness
register_measure(Measure("gamma", "local linearity γ", "workbench.probes.views:gamma", compare=True, order=20))
register_measure(Measure("grad_alignment", "gradient alignment", "workbench.probes.views:grad_alignment",
                         compare=True, order=21))

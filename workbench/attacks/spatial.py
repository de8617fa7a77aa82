"""Spatial attacks: rotations and translations (Engstrom et al. 2019, arXiv:1712.02779).

The threat model is a box of transformations: a rotation by θ ∈ [−ε·A, ε·A] degrees about the
image centre, then a translation by (tx, ty) ∈ [−ε·S, ε·S]² pixels, where (A, S) is the declared
box (``max_angle``, ``max_shift``; the paper's CIFAR-10 box is 30°, 3 px) and ε ∈ (0, 1] scales
it: the ε of a spatial attack is the fraction of the box (ε = 1: the whole box), so accuracy
over ε is accuracy over growing angles and shifts. The image is resampled once (bilinear,
zeros outside: the paper pads with black) with ``affine_grid``/``grid_sample``.

- ``spatial-grid``: per example the worst of a grid of ``angles`` × ``shifts`` × ``shifts``
  transformations spaced evenly over the box (the paper: 31 angles, 5 shifts per axis), found
  exhaustively, batched one grid point at a time over the examples;
- ``spatial-pgd``: the paper's first-order attack, projected sign-gradient ascent on the
  transformation parameters (θ, tx, ty), run on the ascent engine: the parameters are mapped
  to p ∈ [0, 1]³ (0.5 is the identity), so the box is the engine's L∞ ball of radius ½ about
  0.5, and each step is α·sign ∂ℓ/∂p.

Both keep per example the transformation that fools the model, and among equal status the one
with the highest loss (as PGD's restarts). Positive angles rotate counter-clockwise as the
image is displayed; positive shifts move the content right and down.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from ..config import AttackBase
from ..types import Images, Labels, Tensor
from .ascent import ascend
from .base import ATTACKS, check_batch, check_eps, forward_context, run_attack
from .losses import LOSSES

SPATIAL = "spatial"


def transform(x: Tensor, angle: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Rotate each image of ``x`` (N, C, H, W) by ``angle`` degrees about its centre, then shift
    it by (``tx``, ``ty``) pixels; each of the three is (N,) (or a scalar). Bilinear, zeros
    outside; differentiable in x and in the parameters."""
    n, _, h, w = x.shape
    dtype = x.dtype
    angle, tx, ty = (torch.as_tensor(v, dtype=dtype, device=x.device).expand(n) for v in (angle, tx, ty))
    a = angle * (math.pi / 180.0)
    cos, sin = torch.cos(a), torch.sin(a)
    # in pixel units (y down) the output pixel u samples the input at M(u − t) about the
    # centre, M = [[cos, −sin], [sin, cos]] (counter-clockwise on screen); affine_grid works in
    # coordinates normalised to [−1, 1] per axis, so M is conjugated by the scale
    # diag(W/2, H/2) (no shear for non-square images)
    r00, r01 = cos, -sin * (h / w)
    r10, r11 = sin * (w / h), cos
    sx, sy = 2.0 * tx / w, 2.0 * ty / h
    theta = torch.stack([
        torch.stack([r00, r01, -(r00 * sx + r01 * sy)], dim=1),
        torch.stack([r10, r11, -(r10 * sx + r11 * sy)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def grid_points(eps: float, max_angle: float, max_shift: float, angles: int, shifts: int) -> list[tuple[float, float, float]]:
    """The (θ, tx, ty) of the grid at box fraction ``eps``: ``angles`` values evenly spaced
    over [−ε·A, ε·A] (0 alone when there is one), the same for each shift axis."""

    def axis(limit: float, k: int) -> list[float]:
        if k == 1 or limit == 0:
            return [0.0]
        return [float(v) for v in torch.linspace(-limit, limit, k, dtype=torch.float64)]

    return list(itertools.product(axis(eps * max_angle, angles), axis(eps * max_shift, shifts), axis(eps * max_shift, shifts)))


def _better(fooled: Tensor, loss: Tensor, best_fooled: Tensor, best_loss: Tensor) -> Tensor:
    return (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))


@torch.no_grad()
def grid_worst(model: nn.Module, x: Tensor, y: Labels, points, loss_fn, precision: str = "fp32") -> tuple[Tensor, Tensor]:
    """(the worst transformed input, its (θ, tx, ty) as (N, 3)) over ``points`` per example."""
    n = x.shape[0]
    best_x = x.clone()
    best_p = x.new_zeros(n, 3)
    best_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_loss = torch.full((n,), -math.inf, device=x.device)
    for p in points:
        xt = transform(x, *p)
        with forward_context(x.device, precision):
            logits = model(xt).float()
        fooled, loss = logits.argmax(1) != y, loss_fn(logits, y)
        take = _better(fooled, loss, best_fooled, best_loss)
        best_x[take] = xt[take]
        best_p[take] = torch.tensor(p, dtype=x.dtype, device=x.device)
        best_fooled |= fooled
        best_loss = torch.where(take, loss, best_loss)
    return best_x, best_p


def _checked(x: Images, y: Labels, eps: float) -> float:
    """The batch checked and ε as a float (both spatial attacks return a clone of x at ε = 0)."""
    check_batch(x, y)
    return check_eps(eps)


class _SpatialBase(AttackBase):
    max_angle: float = Field(30.0, ge=0, le=180, description="rotation limit A in degrees (the box is ε·A)")
    max_shift: float = Field(3.0, ge=0, description="translation limit S in pixels per axis (the box is ε·S)")

    @property
    def norm(self) -> str:
        return SPATIAL

    @property
    def box(self) -> tuple[float, float]:
        return (self.max_angle, self.max_shift)

    @model_validator(mode="after")
    def _fractions(self):
        if any(e > 1 for e in (self.eps or ())):
            raise ValueError("eps: a spatial ε is a fraction of the (angle, shift) box, at most 1")
        return self


class SpatialGridAttack(_SpatialBase):
    """Engstrom et al. 2019: the exhaustive worst case over a grid of rotations and translations."""

    name: Literal["spatial-grid"]
    angles: PositiveInt = Field(31, description="rotation angles in the grid, evenly spaced over [−ε·A, ε·A]")
    shifts: PositiveInt = Field(5, description="shifts per axis in the grid, evenly spaced over [−ε·S, ε·S]")

    @property
    def steps(self) -> int:
        return self.angles * self.shifts * self.shifts  # forwards per example

    @property
    def restarts(self) -> int:
        return 1

    @property
    def id(self) -> str:
        return self.label or (f"spatial-grid{self.angles}x{self.shifts}" if self.loss == "ce"
                              else f"spatial-grid{self.angles}x{self.shifts}-{self.loss}")

    def options(self) -> dict[str, Any]:
        return {"max_angle": self.max_angle, "max_shift": self.max_shift, "angles": self.angles,
                "shifts": self.shifts, "loss": self.loss}


@ATTACKS.register("spatial-grid", config=SpatialGridAttack)
def spatial_grid(
    model: nn.Module,
    x: Images,
    y: Labels,
    eps: float,
    *,
    max_angle: float = 30.0,
    max_shift: float = 3.0,
    angles: int = 31,
    shifts: int = 5,
    loss: str = "ce",
    precision: str = "fp32",
) -> Tensor:
    """Per example the worst grid transformation within ε × the (``max_angle``, ``max_shift``) box
    (x: (N, C, H, W) in [0, 1]); deterministic."""
    eps = _checked(x, y, eps)
    if eps == 0.0:
        return x.detach().clone()
    points = grid_points(eps, max_angle, max_shift, angles, shifts)
    loss_fn = LOSSES.get(loss)
    return run_attack(model, x, y, lambda x0, y0: grid_worst(model, x0, y0, points, loss_fn, precision)[0])


class SpatialPGDAttack(_SpatialBase):
    """Engstrom et al. 2019's first-order attack: PGD on (θ, tx, ty) within the box."""

    name: Literal["spatial-pgd"]
    steps: PositiveInt = 20
    restarts: PositiveInt = 1
    alpha: float | None = Field(None, gt=0, le=1, description="step as a fraction of the box's full width (default 2.5/2/steps)")

    @property
    def id(self) -> str:
        if self.label:
            return self.label
        tag = f"spatial-pgd{self.steps}" + (f"-r{self.restarts}" if self.restarts > 1 else "")
        return tag if self.loss == "ce" else f"{tag}-{self.loss}"

    def options(self) -> dict[str, Any]:
        return {"max_angle": self.max_angle, "max_shift": self.max_shift, "steps": self.steps,
                "restarts": self.restarts, "alpha": self.alpha, "loss": self.loss}


def _params(p: Tensor, eps: float, max_angle: float, max_shift: float) -> tuple[Tensor, Tensor, Tensor]:
    """p ∈ [0, 1]³ per example → (θ, tx, ty) in ε × the box (0.5 ↦ the identity)."""
    s = 2.0 * p - 1.0
    return s[:, 0] * (eps * max_angle), s[:, 1] * (eps * max_shift), s[:, 2] * (eps * max_shift)


@ATTACKS.register("spatial-pgd", config=SpatialPGDAttack)
def spatial_pgd(
    model: nn.Module,
    x: Images,
    y: Labels,
    eps: float,
    *,
    max_angle: float = 30.0,
    max_shift: float = 3.0,
    steps: int = 20,
    restarts: int = 1,
    alpha: float | None = None,
    loss: str = "ce",
    precision: str = "fp32",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected sign-gradient ascent of ℓ on the transformation parameters within ε × the box,
    from a random point of the box per restart; per example the worst restart is kept.
    ``alpha`` is in units of the box's full width (the engine's [0, 1] parameter cube; default
    2.5·½/steps, the engine's rule)."""
    eps = _checked(x, y, eps)
    if eps == 0.0:
        return x.detach().clone()
    loss_fn = LOSSES.get(loss)

    def craft(x0: Tensor, y0: Labels) -> Tensor:
        def at(p: Tensor) -> Tensor:
            return transform(x0, *_params(p, eps, max_angle, max_shift))

        def objective(p: Tensor) -> Tensor:
            return loss_fn(model(at(p)).float(), y0)

        def worst_case(p: Tensor) -> tuple[Tensor, Tensor]:
            logits = model(at(p)).float()
            return logits.argmax(1) != y0, loss_fn(logits, y0)

        centre = x0.new_full((x0.shape[0], 3), 0.5)
        p = ascend(objective, centre, 0.5, steps, norm="linf", alpha=alpha, starts=["random"] * restarts,
                   keep="last", score=worst_case, generator=generator, precision=precision, model=model).x
        with torch.no_grad():
            return at(p)

    return run_attack(model, x, y, craft, generator)


def random_transform(x: Tensor, eps: float, max_angle: float, max_shift: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """Each image under a transformation drawn uniformly from ε × the box (the spatial
    counterpart of random noise: white-box attacks must do at least as well)."""
    dev = generator.device if generator is not None else x.device
    u = torch.rand(x.shape[0], 3, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    with torch.no_grad():
        return transform(x, *_params(u, eps, max_angle, max_shift))

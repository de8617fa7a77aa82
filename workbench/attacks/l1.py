"""The L1 ball: exact projections and SLIDE's sparse step (Tramèr & Boneh 2019, arXiv:1904.13000).

- :func:`project_l1_ball`: Euclidean projection of each example's δ onto {‖δ‖₁ ≤ ε}
  (Duchi et al. 2008, the sort-based simplex projection applied to |δ|);
- :func:`project_l1_box`: the exact Euclidean projection onto {‖δ‖₁ ≤ ε} ∩ {0 ≤ x + δ ≤ 1}.
  Projecting onto the ball and then clipping x + δ to [0, 1] is *not* this projection (the clip
  wastes budget that the ball's soft threshold took from other coordinates), which is why
  SLIDE and APGD-L1 project onto the intersection;
- :func:`sparse_l1_direction`: SLIDE's step direction, sign(g) on the coordinates whose |g|
  is at or above the q-th percentile, L1-normalised per example.

The projection onto the intersection (KKT conditions of min ‖δ − v‖² s.t. Σ|δᵢ| ≤ ε,
−xᵢ ≤ δᵢ ≤ 1 − xᵢ): δᵢ(λ) = sign(vᵢ)·clamp(|vᵢ| − λ, 0, bᵢ), with bᵢ = 1 − xᵢ where vᵢ > 0
and xᵢ where vᵢ < 0, and λ = 0 when that is feasible, else the λ ≥ 0 with Σ|δᵢ(λ)| = ε.
f(λ) = Σ clamp(|vᵢ| − λ, 0, bᵢ) is continuous, piecewise linear and non-increasing with
breakpoints |vᵢ| − bᵢ and |vᵢ|: sorting them gives f at every breakpoint by a cumulative sum
of slopes, and λ by linear interpolation on the segment where f crosses ε (exact up to
rounding; computed in float64). The same algorithm as AutoAttack's ``L1_projection``, written
here from the conditions above and tested against a general solver.
"""

from __future__ import annotations

import math

import torch

from ..types import Tensor


def _flat64(t: Tensor) -> Tensor:
    return t.detach().reshape(t.shape[0], -1).to(torch.float64)


def _eps_column(eps, n: int, device) -> Tensor:
    e = torch.as_tensor(eps, dtype=torch.float64, device=device)
    return (e.expand(n) if e.dim() == 0 else e.reshape(n)).reshape(n, 1)


def _threshold(a: Tensor, b: Tensor, eps: Tensor) -> Tensor:
    """Per row the λ ≥ 0 with Σ clamp(aᵢ − λ, 0, bᵢ) = ε (0 where Σ min(aᵢ, bᵢ) ≤ ε).

    ``a`` ≥ 0 and ``b`` ≥ 0 (float64, (N, d)), ``eps`` (N, 1)."""
    n, d = a.shape
    if d == 0:
        return a.new_zeros(n, 1)
    # breakpoints: coordinate i leaves its cap bᵢ at λ = aᵢ − bᵢ and reaches 0 at λ = aᵢ
    points = torch.cat([a - b, a], dim=1)
    change = torch.cat([-torch.ones_like(a), torch.ones_like(a)], dim=1)  # slope change at each
    t, order = torch.sort(points, dim=1)
    slope = torch.gather(change, 1, order).cumsum(dim=1)  # slope of f on (t_k, t_{k+1})
    # f(t_0) = Σ bᵢ (every coordinate at its cap); f(t_k) by integrating the slopes
    f0 = b.sum(dim=1, keepdim=True)
    f = torch.cat([f0, f0 + (slope[:, :-1] * (t[:, 1:] - t[:, :-1])).cumsum(dim=1)], dim=1)
    # the first breakpoint with f ≤ ε; f crosses ε on the segment just before it
    below = f <= eps
    k = torch.where(below.any(dim=1, keepdim=True), below.float().argmax(dim=1, keepdim=True),
                    torch.full((n, 1), 2 * d - 1, device=a.device))
    k = k.clamp(min=1)
    t_k, f_k = t.gather(1, k), f.gather(1, k)
    t_prev, f_prev = t.gather(1, k - 1), f.gather(1, k - 1)
    s = slope.gather(1, k - 1)  # ≤ 0 on that segment
    lam = torch.where(s < 0, t_prev + (eps - f_prev) / s.clamp(max=-1e-300), t_k)
    lam = torch.where(f_prev <= eps, t_prev, lam)  # ε reached at or before the segment starts
    # feasible without shrinking: λ = 0 (λ is never negative: 0 lies in the box)
    feasible = torch.minimum(a, b).sum(dim=1, keepdim=True) <= eps
    return torch.where(feasible, torch.zeros_like(lam), lam.clamp(min=0.0))


def project_l1_box(delta: Tensor, x: Tensor, eps) -> Tensor:
    """The Euclidean projection of each example's ``delta`` onto {‖δ‖₁ ≤ ε, 0 ≤ x + δ ≤ 1}.

    ``delta`` and ``x`` are (N, ...) with ``x`` in [0, 1]; ``eps`` a float or an (N,) tensor
    (pixel units: the L1 norm of the whole example). Returns a new tensor like ``delta``."""
    v = _flat64(delta)
    xf = _flat64(x)
    a = v.abs()
    b = torch.where(v > 0, 1.0 - xf, xf).clamp(min=0.0)
    lam = _threshold(a, b, _eps_column(eps, v.shape[0], v.device))
    out = v.sign() * torch.minimum((a - lam).clamp(min=0.0), b)
    return out.to(delta.dtype).reshape(delta.shape)


def project_l1_ball(delta: Tensor, eps) -> Tensor:
    """The Euclidean projection of each example's ``delta`` onto {‖δ‖₁ ≤ ε} (no box):
    Duchi et al. 2008's soft threshold, from the same breakpoint search with no caps."""
    v = _flat64(delta)
    a = v.abs()
    lam = _threshold_uncapped(a, _eps_column(eps, v.shape[0], v.device))
    out = v.sign() * (a - lam).clamp(min=0.0)
    return out.to(delta.dtype).reshape(delta.shape)


def _threshold_uncapped(a: Tensor, eps: Tensor) -> Tensor:
    """Duchi et al. 2008, Fig. 1: sort |v| descending, ρ = max{j : μ_j − (Σ_{r≤j} μ_r − ε)/j > 0},
    θ = (Σ_{r≤ρ} μ_r − ε)/ρ; θ = 0 when ‖v‖₁ ≤ ε."""
    n, d = a.shape
    if d == 0:
        return a.new_zeros(n, 1)
    mu, _ = torch.sort(a, dim=1, descending=True)
    cs = mu.cumsum(dim=1)
    j = torch.arange(1, d + 1, device=a.device, dtype=a.dtype).unsqueeze(0)
    ok = mu - (cs - eps) / j > 0
    rho = (ok * torch.arange(d, device=a.device).unsqueeze(0)).amax(dim=1, keepdim=True)  # last true, 0-based
    theta = (cs.gather(1, rho) - eps) / (rho + 1).to(a.dtype)
    return torch.where(a.sum(dim=1, keepdim=True) <= eps, torch.zeros_like(theta), theta.clamp(min=0.0))


def sparse_l1_direction(grad: Tensor, q: float, x_adv: Tensor | None = None) -> Tensor:
    """SLIDE's direction: per example eᵢ = sign(gᵢ) where |gᵢ| is among the top (100 − q) %
    of |g| (the ⌈(100 − q)·d/100⌉ largest, at least one, ties included; q in [0, 100]), else 0, divided by the number of such coordinates (‖e‖₁ = 1; a zero
    gradient gives e = 0).

    With ``x_adv`` given, coordinates that the box stops from moving (at 0 with gᵢ < 0, at 1
    with gᵢ > 0) are left out before the percentile is taken (cleverhans' SparseL1Descent,
    ``clip_grad=True``): otherwise a step can spend its whole budget on pixels that the
    projection sends back."""
    g = grad.reshape(grad.shape[0], -1)
    if x_adv is not None:
        xa = x_adv.reshape(x_adv.shape[0], -1)
        g = torch.where(((xa <= 0) & (g < 0)) | ((xa >= 1) & (g > 0)), torch.zeros_like(g), g)
    a = g.abs()
    if a.shape[1] == 0:
        return torch.zeros_like(grad)
    # the m = ⌈(100 − q)·d/100⌉ ≥ 1 largest |gᵢ| (and ties): the level is the (d − m + 1)-th
    # smallest (kthvalue: torch.quantile refuses inputs over 2²⁴ elements)
    d = a.shape[1]
    m = min(max(math.ceil((100.0 - float(q)) / 100.0 * d - 1e-9), 1), d)
    level = a.kthvalue(d - m + 1, dim=1, keepdim=True).values
    chosen = (a >= level) & (a > 0)
    count = chosen.sum(dim=1, keepdim=True).clamp(min=1).to(g.dtype)
    e = torch.where(chosen, g.sign(), torch.zeros_like(g)) / count
    return e.reshape(grad.shape)

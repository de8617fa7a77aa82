"""The L1 projections and SLIDE's direction against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from workbench.attacks.l1 import project_l1_ball, project_l1_box, sparse_l1_direction


def _bisection_ball(v: np.ndarray, eps: float) -> np.ndarray:
    """Reference for the plain ball: soft threshold with θ found by bisection on Σ(|v|−θ)₊ = ε."""
    a = np.abs(v)
    if a.sum() <= eps:
        return v.copy()
    lo, hi = 0.0, a.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(a - mid, 0, None).sum() > eps else (lo, mid)
    return np.sign(v) * np.clip(a - (lo + hi) / 2, 0, None)


def _solver_box(v: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """Reference for the ball ∩ box: SLSQP on δ = p − n with p, n ≥ 0 (a general solver)."""
    d = len(v)
    bounds = [(0, 1 - xi) for xi in x] + [(0, xi) for xi in x]

    def fun(z):
        r = z[:d] - z[d:] - v
        return float(r @ r), np.concatenate([2 * r, -2 * r])

    cons = {"type": "ineq", "fun": lambda z: eps - z.sum(), "jac": lambda z: -np.ones(2 * d)}
    z0 = np.zeros(2 * d)
    res = minimize(fun, z0, jac=True, bounds=bounds, constraints=[cons], method="SLSQP",
                   options={"ftol": 1e-14, "maxiter": 1000})
    assert res.success, res.message
    return res.x[:d] - res.x[d:]


def test_plain_ball_matches_bisection_reference():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, 3, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.rand(64, generator=g, dtype=torch.float64) * 20  # some inside, some outside
    p = project_l1_ball(v, eps)
    for i in range(len(v)):
        ref = _bisection_ball(v[i].flatten().numpy(), float(eps[i]))
        np.testing.assert_allclose(p[i].flatten().numpy(), ref, atol=1e-9)
    assert (p.flatten(1).abs().sum(1) <= eps + 1e-9).all()


def test_box_projection_equals_ball_when_box_is_slack():
    # x = 0.5 and |v| ≤ 0.5: the soft threshold never reaches the box, so both agree
    g = torch.Generator().manual_seed(1)
    v = (torch.rand(16, 40, generator=g, dtype=torch.float64) - 0.5)
    x = torch.full_like(v, 0.5)
    np.testing.assert_allclose(project_l1_box(v, x, 3.0).numpy(), project_l1_ball(v, 3.0).numpy(), atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_box_projection_matches_general_solver(seed):
    rng = np.random.default_rng(seed)
    d = 12
    x = rng.uniform(0, 1, d)
    x[:3] = [0.0, 1.0, 0.98]  # pixels on and near the box's faces
    v = rng.normal(0, 0.8, d)
    eps = float(rng.uniform(0.3, 3.0))
    p = project_l1_box(torch.tensor(v)[None], torch.tensor(x)[None], eps)[0].numpy()
    ref = _solver_box(v, x, eps)
    np.testing.assert_allclose(p, ref, atol=1e-6)


def test_box_projection_is_not_ball_then_clip():
    # the ball's soft threshold spends 0.7 on a pixel already at 1, which the clip then drops
    x, v = torch.tensor([[1.0, 0.5]]), torch.tensor([[1.0, 0.6]])
    naive = (x + project_l1_ball(v, 1.0)).clamp(0, 1) - x
    torch.testing.assert_close(naive, torch.tensor([[0.0, 0.3]]))
    torch.testing.assert_close(project_l1_box(v, x, 1.0), torch.tensor([[0.0, 0.5]]))


def test_box_projection_is_the_projection():
    """Variational inequality ⟨v − p, z − p⟩ ≤ 0 for feasible z, feasibility, idempotence."""
    g = torch.Generator().manual_seed(2)
    n, d = 32, 50
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    x[:, :10] = torch.round(x[:, :10])  # saturated pixels
    v = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    eps = 2.0
    p = project_l1_box(v, x, eps)
    assert (p.abs().sum(1) <= eps + 1e-9).all()
    assert ((x + p) >= -1e-12).all() and ((x + p) <= 1 + 1e-12).all()
    torch.testing.assert_close(project_l1_box(p, x, eps), p, atol=1e-12, rtol=0)
    for _ in range(20):
        z = project_l1_box(torch.randn(n, d, generator=g, dtype=torch.float64), x, eps)  # feasible points
        assert (((v - p) * (z - p)).sum(1) <= 1e-9).all()


def test_box_projection_agrees_with_autoattack():
    pytest.importorskip("pyautoattack")
    from pyautoattack.autopgd_base import L1_projection

    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 3, 4, 4, generator=g)
    v = torch.randn(8, 3, 4, 4, generator=g) * 0.4
    ours = project_l1_box(v, x, 1.5)
    theirs = v + L1_projection(x, v, 1.5)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_per_example_eps_and_shapes_dtypes():
    v = torch.tensor([[3.0, -1.0, 0.0], [0.2, 0.1, -0.1]])
    out = project_l1_ball(v, torch.tensor([2.0, 1.0]))
    assert out.dtype == torch.float32 and out.shape == v.shape
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.0, 0.0], [0.2, 0.1, -0.1]]))
    # by hand: x = 0.9 caps the first coordinate at 0.1; the rest of ε = 1 goes to the second
    x = torch.tensor([[0.9, 0.5, 0.5]])
    torch.testing.assert_close(project_l1_box(torch.tensor([[3.0, -1.0, 0.0]]), x, 1.0),
                               torch.tensor([[0.1, -0.5, 0.0]]))
    # ε = 0 projects to δ = 0
    assert project_l1_box(torch.randn(4, 6), torch.rand(4, 6), 0.0).abs().max() == 0


def test_sparse_direction():
    grad = torch.tensor([[0.1, -5.0, 4.0, 0.0, -0.2, 0.3, 1.0, -2.0, 0.05, 0.0]])
    e = sparse_l1_direction(grad, 80)  # top 20%: |g| ≥ 8th smallest = 4.0: coordinates 1 and 2
    torch.testing.assert_close(e, torch.tensor([[0, -0.5, 0.5, 0, 0, 0, 0, 0, 0, 0]]))
    assert e.abs().sum() == pytest.approx(1.0)
    # a coordinate the box blocks (x = 0, g < 0) is left out before the percentile
    x = torch.tensor([[0.5, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    e = sparse_l1_direction(grad, 80, x)
    assert e[0, 1] == 0 and e[0, 2] > 0 and e.abs().sum() == pytest.approx(1.0)
    assert sparse_l1_direction(torch.zeros(2, 5), 90).abs().sum() == 0


def test_autoattack_l1_stays_in_the_ball_and_box():
    pytest.importorskip("pyautoattack")
    from torch import nn

    from workbench.attacks.autoattack import AutoAttackAttack, autoattack

    assert AutoAttackAttack(name="autoattack", norm="l1").id == "aa-standard-l1"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 16))
        model[1].bias.zero_()
    x = torch.rand(6, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = autoattack(model, x, y, 3.0, norm="l1", attacks=["apgd-ce"], seed=0)
    assert ((adv - x).flatten(1).abs().sum(1) <= 3.0 + 1e-4).all()
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (model(adv).argmax(1) == y).float().mean() < 1.0  # it does find something


def test_study_l1_and_spatial_grids():
    from workbench.study import EvaluationConfig

    ev = EvaluationConfig(eps_l1=[2, 1], attacks=[{"name": "autoattack", "norm": "l1"},
                                                   {"name": "spatial-grid", "max_shift": 1}])
    assert ev.grid(ev.attacks[0]) == (1.0, 2.0)
    assert ev.grid(ev.attacks[1]) == (1.0,)  # the default spatial grid: the whole box
    with pytest.raises(ValueError, match="eps_l1"):
        EvaluationConfig(attacks=[{"name": "autoattack", "norm": "l1"}])
    with pytest.raises(ValueError, match="different boxes"):
        EvaluationConfig(attacks=[{"name": "spatial-grid", "max_shift": 1}, {"name": "spatial-pgd", "max_shift": 2}])


def _linear(w):
    from torch import nn

    m = nn.Linear(len(w), 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([w, [0.0] * len(w)]))
    return m


def test_pgd_l1_slide_step_by_hand():
    from workbench.attacks.pgd import pgd

    # the loss of class 1 rises with w·x: one sparse step moves the largest-|w| pixel by α
    model = _linear([3.0, 2.0, -1.0, 0.5])
    x, y = torch.tensor([[0.5, 0.9, 0.2, 0.5]]), torch.tensor([1])
    out = pgd(model, x, y, 1.0, alpha=0.25, steps=1, norm="l1", random_start=False)
    torch.testing.assert_close(out - x, torch.tensor([[0.25, 0.0, 0.0, 0.0]]))


def test_pgd_l1_reaches_the_linear_optimum_over_ball_and_box():
    from workbench.attacks.pgd import PGDAttack, pgd

    # max w·δ over ‖δ‖₁ ≤ 1, 0 ≤ x + δ ≤ 1 is greedy by |w|: pixel 0 up to 1 (+0.5), pixel 1 up to 1
    # (+0.1), pixel 2 down to 0 (−0.2), the rest (0.2) on pixel 3: w·δ = 1.5 + 0.2 + 0.2 + 0.1 = 2.0
    model = _linear([3.0, 2.0, -1.0, 0.5])
    x, y = torch.tensor([[0.5, 0.9, 0.2, 0.5]]), torch.tensor([1])
    out = pgd(model, x, y, 1.0, steps=20, norm="l1", random_start=False)
    d = out - x
    assert float(d.abs().sum()) <= 1.0 + 1e-6 and out.min() >= 0 and out.max() <= 1
    assert float((torch.tensor([3.0, 2.0, -1.0, 0.5]) * d[0]).sum()) >= 0.98 * 2.0
    cfg = PGDAttack(name="pgd", norm="l1", steps=20, eps=[1.0])
    assert cfg.id == "pgd20-l1" and cfg.options()["sparsity"] == 99.0
    assert "sparsity" not in PGDAttack(name="pgd").options()


def test_pgd_l1_random_restarts_stay_feasible():
    from workbench.attacks.pgd import pgd

    torch.manual_seed(0)
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(8, 1, 4, 4)
    y = torch.randint(0, 3, (8,))
    out = pgd(model, x, y, 2.0, steps=5, norm="l1", restarts=3, generator=torch.Generator().manual_seed(0))
    assert ((out - x).flatten(1).abs().sum(1) <= 2.0 + 1e-5).all()
    assert out.min() >= 0 and out.max() <= 1

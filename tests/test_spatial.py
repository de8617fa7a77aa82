"""Spatial attacks (Engstrom et al. 2019): the transformation, the grid's worst case against a
brute-force loop, and the first-order attack."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.attacks import ATTACKS
from workbench.attacks.losses import LOSSES
from workbench.attacks.spatial import grid_points, random_transform, spatial_grid, spatial_pgd, transform


def test_rotation_by_90_degrees():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 6, generator=g)
    # counter-clockwise as displayed: torch.rot90 over (H, W) with k = 1
    torch.testing.assert_close(transform(x, 90.0, 0.0, 0.0), torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(transform(x, -90.0, 0.0, 0.0), torch.rot90(x, -1, (2, 3)), atol=1e-5, rtol=0)
    # an image symmetric under quarter turns is left unchanged
    sym = x + torch.rot90(x, 1, (2, 3)) + torch.rot90(x, 2, (2, 3)) + torch.rot90(x, 3, (2, 3))
    torch.testing.assert_close(transform(sym, 90.0, 0.0, 0.0), sym, atol=1e-5, rtol=0)
    # a non-square image by 180° (no shear from the per-axis normalisation)
    y = torch.rand(1, 1, 4, 7, generator=g)
    torch.testing.assert_close(transform(y, 180.0, 0.0, 0.0), torch.rot90(y, 2, (2, 3)), atol=1e-5, rtol=0)


def test_integer_translation_shifts_with_zero_fill():
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    out = transform(x, 0.0, 1.0, -2.0)  # one pixel right, two up
    expected = torch.zeros_like(x)
    expected[..., 0:2, 1:4] = x[..., 2:4, 0:3]
    torch.testing.assert_close(out, expected)
    # per-example parameters
    both = transform(torch.cat([x, x]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, -2.0]))
    torch.testing.assert_close(both, torch.cat([x, expected]))


def test_grid_points_cover_the_scaled_box():
    pts = grid_points(0.5, 30.0, 3.0, 31, 5)
    assert len(pts) == 31 * 25
    angles = sorted({p[0] for p in pts})
    shifts = sorted({p[1] for p in pts})
    assert angles[0] == pytest.approx(-15) and angles[-1] == pytest.approx(15) and 0.0 in angles
    assert shifts == pytest.approx([-1.5, -0.75, 0.0, 0.75, 1.5])
    assert grid_points(1.0, 30.0, 3.0, 1, 1) == [(0.0, 0.0, 0.0)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


def test_grid_worst_case_equals_brute_force_loop():
    model = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct clean
    y[:3] = (y[:3] + 1) % 3  # and a few wrong ones
    eps, kw = 1.0, dict(max_angle=30.0, max_shift=2.0, angles=7, shifts=3)
    adv = spatial_grid(model, x, y, eps, **kw)
    ce = LOSSES.get("ce")
    pts = grid_points(eps, kw["max_angle"], kw["max_shift"], kw["angles"], kw["shifts"])
    with torch.no_grad():
        got_correct = model(adv).argmax(1) == y
        got_loss = ce(model(adv), y)
        for i in range(len(y)):
            correct, losses = [], []
            for p in pts:  # one example and one transformation at a time
                logits = model(transform(x[i:i + 1], *p))
                correct.append(bool(logits.argmax(1).item() == y[i].item()))
                losses.append(float(ce(logits, y[i:i + 1])))
            assert bool(got_correct[i]) == all(correct)
            if all(correct):  # nothing fools it: the highest loss of the grid
                assert float(got_loss[i]) == pytest.approx(max(losses), rel=1e-5)
            else:  # among the fooling transformations, the highest loss
                assert float(got_loss[i]) == pytest.approx(max(l for l, c in zip(losses, correct) if not c), rel=1e-5)


def test_first_order_attack_pushes_to_the_loss_increasing_corner():
    # class 0's logit falls as the image's mass moves right: the loss rises with tx, so the
    # attack ends at the box's right edge (tx = ε·S) whatever the angle
    class RightIsBad(nn.Module):
        def forward(self, x):
            cols = torch.arange(x.shape[-1], dtype=x.dtype)
            mass = x.sum(dim=(1, 2))  # (N, W)
            pos = (mass * cols).sum(1) / mass.sum(1).clamp_min(1e-6)
            return torch.stack([-pos, pos - 100.0], dim=1)

    x = torch.zeros(4, 1, 9, 9)
    x[..., 3:6, 3:6] = 1.0  # a centred square: rotations barely move its mass
    y = torch.zeros(4, dtype=torch.long)
    adv = spatial_pgd(RightIsBad(), x, y, 1.0, max_angle=10.0, max_shift=2.0, steps=30,
                      generator=torch.Generator().manual_seed(0))
    cols = torch.arange(9.0)
    pos = (adv.sum(dim=(1, 2)) * cols).sum(1) / adv.sum(dim=(1, 2, 3))
    assert torch.allclose(pos, torch.full((4,), 6.0), atol=0.05)  # centre 4 + 2 pixels


def test_attacks_registered_and_eps_zero_is_identity():
    assert "spatial-grid" in ATTACKS and "spatial-pgd" in ATTACKS
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    assert torch.equal(spatial_grid(_model(), x, y, 0.0), x)
    # a random transformation stays within the box: zero box gives the image back
    torch.testing.assert_close(random_transform(x, 1.0, 0.0, 0.0, torch.Generator().manual_seed(0)), x)

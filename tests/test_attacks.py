"""Attacks: closed-form answers on tiny hand-built models (in the style of captum's tests).

For a linear classifier z = Wx + b with cross-entropy, ∇ₓℓ = Σ_k p_k w_k − w_y; with two
classes (or all wrong classes sharing one row) it points along w = w_other − w_true, so
FGSM / L∞ PGD land on x + ε·sign(w) and L2 PGD on x + ε·w/‖w‖₂.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workbench.attacks.base as attacks_base
from workbench.attacks import (
    ATTACKS,
    LOSSES,
    attack_mode,
    compile_for_attacks,
    default_alpha,
    fgsm,
    perturbation_norm,
    pgd,
    project,
    random_perturbation,
)
from workbench.attacks.base import random_start
from workbench.attacks.pgd import pgd_starts
from workbench.errors import UnknownNameError

CUDA = torch.cuda.is_available()


def linear_model(weight, bias=None) -> nn.Module:
    """z = W·flatten(x) + b with hand-set weights."""
    w = torch.tensor(weight, dtype=torch.float32)
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.tensor(bias) if bias is not None else torch.zeros(w.shape[0]))
    return nn.Sequential(nn.Flatten(), lin)


def small_cnn(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, classes),
    )


def batch(n=6, shape=(3, 8, 8), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g)


def close(a, b, atol=1e-6):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), rtol=0, atol=atol)


# Two classes: w = w1 − w0 = (−1, 2, 0): coordinate 0 goes down, 1 up, 2 has zero gradient.
W2 = [[1.0, -1.0, 0.0], [0.0, 1.0, 0.0]]


# ----------------------------------------------------------------------------- FGSM
def test_fgsm_linear_binary_moves_each_coordinate_by_eps_in_sign_of_w():
    model = linear_model(W2)
    x = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    y = torch.tensor([0, 1])  # the second example's "other" class is 0: signs flip
    x_adv = fgsm(model, x, y, 0.1)
    close(x_adv, [[0.4, 0.6, 0.5], [0.6, 0.4, 0.5]])


def test_fgsm_multiclass_wrong_classes_sharing_a_row():
    # Classes 1 and 2 share a row, so the gradient is (p1 + p2)(w_other − w_0). Coordinates
    # with an all-zero column have an exactly zero gradient and do not move.
    model = linear_model([[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.0, 0.0], [1.0, -2.0, 0.0, 0.0]])
    x = torch.full((1, 4), 0.25)
    x_adv = fgsm(model, x, torch.tensor([0]), 0.05)
    close(x_adv, [[0.30, 0.20, 0.25, 0.25]])


def test_fgsm_respects_the_unit_box():
    # w = (+1, −1, +1): coordinate 0 sits at 1.0 and cannot move up, coordinate 1 at 0.0.
    model = linear_model([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]])
    x = torch.tensor([[1.0, 0.0, 0.5]])
    close(fgsm(model, x, torch.tensor([0]), 0.1), [[1.0, 0.0, 0.6]])


def test_fgsm_with_margin_loss_matches_ce_direction_on_binary_linear():
    model = linear_model(W2)
    x = torch.full((1, 3), 0.5)
    close(fgsm(model, x, torch.tensor([0]), 0.1, loss="margin"), [[0.4, 0.6, 0.5]])


# ----------------------------------------------------------------------------- PGD L∞
@pytest.mark.parametrize("random_start", [False, True])
def test_linf_pgd_on_linear_model_reaches_the_vertex(random_start):
    model = linear_model(W2)
    x = torch.full((4, 3), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    # α·steps = 2.5ε ≥ 2ε: from any start in the box the sign steps reach the vertex.
    x_adv = pgd(model, x, y, 0.1, steps=10, random_start=random_start, generator=g)
    if not random_start:
        close(x_adv, fgsm(model, x, y, 0.1))
    close(x_adv[:, :2], [[0.4, 0.6]] * 4)
    # The zero-gradient coordinate keeps its random start (never leaves the ball).
    assert (x_adv[:, 2] - 0.5).abs().max() <= 0.1 + 1e-6


def test_linf_pgd_clipping_binds_at_the_bounds():
    model = linear_model([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]])
    x = torch.tensor([[1.0, 0.0, 0.95]])
    x_adv = pgd(model, x, torch.tensor([0]), 0.1, steps=5, generator=torch.Generator().manual_seed(0))
    close(x_adv, [[1.0, 0.0, 1.0]])


def reference_pgd_linf(model, x, y, eps, alpha, steps):
    """Straightforward PGD (Madry et al.) from x, written independently of the library."""
    model.eval()
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv


def reference_pgd_l2(model, x, y, eps, alpha, steps):
    model.eval()
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        g_norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        x_adv = x_adv.detach() + alpha * grad / g_norm
        delta = x_adv - x
        d_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(eps / d_norm, max=1.0)
        x_adv = (x + delta).clamp(0.0, 1.0)
    return x_adv


def test_pgd_without_random_start_equals_reference_exactly(monkeypatch):
    # Contiguous layout, so convolutions sum in the same order as the reference.
    monkeypatch.setattr(attacks_base, "CHANNELS_LAST_DEVICES", ())
    model = small_cnn()
    x, y = batch()
    ours = pgd(model, x, y, 8 / 255, 2 / 255, steps=7, random_start=False)
    ref = reference_pgd_linf(model, x, y, 8 / 255, 2 / 255, 7)
    assert torch.equal(ours, ref)
    ours2 = pgd(model, x, y, 0.5, 0.1, steps=7, norm="l2", random_start=False)
    close(ours2, reference_pgd_l2(model, x, y, 0.5, 0.1, 7), atol=1e-5)


def test_channels_last_path_agrees_with_contiguous_path(monkeypatch):
    model = small_cnn()
    x, y = batch(n=16)
    fast = pgd(model, x, y, 8 / 255, steps=5, random_start=False)
    assert fast.is_contiguous() and fast.dtype == x.dtype
    monkeypatch.setattr(attacks_base, "CHANNELS_LAST_DEVICES", ())
    plain = pgd(model, x, y, 8 / 255, steps=5, random_start=False)
    # Only the summation order inside convolutions differs; a rare near-zero gradient
    # coordinate may take the other sign, so compare coordinate-wise agreement.
    assert (fast == plain).float().mean() > 0.99


def test_model_that_needs_contiguous_layout_still_works(monkeypatch):
    class ViewNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(self.conv(x).view(x.shape[0], -1))  # fails on channels_last

    torch.manual_seed(0)
    model = ViewNet()
    x, y = batch(n=4, classes=3)
    x_adv = pgd(model, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    # The fallback reruns from the same generator state: same result as contiguous only.
    monkeypatch.setattr(attacks_base, "CHANNELS_LAST_DEVICES", ())
    assert torch.equal(x_adv, pgd(model, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(0)))


def test_pgd_per_example_result_does_not_depend_on_the_batch():
    model = small_cnn()
    x, y = batch(n=5)
    whole = pgd(model, x, y, 0.05, steps=4, random_start=False)
    alone = torch.cat([pgd(model, x[i : i + 1], y[i : i + 1], 0.05, steps=4, random_start=False) for i in range(5)])
    assert (whole == alone).float().mean() > 0.999


# ----------------------------------------------------------------------------- PGD L2
@pytest.mark.parametrize("random_start", [False, True])
def test_l2_pgd_on_linear_binary_model_converges_to_eps_along_w(random_start):
    # w = w1 − w0 = (3, 4, 0), ‖w‖ = 5: the optimum is x + ε·(0.6, 0.8, 0).
    model = linear_model([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    x = torch.full((3, 3), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(model, x, y, 0.1, alpha=0.025, steps=120, norm="l2", random_start=random_start, generator=g)
    close(x_adv, [[0.56, 0.58, 0.5]] * 3, atol=1e-5)
    close(perturbation_norm(x_adv - x, "l2"), [0.1] * 3, atol=1e-6)


def test_l2_random_start_radius_is_uniform_not_on_the_sphere():
    """torchattacks' PGDL2 law: radius ε·U, U ~ U[0, 1]. Uniform in the ball (the old law)
    puts it at ε·U^{1/d}, median 0.989ε at d = 64, so starts were all at the surface."""
    from scipy import stats as st

    x = torch.full((4000, 1, 8, 8), 0.5)
    start = random_start(x, 0.5, "l2", torch.Generator().manual_seed(0))
    r = (perturbation_norm(start - x, "l2") / 0.5).numpy()  # no clipping: |δᵢ| stays far below 0.5
    assert st.kstest(r, "uniform").pvalue > 1e-3
    assert abs(float((r < 0.5).mean()) - 0.5) < 0.03


def test_l2_pgd_with_restarts_starts_once_from_the_clean_input():
    # one step of ε from x along w is the exact optimum of a linear model; a random start
    # followed by one step of ε and the projection is not: so a clean start must be among them
    torch.manual_seed(0)
    w = torch.randn(64)
    model = linear_model(torch.stack([torch.zeros(64), w]).tolist())
    x = torch.full((5, 64), 0.5)
    y = torch.zeros(5, dtype=torch.long)
    optimum = x + 0.1 * w / w.norm()
    out = pgd(model, x, y, 0.1, alpha=0.1, steps=1, norm="l2", restarts=3, generator=torch.Generator().manual_seed(1))
    close(out, optimum.tolist(), atol=1e-6)
    assert pgd_starts("l2", 3) == ["clean", "random", "random"] and pgd_starts("l2", 1) == ["random"]
    assert pgd_starts("linf", 3) == ["random"] * 3 and pgd_starts("l2", 2, random_start=False) == ["clean"] * 2


def test_l2_pgd_zero_gradient_is_a_zero_step():
    model = linear_model([[1.0, 1.0], [1.0, 1.0]])  # constant loss: ∇ = 0
    x = torch.full((2, 2), 0.5)
    x_adv = pgd(model, x, torch.tensor([0, 1]), 0.3, steps=3, norm="l2", random_start=False)
    assert torch.equal(x_adv, x)


# ----------------------------------------------------------------------------- geometry
def test_project_linf_and_l2_hand_made():
    d = torch.tensor([[0.3, -0.2, 0.05], [0.0, 0.0, 0.0]])
    close(project(d, 0.1, "linf"), [[0.1, -0.1, 0.05], [0.0, 0.0, 0.0]])
    d2 = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    close(project(d2, 1.0, "l2"), [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    close(project(d2, torch.tensor([2.5, 0.25, 1.0]), "l2"), [[1.5, 2.0], [0.15, 0.2], [0.0, 0.0]])
    close(project(d, torch.tensor([0.25, 1.0]), "linf"), [[0.25, -0.2, 0.05], [0.0, 0.0, 0.0]])
    close(project(d2, 0.0, "l2"), torch.zeros(3, 2))


def test_perturbation_norm_hand_made():
    d = torch.tensor([[3.0, -4.0], [0.0, 0.0]]).view(2, 1, 1, 2)
    close(perturbation_norm(d, "linf"), [4.0, 0.0])
    close(perturbation_norm(d, "l2"), [5.0, 0.0])


def test_random_perturbation_has_the_right_size_and_stays_in_the_box():
    x = torch.full((4, 3, 5, 5), 0.5)
    g = torch.Generator().manual_seed(0)
    xr = random_perturbation(x, 0.1, "linf", generator=g)
    close((xr - x).abs(), torch.full_like(x, 0.1))  # ε·sign(u): a vertex of the box
    xr2 = random_perturbation(x, 0.3, "l2", generator=g)
    close(perturbation_norm(xr2 - x, "l2"), [0.3] * 4, atol=1e-6)
    edge = random_perturbation(torch.ones(2, 10), 0.5, "linf", generator=g)
    assert edge.max() <= 1.0 and edge.min() >= 0.5


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "margin", "dlr"])
def test_perturbation_never_exceeds_eps_and_stays_in_the_box(norm, loss):
    model = small_cnn(seed=3)
    x, y = batch(n=8, seed=4)
    x[:2] = x[:2].round()  # some coordinates exactly at the bounds
    eps = 8 / 255 if norm == "linf" else 0.5
    for x_adv in (
        pgd(model, x, y, eps, steps=5, norm=norm, restarts=2, loss=loss),
        pgd(model, x, y, eps, alpha=10 * eps, steps=3, norm=norm, loss=loss),  # huge steps
    ):
        assert perturbation_norm(x_adv - x, norm).max() <= eps + 1e-6
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    x_f = fgsm(model, x, y, eps / 4, loss=loss)
    assert perturbation_norm(x_f - x, "linf").max() <= eps / 4 + 1e-6


def test_default_alpha_rule():
    assert default_alpha(8 / 255, 10) == pytest.approx(2.5 * 8 / 255 / 10)


# ----------------------------------------------------------------------------- restarts
class ScriptedModel(nn.Module):
    """Linear logits while crafting (grad enabled); scripted logits at each restart's
    bookkeeping forward (run under no_grad), whose inputs it records."""

    def __init__(self, script):
        super().__init__()
        self.lin = nn.Linear(2, 3)
        self.script, self.seen = list(script), []

    def forward(self, x):
        if torch.is_grad_enabled():
            return self.lin(x)
        self.seen.append(x.clone())
        return self.script[len(self.seen) - 1]


def test_restart_bookkeeping_keeps_the_worst_case_per_example():
    NF_low = [2.0, 0.0, 0.0]  # not fooled, CE 0.24
    NF_high = [1.0, 0.5, 0.5]  # not fooled, CE 0.78
    NF_vhigh = [1.0, 0.99, 0.99]  # not fooled, CE 1.09 (> F_low's)
    F_low = [1.0, 1.1, 0.0]  # fooled, CE 0.91
    F_high = [0.0, 3.0, 0.0]  # fooled, CE 3.10
    per_restart = [  # rows: examples 0..4
        [F_low, NF_low, NF_low, F_low, NF_low],
        [NF_vhigh, F_high, NF_vhigh, NF_vhigh, NF_low],
        [NF_low, F_low, NF_high, F_high, NF_low],
    ]
    expected_restart = [0, 1, 1, 2, 0]
    # Fooling beats a higher loss (0); a later fooling restart wins and a weaker fooling
    # one does not replace it (1); worst loss among non-fooling (2); higher loss among
    # fooling (3); ties keep the first (4).
    model = ScriptedModel(torch.tensor(r) for r in per_restart)
    x = torch.full((5, 2), 0.5)
    y = torch.zeros(5, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(model, x, y, 0.2, alpha=0.01, steps=2, restarts=3, generator=g)
    assert len(model.seen) == 3
    assert not torch.equal(model.seen[0], model.seen[1])  # restarts really differ
    expected = torch.stack([model.seen[r][i] for i, r in enumerate(expected_restart)])
    assert torch.equal(x_adv, expected)


class TwoBasins(nn.Module):
    """1-D input; z1 − z0 = 10t² + 2t − 1.5 with t = x − 0.5. The loss rises away from
    x = 0.4 on both sides, so sign-PGD from a random start ends at 0.1 (not fooled, f = −0.7)
    or at 0.9 (fooled, f = 0.9) depending only on which side it started."""

    def forward(self, x):
        t = x[:, 0] - 0.5
        return torch.stack([torch.zeros_like(t), 10 * t**2 + 2 * t - 1.5], dim=1)


def test_restarts_keep_a_fooling_restart_when_a_later_one_does_not_fool():
    model = TwoBasins()
    ends = []
    model.register_forward_hook(lambda m, i, o: ends.append(i[0].clone()) if not torch.is_grad_enabled() else None)
    x = torch.full((200, 1), 0.5)
    y = torch.zeros(200, dtype=torch.long)
    x_adv = pgd(model, x, y, 0.4, steps=10, restarts=3, generator=torch.Generator().manual_seed(0))
    ends = torch.stack(ends)[..., 0]  # (restarts, N), each 0.1 or 0.9
    close(ends.sub(0.5).abs(), torch.full_like(ends, 0.4))
    fooled = ends > 0.5
    assert (fooled[0] & ~fooled[1]).any() and (~fooled[0] & fooled[1]).any()
    close(x_adv[:, 0], torch.where(fooled.any(0), 0.9, 0.1))
    # One restart with the same seed is exactly the first restart.
    first = pgd(model, x, y, 0.4, steps=10, generator=torch.Generator().manual_seed(0))
    close(first[:, 0], ends[0], atol=0)


# ----------------------------------------------------------------------------- model state
class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_cnn()
        self.modes, self.calls = [], 0

    def forward(self, x):
        self.calls += 1
        self.modes.append((self.training, any(p.requires_grad for p in self.parameters())))
        return self.net(x)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_model_state_is_restored_and_no_parameter_grad(attack):
    model = Recorder()
    model.train()
    model.net[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    model.net[0].weight.requires_grad_(False)  # and a frozen parameter stays frozen
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    stats = model.net[1].running_mean.clone()
    x, y = batch(n=4)
    ATTACKS.get(attack)(model, x, y, 0.03)
    assert all(m == (False, False) for m in model.modes)  # eval + frozen while crafting
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.net[1].running_mean, stats)
    # The trainer continues: a normal backward still works afterwards.
    F.cross_entropy(model(x), y).backward()
    assert model.net[2 + 2].weight.grad is not None and model.net[0].weight.grad is None


def test_eval_model_stays_eval_and_state_restored_on_exception():
    model = small_cnn().eval()

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            raise ValueError("boom")

    boom = Boom().train()
    with pytest.raises(ValueError, match="boom"):
        pgd(boom, *batch(n=2), 0.1)
    assert boom.training and all(p.requires_grad for p in boom.parameters())
    other = small_cnn().eval()
    pgd(other, *batch(n=2), 0.1, steps=2)
    assert not other.training and not any(m.training for m in other.modules())
    with attack_mode(model):
        with attack_mode(model):  # nesting is safe
            assert not any(p.requires_grad for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_works_when_called_under_no_grad_and_inference_mode():
    model = small_cnn()
    x, y = batch(n=3)
    with torch.no_grad():
        a = pgd(model, x, y, 0.05, steps=2, random_start=False)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        b = pgd(model, xi, yi, 0.05, steps=2, random_start=False)
        c = fgsm(model, xi, yi, 0.05)
    assert torch.equal(a, b.clone()) and (a - x).abs().max() > 0 and c.shape == x.shape


def test_eps_zero_is_identity_without_running_the_model():
    model = Recorder()
    x, y = batch(n=3)
    for out in (fgsm(model, x, y, 0.0), pgd(model, x, y, 0.0, restarts=3)):
        assert torch.equal(out, x) and out is not x
    assert model.calls == 0


# ----------------------------------------------------------------------------- losses
def test_margin_and_dlr_hand_computed():
    z = torch.tensor([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    y = torch.tensor([0, 1])
    # margin = max_{i≠y} z_i − z_y: 3 − 1 = 2 (fooled); 2 − 3 = −1 (correct).
    close(LOSSES.get("margin")(z, y), [2.0, -1.0])
    close(LOSSES.get("margin")(z, y, kappa=0.5), [2.0, -0.5])
    # dlr = −(z_y − max_{i≠y} z_i)/(z_π1 − z_π3): −(1 − 3)/(3 − 1) = 1; −(3 − 2)/2 = −0.5.
    close(LOSSES.get("dlr")(z, y), [1.0, -0.5])
    close(LOSSES.get("dlr")(7 * z + 4, y), [1.0, -0.5], atol=1e-5)  # shift/scale invariant
    close(LOSSES.get("ce")(z, y), F.cross_entropy(z, y, reduction="none"))
    with pytest.raises(ValueError, match="3"):
        LOSSES.get("dlr")(z[:, :2], y)
    assert set(LOSSES.names()) == {"ce", "margin", "dlr"}


# ----------------------------------------------------------------------------- options
def test_generator_makes_random_start_reproducible():
    model = small_cnn()
    x, y = batch(n=4)
    for norm in ("linf", "l2"):
        # one restart at L2: with several, the first starts from x and may win everywhere
        r = 2 if norm == "linf" else 1
        a = pgd(model, x, y, 0.1, steps=2, norm=norm, restarts=r, generator=torch.Generator().manual_seed(5))
        b = pgd(model, x, y, 0.1, steps=2, norm=norm, restarts=r, generator=torch.Generator().manual_seed(5))
        c = pgd(model, x, y, 0.1, steps=2, norm=norm, restarts=r, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_bf16_precision_runs_and_returns_float32():
    model = small_cnn()
    x, y = batch(n=4)
    for out in (pgd(model, x, y, 0.05, steps=2, precision="bf16", restarts=2), fgsm(model, x, y, 0.05, precision="bf16")):
        assert out.dtype == torch.float32 and (out - x).abs().max() <= 0.05 + 1e-6


def test_float64_inputs_stay_float64():
    model = linear_model(W2).double()
    x = torch.full((1, 3), 0.5, dtype=torch.float64)
    out = pgd(model, x, torch.tensor([0]), 0.1, steps=4, random_start=False)
    assert out.dtype == torch.float64
    close(out, [[0.4, 0.6, 0.5]], atol=1e-12)


def test_registry_and_validation_errors():
    assert {"autoattack", "fgsm", "pgd"} <= set(ATTACKS.names())  # every attack module registers itself
    assert ATTACKS.get("pgd") is pgd and ATTACKS.get("fgsm") is fgsm
    model = linear_model(W2)
    x, y = torch.full((1, 3), 0.5), torch.tensor([0])
    close(ATTACKS.get("pgd")(model, x, y, 0.1, steps=4, random_start=False), [[0.4, 0.6, 0.5]])
    with pytest.raises(UnknownNameError, match="valid attacks: autoattack, fgsm, .*pgd"):
        ATTACKS.get("cw")
    with pytest.raises(UnknownNameError, match="ce, dlr, margin"):
        pgd(model, x, y, 0.1, loss="hinge")
    with pytest.raises(ValueError, match="linf, l2, l1"):
        pgd(model, x, y, 0.1, norm="l3")
    with pytest.raises(ValueError, match="fp32, bf16"):
        fgsm(model, x, y, 0.1, precision="fp16")
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, -0.1)
    with pytest.raises(ValueError, match="eps"):
        fgsm(model, x, y, math.nan)
    with pytest.raises(ValueError):
        pgd(model, x, y, 0.1, restarts=0)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_bf16_and_cpu_generator():
    model = small_cnn().cuda()
    x, y = (t.cuda() for t in batch(n=8))
    for norm in ("linf", "l2"):
        eps = 8 / 255 if norm == "linf" else 0.5
        a = pgd(model, x, y, eps, steps=3, norm=norm, precision="bf16", restarts=2, generator=torch.Generator().manual_seed(0))
        b = pgd(model, x, y, eps, steps=3, norm=norm, precision="bf16", restarts=2, generator=torch.Generator().manual_seed(0))
        assert a.device == x.device and a.dtype == torch.float32 and torch.equal(a, b)
        assert perturbation_norm(a - x, norm).max() <= eps + 1e-6
    g = torch.Generator(device="cuda").manual_seed(0)
    assert pgd(model, x, y, 0.03, steps=2, generator=g).is_cuda


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graph_replay_matches_eager_steps(monkeypatch):
    x, y = (t.cuda() for t in batch(n=8, shape=(12,), classes=3))
    model = linear_model(torch.randn(3, 12).tolist()).cuda()  # cuBLAS: deterministic
    runs = {}
    for graphs in (True, False):
        monkeypatch.setattr(attacks_base, "CUDA_GRAPHS", graphs)
        runs[graphs] = [
            pgd(model, x, y, eps, alpha=eps / 4, steps=8, norm=norm, restarts=2, generator=torch.Generator().manual_seed(0))
            for norm, eps in (("linf", 0.1), ("l2", 0.5))
        ]
    for a, b in zip(runs[True], runs[False]):
        assert torch.equal(a, b)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graph_falls_back_for_host_syncing_models_and_skips_hooked_models(monkeypatch):
    class Syncing(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 3)

        def forward(self, x):
            z = self.lin(x)
            return z if float(z.detach().abs().max()) >= 0 else -z  # a host sync: not capturable

    torch.manual_seed(0)
    model = Syncing().cuda()
    x, y = (t.cuda() for t in batch(n=8, shape=(12,), classes=3))
    a = pgd(model, x, y, 0.1, steps=6, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(attacks_base, "CUDA_GRAPHS", False)
    b = pgd(model, x, y, 0.1, steps=6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    monkeypatch.setattr(attacks_base, "CUDA_GRAPHS", True)
    calls = []
    handle = model.lin.register_forward_hook(lambda m, i, o: calls.append(1))
    pgd(model, x, y, 0.1, steps=6)
    handle.remove()
    assert len(calls) == 6  # hooked model: every step is an eager forward
    # After the failed capture the CUDA RNG and later captures still work.
    assert torch.rand(3, device="cuda").is_cuda
    monkeypatch.setattr(attacks_base, "CUDA_GRAPHS", True)
    lin = linear_model(torch.randn(3, 12).tolist()).cuda()
    c = pgd(lin, x, y, 0.1, steps=6, generator=torch.Generator(device="cuda").manual_seed(0))
    monkeypatch.setattr(attacks_base, "CUDA_GRAPHS", False)
    assert torch.equal(c, pgd(lin, x, y, 0.1, steps=6, generator=torch.Generator(device="cuda").manual_seed(0)))


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C++ compiler")
def test_compiled_model_gives_the_eager_attack(monkeypatch):
    # evaluation.compile: the attack runs on torch.compile(model); same iterates up to rounding.
    monkeypatch.setattr(attacks_base, "CHANNELS_LAST_DEVICES", ())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x, y = batch(n=32, shape=(3, 2, 2), classes=3)
    compiled = compile_for_attacks(model)
    eager = pgd(model, x, y, 0.1, 0.02, steps=5, random_start=False)
    fast = pgd(compiled, x, y, 0.1, 0.02, steps=5, random_start=False)
    assert (fast == eager).float().mean() > 0.99
    assert all(p.requires_grad for p in model.parameters())  # attack_mode restored the wrapped model


def test_evaluation_compile_option_crafts_on_the_compiled_model_and_scores_eagerly(monkeypatch):
    import workbench.evaluation.robustness as rob
    from workbench.study import EvaluationConfig

    model = small_cnn().eval()
    seen = []

    def spy(m):
        seen.append(m)
        wrapper = nn.Sequential(m)  # stands in for the compiled module
        return wrapper

    monkeypatch.setattr(rob, "compile_for_attacks", spy)
    x, y = batch(n=8)
    cfg = EvaluationConfig(eps=[8 / 255], attacks=[{"name": "pgd", "steps": 2}], transfer=False, compile=True)
    res = rob.evaluate({"m": model}, x, y, cfg)
    assert seen == [model]
    assert set(res.robustness["attack"]) == {"clean", "pgd2-linf"}
    cfg_off = EvaluationConfig(eps=[8 / 255], attacks=[{"name": "pgd", "steps": 2}], transfer=False)
    seen.clear()
    rob.evaluate({"m": model}, x, y, cfg_off)
    assert seen == []

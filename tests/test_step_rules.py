"""The ascent engine's step rules: PGD, FGSM, MI-FGSM and FGSM-RS run on the one engine and
give the iterates of the loops they replaced (copied below from commit 0714894) bit for bit."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workbench.attacks.ascent as ascent_mod
from workbench.attacks import fgsm, pgd
from workbench.attacks.ascent import Momentum, RandomStartSign, Sign, StepRule, ascend
from workbench.attacks.base import (
    _per_example,
    attack_mode,
    forward_context,
    perturbation_norm,
    random_start,
    run_attack,
)
from workbench.attacks.losses import LOSSES
from workbench.attacks.mifgsm import mifgsm
from workbench.attacks.pgd import pgd_starts
from workbench.training.fgsm_rs import FGSMRS, FGSMRSRecipe

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- 0714894's loops
def _old_input_gradient(model, x_adv, y, loss_fn, precision):
    x_adv.requires_grad_(True)
    try:
        with forward_context(x_adv.device, precision):
            logits = model(x_adv)
        total = loss_fn(logits.float(), y).sum()
        (grad,) = torch.autograd.grad(total, x_adv)
    finally:
        x_adv.requires_grad_(False)
    return grad


def _old_pgd(model, x, y, eps, alpha, steps, norm, random_start_, restarts, loss, generator):
    """0714894's PGD: Ball.step / Ball.clip and the keep="last" restarts of its ascend (with
    the starts of issue 19: at L2 the first of several restarts is clean)."""
    loss_fn = LOSSES.get(loss)

    def craft(x0, y):
        lo, hi = (x0 - eps).clamp_(min=0.0), (x0 + eps).clamp_(max=1.0)

        def clip(x_adv):
            if norm == "linf":
                return x_adv.clamp_(lo, hi)
            tiny = torch.finfo(x_adv.dtype).tiny
            delta = x_adv.sub_(x0)
            d_norm = _per_example(perturbation_norm(delta, "l2"), x0).clamp_min(tiny)
            return torch.addcmul(x0, delta, (eps / d_norm).clamp_(max=1.0), out=x_adv).clamp_(0.0, 1.0)

        best = best_fooled = best_loss = None
        for start in pgd_starts(norm, restarts, random_start_):
            x_adv = random_start(x0, eps, norm, generator) if start == "random" else x0.clone()
            for _ in range(steps):
                grad = _old_input_gradient(model, x_adv, y, loss_fn, "fp32")
                if norm == "linf":
                    x_adv.add_(grad.sign(), alpha=alpha).clamp_(lo, hi)
                else:
                    g_norm = _per_example(perturbation_norm(grad, "l2"), x0).clamp_min(torch.finfo(grad.dtype).tiny)
                    x_adv.addcdiv_(grad, g_norm, value=alpha)
                    clip(x_adv)
            if restarts == 1:
                return x_adv
            with torch.no_grad():
                logits = model(x_adv).float()
                fooled, value = logits.argmax(1) != y, loss_fn(logits, y)
            if best is None:
                best, best_fooled, best_loss = x_adv, fooled, value
                continue
            better = (fooled > best_fooled) | ((fooled == best_fooled) & (value > best_loss))
            best = torch.where(_per_example(better, x0), x_adv, best)
            best_fooled, best_loss = torch.where(better, fooled, best_fooled), torch.where(better, value, best_loss)
        return best

    return run_attack(model, x, y, craft, generator)


def _old_mifgsm(model, x, y, eps, steps, decay, loss="ce"):
    loss_fn, alpha, tiny = LOSSES.get(loss), eps / steps, torch.finfo(x.dtype).tiny

    def craft(x0, y):
        lo, hi = (x0 - eps).clamp_(min=0.0), (x0 + eps).clamp_(max=1.0)
        x_adv, g = x0.clone(), torch.zeros_like(x0)
        for _ in range(steps):
            grad = _old_input_gradient(model, x_adv, y, loss_fn, "fp32")
            l1 = _per_example(grad.flatten(1).abs().sum(1), x0).clamp_min(tiny)
            g.mul_(decay).add_(grad / l1)
            x_adv.add_(g.sign(), alpha=alpha).clamp_(lo, hi)
        return x_adv

    return run_attack(model, x, y, craft)


def _old_fgsm_rs_loss(model, x, y, eps, alpha):
    """0714894's FGSMRS.loss (rand_like is torch.rand_like outside data-parallel training)."""
    delta = (torch.rand_like(x) * 2 - 1) * eps
    delta = ((x + delta).clamp_(0, 1) - x).requires_grad_(True)
    with attack_mode(model, keep_mode=True):
        step_loss = F.cross_entropy(model(x + delta).float(), y)
        (grad,) = torch.autograd.grad(step_loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp_(-eps, eps)
    x_adv = (x + delta).clamp_(0, 1)
    logits = model(x_adv)
    return F.cross_entropy(logits.float(), y), logits


# --------------------------------------------------------------------------- fixtures
def _conv_net(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1)]
    layers += [nn.BatchNorm2d(6)] if bn else []
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 5)]
    return nn.Sequential(*layers)


def _batch(seed: int = 1, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b), f"max |diff| {(a - b).abs().max().item():.3g}"


# --------------------------------------------------------------------------- equal to 0714894
@pytest.mark.parametrize("norm,restarts,start,loss", [
    ("linf", 1, True, "ce"), ("linf", 3, True, "margin"), ("l2", 1, True, "ce"), ("l2", 3, True, "ce"),
    ("l2", 2, False, "dlr"),
])
def test_pgd_gives_the_old_iterates_bit_for_bit(norm, restarts, start, loss):
    model = _conv_net().eval()
    x, y = _batch()
    eps = 8 / 255 if norm == "linf" else 0.5
    got = pgd(model, x, y, eps, steps=5, norm=norm, restarts=restarts, random_start=start, loss=loss,
              generator=torch.Generator().manual_seed(3))
    want = _old_pgd(model, x, y, eps, 2.5 * eps / 5, 5, norm, start, restarts, loss, torch.Generator().manual_seed(3))
    _equal(got, want)


def test_fgsm_gives_the_old_one_step_bit_for_bit():
    model = _conv_net().eval()
    x, y = _batch()
    want = run_attack(model, x, y, lambda x0, y0: (x0 + 0.1 * _old_input_gradient(
        model, x0, y0, LOSSES.get("ce"), "fp32").sign()).clamp_((x0 - 0.1).clamp(min=0), (x0 + 0.1).clamp(max=1)))
    _equal(fgsm(model, x, y, 0.1), want)


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_mifgsm_gives_the_old_loop_bit_for_bit(decay):
    model = _conv_net().eval()
    x, y = _batch()
    _equal(mifgsm(model, x, y, 8 / 255, steps=6, decay=decay), _old_mifgsm(model, x, y, 8 / 255, 6, decay))


def test_fgsm_rs_trains_the_old_weights_bit_for_bit():
    # three SGD steps of a BatchNorm net (the FGSM step runs in train mode, so it moves the
    # running statistics too): the new recipe's loss and the old loss give equal parameters,
    # buffers and losses from equal seeds
    recipe = FGSMRS(FGSMRSRecipe(name="fgsm_rs", eps=8 / 255), _TrainStub())
    runs = []
    for loss in (recipe.loss, lambda m, x, y: _old_fgsm_rs_loss(m, x, y, 8 / 255, 1.25 * 8 / 255)):
        model = _conv_net(bn=True).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(7)
        losses = []
        for b in range(3):
            x, y = _batch(10 + b)
            value, _ = loss(model, x, y)
            opt.zero_grad()
            value.backward()
            opt.step()
            losses.append(value.detach())
        runs.append((model.state_dict(), torch.stack(losses), torch.rand(1)))
    (w_new, l_new, r_new), (w_old, l_old, r_old) = runs
    _equal(l_new, l_old)
    _equal(r_new, r_old)  # the same random numbers drawn
    for k in w_old:
        _equal(w_new[k], w_old[k])


class _TrainStub:
    precision = "fp32"
    label_smoothing = 0.0


# --------------------------------------------------------------------------- the design
def test_mifgsm_and_fgsm_rs_take_their_gradients_in_the_engine(monkeypatch):
    calls = []
    real = ascent_mod.input_gradient

    def counting(objective, x_adv, precision="fp32"):
        calls.append(x_adv.shape)
        return real(objective, x_adv, precision)

    monkeypatch.setattr(ascent_mod, "input_gradient", counting)
    model = _conv_net().eval()
    x, y = _batch()
    mifgsm(model, x, y, 0.1, steps=4)
    assert len(calls) == 4
    recipe = FGSMRS(FGSMRSRecipe(name="fgsm_rs", eps=0.1), _TrainStub())
    recipe.loss(_conv_net(bn=True).train(), x, y)
    assert len(calls) == 5


def test_input_gradients_are_computed_in_one_place():
    # attacks, the engine, probes, recipes and checks all call attacks.base.input_gradient;
    # captum's attributions (saliency) and the training step's .backward() are not input gradients
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "workbench").rglob("*.py")
            if re.search(r"autograd\.grad\(", p.read_text())]
    assert hits == ["workbench/attacks/base.py"], hits


def test_the_engine_owns_eval_mode_and_keep_mode_freezes_only():
    model = _conv_net(bn=True).train()
    seen = []

    def objective(x_adv):
        seen.append((model.training, any(p.requires_grad for p in model.parameters())))
        return F.cross_entropy(model(x_adv), y, reduction="none")

    x, y = _batch()
    ascend(objective, x, 0.1, 2, starts=["clean"], model=model)
    ascend(objective, x, 0.1, 1, starts=["clean"], model=model, keep_mode=True)
    assert seen == [(False, False), (False, False), (True, False)]
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_a_rule_with_state_is_reset_at_every_start():
    # Momentum's accumulator starts at 0 for each restart: two identical clean starts give
    # identical iterates, whichever comes second
    model = _conv_net().eval()
    x, y = _batch()
    obj = lambda x_adv: F.cross_entropy(model(x_adv), y, reduction="none")  # noqa: E731
    one = ascend(obj, x, 0.1, 3, starts=["clean"], rule=Momentum(1.0), model=model).x
    two = ascend(obj, x, 0.1, 3, starts=["clean", "clean"], rule=Momentum(1.0), model=model).x
    _equal(one, two)


def test_a_custom_rule_plugs_in_and_the_engine_projects_its_moves():
    class Huge(StepRule):  # a rule that overshoots: the engine's projection keeps it feasible
        def move(self, ball, x_adv, grad, alpha):
            x_adv.add_(grad.sign(), alpha=100 * alpha)

    x = torch.full((2, 4), 0.5)
    lin = lambda x_adv: x_adv @ torch.tensor([1.0, -1.0, 2.0, -3.0])  # noqa: E731
    got = ascend(lin, x, 0.1, 1, starts=["clean"], rule=Huge()).x
    _equal(got, x + 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0]))
    _equal(ascend(lin, x, 0.1, 1, starts=["clean"], rule=Sign(), alpha=0.1).x, got)


def test_random_start_sign_is_seeded_by_the_callers_generator():
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(0))
    lin = lambda x_adv: x_adv.sum(1)  # noqa: E731
    run = lambda seed: ascend(lin, x, 0.1, 1, alpha=0.01, rule=RandomStartSign(),  # noqa: E731
                              generator=torch.Generator().manual_seed(seed)).x
    a = run(4)
    _equal(a, run(4))
    assert not torch.equal(a, run(5))
    assert (a - x).abs().max() <= 0.1 + 1e-7 and a.min() >= 0 and a.max() <= 1

"""Each training recipe does what its paper says, checked against quantities computed here
by hand (never by the recipe's own code): PGD-AT trains on inputs at L∞ distance ε from the
clean batch, TRADES' loss is CE + β·KL with β = 0 giving the standard step, distillation
matches the teacher's softmax at T (gradient (q − p)/(T·N)) and deploys raw logits, and
FGSM-RS rolls back to the last good epoch when catastrophic overfitting is planted."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from workbench.runner import load_study_data
from workbench.store import ModelStore
from workbench.study import study_from_dict
from workbench.training import RECIPES, TeacherAtTemperature, build_model, fit
from workbench.training import fgsm_rs as fgsm_rs_mod
from workbench.training import loop as loop_mod

from test_training import job_for, tiny_study


@pytest.fixture(scope="module")
def digits():
    return load_study_data(tiny_study(), torch.device("cpu"))


def _record_training(monkeypatch):
    """Spy on fit: the clean batches it draws, and every input the model sees in train mode
    (the weight-updating forwards; attacks run in eval mode)."""
    clean, seen = [], []
    real_iter, real_build = loop_mod.iterate_batches, loop_mod.build_model

    def iter_spy(*args, **kw):
        for xb, yb in real_iter(*args, **kw):
            clean.append(xb.detach().clone())
            yield xb, yb

    def build_spy(*args, **kw):
        model = real_build(*args, **kw)
        model.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()) if m.training else None)
        return model

    monkeypatch.setattr(loop_mod, "iterate_batches", iter_spy)
    monkeypatch.setattr(loop_mod, "build_model", build_spy)
    return clean, seen


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(1)


# --------------------------------------------------------------------------- PGD-AT


def test_pgd_at_trains_on_inputs_at_distance_eps_and_standard_on_the_clean_ones(digits, tmp_path, monkeypatch):
    eps = 0.1  # RECIPE_CFGS["pgd_at"]
    study = tiny_study(("standard", "pgd_at"), train={"epochs": 1})
    clean, seen = _record_training(monkeypatch)
    fit(job_for(study, 1), digits, ModelStore(tmp_path))
    assert len(seen) == len(clean) > 0  # one weight-updating forward per batch
    d = torch.cat([_linf(s, c) for s, c in zip(seen, clean)])
    assert d.max() <= eps + 1e-6  # inside the ball
    assert (d >= eps - 1e-6).float().mean() >= 0.9  # and on its boundary for almost every example
    clean.clear(), seen.clear()
    fit(job_for(study, 0), digits, ModelStore(tmp_path))
    assert len(seen) == len(clean) and all(torch.equal(s, c) for s, c in zip(seen, clean))


# --------------------------------------------------------------------------- TRADES


def with_recipe(study, recipe: dict):
    """The study with its second recipe replaced."""
    return study_from_dict({**study.to_dict(), "recipes": [study.to_dict()["recipes"][0], recipe]})


def _recipe(study, i):
    spec = study.models()[i]
    return RECIPES.get(spec.recipe.name)(spec.recipe, spec.train), spec


def test_trades_with_beta_zero_is_the_standard_training_step(digits):
    study = tiny_study(("standard", "trades"))
    std, spec_std = _recipe(study, 0)
    beta0 = with_recipe(study, {"name": "trades", "eps": 0.1, "steps": 3, "beta": 0.0})
    trades, spec_tr = _recipe(beta0, 1)
    x, y = digits.train_x[:64], digits.train_y[:64]
    grads = []
    for recipe, spec in ((std, spec_std), (trades, spec_tr)):
        model = build_model(spec, digits).train()
        loss, _ = recipe.loss(model, x, y)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l_std, g_std), (l_tr, g_tr) = grads
    assert torch.allclose(l_tr, l_std, rtol=1e-6, atol=0)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(g_std, g_tr))


def test_trades_loss_is_ce_plus_beta_kl_at_an_inner_maximiser(digits):
    eps, beta = 0.1, 6.0  # the config's ε and TRADES' default β
    study = tiny_study(("standard", "trades"))
    trades, spec = _recipe(study, 1)
    assert trades.cfg.beta == beta
    model = build_model(spec, digits).train()
    x, y = digits.train_x[:64], digits.train_y[:64]
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()) if m.training else None)
    torch.manual_seed(0)
    loss, _ = trades.loss(model, x, y)
    handle.remove()
    assert len(seen) == 2 and torch.equal(seen[0], x)  # f(x), then f(x') in train mode
    x_adv = seen[1]
    with torch.no_grad():
        z, za = model(x), model(x_adv)
        log_p, log_q = z.log_softmax(1), za.log_softmax(1)
        ce = -log_p.gather(1, y[:, None]).mean()
        kl = (log_p.exp() * (log_p - log_q)).sum(1)  # KL(f(x) ‖ f(x')) per example, by its definition
    assert loss.item() == pytest.approx((ce + beta * kl.mean()).item(), rel=1e-5)
    # x' lies in the ε-ball ∩ [0, 1], mostly on its boundary, and has a larger KL than a
    # random point of the ball: the inner loop maximised it
    d = _linf(x_adv, x)
    assert d.max() <= eps + 1e-6 and (d >= eps - 1e-6).float().mean() >= 0.9
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    g = torch.Generator().manual_seed(1)
    x_rand = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    with torch.no_grad():
        kl_rand = (log_p.exp() * (log_p - model(x_rand).log_softmax(1))).sum(1)
    assert kl.mean() > 2 * kl_rand.mean()


# --------------------------------------------------------------------------- distillation


def test_distillation_matches_the_teachers_softmax_at_temperature(digits):
    study = tiny_study(("standard", "distillation"))  # T = 20
    recipe, spec = _recipe(study, 1)
    T = recipe.cfg.temperature
    assert T == 20
    torch.manual_seed(3)
    recipe.teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    with torch.no_grad():
        recipe.teacher[1].weight.mul_(50)  # a confident teacher: T visibly softens it
    student = build_model(spec, digits).train()
    x, y = digits.train_x[:32], digits.train_y[:32]
    loss, logits = recipe.loss(student, x, y)
    (g,) = torch.autograd.grad(loss, logits)
    with torch.no_grad():
        p = (recipe.teacher(x) / T).softmax(1)
        q = (logits / T).softmax(1)
    # L = −(1/N) Σᵢ Σₖ pᵢₖ log softmax(zᵢ/T)ₖ  ⇒  ∂L/∂z = (q − p)/(T·N)
    torch.testing.assert_close(g, (q - p) / (T * len(x)), rtol=1e-4, atol=1e-9)
    # the labels play no part: the student learns the teacher's soft labels only
    loss_other, _ = recipe.loss(student, x, (y + 1) % 10)
    assert loss_other.item() == pytest.approx(loss.item(), rel=1e-6)
    # the teacher itself is trained on CE(z/T, y): gradient (softmax(z/T) − onehot(y))/(T·N)
    teacher_recipe = TeacherAtTemperature(spec.recipe, spec.train)
    model = build_model(spec, digits).train()
    t_loss, t_logits = teacher_recipe.loss(model, x, y)
    (gt,) = torch.autograd.grad(t_loss, t_logits)
    with torch.no_grad():
        expected = ((t_logits / T).softmax(1) - F.one_hot(y, 10)) / (T * len(x))
    torch.testing.assert_close(gt, expected, rtol=1e-4, atol=1e-9)


def test_distilled_model_is_deployed_with_raw_logits(digits, tmp_path):
    study = tiny_study(("standard", "distillation"), train={"epochs": 1})
    job = job_for(study, 1)
    out = fit(job, digits, ModelStore(tmp_path))
    plain = build_model(job.spec, digits)
    plain.load_state_dict(out.model.state_dict())
    x = digits.test_x[:16]
    with torch.no_grad():
        torch.testing.assert_close(out.model.eval()(x), plain.eval()(x), rtol=0, atol=0)
    # a teacher was trained (at T) and stored under its own key before the student
    teacher = fit(job.__class__(job.spec, job.data, job.monitor_eps, role="teacher"), digits, ModelStore(tmp_path))
    assert teacher.cached and teacher.key != out.key


# --------------------------------------------------------------------------- FGSM-RS rollback


def test_fgsm_rs_rolls_back_to_the_last_good_epoch_when_pgd_accuracy_collapses(digits, tmp_path, monkeypatch):
    # Plant catastrophic overfitting: from the third check on, the check's PGD finds a
    # misclassified input for every example (accuracy 0) while FGSM finds nothing (clean
    # accuracy); before, PGD finds nothing either. The recipe must detect the collapse at
    # epoch 3, restore the weights of epoch 2 and stop.
    calls, weights_at_check = [], []

    def planted_pgd(model, x, y, eps, *args, **kw):
        calls.append(1)
        weights_at_check.append(copy.deepcopy(model.state_dict()))
        if len(calls) < 3:
            return x.clone()
        with torch.no_grad():
            pred = model(x).argmax(1)
        # for example i, any input of the batch the model assigns to a class other than yᵢ
        other = (pred[None, :] != y[:, None]).float().argmax(1)
        return x[other].clone()

    monkeypatch.setattr(fgsm_rs_mod, "pgd", planted_pgd)
    monkeypatch.setattr(fgsm_rs_mod, "fgsm", lambda model, x, y, eps, **kw: x.clone())
    saved = {}
    real_save = ModelStore.save_checkpoint

    def save_spy(self, key, state):
        saved[state["epoch"]] = copy.deepcopy(state["model"])
        return real_save(self, key, state)

    monkeypatch.setattr(ModelStore, "save_checkpoint", save_spy)
    # co_drop 0.05: the tiny model's clean accuracy on the check batch may be low after 3 epochs
    study = with_recipe(tiny_study(("standard", "fgsm_rs"), train={"epochs": 5, "lr": 0.1}),
                        {"name": "fgsm_rs", "eps": 0.1, "co_drop": 0.05})
    out = fit(job_for(study, 1), digits, ModelStore(tmp_path))
    hist = out.history
    assert len(hist) == 3 and len(calls) == 3  # stopped at the epoch of the collapse
    assert list(hist["catastrophic_overfitting"]) == [0.0, 0.0, 1.0]
    assert hist["rolled_back"].iloc[-1] == 1.0 and hist["co_pgd5_acc"].iloc[-1] == 0.0
    assert "catastrophic overfitting at epoch 3" in out.meta["stopped_early"]
    final = out.model.state_dict()
    assert all(torch.equal(final[k], saved[2][k]) for k in final)  # epoch 2's weights...
    assert any(not torch.equal(final[k], weights_at_check[2][k]) for k in final)  # ...not epoch 3's

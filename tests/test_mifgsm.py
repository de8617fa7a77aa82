"""MI-FGSM (Dong et al. 2018): the paper's update, the L∞ box, and a study that names it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.attacks import ATTACKS
from workbench.attacks.mifgsm import mifgsm
from workbench.evaluation import evaluate
from workbench.study import study_from_dict


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(w)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _paper(model, x, y, eps, steps, decay):
    """Algorithm 1 of Dong et al. written out plainly (no in-place updates, no precomputed box)."""
    alpha, g, x_adv = eps / steps, torch.zeros_like(x), x.clone()
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        g = decay * g + grad / grad.abs().flatten(1).sum(1).view(-1, *[1] * (x.dim() - 1))
        x_adv = x_adv.detach() + alpha * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def test_two_class_linear_model_ends_on_the_box_vertex():
    # CE of a two-class linear model has the gradient (p − 1)(w_y − w_o): its sign never
    # changes, so every step moves each pixel by ε/T the same way and T steps reach the vertex.
    torch.manual_seed(0)
    w = torch.randn(2, 12)
    x = torch.rand(5, 12) * 0.5 + 0.25
    y = torch.tensor([0, 1, 0, 1, 1])
    eps = 0.1
    adv = mifgsm(Linear(w), x, y, eps, steps=7)
    d = torch.where(y[:, None] == 0, w[1] - w[0], w[0] - w[1]).sign()
    torch.testing.assert_close(adv, (x + eps * d).clamp(0, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("decay", [0.0, 1.0, 0.5])
def test_matches_the_algorithm_of_the_paper(decay):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    got = mifgsm(model, x, y, 0.2, steps=6, decay=decay)
    torch.testing.assert_close(got, _paper(model, x, y, 0.2, 6, decay), atol=1e-6, rtol=0)
    assert (got - x).abs().max() <= 0.2 + 1e-6 and got.min() >= 0 and got.max() <= 1


def test_momentum_changes_the_path_where_the_gradient_turns():
    # with a nonlinear model the plain iterative FGSM (μ = 0) and MI-FGSM part ways
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3))
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    a = mifgsm(model, x, y, 0.3, steps=10, decay=1.0)
    b = mifgsm(model, x, y, 0.3, steps=10, decay=0.0)
    assert not torch.equal(a, b)


def test_zero_eps_is_the_input_and_bad_settings_are_refused():
    model = Linear(torch.randn(2, 4))
    x, y = torch.rand(3, 4), torch.tensor([0, 1, 0])
    assert torch.equal(mifgsm(model, x, y, 0.0), x)
    with pytest.raises(ValueError):
        mifgsm(model, x, y, 0.1, steps=0)


def test_a_study_names_it_and_the_evaluation_runs_it():
    study = study_from_dict({
        "name": "mi", "architectures": ["small_cnn"], "recipes": ["standard"],
        "evaluation": {"examples": 20, "eps": [0.1, 0.2], "attacks": ["fgsm", {"name": "mifgsm", "steps": 4}]},
    })
    attack = study.evaluation.attacks[1]
    assert attack.id == "mifgsm4" and attack.norm == "linf" and ATTACKS.get("mifgsm") is mifgsm
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    rob = evaluate({"m": model}, x, y, study.evaluation).robustness
    mi = rob[rob.attack == "mifgsm4"]
    assert list(mi.eps) == [0.1, 0.2] and set(mi.method) == {"mifgsm"} and set(mi.steps) == {4}
    assert (mi.accuracy <= float(rob[rob.attack == "clean"].accuracy.iloc[0])).all()
    with pytest.raises(Exception, match="decay"):
        study_from_dict({"name": "bad", "architectures": ["small_cnn"], "recipes": ["standard"],
                         "evaluation": {"attacks": [{"name": "mifgsm", "decay": -1}]}})

"""NI-FGSM (Lin et al. 2020), the example of an attack with its own step rule: the paper's
update (as torchattacks writes it), MI-FGSM at μ = 0, and a study that names it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.attacks import ATTACKS
from workbench.attacks.mifgsm import mifgsm
from workbench.attacks.nifgsm import nifgsm
from workbench.evaluation import evaluate
from workbench.study import study_from_dict


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3)).eval()


def _paper(model, x, y, eps, steps, decay):
    """Lin et al.'s NI-FGSM written out plainly (no in-place updates, no precomputed box), the
    gradient scaled by its mean |g| as in the authors' code."""
    alpha, m, x_adv = eps / steps, torch.zeros_like(x), x.clone()
    for _ in range(steps):
        ahead = (x_adv + alpha * decay * m).requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(ahead), y, reduction="sum"), ahead)
        m = decay * m + grad / grad.abs().flatten(1).mean(1).view(-1, *[1] * (x.dim() - 1))
        x_adv = x_adv + alpha * m.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_matches_the_update_of_the_paper_and_differs_from_mifgsm(decay):
    model = _net(1)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(32, 1, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    got = nifgsm(model, x, y, 0.3, steps=8, decay=decay)
    torch.testing.assert_close(got, _paper(model, x, y, 0.3, 8, decay), atol=1e-6, rtol=0)
    assert (got - x).abs().max() <= 0.3 + 1e-6 and got.min() >= 0 and got.max() <= 1
    # the look-ahead changes the path: not MI-FGSM's iterates
    assert not torch.equal(got, mifgsm(model, x, y, 0.3, steps=8, decay=decay))


def test_without_momentum_it_is_mifgsm_bit_for_bit():
    model = _net(3)
    x, y = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(nifgsm(model, x, y, 0.2, steps=5, decay=0.0), mifgsm(model, x, y, 0.2, steps=5, decay=0.0))


def test_a_study_names_it_and_the_evaluation_runs_it():
    study = study_from_dict({
        "name": "ni", "architectures": ["small_cnn"], "recipes": ["standard"],
        "evaluation": {"examples": 20, "eps": [0.1], "attacks": [{"name": "nifgsm", "steps": 4}]},
    })
    (attack,) = study.evaluation.attacks
    assert attack.id == "nifgsm4" and attack.norm == "linf" and ATTACKS.get("nifgsm") is nifgsm
    model = _net(5)
    x, y = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(6)), torch.randint(0, 3, (20,))
    rob = evaluate({"m": model}, x, y, study.evaluation).robustness
    ni = rob[rob.attack == "nifgsm4"]
    assert list(ni.eps) == [0.1] and set(ni.method) == {"nifgsm"}
    assert (ni.accuracy <= float(rob[rob.attack == "clean"].accuracy.iloc[0])).all()


def test_agrees_with_torchattacks():
    torchattacks = pytest.importorskip("torchattacks")
    model = _net(7)
    g = torch.Generator().manual_seed(8)
    x, y = torch.rand(32, 1, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    theirs = torchattacks.NIFGSM(model, eps=0.3, alpha=0.3 / 6, steps=6, decay=1.0)(x, y)
    torch.testing.assert_close(nifgsm(model, x, y, 0.3, steps=6), theirs, atol=1e-6, rtol=0)

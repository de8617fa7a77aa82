"""TRADES (Zhang et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import RECIPES, Recipe, frozen_parameters


@RECIPES.register("trades")
class TRADES(Recipe):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x')), where x' maximises the
    KL divergence inside the L∞ ball (eval-mode PGD from x + 0.001·N(0, I), as the
    reference code does)."""

    def loss(self, model, x, y):
        c = self.cfg
        eps, steps = float(c.eps), c.steps
        alpha = self.alpha(steps)
        was_training = model.training
        model.eval()
        with frozen_parameters(model):
            with torch.no_grad():
                p_clean = F.softmax(model(x).float(), dim=1)
            x_adv = (x + 0.001 * torch.randn_like(x)).clamp_(0, 1)
            lo, hi = (x - eps).clamp_(min=0), (x + eps).clamp_(max=1)
            for _ in range(steps):
                x_adv.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_clean, reduction="sum")
                (g,) = torch.autograd.grad(kl, x_adv)
                x_adv = torch.max(torch.min(x_adv.detach() + alpha * g.sign(), hi), lo)
        model.train(was_training)
        logits = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(
            F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits.float(), dim=1), reduction="batchmean"
        )
        return self.ce(logits, y) + c.beta * robust, logits

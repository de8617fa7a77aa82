"""Fast adversarial training with FGSM and a random start (Wong et al. 2020)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..attacks import fgsm, pgd
from ..attacks.ascent import RandomStartSign, ascend
from ..config import Eps, RecipeBase
from ..state import eval_mode
from .base import RECIPES, EpochReport, Recipe


class FGSMRSRecipe(RecipeBase):
    """Wong et al. 2020 fast AT: uniform random start, one FGSM step of alpha_factor·eps."""

    name: Literal["fgsm_rs"]
    eps: Eps
    norm: Literal["linf"] = "linf"
    alpha_factor: float = Field(1.25, gt=0)
    co_check: bool = Field(True, description="catastrophic-overfitting check after each epoch (PGD-5 on a training batch)")
    co_drop: float = Field(0.2, gt=0, le=1, description="PGD accuracy drop (fraction) that signals catastrophic overfitting")
    co_action: Literal["rollback", "stop", "warn"] = Field(
        "rollback", description="rollback: restore the last good epoch and stop; stop: stop; warn: record only"
    )


@RECIPES.register("fgsm_rs", config=FGSMRSRecipe)
class FGSMRS(Recipe):
    """Fast adversarial training (Wong et al. 2020): δ₀ ~ U[−ε, ε], one FGSM step of
    α = 1.25ε, train on x + δ. Catastrophic overfitting is watched after every epoch
    (PGD-5 and FGSM accuracy on one fixed training batch)."""

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.best_pgd: float | None = None

    def loss(self, model, x, y):
        eps, alpha = float(self.cfg.eps), self.cfg.alpha_factor * float(self.cfg.eps)
        n = len(y)

        def batch_mean_ce(x_adv):
            # each example's CE / N: the gradient of the reference code's batch-mean loss, bit for bit
            return F.cross_entropy(model(x_adv).float(), y, reduction="none") / n

        # Wong et al. take the FGSM step in train mode (keep_mode); the engine freezes the
        # parameters for it (no weight-gradient work: cost ≈ 5/3 of standard).
        x_adv = ascend(batch_mean_ce, x, eps, 1, alpha=alpha, starts=["random"], rule=RandomStartSign(),
                       precision=self.train.precision, model=model, keep_mode=True).x
        logits = model(x_adv)
        return self.ce(logits, y), logits

    def after_epoch(self, model, ctx, epoch):
        if not self.cfg.co_check:
            return None
        x, y = ctx.check_batch()
        eps = float(self.cfg.eps)
        x_pgd = pgd(model, x, y, eps, steps=5, random_start=True)
        x_fgsm = fgsm(model, x, y, eps)
        with eval_mode(model), torch.no_grad():
            pgd_acc = (model(x_pgd).argmax(1) == y).float().mean().item()
            fgsm_acc = (model(x_fgsm).argmax(1) == y).float().mean().item()
        report = EpochReport(metrics={"co_pgd5_acc": pgd_acc, "co_fgsm_acc": fgsm_acc})
        drop = self.cfg.co_drop
        if self.best_pgd is not None and self.best_pgd - pgd_acc > drop and fgsm_acc - pgd_acc > drop:
            report.metrics["catastrophic_overfitting"] = 1.0
            report.message = (
                f"catastrophic overfitting at epoch {epoch + 1}: PGD-5 accuracy on a training batch fell "
                f"from {self.best_pgd:.1%} to {pgd_acc:.1%} while FGSM accuracy is {fgsm_acc:.1%}"
            )
            report.action = None if self.cfg.co_action == "warn" else self.cfg.co_action
        else:
            report.metrics["catastrophic_overfitting"] = 0.0
        self.best_pgd = pgd_acc if self.best_pgd is None else max(self.best_pgd, pgd_acc)
        return report

    def state_dict(self):
        return {"best_pgd": self.best_pgd}

    def load_state_dict(self, state):
        self.best_pgd = state.get("best_pgd")

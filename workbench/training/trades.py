"""TRADES (Zhang et al. 2019)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from ..attacks.ascent import ascend
from ..attacks.base import attack_mode, randn_like
from ..config import Eps, RecipeBase
from .base import RECIPES, Recipe


class TradesRecipe(RecipeBase):
    """Zhang et al. 2019: CE(f(x), y) + beta·KL(f(x) ‖ f(x')), x' maximising the KL."""

    name: Literal["trades"]
    eps: Eps
    norm: Literal["linf"] = "linf"
    beta: float = Field(6.0, ge=0)
    steps: PositiveInt = 10
    alpha: Eps | None = Field(None, description="step size (default 2.5·eps/steps)")


@RECIPES.register("trades", config=TradesRecipe)
class TRADES(Recipe):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x')), where x' maximises the
    KL divergence inside the L∞ ball (eval-mode PGD from x + 0.001·N(0, I), as the
    reference code does)."""

    def loss(self, model, x, y):
        c = self.cfg
        eps, steps = float(c.eps), c.steps
        with attack_mode(model):
            with torch.no_grad():
                p_clean = F.softmax(model(x).float(), dim=1)
            # the reference code's start: x + 0.001·N(0, I), clipped to [0, 1] only
            x0 = (x + 0.001 * randn_like(x)).clamp_(0, 1)

            def kl(x_adv: torch.Tensor) -> torch.Tensor:
                return F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_clean, reduction="none").sum(1)

            x_adv = ascend(kl, x, eps, steps, alpha=c.alpha, starts=[x0], precision=self.train.precision, model=model).x
        logits = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(
            F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits.float(), dim=1), reduction="batchmean"
        )
        return self.ce(logits, y) + c.beta * robust, logits

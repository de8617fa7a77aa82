"""PGD adversarial training (Madry et al. 2018)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from ..attacks import pgd
from ..config import Eps, Norm, RecipeBase
from .base import RECIPES, Recipe


class PGDATRecipe(RecipeBase):
    """Madry et al. 2018: minimise the loss at the PGD worst case (eval-mode attack)."""

    name: Literal["pgd_at"]
    eps: Eps
    norm: Norm = "linf"
    steps: PositiveInt = 10
    alpha: Eps | None = Field(None, description="step size (default 2.5·eps/steps)")


@RECIPES.register("pgd_at", config=PGDATRecipe)
class PGDAT(Recipe):
    """PGD adversarial training (Madry et al. 2018): train on the PGD worst case.

    The inner attack runs in eval mode (BatchNorm statistics frozen), as docs/methods.md asks.
    """

    def loss(self, model, x, y):
        c = self.cfg
        x_adv = pgd(model, x, y, c.eps, c.alpha, c.steps, norm=c.norm, random_start=True,
                    precision=self.train.precision)
        logits = model(x_adv)
        return self.ce(logits, y), logits

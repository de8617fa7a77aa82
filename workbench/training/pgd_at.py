"""PGD adversarial training (Madry et al. 2018)."""

from __future__ import annotations


from ..attacks import pgd
from .base import RECIPES, Recipe


@RECIPES.register("pgd_at")
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

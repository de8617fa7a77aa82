"""Standard training: cross-entropy on clean inputs."""

from __future__ import annotations


from .base import RECIPES, Recipe


@RECIPES.register("standard")
class Standard(Recipe):
    """Cross-entropy on clean inputs."""

    def loss(self, model, x, y):
        logits = model(x)
        return self.ce(logits, y), logits

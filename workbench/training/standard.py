"""Standard training: cross-entropy on clean inputs."""

from __future__ import annotations

from typing import Literal

from ..config import RecipeBase
from .base import RECIPES, Recipe


class StandardRecipe(RecipeBase):
    """Cross-entropy on clean inputs."""

    name: Literal["standard"]


@RECIPES.register("standard", config=StandardRecipe)
class Standard(Recipe):
    """Cross-entropy on clean inputs."""

    def loss(self, model, x, y):
        logits = model(x)
        return self.ce(logits, y), logits

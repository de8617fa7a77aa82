"""Defensive distillation (Papernot et al. 2016)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .base import RECIPES, Recipe

if TYPE_CHECKING:  # pragma: no cover
    from .loop import FitContext


@RECIPES.register("distillation")
class Distillation(Recipe):
    """Defensive distillation (Papernot et al. 2016). A teacher is trained on
    softmax(z/T); a student of the same architecture (same initial weights) is trained at
    the same T on the teacher's soft labels softmax(z_teacher/T), and deployed at T = 1
    (the model returns its raw logits z). Its apparent robustness is gradient masking:
    at T = 1 the softmax saturates and cross-entropy gradients underflow to zero."""

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.teacher: nn.Module | None = None

    def setup(self, ctx: FitContext) -> None:
        self.teacher = ctx.fit_teacher()
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def loss(self, model, x, y):
        T = self.cfg.temperature
        assert self.teacher is not None, "setup() trains the teacher first"
        with torch.no_grad():
            soft = F.softmax(self.teacher(x).float() / T, dim=1)
        logits = model(x)
        loss = -(soft * F.log_softmax(logits.float() / T, dim=1)).sum(1).mean()
        return loss, logits


class TeacherAtTemperature(Recipe):
    """The teacher of defensive distillation: cross-entropy of softmax(z/T)."""

    def loss(self, model, x, y):
        logits = model(x)
        return F.cross_entropy(logits.float() / self.cfg.temperature, y), logits

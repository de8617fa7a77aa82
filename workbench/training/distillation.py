"""Defensive distillation (Papernot et al. 2016)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from ..config import RecipeBase
from .base import RECIPES, Recipe

if TYPE_CHECKING:  # pragma: no cover
    from .jobs import TrainJob
    from .loop import FitContext


class DistillationRecipe(RecipeBase):
    """Papernot et al. 2016: teacher at temperature T, student on its soft labels at T, deployed at T=1."""

    name: Literal["distillation"]
    temperature: float = Field(100.0, gt=0)
    teacher_epochs: PositiveInt | None = Field(None, description="default: train.epochs")


class TeacherAtTemperature(Recipe):
    """The teacher of defensive distillation: cross-entropy of softmax(z/T)."""

    def loss(self, model, x, y):
        logits = model(x)
        return F.cross_entropy(logits.float() / self.cfg.temperature, y), logits


@RECIPES.register("distillation", config=DistillationRecipe)
class Distillation(Recipe):
    """Defensive distillation (Papernot et al. 2016). A teacher is trained on
    softmax(z/T); a student of the same architecture (same initial weights) is trained at
    the same T on the teacher's soft labels softmax(z_teacher/T), and deployed at T = 1
    (the model returns its raw logits z). Its apparent robustness is gradient masking:
    at T = 1 the softmax saturates and cross-entropy gradients underflow to zero (Carlini &
    Wagner 2016, arXiv:1607.04311, break it with a logit-margin loss).

    The optimiser matters: both losses are CE of z/T, so their gradients are 1/T of the
    usual size while the logits must grow about T-fold. With SGD at the usual learning rate
    a short schedule never leaves chance (measured on digits, T = 100, 30 epochs of 20
    steps at lr 0.05: the loss stays at ln 10); Papernot et al. trained far longer. Adam's
    steps do not scale with the gradient, so ``studies/distillation.yaml`` trains this
    recipe (teacher and student) with Adam, lr 0.01, and no weight decay, which would fight
    the growth of the logits."""

    roles = {"teacher": TeacherAtTemperature}

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.teacher: nn.Module | None = None

    @classmethod
    def dependencies(cls, job: TrainJob) -> dict[str, TrainJob]:
        # the teacher: same architecture, initial weights and data order, at temperature T
        epochs = job.spec.recipe.teacher_epochs
        return {"teacher": job.with_role("teacher", **({"epochs": epochs} if epochs else {}))}

    def setup(self, ctx: FitContext) -> None:
        self.teacher = ctx.dependency("teacher")
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

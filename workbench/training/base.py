"""What every training recipe shares: the per-batch loss interface and small helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import attack_mode
from ..registry import Registry
from ..views import FigureSpec, register_figure

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from .jobs import TrainJob
    from .loop import FitContext


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad inside the block (an input-gradient step then skips
    all weight-gradient work), restored afterwards. Unlike an attack, the mode (train/eval)
    is left alone: fast AT takes its FGSM step in train mode, as Wong et al. do
    (:func:`~workbench.attacks.base.attack_mode` with ``keep_mode=True``)."""
    with attack_mode(model, keep_mode=True):
        yield


@dataclass
class EpochReport:
    """What a recipe adds to the history after an epoch, and whether training goes on."""

    metrics: dict[str, float] = field(default_factory=dict)
    #: None: continue; "stop": keep the current weights and stop; "rollback": restore the
    #: weights of the previous epoch and stop.
    action: str | None = None
    message: str | None = None


class Recipe:
    """A training recipe: the loss of one batch, plus optional per-epoch checks.

    Subclasses are registered by name in :data:`workbench.training.RECIPES`; the loop in
    :mod:`workbench.training.loop` does everything else (optimiser, schedule, history,
    checkpoints), so a recipe is only what makes it different.
    """

    #: recipes of the other models this one trains with (role -> recipe), e.g. a teacher
    roles: dict[str, type[Recipe]] = {}

    def __init__(self, cfg: Any, train: TrainConfig):
        self.cfg = cfg
        self.train = train

    @classmethod
    def dependencies(cls, job: TrainJob) -> dict[str, TrainJob]:
        """role -> the job of each model this recipe needs (trained before it; read in
        :meth:`setup` with ``ctx.dependency(role)``). None by default."""
        return {}

    def setup(self, ctx: FitContext) -> None:
        """Called once before the first epoch (distillation takes its teacher here)."""

    def training_data(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) the model is trained on, after :meth:`setup`: the training split, or a
        set derived from it (robust_features)."""
        return ctx.data.train_x, ctx.data.train_y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (scalar loss, logits of the inputs trained on) for one batch."""
        raise NotImplementedError

    def after_epoch(self, model: nn.Module, ctx: FitContext, epoch: int) -> EpochReport | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.train.label_smoothing)


#: training recipes by name (study field ``recipes[].name``)
RECIPES: Registry[type[Recipe]] = Registry("recipe")


# --------------------------------------------------------------------------- report figures
# drawn by the report from the history the loop writes for every recipe (workbench/views.py; the drawing
# code is imported only then); registered here, so the report has it without importing the loop

register_figure(FigureSpec(
    "training_curves",
    "Training curves",
    "Clean and PGD accuracy on the held-out monitor batch and the training loss after each epoch, per model: "
        "a robust accuracy that collapses while clean accuracy holds marks catastrophic overfitting.",
    "robustness",
    "workbench.report.figures:training_curves",
    ("history",),
    order=20))

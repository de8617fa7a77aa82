"""Standard training on a robust or non-robust feature data set (Ilyas et al. 2019).

The recipe ``robust_features`` trains a model with cross-entropy on a data set derived
from a declared source model (:mod:`workbench.represent.derived`): D_R, D_NR, D_det or
D_rand. The source is a recipe written out in full (YAML anchors avoid repeating the
study's own, e.g. ``source: *pgd_at``); it is trained like any model of the study (same
architecture, seed, data and train section: the same store key, so a study that also
lists it trains it once) as this recipe's dependency, as distillation's teacher is. The
derived set is cached in the store under the source's key and the settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from ..config import ModelSpec, RecipeBase, TrainConfig
from ..represent.derived import derived_set
from .base import RECIPES, Recipe

if TYPE_CHECKING:  # pragma: no cover
    from .jobs import TrainJob
    from .loop import FitContext


class RobustFeaturesRecipe(RecipeBase):
    """Ilyas et al. 2019: standard training on a data set derived from a source model."""

    name: Literal["robust_features"]
    set: Literal["d_r", "d_nr", "d_det", "d_rand"] = Field(
        description="d_r / d_nr: training images rebuilt from the source's penultimate layer (robust / standard source); "
        "d_det / d_rand: targeted L2 examples of the source towards (y+1) mod C / a random class, relabelled")
    source: dict[str, Any] = Field(
        description="the source model's recipe, written out (e.g. {name: pgd_at, eps: 0.2}); trained with the study's "
        "architecture, seed and train section")
    layer: str = Field("penultimate", description="d_r/d_nr: the source layer whose representation is matched")
    steps: PositiveInt = Field(200, description="d_r/d_nr: L2-normalised gradient steps")
    step_size: PositiveFloat | None = Field(None, description="d_r/d_nr: step (default 0.01·√(values per image))")
    # not called `eps`: the workbench reads a recipe's `eps` as its training ε (adversarial training)
    attack_eps: PositiveFloat = Field(0.5, description="d_det/d_rand: L2 ε of the targeted attack (pixel units)")
    attack_steps: PositiveInt = Field(100, description="d_det/d_rand: attack steps")
    attack_step_size: PositiveFloat | None = Field(None, description="d_det/d_rand: step (default 2.5·ε/steps)")

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v):
        if isinstance(v, str):
            v = {"name": v}
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError("source is a recipe, e.g. {name: pgd_at, eps: 0.2}")
        if v["name"] == "robust_features":
            raise ValueError("source must be a recipe that trains on the real data, not robust_features")
        cfg = RECIPES.config(v["name"]).model_validate(v)  # unknown names and bad fields fail here
        # written out in full and without its label: the same source has one identity however it is spelt
        return cfg.model_dump(mode="json", exclude={"label"})

    @model_validator(mode="after")
    def _no_train_overrides(self):
        if self.train:
            raise ValueError("train overrides are not supported here: the source is trained with the study's train "
                             "section, and the model on the derived set with the same")
        return self

    def source_config(self) -> RecipeBase:
        return RECIPES.config(self.source["name"]).model_validate(self.source)

    def settings(self) -> dict[str, Any]:
        """The construction's settings (keys of :func:`~workbench.represent.derived.build_derived`)."""
        if self.set in ("d_r", "d_nr"):
            return {"layer": self.layer, "steps": self.steps, "step_size": self.step_size}
        return {"eps": self.attack_eps, "attack_steps": self.attack_steps, "attack_step_size": self.attack_step_size}


@RECIPES.register("robust_features", config=RobustFeaturesRecipe)
class RobustFeatures(Recipe):
    """Cross-entropy on the derived set; the source model is a dependency (role ``source``)."""

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.data: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def dependencies(cls, job: TrainJob) -> dict[str, TrainJob]:
        import dataclasses

        cfg: RobustFeaturesRecipe = job.spec.recipe
        src = cfg.source_config()
        train = TrainConfig.model_validate({**job.spec.train.model_dump(), **src.train})
        spec = ModelSpec(arch=job.spec.arch, recipe=src, train=train, seed=job.spec.seed)
        # role "model": the source's key is that of the same recipe listed in the study
        return {"source": dataclasses.replace(job, spec=spec, role="model")}

    def setup(self, ctx: FitContext) -> None:
        if ctx.data.streamed:
            from ..errors import TrainingError

            raise TrainingError("robust_features builds its data set in memory; set data.stream: false",
                                field=ctx.job.id)
        source = ctx.dependency("source")
        source.eval()
        src_job = ctx.job.dependencies()["source"]
        x, y, _ = derived_set(
            ctx.store.root, src_job.key(), source, ctx.data.train_x, ctx.data.train_y, self.cfg.set,
            self.cfg.settings(), num_classes=ctx.data.num_classes, seed=ctx.job.spec.seed, data_identity=ctx.job.data,
            retrain=ctx.retrain,
        )
        self.data = (x, y)

    def training_data(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.data is not None, "setup() builds the derived set first"
        return self.data

    def loss(self, model, x, y):
        logits = model(x)
        return self.ce(logits, y), logits

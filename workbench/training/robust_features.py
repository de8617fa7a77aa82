"""Standard training on a robust or non-robust feature data set (Ilyas et al. 2019).

The recipe ``robust_features`` trains a model with cross-entropy on a data set derived
from a declared source model (:mod:`workbench.represent.derived`): D_R, D_NR, D_det or
D_rand. The source is a recipe written out in full (YAML anchors avoid repeating the
study's own, e.g. ``source: *pgd_at``); it is trained like any model of the study (same
architecture, seed, data and train section: the same store key, so a study that also
lists it trains it once) as this recipe's dependency, as distillation's teacher is. The
derived set is cached in the store under the source's key and the settings.

A small seeded sample of the derived set (:data:`SAMPLE_PER_CLASS` per label, each beside
the training image it was built from) is kept next to the model in its store entry
(:data:`SAMPLE_FILE`); the runner copies it into the run's ``arrays/training_samples.npz``
(:meth:`RobustFeatures.report_arrays`) and the report draws it (figure ``derived_samples``).
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from ..config import ModelSpec, RecipeBase, TrainConfig
from ..represent.derived import derived_set
from ..seeds import seeded_generator, seeded_subset
from ..views import FigureSpec, register_figure
from .base import RECIPES, Recipe
from ..errors import TrainingError
from .. import distributed
from ..store import atomic_write_bytes

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
        cfg: RobustFeaturesRecipe = job.spec.recipe
        src = cfg.source_config()
        train = TrainConfig.model_validate({**job.spec.train.model_dump(), **src.train})
        spec = ModelSpec(arch=job.spec.arch, recipe=src, train=train, seed=job.spec.seed)
        # role "model": the source's key is that of the same recipe listed in the study
        return {"source": dataclasses.replace(job, spec=spec, role="model")}

    def setup(self, ctx: FitContext) -> None:
        if ctx.data.streamed:
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
        if distributed.world().main:  # beside the model: reused with it, removed with it (retrain quarantines the entry)
            sample = derived_sample(ctx.data.train_x, ctx.data.train_y, x, y, num_classes=ctx.data.num_classes,
                                    seed=ctx.job.spec.seed, kind=self.cfg.set)
            atomic_write_bytes(ctx.store.entry(ctx.job.key()) / SAMPLE_FILE, _npz(sample))

    @classmethod
    def report_arrays(cls, entry: Path) -> dict[str, np.ndarray] | None:
        """The sample of the derived set kept in the model's store entry (None: none there,
        e.g. a model trained before samples were kept)."""
        p = Path(entry) / SAMPLE_FILE
        if not p.is_file():
            return None
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in SAMPLE_KEYS if k in z.files}

    def training_data(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.data is not None, "setup() builds the derived set first"
        return self.data

    def loss(self, model, x, y):
        logits = model(x)
        return self.ce(logits, y), logits


# --------------------------------------------------------------------------- a sample of the derived set

SAMPLE_FILE = "training_sample.npz"
SAMPLE_PER_CLASS = 2
SAMPLE_KEYS = ("index", "x", "original", "label", "original_label")


def derived_sample(x: torch.Tensor, y: torch.Tensor, xd: torch.Tensor, yd: torch.Tensor, *, num_classes: int,
                   seed: int, kind: str, per_class: int = SAMPLE_PER_CLASS) -> dict[str, np.ndarray]:
    """``per_class`` seeded rows of the derived set (``xd``, ``yd``) per derived label (for
    d_det / d_rand the target), each with the training image (``x``, ``y``) it was built from."""
    g = seeded_generator("cpu", seed, "derived-sample", kind)
    yd_cpu = yd.cpu()
    picks = []
    for c in range(num_classes):
        rows = (yd_cpu == c).nonzero().flatten()
        if len(rows):
            picks.append(rows[seeded_subset(len(rows), per_class, g)])
    index = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
    dev = index.to(xd.device)
    return {"index": index.numpy(), "x": xd[dev].detach().float().cpu().numpy(),
            "original": x[index.to(x.device)].detach().float().cpu().numpy(),
            "label": yd_cpu[index].numpy(), "original_label": y.cpu()[index].numpy()}


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


# drawn by the report (workbench/views.py; workbench.represent.figures is imported only then)
register_figure(FigureSpec(
    "derived_samples",
    "Samples of the derived training sets",
    "Per model trained on a derived set (Ilyas et al. 2019), seeded examples of its training set, two per label: "
        "the derived image (row 'derived') above the training image it was built from (row 'original'; its own "
        "label in the corner where it differs); a column's label is the one trained on (for D_det / D_rand the target "
        "class). "
        "D_R images are expected to look like their label; D_det and D_rand images look like their original.",
    "encode",
    "workbench.represent.figures:derived_samples",
    (),
    order=190, arrays="training_samples.npz"))

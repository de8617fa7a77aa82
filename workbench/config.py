"""The building blocks of study configs, shared by ``study.py`` and the components.

Each component module (an attack, a recipe, a probe, a check) defines its own typed
config from these and registers it; ``study.py`` assembles the study schema from the
registries. This module imports no component, so any of them may import it.

ε values are pixel units in [0, 1] and may be written ``0.1`` or ``"8/255"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from .errors import UnknownNameError, WorkbenchError

if TYPE_CHECKING:  # the architecture section lives with the models (it validates against their registry)
    from .models.base import ArchitectureConfig

# --------------------------------------------------------------------------- value types


def parse_eps(value: Any) -> Any:
    """``0.1``, ``8``/``255`` as ``"8/255"``, or ``"0.03"`` -> float. Other types pass through
    so pydantic reports them with its usual message."""
    if isinstance(value, bool):
        raise ValueError("expected a number or a fraction such as '8/255', got a boolean")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(Fraction(text))
        except (ValueError, ZeroDivisionError, OverflowError):
            raise ValueError(f"expected a finite number or a fraction such as '8/255', got {value!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    return value


#: a perturbation size in pixel units ([0,1] range); YAML may say 0.1 or "8/255"
Eps = Annotated[float, BeforeValidator(parse_eps), Field(ge=0)]
Norm = Literal["linf", "l2"]
#: the norms of the L_p attacks of the evaluation (the Lipschitz probe and the recipes stay on L∞/L2)
AttackNorm = Literal["linf", "l2", "l1"]
Precision = Literal["fp32", "bf16"]
LayerSpec = Union[str, tuple[str, ...]]

# \Z, not $: "$" also matches before a final newline, which would let "name\n" through
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
#: a study name becomes a folder name (plus a staging suffix): well inside NAME_MAX (255 bytes)
MAX_NAME_LENGTH = 128


class Strict(BaseModel):
    """Unknown keys are errors; loaded studies are immutable."""

    # allow_inf_nan=False: "inf" and "nan" (also as strings) are refused in every float field
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def name_shorthand(value: Any) -> Any:
    """Allow ``- standard`` for ``- {name: standard}`` in lists of named entries."""
    if isinstance(value, (list, tuple)):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


def check_registry(kind: str, name: str, valid: Sequence[str], extra_ok=lambda n: False) -> str:
    if name not in valid and not extra_ok(name):
        raise ValueError(UnknownNameError(kind, name, valid).message)
    return name


def check_label(label: str | None) -> str | None:
    if label is not None and not _SAFE_NAME.match(label):
        raise ValueError(f"label {label!r} may hold only letters, digits, '.', '_' and '-'")
    if label is not None and len(label) > MAX_NAME_LENGTH:
        raise ValueError(f"a label is at most {MAX_NAME_LENGTH} characters, got {len(label)}")
    return label


# --------------------------------------------------------------------------- data


# --------------------------------------------------------------------------- models


# --------------------------------------------------------------------------- training


class TrainConfig(Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "cosine"
    milestones: tuple[float, ...] = Field((0.5, 0.75), description="step schedule: fractions of training where lr *= gamma")
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up (cosine and step schedules)")
    onecycle_pct: float = Field(0.4, gt=0, lt=1, description="one-cycle: share of training spent rising to the peak")
    onecycle_momentum: tuple[float, float] | None = Field(
        None,
        description="one-cycle with sgd: (low, high) momentum, cycled against the learning rate (high at lr 0, low at "
        "the peak), as torch's CyclicLR does by default (0.8, 0.9) and so Wong et al.'s code; null: momentum stays fixed",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="off by default: it inflates robustness under CE attacks")
    grad_clip: float | None = Field(None, gt=0)
    precision: Precision = Field(
        "fp32", description="bf16: autocast while training (CUDA; CPUs with native bf16 such as AVX512-BF16, else slow)"
    )
    channels_last: bool = Field(False, description="channels_last memory format (helps convs on GPU)")
    compile: bool = Field(False, description="torch.compile the model (GPU; costs compile time)")
    monitor_examples: PositiveInt = Field(256, description="held-out validation examples scored after every epoch")
    monitor_steps: PositiveInt = Field(10, description="PGD steps for the per-epoch robust accuracy")
    checkpoint_steps: PositiveInt | None = Field(
        None, description="also checkpoint every this many batches inside an epoch (long epochs; resumes mid-epoch)"
    )

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v):
        if any(not 0 < m < 1 for m in v) or list(v) != sorted(v):
            raise ValueError("milestones are increasing fractions of training between 0 and 1")
        return v

    @model_validator(mode="after")
    def _cycled_momentum(self) -> TrainConfig:
        if self.onecycle_momentum is not None:
            low, high = self.onecycle_momentum
            if self.schedule != "onecycle" or self.optimizer != "sgd":
                raise ValueError("onecycle_momentum needs schedule: onecycle and optimizer: sgd")
            if not 0 <= low <= high < 1:
                raise ValueError(f"onecycle_momentum is (low, high) with 0 <= low <= high < 1, got {list(self.onecycle_momentum)}")
        return self


class RecipeBase(Strict):
    label: str | None = Field(None, description="name of this recipe in tables (default: name)")
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of the study's train section")

    @field_validator("label")
    @classmethod
    def _label(cls, v):
        return check_label(v)

    @property
    def id(self) -> str:
        return self.label or self.name  # type: ignore[attr-defined]

    @property
    def adversarial(self) -> bool:
        return getattr(self, "eps", None) is not None


# --------------------------------------------------------------------------- attacks


LossName = Literal["ce", "margin", "dlr"]


class AttackBase(Strict):
    label: str | None = Field(None, description="name in tables (default from the settings, e.g. pgd20-linf)")
    eps: tuple[Eps, ...] | None = Field(None, description="ε grid for this attack (default: the study's grid for its norm)")
    loss: LossName = Field("ce", description="ce, margin (C&W logit margin) or dlr")

    @field_validator("label")
    @classmethod
    def _label(cls, v):
        return check_label(v)

    # Every attack also has ``norm`` ("linf"/"l2"/"l1", or "spatial") and ``id`` (its label in tables), as a
    # field or a property; ``steps`` and ``restarts`` where they apply (tables read them).

    def options(self) -> dict[str, Any]:
        """Keyword arguments of the registered attack function (besides model, x, y, ε)."""
        return {"loss": self.loss}



@dataclass(frozen=True)
class ModelSpec:
    """One model of a study: an architecture trained with a recipe."""

    arch: ArchitectureConfig
    recipe: RecipeBase  # the registered config of the recipe (e.g. PGDATRecipe)
    train: TrainConfig
    seed: int

    @property
    def id(self) -> str:
        return f"{self.arch.id}/{self.recipe.id}"


def content_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (keys sorted): stable across runs and processes."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


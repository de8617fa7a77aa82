"""The study file: a typed, frozen schema, validated completely before any work starts.

A study declares a data set, architectures × training recipes (the paired models), the
evaluation (attacks over an ε grid) and the probes. ``load_study(path)`` reads the YAML,
resolves ``extends:`` (a base study, path relative to the extending file, deep-merged:
mappings merge key by key, lists and scalars replace), checks every name against its
registry and returns a :class:`Study`. Any problem raises :class:`StudyError` naming the
file and the field (``recipes[1].eps``).

ε values are pixel units in [0, 1] and may be written ``0.1`` or ``"8/255"``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import StudyError, UnknownNameError, WorkbenchError
from .models.sources import SourceConfig

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


def _name_shorthand(value: Any) -> Any:
    """Allow ``- standard`` for ``- {name: standard}`` in lists of named entries."""
    if isinstance(value, (list, tuple)):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


def _check_registry(kind: str, name: str, valid: Sequence[str], extra_ok=lambda n: False) -> str:
    if name not in valid and not extra_ok(name):
        raise ValueError(UnknownNameError(kind, name, valid).message)
    return name


def _check_label(label: str | None) -> str | None:
    if label is not None and not _SAFE_NAME.match(label):
        raise ValueError(f"label {label!r} may hold only letters, digits, '.', '_' and '-'")
    if label is not None and len(label) > MAX_NAME_LENGTH:
        raise ValueError(f"a label is at most {MAX_NAME_LENGTH} characters, got {len(label)}")
    return label


# --------------------------------------------------------------------------- data


class AugmentConfig(Strict):
    """Batch augmentation applied on the training device."""

    crop_padding: int = Field(0, ge=0, description="random crop after zero padding by this many pixels (0: off)")
    flip: bool = Field(False, description="random horizontal flip")


class DataConfig(Strict):
    name: str = Field("digits", description="data set name (workbench list datasets)")
    root: str | None = Field(None, description="data root for torchvision sets and imagefolder ($VARS and ~ expanded)")
    download: bool = Field(False, description="let torchvision download missing files (needs internet)")
    val_fraction: float = Field(0.1, ge=0, lt=0.5, description="share of the training split held out for validation")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="test share for sets without their own test split")
    limit_train: PositiveInt | None = Field(None, description="use at most this many training examples")
    limit_test: PositiveInt | None = Field(None, description="use at most this many test examples")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    options: dict[str, Any] = Field(default_factory=dict, description="data-set specific options (imagefolder: image_size)")
    stream: bool | None = Field(
        None, description="read images from their files batch by batch (imagefolder folders, imagenet); "
        "default: when they would not fit the device's memory budget"
    )
    workers: int = Field(4, ge=0, description="DataLoader worker processes of a streamed data set (0: in the main process)")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .data import DATASETS

        return _check_registry("data set", v, DATASETS.names())

    @model_validator(mode="after")
    def _options(self) -> DataConfig:
        from .data import dataset_options

        valid = dataset_options(self.name)
        for key in self.options:
            if key not in valid:
                raise ValueError(
                    f"options.{key}: unknown option for data set {self.name!r}; valid: {', '.join(sorted(valid)) or '(none)'}"
                )
        return self

    def resolved_root(self) -> Path | None:
        import os

        return Path(os.path.expandvars(self.root)).expanduser() if self.root else None


# --------------------------------------------------------------------------- models


class ArchitectureConfig(Strict):
    name: str = Field(description="model name (workbench list models), or torchvision:<name>")
    label: str | None = Field(None, description="name of this architecture in tables (default: name)")
    options: dict[str, Any] = Field(default_factory=dict, description="builder options, e.g. depth/width")

    @field_validator("label")
    @classmethod
    def _label(cls, v):
        return _check_label(v)

    @model_validator(mode="after")
    def _known(self) -> ArchitectureConfig:
        from .models import check_model_options

        try:
            check_model_options(self.name, dict(self.options))
        except WorkbenchError as e:
            raise ValueError(e.message) from None
        return self

    @property
    def id(self) -> str:
        return self.label or self.name.replace("torchvision:", "tv-").replace("timm:", "timm-")


class LoadedModelConfig(Strict):
    """A model loaded from a source (checkpoint, zoo, user code), not trained (docs/models.md)."""

    id: str = Field(description="model id in tables (letters, digits, '.', '_', '-')")
    source: SourceConfig = Field(
        description="torchvision:NAME, timm:NAME, a built-in name, or a mapping: {arch, checkpoint}, {arch, pretrained}, "
        "{robustbench, dataset, threat_model, model_dir}, {python: 'package.module:factory', options, checkpoint}",
    )
    mean: tuple[float, ...] | None = Field(
        None, description="per-channel normalisation applied inside the model (default: none, or the checkpoint's own)")
    std: tuple[float, ...] | None = Field(None, description="per-channel std (with mean)")
    layers: tuple[str, ...] | dict[str, str] | None = Field(
        None, description="probe layers: module paths, or name -> module path (default: found automatically)")
    penultimate: str | None = Field(None, description="layer whose output feeds the classifier (default: the last layer)")

    @field_validator("id")
    @classmethod
    def _id(cls, v):
        if not _SAFE_NAME.match(v):
            raise ValueError(f"id {v!r} may hold only letters, digits, '.', '_' and '-'")
        return v

    @model_validator(mode="after")
    def _norm(self) -> LoadedModelConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError("std values must be positive")
        if self.source.kind == "robustbench" and self.mean is not None:
            raise ValueError("robustbench models take inputs in [0, 1] and normalise inside; leave mean/std out")
        return self


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
        return _check_label(v)

    @property
    def id(self) -> str:
        return self.label or self.name  # type: ignore[attr-defined]

    @property
    def adversarial(self) -> bool:
        return getattr(self, "eps", None) is not None


class StandardRecipe(RecipeBase):
    """Cross-entropy on clean inputs."""

    name: Literal["standard"]


class PGDATRecipe(RecipeBase):
    """Madry et al. 2018: minimise the loss at the PGD worst case (eval-mode attack)."""

    name: Literal["pgd_at"]
    eps: Eps
    norm: Norm = "linf"
    steps: PositiveInt = 10
    alpha: Eps | None = Field(None, description="step size (default 2.5·eps/steps)")


class FGSMRSRecipe(RecipeBase):
    """Wong et al. 2020 fast AT: uniform random start, one FGSM step of alpha_factor·eps."""

    name: Literal["fgsm_rs"]
    eps: Eps
    norm: Literal["linf"] = "linf"
    alpha_factor: float = Field(1.25, gt=0)
    co_check: bool = Field(True, description="catastrophic-overfitting check after each epoch (PGD-5 on a training batch)")
    co_drop: float = Field(0.2, gt=0, le=1, description="PGD accuracy drop (fraction) that signals catastrophic overfitting")
    co_action: Literal["rollback", "stop", "warn"] = Field(
        "rollback", description="rollback: restore the last good epoch and stop; stop: stop; warn: record only"
    )


class TradesRecipe(RecipeBase):
    """Zhang et al. 2019: CE(f(x), y) + beta·KL(f(x) ‖ f(x')), x' maximising the KL."""

    name: Literal["trades"]
    eps: Eps
    norm: Literal["linf"] = "linf"
    beta: float = Field(6.0, ge=0)
    steps: PositiveInt = 10
    alpha: Eps | None = Field(None, description="step size (default 2.5·eps/steps)")


class DistillationRecipe(RecipeBase):
    """Papernot et al. 2016: teacher at temperature T, student on its soft labels at T, deployed at T=1."""

    name: Literal["distillation"]
    temperature: float = Field(100.0, gt=0)
    teacher_epochs: PositiveInt | None = Field(None, description="default: train.epochs")


RecipeConfig = Annotated[
    Union[StandardRecipe, PGDATRecipe, FGSMRSRecipe, TradesRecipe, DistillationRecipe],
    Field(discriminator="name"),
]
RECIPE_CONFIGS = {c.model_fields["name"].annotation.__args__[0]: c for c in RecipeConfig.__origin__.__args__}  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- evaluation

LossName = Literal["ce", "margin", "dlr"]


class AttackBase(Strict):
    label: str | None = Field(None, description="name in tables (default from the settings, e.g. pgd20-linf)")
    eps: tuple[Eps, ...] | None = Field(None, description="ε grid for this attack (default: the study's grid for its norm)")
    loss: LossName = Field("ce", description="ce, margin (C&W logit margin) or dlr")

    @field_validator("label")
    @classmethod
    def _label(cls, v):
        return _check_label(v)


class FGSMAttack(AttackBase):
    """Goodfellow et al. 2015; L∞ only."""

    name: Literal["fgsm"]

    @property
    def norm(self) -> Norm:
        return "linf"

    @property
    def id(self) -> str:
        return self.label or ("fgsm" if self.loss == "ce" else f"fgsm-{self.loss}")

    def options(self) -> dict[str, Any]:
        return {"loss": self.loss}


class PGDAttack(AttackBase):
    """Madry et al. 2018."""

    name: Literal["pgd"]
    norm: Norm = "linf"
    steps: PositiveInt = 20
    alpha: Eps | None = Field(None, description="step size (default 2.5·eps/steps)")
    restarts: PositiveInt = 1
    random_start: bool = True

    @property
    def id(self) -> str:
        if self.label:
            return self.label
        tag = f"pgd{self.steps}-{self.norm}"
        if self.restarts > 1:
            tag += f"-r{self.restarts}"
        return tag if self.loss == "ce" else f"{tag}-{self.loss}"

    def options(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "alpha": self.alpha,
            "norm": self.norm,
            "restarts": self.restarts,
            "random_start": self.random_start,
            "loss": self.loss,
        }


class AutoAttackAttack(Strict):
    """Croce & Hein 2020 through pyautoattack (the authors' code): a version's ensemble, or
    some of its attacks alone with that version's settings (workbench/attacks/autoattack.py)."""

    name: Literal["autoattack"]
    label: str | None = Field(None, description="name in tables (default aa-<version or attacks>-<norm>)")
    eps: tuple[Eps, ...] | None = Field(None, description="ε grid for this attack (default: the study's grid for its norm)")
    norm: Norm = "linf"
    version: Literal["standard", "plus", "rand"] = Field("standard", description="AutoAttack version")
    attacks: tuple[Literal["apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab"], ...] | None = Field(
        None, description="run only these of the version's attacks (e.g. [apgd-ce]); null: all of them"
    )

    @field_validator("label")
    @classmethod
    def _label(cls, v):
        return _check_label(v)

    @model_validator(mode="after")
    def _installed(self) -> AutoAttackAttack:
        from .attacks.autoattack import MISSING, available

        if not available():
            raise ValueError(MISSING)
        if self.attacks is not None and not self.attacks:
            raise ValueError("attacks: name at least one attack, or leave it out for the whole version")
        return self

    @property
    def loss(self) -> str:
        # APGD-CE ascends cross-entropy; APGD-T, APGD-DLR the DLR loss; FAB and Square the margin
        names = self.attacks or {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
                                 "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
                                 "rand": ("apgd-ce", "apgd-dlr")}[self.version]
        return "ce" if tuple(names) == ("apgd-ce",) else "mixed"

    @property
    def steps(self) -> int:
        return 100  # APGD's and FAB's iterations in every version

    @property
    def restarts(self) -> int:
        return 5 if self.version == "plus" else 1

    @property
    def id(self) -> str:
        if self.label:
            return self.label
        what = "+".join(self.attacks) if self.attacks else self.version
        return f"aa-{what}-{self.norm}"

    def options(self) -> dict[str, Any]:
        return {"norm": self.norm, "version": self.version, "attacks": list(self.attacks) if self.attacks else None}


AttackConfig = Annotated[Union[FGSMAttack, PGDAttack, AutoAttackAttack], Field(discriminator="name")]
ATTACK_CONFIGS = {"fgsm": FGSMAttack, "pgd": PGDAttack, "autoattack": AutoAttackAttack}


class SoundnessConfig(Strict):
    """Evaluation soundness checks (Carlini et al. 2019); see docs/methods.md."""

    enabled: bool = True
    examples: PositiveInt = Field(500, description="test examples used by the extra attacks of the checks")
    large_eps: Eps = Field(0.5, description="L∞ ε at which accuracy must be near chance")
    tolerance: float = Field(
        0.005, ge=0, lt=1,
        description="accuracy change the checks tolerate (fraction; 0.005 = 0.5 points, Carlini et al. 2019); "
        "never below one example (1/n), the resolution of an accuracy on n examples",
    )
    steps_factor: int = Field(2, ge=2, description="more_steps: the reference PGD rerun with this many times its steps")
    restarts: PositiveInt = Field(5, description="more_restarts: fresh random restarts added to the reference PGD's own")
    noise_draws: PositiveInt = Field(
        1, description="noise_vs_whitebox: random perturbations per example (correct only if it survives all); "
        "1 gives FGSM a baseline of equal cost, more makes the noise a random search",
    )
    violation_rate: float = Field(
        0.01, ge=0, le=1, description="pgd_subset_fgsm: tolerated share of examples PGD gets right but FGSM gets wrong"
    )
    zero_gradient_rate: float = Field(
        0.01, ge=0, le=1, description="zero_gradients: tolerated share of examples whose CE input gradient is exactly zero"
    )
    level: float = Field(
        0.01, gt=0, lt=1,
        description="significance level: a check comparing attacks warns only when its one-sided exact test "
        "(binomial on the discordant examples, or on a count against its tolerated rate) gives p below it, "
        "and the difference is past the tolerance",
    )


class EvaluationConfig(Strict):
    examples: PositiveInt | None = Field(1000, description="test examples evaluated (null: the whole test split)")
    batch_size: PositiveInt = 500
    eps: tuple[Eps, ...] = Field((2 / 255, 4 / 255, 8 / 255), description="L∞ ε grid")
    eps_l2: tuple[Eps, ...] = Field((), description="L2 ε grid (for L2 attacks)")
    main_eps: Eps | None = Field(None, description="ε of the summary (default: the training ε of the first adversarial recipe)")
    attacks: tuple[AttackConfig, ...] = Field(
        default_factory=lambda: (FGSMAttack(name="fgsm"), PGDAttack(name="pgd")),
        description="attacks evaluated on every model",
    )
    transfer: bool = Field(True, description="examples crafted on one model of a pair, tested on the other")
    precision: Precision = Field("fp32", description="bf16 autocast for crafting attacks (CUDA only); scoring stays fp32")
    compile: bool = Field(
        False, description="torch.compile each model for crafting attacks (CUDA; compile time once per model; slower on CPU)"
    )
    soundness: SoundnessConfig = Field(default_factory=SoundnessConfig)

    @field_validator("attacks", mode="before")
    @classmethod
    def _attack_shorthand(cls, v):
        return _name_shorthand(v)

    @model_validator(mode="after")
    def _grids(self) -> EvaluationConfig:
        seen: set[str] = set()
        for i, a in enumerate(self.attacks):
            if a.id in seen:
                raise ValueError(f"attacks[{i}]: two attacks are named {a.id!r}; give one a label")
            seen.add(a.id)
            if a.norm == "linf" and any(e > 1 for e in (a.eps or ())):
                raise ValueError(f"attacks[{i}].eps: an L∞ ε is at most 1 (pixel units)")
            if a.norm == "l2" and not (a.eps or self.eps_l2):
                raise ValueError(f"attacks[{i}]: an L2 attack needs eps_l2 (or its own eps list); the study's eps grid is L∞")
        if any(e > 1 for e in self.eps):
            raise ValueError("eps: an L∞ ε is at most 1 (pixel units)")
        return self

    def grid(self, attack: FGSMAttack | PGDAttack | AutoAttackAttack) -> tuple[float, ...]:
        """The nonzero ε values at which ``attack`` is evaluated (clean accuracy is scored once)."""
        eps = attack.eps if attack.eps is not None else (self.eps if attack.norm == "linf" else self.eps_l2)
        return tuple(sorted({float(e) for e in eps if e > 0}))


# --------------------------------------------------------------------------- probes


class LipschitzProbe(Strict):
    """Feature-space Lipschitz ratios ‖φ(x+δ) − φ(x)‖₂ / ‖δ‖ per layer (docs/methods.md), for δ from
    PGD on cross-entropy (``loss``), PGD on the feature change at the layer (``feat``) and a
    random direction (``rand``); plus Yang et al. 2020's logit local Lipschitz estimate."""

    layers: LayerSpec = Field("all", description="layers probed: names, fnmatch patterns, 'all' or 'penultimate'")
    eps: tuple[Eps, ...] | None = Field(None, description="L∞ ε grid (default: evaluation.eps)")
    eps_l2: tuple[Eps, ...] | None = Field(None, description="L2 ε grid (default: evaluation.eps_l2)")
    norms: tuple[Norm, ...] = Field(("linf", "l2"), description="norms probed; a norm with an empty ε grid is skipped")
    kinds: tuple[Literal["loss", "feat", "rand"], ...] = Field(
        ("loss", "feat", "rand"), description="kinds of δ: PGD on CE, PGD on the feature change, random"
    )
    steps: PositiveInt = Field(10, description="PGD steps (step 2.5·ε/steps) of the loss attack, of each feature-search start and of the logit ascent")
    feat_restarts: int = Field(
        1, ge=0, description="random starts of the feature search (at δ = 0 a norm has no gradient, so it starts off x)"
    )
    feat_from_loss: bool = Field(
        True,
        description="also start the feature search from the PGD-CE example: δ_feat is a lower bound on the local "
        "Lipschitz constant, so the best of both starts is a tighter one (and D(feat) ≥ D(loss) per example)",
    )
    # A step of ε, not PGD's 2.5ε/steps: the feature change of a near-linear layer peaks on a
    # vertex (L∞) or the sphere (L2), where big steps act as a power iteration (keep-best guards).
    feat_step: float = Field(1.0, gt=0, description="step of the feature search in units of ε")
    logit_lipschitz: bool = Field(True, description="also Yang et al.'s logit local Lipschitz estimate (L∞ grid)")

    @model_validator(mode="after")
    def _feature_start(self) -> LipschitzProbe:
        if "feat" in self.kinds and self.feat_restarts == 0 and not (self.feat_from_loss and "loss" in self.kinds):
            raise ValueError("feat_restarts: the feature search needs a start: feat_restarts >= 1, or feat_from_loss with kind 'loss'")
        return self


class SurfaceConfig(Strict):
    """Loss-surface slices ℓ(clip(x + a·ε·d₁ + b·ε·d₂)) at the study's main ε."""

    grid: PositiveInt = Field(21, description="points per axis of the 2-D surface (odd: the grid contains a = b = 0)")
    span: float = Field(2.0, gt=0, description="half-width of the slice in units of ε")
    examples: PositiveInt = Field(4, description="probe examples (the first ones) with a surface and slices")
    refine: PositiveInt = Field(
        4, description="1-D slices have refine·(grid − 1) + 1 points: the surface axis refined, every grid point kept"
    )


class LinearityProbe(Strict):
    """Local linearity γ(ε) (Qin et al. 2019), gradient alignment (Andriushchenko & Flammarion
    2020), FGSM–PGD gap and loss-surface slices."""

    eps: tuple[Eps, ...] | None = Field(None, description="L∞ ε grid (default: evaluation.eps)")
    steps: PositiveInt = Field(10, description="PGD steps (step 2.5·ε/steps) of the search for γ = max |g(δ)|")
    pgd_steps: PositiveInt = Field(20, description="steps of the PGD (L∞, CE) of the FGSM–PGD gap")
    surface: SurfaceConfig = Field(default_factory=SurfaceConfig)


class SaliencyProbe(Strict):
    """Attribution maps through captum, with sparsity, faithfulness and stability metrics."""

    methods: tuple[Literal["saliency", "integrated_gradients", "smoothgrad"], ...] = (
        "saliency",
        "integrated_gradients",
        "smoothgrad",
    )
    examples: PositiveInt = Field(16, description="examples (both models correct) for maps and metrics")
    ig_steps: PositiveInt = Field(32, description="integration points of integrated gradients (zero = black baseline)")
    smoothgrad_samples: PositiveInt = Field(16, description="noisy copies per example for SmoothGrad")
    smoothgrad_sigma: float = Field(0.15, gt=0, description="noise std as a fraction of the [0,1] range")
    metrics: bool = Field(True, description="infidelity and max-sensitivity (Gini and agreement are always computed)")
    # ~8/255: small enough to probe the local (first-order) behaviour the maps claim to explain
    infidelity_sigma: float = Field(0.03, gt=0, description="std of the Gaussian infidelity perturbation (pixel units)")
    infidelity_samples: PositiveInt = Field(32, description="perturbations per example for infidelity (forwards only)")
    sensitivity_radius: float = Field(0.02, gt=0, description="L∞ radius of the sensitivity_max perturbations (pixel units)")
    # each sample is one full explanation (ig_steps or smoothgrad_samples gradients for IG / SmoothGrad)
    sensitivity_samples: PositiveInt = Field(8, description="perturbations per example for sensitivity_max")


class CKAProbe(Strict):
    """Linear (Kornblith et al. 2019) and debiased minibatch (Nguyen et al. 2021) CKA between
    all layers of the models of each pair, and of each model with itself."""

    layers: LayerSpec = Field("all", description="layers compared: names, fnmatch patterns, 'all' or 'penultimate'")
    kinds: tuple[Literal["linear", "debiased"], ...] = Field(("linear", "debiased"), description="CKA estimators")
    # the unbiased HSIC estimator needs n ≥ 4 per minibatch
    batch_size: int = Field(256, ge=4, description="minibatch of the debiased estimator (probe examples per batch)")


class LinearProbe(Strict):
    """Per-layer logistic-regression probes on frozen features (Alain & Bengio 2016), clean and
    under PGD; C chosen on the validation split."""

    layers: LayerSpec = Field("all", description="layers probed: names, fnmatch patterns, 'all' or 'penultimate'")
    eps: tuple[Eps, ...] | None = Field(None, description="L∞ ε of the PGD examples (default: evaluation.eps)")
    train_examples: PositiveInt | None = Field(2000, description="training-split examples fitting each probe")
    C: tuple[float, ...] = Field((0.01, 0.1, 1.0, 10.0), description="inverse regularisation grid, chosen on validation")
    max_iter: PositiveInt = Field(500, description="lbfgs iterations per fit")
    steps: PositiveInt = Field(10, description="steps of the L∞ CE PGD that makes the adversarial test features")
    # a 64×32×32 conv map has 65k features: too wide to fit thousands of probes cheaply. The
    # lbfgs fits cost ∝ width: 512 was measured 4x faster than 2048 (CIFAR PreActResNet, CPU).
    max_features: PositiveInt | None = Field(
        512, description="wider layers are average-pooled over space to fit (see linear_probe.py); null: never reduce"
    )

    @field_validator("C")
    @classmethod
    def _positive_c(cls, v):
        if not v or any(c <= 0 for c in v):
            raise ValueError("C is a non-empty list of positive numbers")
        return v


class ProbesConfig(Strict):
    examples: PositiveInt = Field(256, description="fixed test examples shared by all models")
    batch_size: PositiveInt = 256
    lipschitz: LipschitzProbe | None = None
    linearity: LinearityProbe | None = None
    saliency: SaliencyProbe | None = None
    cka: CKAProbe | None = None
    linear_probe: LinearProbe | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, v):
        # `lipschitz:` with nothing under it (YAML null) or `{}` both mean "run with defaults";
        # `false` means off.
        if isinstance(v, Mapping):
            v = dict(v)
            for key in ("lipschitz", "linearity", "saliency", "cka", "linear_probe"):
                if key in v and (v[key] is None or v[key] is True):
                    v[key] = {}
                elif key in v and v[key] is False:
                    v[key] = None
        return v

    def enabled(self) -> list[str]:
        return [k for k in ("lipschitz", "linearity", "saliency", "cka", "linear_probe") if getattr(self, k) is not None]


class ReportConfig(Strict):
    enabled: bool = Field(True, description="write figures and index.html at the end of the run")
    formats: tuple[Literal["png", "svg"], ...] = ("png", "svg")


class ClusterConfig(Strict):
    """Where ``workbench run --executor slurm|local`` runs the jobs (the command line overrides)."""

    partition: str | None = Field(None, description="SLURM partition (--partition)")
    gpus_per_job: int = Field(0, ge=0, description="GPUs of each training job (more than 1: DDP inside the job)")
    cpus_per_job: PositiveInt = Field(8, description="CPU cores of each job (DataLoader workers, decoding)")
    mem_gb: PositiveInt | None = Field(None, description="memory of each job in GB (default: the partition's)")
    time_min: PositiveInt = Field(240, description="time limit of each job in minutes (a timed-out job is requeued and resumes)")
    slurm: dict[str, Any] = Field(default_factory=dict, description="further sbatch options, e.g. {account: abc, qos: high}")


# --------------------------------------------------------------------------- study


class Study(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(description="study name; the default run folder is reports/<name>/")
    description: str = ""
    seed: int = Field(0, description="seeds weights, data order, splits and attacks")
    data: DataConfig = Field(default_factory=DataConfig)
    architectures: tuple[ArchitectureConfig, ...] = Field((), description="architectures trained with every recipe")
    recipes: tuple[RecipeConfig, ...] = Field(
        (), description="training recipes; the first is the reference of every pair"
    )
    # YAML key `models`; the attribute is `loaded` so that models() stays the trained models
    loaded: tuple[LoadedModelConfig, ...] = Field(
        (), alias="models", description="models loaded from checkpoints, zoos or user code, studied beside the trained ones")
    # the YAML key is `pairs`; the attribute is `pairing` so that pairs() stays the list of pairs
    pairing: Union[Literal["reference", "all"], tuple[tuple[str, str], ...]] = Field(
        "reference", alias="pairs",
        description="pairs compared by transfer, CKA and saliency agreement: reference (each architecture's models "
        "with its first recipe's), all (every two models), or a list of [model, model]",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @field_validator("architectures", "recipes", mode="before")
    @classmethod
    def _list_shorthand(cls, v):
        return _name_shorthand(v)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _SAFE_NAME.match(v):
            raise ValueError(f"{v!r}: a study name may hold only letters, digits, '.', '_' and '-'")
        if len(v) > MAX_NAME_LENGTH:
            raise ValueError(f"a study name is a folder name: at most {MAX_NAME_LENGTH} characters, got {len(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Study:
        if bool(self.architectures) != bool(self.recipes):
            missing, other = ("recipes", "architectures") if self.architectures else ("architectures", "recipes")
            what = "at least 1 item is needed" if missing in self.model_fields_set else "required field is missing"
            raise ValueError(f"{missing}: {what} with {other} (architectures are trained with recipes; a study of "
                             "loaded models only declares models and neither)")
        if not self.architectures and not self.loaded:
            what = "at least 1 item is needed" if "architectures" in self.model_fields_set else "required field is missing"
            raise ValueError(f"architectures: {what} (declare architectures and recipes, or models)")
        ids = [f"{a.id}/{r.id}" for a in self.architectures for r in self.recipes]  # as ModelSpec.id
        for i, m in enumerate(self.loaded):
            if m.id in ids:
                raise ValueError(f"models[{i}].id: {m.id!r} appears twice")
            ids.append(m.id)
        if not isinstance(self.pairing, str):
            for i, (a, b) in enumerate(self.pairing):
                for x in (a, b):
                    if x not in ids:
                        raise ValueError(f"pairs[{i}]: unknown model {x!r}; models: {', '.join(ids)}")
                if a == b:
                    raise ValueError(f"pairs[{i}]: a model is not paired with itself")
        for kind, items in (("architectures", self.architectures), ("recipes", self.recipes)):
            ids = [i.id for i in items]
            for i, x in enumerate(ids):
                if x in ids[:i]:
                    raise ValueError(f"{kind}[{i}]: {x!r} appears twice; give one a label")
        for i, r in enumerate(self.recipes):
            try:
                self.train_for(r)
            except ValidationError as e:
                err = e.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"recipes[{i}].train.{loc}: {err['msg']}") from None
            if getattr(r, "norm", "linf") == "linf" and getattr(r, "eps", 0) > 1:
                raise ValueError(f"recipes[{i}].eps: an L∞ ε is at most 1 (pixel units)")
        return self

    # ---- derived views

    def train_for(self, recipe: RecipeBase) -> TrainConfig:
        if not recipe.train:
            return self.train
        return TrainConfig.model_validate({**self.train.model_dump(), **recipe.train})

    def models(self) -> list[ModelSpec]:
        """The trained models: architectures × recipes, in declaration order."""
        return self.models_trained()

    def models_trained(self) -> list[ModelSpec]:
        return [
            ModelSpec(arch=a, recipe=r, train=self.train_for(r), seed=self.seed)
            for a in self.architectures
            for r in self.recipes
        ]

    def model_ids(self) -> list[str]:
        """Every model of the study: the trained ones, then the loaded ones."""
        return [s.id for s in self.models_trained()] + [m.id for m in self.loaded]

    def group_of(self, model_id: str) -> str:
        """The architecture label of a trained model; ``loaded`` for a loaded one."""
        for spec in self.models_trained():
            if spec.id == model_id:
                return spec.arch.id
        return "loaded"

    def pairs(self) -> list[tuple[str, str, str]]:
        """(group, model a, model b) per the study's ``pairs``. ``reference``: each architecture's
        first-recipe model with each of its others. The group is the models' architecture when
        they share one, else ``<group a>~<group b>`` (a loaded model's group is ``loaded``)."""
        if self.pairing == "reference":
            if not self.recipes:
                return []
            ref = self.recipes[0]
            return [
                (a.id, f"{a.id}/{ref.id}", f"{a.id}/{r.id}") for a in self.architectures for r in self.recipes[1:]
            ]
        ids = self.model_ids()
        combos = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]] if self.pairing == "all" else list(self.pairing)
        out = []
        for a, b in combos:
            ga, gb = self.group_of(a), self.group_of(b)
            out.append((ga if ga == gb else f"{ga}~{gb}", a, b))
        return out

    def main_eps(self) -> float:
        if self.evaluation.main_eps is not None:
            return float(self.evaluation.main_eps)
        for r in self.recipes:
            if getattr(r, "eps", None) and getattr(r, "norm", "linf") == "linf":
                return float(r.eps)  # type: ignore[union-attr]
        grid = sorted(self.evaluation.eps)
        return float(grid[len(grid) // 2]) if grid else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", by_alias=True)
        # a disabled probe is left out: in YAML an empty `lipschitz:` (null) means "on, defaults"
        d["probes"] = {k: v for k, v in d["probes"].items() if v is not None}
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        return content_hash(self.to_dict())


@dataclass(frozen=True)
class ModelSpec:
    """One model of a study: an architecture trained with a recipe."""

    arch: ArchitectureConfig
    recipe: StandardRecipe | PGDATRecipe | FGSMRSRecipe | TradesRecipe | DistillationRecipe
    train: TrainConfig
    seed: int

    @property
    def id(self) -> str:
        return f"{self.arch.id}/{self.recipe.id}"


def content_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (keys sorted): stable across runs and processes."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- loading


def _format_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in RECIPE_CONFIGS or part in ATTACK_CONFIGS or str(part).startswith("function-"):
            continue  # discriminated-union tags and validator names say nothing to the user
        else:
            out += f".{part}" if out else str(part)
    return out


def _error_from_validation(e: ValidationError, file: str) -> StudyError:
    err = e.errors()[0]
    field = _format_loc(err["loc"])
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    # errors raised inside nested validators carry their own sub-path ("attacks[1]: ...")
    m = re.match(r"^([A-Za-z_][\w.]*(?:\[\d+\])?(?:\.[\w]+|\[\d+\])*): (.*)$", msg)
    if m and not msg.startswith("unknown "):
        field = f"{field}.{m.group(1)}" if field else m.group(1)
        msg = m.group(2)
    if err["type"] == "extra_forbidden":
        msg = "unknown key (not part of the study schema; see `workbench schema`)"
    elif err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        msg = f"unknown name {ctx.get('tag')!r}; valid names: {ctx.get('expected_tags')}"
    elif err["type"] == "missing":
        msg = "required field is missing"
    more = len(e.errors()) - 1
    if more:
        msg += f" (and {more} more error{'s' if more > 1 else ''})"
    return StudyError(msg, file=file, field=field or "(top level)")


# --------------------------------------------------------------------------- safe YAML

#: limits of a study file: far above any real study, far below what hurts
MAX_STUDY_BYTES = 1 << 20
MAX_YAML_DEPTH = 64
#: nodes after expanding every alias (a "billion laughs" file has few nodes but expands to 10⁹)
MAX_YAML_NODES = 100_000


class _StudyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and nesting past :data:`MAX_YAML_DEPTH`
    while composing, so hostile input fails before it is built into Python objects."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nesting deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_nodes(node: yaml.Node) -> None:
    """Refuse a node graph whose alias-expanded size passes :data:`MAX_YAML_NODES`, that refers
    to itself (recursive alias) or repeats a key. Sizes are memoised per node, so the check
    is linear in the file, whatever the expansion would be."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            raise yaml.composer.ComposerError(None, None, "recursive alias (a node that contains itself)", n.start_mark)
        active.add(id(n))
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in seen:
                        raise yaml.composer.ComposerError(
                            None, None, f"duplicate key {k.value!r} (first at line {seen[k.value].start_mark.line + 1})",
                            k.start_mark,
                        )
                    seen[k.value] = k
                total += size(k) + size(v)
        active.discard(id(n))
        sizes[id(n)] = total
        if total > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand to more than {MAX_YAML_NODES} values", n.start_mark
            )
        return total

    size(node)


def safe_yaml(text: str) -> Any:
    """Parse YAML like ``yaml.safe_load``, refusing alias bombs, recursive aliases, absurd
    nesting and duplicate keys (``yaml.YAMLError`` with a mark)."""
    loader = _StudyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_error(e: yaml.YAMLError, file: str) -> StudyError:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(syntax)"
    problem = getattr(e, "problem", None) or str(e)
    return StudyError(f"invalid YAML: {problem}", file=file, field=where)


def check_numbers(obj: Any, file: str, where: str = "") -> None:
    """Every number in a raw study is finite and fits 64 bits: an ``.inf`` or a 10³⁰⁰ hidden
    in free-form options would otherwise surface as an overflow deep inside torch."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, float) and not math.isfinite(obj):
        raise StudyError(f"{obj} is not a finite number", file=file, field=where or "(top level)")
    if isinstance(obj, int) and not -(2**63) <= obj < 2**63:
        raise StudyError("integer too large (at most 64 bits)", file=file, field=where or "(top level)")
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            check_numbers(v, file, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_numbers(v, file, f"{where}[{i}]")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise StudyError("no such study file" if not path.exists() else "not a file", file=str(path))
    try:
        if path.stat().st_size > MAX_STUDY_BYTES:
            raise StudyError(f"file larger than {MAX_STUDY_BYTES >> 20} MiB; a study is a short text file", file=str(path))
        data = safe_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise _yaml_error(e, str(path)) from None
    except UnicodeDecodeError:
        raise StudyError("not a text file", file=str(path)) from None
    except OSError as e:
        raise StudyError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StudyError(f"a study is a mapping of fields, got {type(data).__name__}", file=str(path), field="(top level)")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) in ``override`` replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _resolve_extends(raw: dict[str, Any], path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise StudyError("extends names one study file (a path relative to this file)", file=str(path), field="extends")
    parent_path = (path.parent / parent).resolve()
    if parent_path in chain or parent_path == path.resolve():
        raise StudyError(f"extends forms a cycle through {parent}", file=str(path), field="extends")
    if not parent_path.is_file():
        raise StudyError(f"no such study file {parent_path}", file=str(path), field="extends")
    base = _resolve_extends(_read_yaml(parent_path), parent_path, chain + (path.resolve(),))
    base.pop("name", None)  # the child is its own study
    return deep_merge(base, raw)


def study_from_dict(raw: Mapping[str, Any], *, source: str = "<study>") -> Study:
    """Validate a study given as a mapping (notebooks, tests); errors name ``source``."""
    check_numbers(raw, source)
    try:
        return Study.model_validate(dict(raw))
    except ValidationError as e:
        raise _error_from_validation(e, source) from None


def load_study(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Study:
    """Read, resolve ``extends:``, apply ``key.sub=value`` overrides, validate."""
    path = Path(path)
    raw = _resolve_extends(_read_yaml(path), path)
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides, file=str(path))
    return study_from_dict(raw, source=str(path))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any], *, file: str) -> dict[str, Any]:
    """``["train.epochs=2", "evaluation.examples=100"]`` or ``{"train.epochs": 2}``; values are YAML."""
    items = overrides.items() if isinstance(overrides, Mapping) else []
    if not isinstance(overrides, Mapping):
        parsed = []
        for text in overrides:
            if "=" not in text:
                raise StudyError(f"override {text!r} is not key=value (e.g. train.epochs=2)", file=file, field="--set")
            key, value = text.split("=", 1)
            try:
                parsed.append((key.strip(), safe_yaml(value)))
            except yaml.YAMLError as e:
                problem = getattr(e, "problem", None) or "not valid YAML"
                raise StudyError(f"value of {key.strip()} is not valid: {problem}", file=file, field="--set") from None
        items = parsed
    out = copy.deepcopy(raw)
    for key, value in items:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise StudyError(f"cannot set {key}: {part} is not a mapping", file=file, field="--set")
            node = nxt
        node[parts[-1]] = value
    return out


def study_schema() -> dict[str, Any]:
    """JSON Schema of a study file (for editors: yaml-language-server)."""
    schema = Study.model_json_schema()
    schema["properties"]["extends"] = {
        "type": "string",
        "description": "a base study file (path relative to this one) that this study overrides",
    }
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    schema["title"] = "workbench study"
    return schema

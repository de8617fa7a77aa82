"""The study file: a typed, frozen schema, validated completely before any work starts.

A study declares a data set, architectures × training recipes (the paired models), the
evaluation (attacks over an ε grid) and the probes. ``load_study(path)`` reads the YAML,
resolves ``extends:`` (a base study, path relative to the extending file, deep-merged:
mappings merge key by key, lists and scalars replace), checks every name against its
registry and returns a :class:`Study`. Any problem raises :class:`StudyError` naming the
file and the field (``recipes[1].eps``).

The schema is assembled from the registries: ``recipes[]`` is the union of the configs the
recipes register, ``evaluation.attacks[]`` that of the attacks, ``probes.<name>`` one
optional section per registered probe. A new component is one module that registers its
config; this file does not change. ε values are pixel units in [0, 1] and may be written
``0.1`` or ``"8/255"``.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import ConfigDict, Field, PositiveInt, ValidationError, create_model, field_validator, model_validator

# Every component registers its config on import (workbench/components.py: the one place that
# imports them); the schema below is built from the registries.
from . import components  # noqa: F401  isort: skip
from .attacks import ATTACKS
from .data import AugmentConfig, DataConfig  # noqa: F401  (AugmentConfig re-exported with the data section)
from .models import ArchitectureConfig
from .config import (  # noqa: F401  (re-exported: the building blocks of every config)
    _SAFE_NAME,
    MAX_NAME_LENGTH,
    AttackBase,
    Eps,
    LayerSpec,
    LossName,
    ModelSpec,
    Norm,
    Precision,
    RecipeBase,
    Strict,
    TrainConfig,
    content_hash,
    name_shorthand,
    parse_eps,
)
from .errors import StudyError
from .evaluation import SoundnessConfig  # noqa: F401  (re-exported)
from .models.sources import SourceConfig
from .probes import PROBES  # noqa: F401  (re-exported)
from .registry import tagged_union
from .stages import SECTIONS, STAGES
from .training import RECIPES



# --------------------------------------------------------------------------- recipes and attacks

RecipeConfig = tagged_union(RECIPES)
RECIPE_CONFIGS: dict[str, type[RecipeBase]] = RECIPES.configs()
AttackConfig = tagged_union(ATTACKS)
ATTACK_CONFIGS: dict[str, type[AttackBase]] = ATTACKS.configs()

_name_shorthand = name_shorthand  # older spelling


# --------------------------------------------------------------------------- stage sections


def stage_section(name: str) -> Any:
    """The study section ``name`` (``evaluation``, ``probes``), built from the registries:
    the section's own fields (:data:`~workbench.stages.SECTIONS`) and the section of every
    stage registered under it (:attr:`Stage.section <workbench.stages.Stage.section>`):
    optional (null or absent: off) or defaulted."""
    base = SECTIONS.get(name)
    fields: dict[str, Any] = {}
    for stage_name in STAGES.in_order():
        stage = STAGES.get(stage_name)
        if len(stage.section) == 2 and stage.section[0] == name and stage.config is not None:
            cfg = stage.config
            fields[stage.section[1]] = (Optional[cfg], None) if stage.optional else (cfg, Field(default_factory=cfg))
    return create_model(f"{name.title()}Config", __base__=base, __module__=__name__, **fields)  # type: ignore[call-overload]


#: ``evaluation:``: the evaluation's settings, the soundness checks' (``soundness:``), ...
EvaluationConfig = stage_section("evaluation")
#: ``probes:``: the shared probe settings and one optional section per registered probe
ProbesConfig = stage_section("probes")


class ClusterConfig(Strict):
    """Where ``workbench run --executor slurm|local`` runs the jobs (the command line overrides)."""

    partition: str | None = Field(None, description="SLURM partition (--partition)")
    gpus_per_job: int = Field(0, ge=0, description="GPUs of each training job (more than 1: DDP inside the job)")
    cpus_per_job: PositiveInt = Field(8, description="CPU cores of each job (DataLoader workers, decoding)")
    mem_gb: PositiveInt | None = Field(None, description="memory of each job in GB (default: the partition's)")
    time_min: PositiveInt = Field(240, description="time limit of each job in minutes (a timed-out job is requeued and resumes)")
    slurm: dict[str, Any] = Field(default_factory=dict, description="further sbatch options, e.g. {account: abc, qos: high}")


class ReportConfig(Strict):
    enabled: bool = Field(True, description="write figures and index.html at the end of the run")
    formats: tuple[Literal["png", "svg"], ...] = ("png", "svg")


# --------------------------------------------------------------------------- study


# --------------------------------------------------------------------------- replicates

#: seeds of one study (each trains every model once): far above any real study
MAX_SEEDS = 100


def replicate_id(base: str, seed: int) -> str:
    """The id of seed ``seed``'s replicate of model ``base`` (``small_cnn/standard/s1``)."""
    return f"{base}/s{seed}"


class ReplicateSpec(ModelSpec):
    """A model of a study of several seeds: a :class:`ModelSpec` whose id carries the seed.

    Defined here, not in config.py, so that the training code (whose hash is part of every
    model key) does not change: a replicate's store key is that of the same model in a
    single-seed study of its seed. A job serialised to another process comes back as a
    plain ModelSpec; only its log lines there lack the seed."""

    @property
    def id(self) -> str:
        return replicate_id(f"{self.arch.id}/{self.recipe.id}", self.seed)


# --------------------------------------------------------------------------- loaded models


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


class Study(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(description="study name; the default run folder is reports/<name>/")
    description: str = ""
    # YAML key `seed` (an int, or a list of seeds: replicates); the attribute `seed` is the first
    # seed (splits, evaluation and probe examples), `seeds` all of them
    seed_spec: Union[int, tuple[int, ...]] = Field(
        0, alias="seed",
        description="seeds weights, data order, splits and attacks; a list (e.g. [0, 1, 2]) trains every model once "
        "per seed (replicates: ids <architecture>/<recipe>/s<seed>, pairs within a seed; splits, evaluation and probe "
        "examples from the first seed)",
    )
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

    @field_validator("seed_spec", mode="before")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, bool):
            raise ValueError("a seed is a whole number, or a list of them (e.g. [0, 1, 2])")
        if isinstance(v, (list, tuple)):
            if not v:
                raise ValueError("give at least one seed (e.g. seed: [0, 1, 2])")
            if len(v) > MAX_SEEDS:
                raise ValueError(f"at most {MAX_SEEDS} seeds, got {len(v)}")
            for i, x in enumerate(v):
                if isinstance(x, bool) or not isinstance(x, int):
                    raise ValueError(f"a seed is a whole number, got {x!r} (item {i + 1} of the list)")
                if x in v[:i]:
                    raise ValueError(f"seed {x} appears twice in the list")
            # one seed in a list is that seed: same ids, same tables, same digest as `seed: N`
            return v[0] if len(v) == 1 else tuple(v)
        return v

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

    @property
    def seed(self) -> int:
        """The first seed: the data splits, the evaluation and probe examples and (in a study
        of one seed) the models."""
        return self.seeds[0]

    @property
    def seeds(self) -> tuple[int, ...]:
        """Every seed; each trains one replicate of every model."""
        return self.seed_spec if isinstance(self.seed_spec, tuple) else (int(self.seed_spec),)

    @property
    def replicated(self) -> bool:
        """Several seeds: model ids carry the seed and the ``replicates`` table has rows."""
        return len(self.seeds) > 1

    def train_for(self, recipe: RecipeBase) -> TrainConfig:
        if not recipe.train:
            return self.train
        return TrainConfig.model_validate({**self.train.model_dump(), **recipe.train})

    def models(self) -> list[ModelSpec]:
        """The trained models: architectures × recipes, in declaration order."""
        return self.models_trained()

    def models_trained(self) -> list[ModelSpec]:
        """Architectures × recipes, once per seed (seed-major: all of seed 0's models first)."""
        return [
            (ReplicateSpec if self.replicated else ModelSpec)(arch=a, recipe=r, train=self.train_for(r), seed=seed)
            for seed in self.seeds
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

    def seed_of(self, model_id: str) -> int | None:
        """The seed a trained model was trained with; None for a loaded model."""
        for spec in self.models_trained():
            if spec.id == model_id:
                return spec.seed
        return None

    def pairs(self) -> list[tuple[str, str, str]]:
        """(group, model a, model b) per the study's ``pairs``. ``reference``: each architecture's
        first-recipe model with each of its others. The group is the models' architecture when
        they share one, else ``<group a>~<group b>`` (a loaded model's group is ``loaded``).

        With several seeds every pair stays within a seed (same initial weights and data
        order): ``reference`` and an explicit list (written with the ids ``<arch>/<recipe>``)
        are repeated for each seed; ``all`` pairs every two models of one seed, and each
        loaded model with every trained one."""
        if not self.replicated:
            return self._pairs_of(None)
        out: list[tuple[str, str, str]] = []
        for seed in self.seeds:
            out += [p for p in self._pairs_of(seed) if p not in out]  # loaded~loaded pairs once
        return out

    def _pairs_of(self, seed: int | None) -> list[tuple[str, str, str]]:
        def rid(base: str) -> str:
            trained = any(base == f"{a.id}/{r.id}" for a in self.architectures for r in self.recipes)
            return replicate_id(base, seed) if seed is not None and trained else base

        if self.pairing == "reference":
            if not self.recipes:
                return []
            ref = self.recipes[0]
            return [
                (a.id, rid(f"{a.id}/{ref.id}"), rid(f"{a.id}/{r.id}")) for a in self.architectures for r in self.recipes[1:]
            ]
        if self.pairing == "all":
            ids = [rid(f"{a.id}/{r.id}") for a in self.architectures for r in self.recipes] + [m.id for m in self.loaded]
            combos = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
        else:
            combos = [(rid(a), rid(b)) for a, b in self.pairing]
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
        if field == "seeds":
            msg += "; several seeds are written seed: [0, 1, 2]"
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

"""Training jobs: serialisable descriptions of one trained model, and their planning.

A :class:`TrainJob` is everything that determines one model's weights (architecture,
recipe, training settings, seed, data identity, role) plus where its data comes from;
it round-trips through JSON (:meth:`TrainJob.to_json` / :meth:`TrainJob.from_json`), so
an executor can run it in another process (:mod:`workbench.executors`). Its store key is
computed from it: a hash of its identity, which includes :func:`training_code` (the
syntax of the training loop, the recipe, the model family and the data loader, with all
they import: a change to the attack PGD-AT uses retrains PGD-AT models).

A recipe that needs another model (distillation's teacher) declares it in
:meth:`Recipe.dependencies <workbench.training.base.Recipe.dependencies>`;
:func:`plan_jobs` puts every dependency before the jobs that need it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..codehash import code_hash
from ..config import ModelSpec, TrainConfig, content_hash
from ..data import DATASETS, DataConfig, load_section
from ..models import ArchitectureConfig, MODELS, TORCHVISION_PREFIX
from .base import RECIPES, Recipe

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data import DataSplits

#: part of every model key: bump only if the layout of a key's identity changes
JOB_FORMAT = 2


def recipe_class(name: str, role: str = "model") -> type[Recipe]:
    """The recipe that trains a job: the registered one, or the one it names for ``role``."""
    cls = RECIPES.get(name)
    if role == "model":
        return cls
    try:
        return cls.roles[role]
    except KeyError:
        raise ValueError(f"recipe {name!r} has no role {role!r}") from None


def training_code(job: TrainJob) -> str:
    """Hash of the code that determines the job's weights (see the module docstring)."""
    arch = job.spec.arch.name
    model_mod = "workbench.models.tv" if arch.startswith(TORCHVISION_PREFIX) else MODELS.get(arch).__module__
    data_mod = DATASETS.get(job.data["name"]).__module__
    recipe_mod = recipe_class(job.spec.recipe.name, job.role).__module__
    return code_hash("workbench.training.loop", recipe_mod, model_mod, data_mod)


@dataclass(frozen=True)
class TrainJob:
    """Everything that determines one trained model (its cache key is a hash of this).

    ``data`` is the data identity (part of the key); ``source`` says how a process that
    has no data yet loads it (the study's data section and seed; not part of the key)."""

    spec: ModelSpec
    data: dict[str, Any]
    monitor_eps: float
    role: str = "model"  # e.g. "teacher": a model another recipe needs
    source: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.spec.id if self.role == "model" else f"{self.spec.id}:{self.role}"

    @property
    def train_config(self) -> TrainConfig:
        return self.spec.train

    @property
    def decode(self) -> str:
        """How the job's images must be decoded ("cpu" or "gpu"): as its data identity says."""
        return str(self.data.get("decode", "cpu"))

    def identity(self) -> dict[str, Any]:
        recipe = self.spec.recipe.model_dump(mode="json", exclude={"label", "train"})
        return {
            "format": JOB_FORMAT,
            "code": training_code(self),
            "role": self.role,
            "data": self.data,
            "arch": {"name": self.spec.arch.name, "options": dict(self.spec.arch.options)},
            "recipe": recipe,
            "train": _train_identity(self.train_config),
            "seed": self.spec.seed,
            # the per-epoch monitoring (ε, examples, steps) does not change the weights, but it
            # is what the history table records: were it left out, two studies monitoring one
            # model differently would each get the history of whichever trained it first
            "monitor": {"eps": float(self.monitor_eps), "examples": self.train_config.monitor_examples,
                        "steps": self.train_config.monitor_steps},
        }

    def key(self) -> str:
        return content_hash(self.identity())[:24]

    def dependencies(self) -> dict[str, TrainJob]:
        """role -> the job of each model this one's recipe needs (e.g. ``teacher``)."""
        if self.role != "model":
            return {}
        return dict(recipe_class(self.spec.recipe.name).dependencies(self))

    def with_role(self, role: str, **train_update: Any) -> TrainJob:
        """The same model description in another role (with training settings changed)."""
        spec = self.spec
        if train_update:
            spec = dataclasses.replace(spec, train=spec.train.model_copy(update=train_update))
        return dataclasses.replace(self, spec=spec, role=role)

    # ---- JSON

    def to_json(self) -> str:
        return json.dumps({
            "arch": self.spec.arch.model_dump(mode="json"),
            "recipe": self.spec.recipe.model_dump(mode="json"),
            "train": self.spec.train.model_dump(mode="json"),
            "seed": self.spec.seed,
            "data": self.data,
            "monitor_eps": self.monitor_eps,
            "role": self.role,
            "source": self.source,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        d = json.loads(text)
        recipe_cfg = RECIPES.config(d["recipe"]["name"])
        spec = ModelSpec(
            arch=ArchitectureConfig.model_validate(d["arch"]),
            recipe=recipe_cfg.model_validate(d["recipe"]),
            train=TrainConfig.model_validate(d["train"]),
            seed=int(d["seed"]),
        )
        return cls(spec, d["data"], float(d["monitor_eps"]), d["role"], d.get("source"))

    def data_config(self) -> DataConfig:
        if not self.source:
            raise ValueError(f"{self.id}: the job does not say where its data comes from")
        return DataConfig.model_validate(self.source["data"])

    def load_data(self, device: torch.device | str) -> DataSplits:
        """The data the job trains on, from the data section and seed it carries (a job run
        in another process or on another machine): :func:`~workbench.data.load_section`, as
        the runner loads its study's, decoded as the job's key says (:attr:`decode`)."""
        return load_section(self.data_config(), int(self.source["seed"]), device, decode=self.decode)


def _train_identity(t: TrainConfig) -> dict[str, Any]:
    ident = t.model_dump(mode="json", exclude={"monitor_examples", "monitor_steps", "checkpoint_steps"})
    if ident.get("onecycle_momentum") is None:  # added later: unset, it leaves earlier keys as they were
        ident.pop("onecycle_momentum", None)
    return ident


def plan_jobs(jobs: list[TrainJob]) -> list[TrainJob]:
    """``jobs`` and their dependencies, each once (by key), every dependency first; the
    order of ``jobs`` is kept otherwise."""
    out: dict[str, TrainJob] = {}

    def visit(job: TrainJob, chain: tuple[str, ...]) -> None:
        key = job.key()
        if key in chain:
            raise ValueError(f"training jobs depend on each other: {' -> '.join(chain + (key,))}")
        if key in out:
            return
        for dep in job.dependencies().values():
            visit(dep, chain + (key,))
        out[key] = job

    for job in jobs:
        visit(job, ())
    return list(out.values())

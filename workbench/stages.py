"""Stages: the evaluation, the soundness checks and each probe, run by one generic loop.

A :class:`Stage` declares, next to the code that reads them, everything its result depends
on: its study section and settings (:meth:`Stage.inputs`), the modules whose code can
change the result (:meth:`Stage.code_modules`; hashed through their import graph by
:mod:`workbench.codehash`), and the stages it reads (``needs``: their keys enter its key).
:meth:`Stage.run` returns a :class:`StageOutput`: tables plus artifacts (files as bytes,
e.g. the saliency arrays). A stage never writes into the run folder: the runner writes
its artifacts and tables, and the result cache (:mod:`workbench.cache`) stores both under
the stage's key, so a rerun with nothing changed reads them back.

Adding a stage is one module that subclasses :class:`Stage` and registers an instance in
:data:`STAGES`; the runner plans the enabled ones (``needs`` first, then ``order``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from .progress import QUIET, Progress
from .registry import Registry, TableSchema

if TYPE_CHECKING:  # pragma: no cover
    from .data import DataSplits
    from .study import Study


@dataclass
class StageOutput:
    """What a stage produced: ``tables`` (name -> tidy frame), ``artifacts`` (path inside
    the run folder -> bytes) and ``value``, an in-memory result for the caller (e.g. the
    adversarial examples of the evaluation); ``value`` is not cached, so no stage may
    depend on it."""

    tables: dict[str, pd.DataFrame]
    artifacts: dict[str, bytes] = field(default_factory=dict)
    value: Any = None


@dataclass
class StageContext:
    """What every stage may read: the study, the data, the trained models (in study
    order), the outputs of the stages that ran before it and a per-run memo for things
    several stages share (the evaluation examples, the probe context)."""

    study: Study
    data: DataSplits
    models: dict[str, torch.nn.Module]
    device: torch.device
    seed: int
    progress: Progress = QUIET
    outputs: dict[str, StageOutput] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)

    def shared(self, name: str, make):
        """``make()`` once per run, under ``name`` (e.g. the probe examples)."""
        if name not in self.memo:
            self.memo[name] = make()
        return self.memo[name]


class Stage:
    """One step after training. Subclasses set ``name``, ``tables`` and ``needs`` and
    implement :meth:`enabled`, :meth:`inputs` and :meth:`run`."""

    name: str = ""
    #: stages whose output this one reads (their cache keys are part of its key)
    needs: tuple[str, ...] = ()
    #: position among stages that do not depend on each other (the order of the tables)
    order: float = 100.0
    #: the tables this stage writes: name -> (what a row is, {column: meaning})
    tables: Mapping[str, TableSchema] = {}

    def enabled(self, study: Study) -> bool:
        return True

    def inputs(self, ctx: StageContext) -> dict[str, Any]:
        """The study settings (and anything else besides models, data and code) that
        determine this stage's result: they form its cache key."""
        raise NotImplementedError

    def code_modules(self, ctx: StageContext) -> list[str]:
        """Modules whose code can change the result (their workbench imports are followed):
        by default the module defining the stage."""
        return [type(self).__module__]

    def run(self, ctx: StageContext) -> StageOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


#: stages by name ("evaluate", "soundness", "probe:<name>")
STAGES: Registry[Stage] = Registry("stage")


def register_stage(stage: Stage) -> Stage:
    STAGES.register(stage.name, tables=stage.tables)(stage)
    return stage


def plan(study: Study, registry: Registry[Stage] | None = None) -> list[Stage]:
    """The enabled stages of ``study``, every stage after the ones it needs (ties by
    ``order``, then name). A needed stage that is disabled or unknown is an error."""
    reg = STAGES if registry is None else registry
    todo = {n: reg.get(n) for n in reg.in_order() if reg.get(n).enabled(study)}
    done: list[Stage] = []
    placed: set[str] = set()
    while todo:
        ready = [s for s in todo.values() if all(n in placed for n in s.needs)]
        if not ready:
            missing = {n for s in todo.values() for n in s.needs if n not in placed and n not in todo}
            raise ValueError(f"stages {sorted(todo)} need {sorted(missing) or 'each other'}")
        first = min(ready, key=lambda s: (s.order, s.name))
        done.append(first)
        placed.add(first.name)
        del todo[first.name]
    return done


def index_digest(idx: torch.Tensor) -> dict[str, Any]:
    """A subset of examples as a key input: how many and a hash of their positions."""
    a = idx.detach().cpu().to(torch.int64).numpy()
    return {"n": int(len(a)), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}

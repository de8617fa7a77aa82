"""Stages: the evaluation, the soundness checks and each probe, run by one generic loop.

A :class:`Stage` owns its **section** of the study: the pydantic model of its settings
(:attr:`Stage.config`) and where it sits (:attr:`Stage.section`, e.g. ``("evaluation",
"soundness")`` or ``("probes", "cka")``). The study schema builds its ``evaluation:`` and
``probes:`` sections from the stages registered here, so a new stage is one module.

:meth:`Stage.run` receives its section and a :class:`StageContext` holding only the
**shared facts** the stage declares (:meth:`Stage.reads`; the list of facts is
:data:`FACTS`: data, models, pairs, device, seed, main ε, ...) and the outputs of the
stages it ``needs``; reading a fact it did not declare raises :class:`UndeclaredFact`. It
never sees the whole study.

A stage's cache key is derived in one place, :func:`stage_key_inputs`: its section, the
keys of the facts it declares, the keys of the stages it needs and the hash of its code
(:meth:`Stage.code_modules`, hashed through their import graph by
:mod:`workbench.codehash`). Nothing is listed by hand, so what a stage can read is what
its key covers. :meth:`Stage.run` returns a :class:`StageOutput`: tables plus artifacts
(files as bytes, e.g. the saliency arrays). A stage never writes into the run folder: the
runner writes its artifacts and tables, and the result cache (:mod:`workbench.cache`)
stores both under the stage's key, so a rerun with nothing changed reads them back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import torch

from .codehash import code_hash
from .progress import QUIET, Progress
from .registry import Registry, TableSchema
from .cache import ResultCache, cached_stage

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel


@dataclass(frozen=True)
class Examples:
    """A fixed set of test examples: their positions in the test split, inputs and labels."""

    index: torch.Tensor
    x: Any  # a tensor, or a streamed split's lazy subset (``.load()`` decodes it)
    y: torch.Tensor


#: The shared facts a stage may declare (name -> what it is; how it enters a key is said
#: in brackets). The runner computes each once per run (:mod:`workbench.facts`).
FACTS: dict[str, str] = {
    "data": "the data splits (DataSplits) [the data identity, limit_test, split sizes, classes]",
    "models": "every model of the study, trained then loaded, id -> module [ids and store keys, in order]",
    "pairs": "(group, model a, model b) of the study's pairs [the list]",
    "device": "the torch device [its type]",
    "seed": "the study's (first) seed [the value]",
    "main_eps": "the main ε: evaluation.main_eps, else the first L∞ training ε, else the grid's middle [the value]",
    "eval_eps": "the evaluation's L∞ ε grid, evaluation.eps [the values]",
    "eval_eps_l2": "the evaluation's L2 ε grid, evaluation.eps_l2 [the values]",
    "eval_examples": "the evaluated test examples (Examples; evaluation.examples of them) [their positions]",
    "probe_examples": "the probe examples shared by every probe (Examples; probes.examples of them) [their positions]",
    "probe_batch_size": "batch size of the probes, probes.batch_size [the value]",
    "packages": "the installed versions of third-party packages whose own code crafts results: pyautoattack "
    "[name -> version, null when missing: installing one must not leave a result made without it cached]",
    "soundness": "the soundness checks' settings, evaluation.soundness (None when they are off), for a check that "
    "runs after the probes (a table step) [its fields]",
}


class UndeclaredFact(AttributeError):
    """A stage read a shared fact it did not declare (its key would not cover it)."""


@dataclass(frozen=True)
class Upstream:
    """What a stage reads of a stage it needs: that stage's section and its cached output
    (tables and artifacts; both are covered by that stage's key, which enters this one's)."""

    section: Any
    tables: dict[str, pd.DataFrame]
    artifacts: dict[str, bytes] = field(default_factory=dict)


class StageContext:
    """The facts one stage declared (attributes named as in :data:`FACTS`), the outputs of
    the stages it needs (``needs``) and the progress display. Reading a fact that was not
    declared raises :class:`UndeclaredFact`: a stage cannot depend on what its key does
    not hold."""

    data: Any  # a workbench.data.DataSplits (a foundation imports no component)
    models: dict[str, torch.nn.Module]
    pairs: list[tuple[str, str, str]]
    device: torch.device
    seed: int
    main_eps: float
    eval_eps: tuple[float, ...]
    eval_eps_l2: tuple[float, ...]
    eval_examples: Examples
    probe_examples: Examples
    probe_batch_size: int
    packages: dict[str, str | None]
    soundness: Any  # a workbench.evaluation.soundness.SoundnessConfig, or None

    def __init__(self, facts: Mapping[str, Any] | None = None, needs: Mapping[str, Upstream] | None = None, *,
                 progress: Progress = QUIET, stage: str = "?"):
        facts = dict(facts or {})
        unknown = sorted(set(facts) - set(FACTS))
        if unknown:
            raise ValueError(f"unknown facts {unknown}; the facts are {sorted(FACTS)}")
        self.__dict__.update(facts)
        self.needs: dict[str, Upstream] = dict(needs or {})
        self.progress = progress
        self.stage = stage
        self.declared = tuple(facts)

    def __getattr__(self, name: str) -> Any:  # only called for attributes not set
        if name in FACTS:
            raise UndeclaredFact(
                f"stage {self.stage!r} reads the fact {name!r} without declaring it (add it to the stage's facts)")
        raise AttributeError(name)


assert set(StageContext.__annotations__) == set(FACTS), "StageContext's typed attributes are the facts"


@dataclass
class StageOutput:
    """What a stage produced: ``tables`` (name -> tidy frame), ``artifacts`` (path inside
    the run folder -> bytes) and ``value``, an in-memory result for the caller (e.g. the
    evaluation's result object); ``value`` is not cached, so no stage may depend on it."""

    tables: dict[str, pd.DataFrame]
    artifacts: dict[str, bytes] = field(default_factory=dict)
    value: Any = None


class Stage:
    """One step after training. Subclasses set ``name``, ``section``, ``config``,
    ``facts``, ``needs``, ``tables`` and implement :meth:`run`."""

    name: str = ""
    #: where the stage's settings sit in the study: ``("evaluation",)`` (the section's own
    #: fields), ``("evaluation", "soundness")``, ``("probes", "cka")``; empty: none
    section: tuple[str, ...] = ()
    #: the pydantic model of that section (None: the stage has no settings)
    config: type[BaseModel] | None = None
    #: the section may be left out or null (the stage is then off); else it defaults
    optional: bool = False
    #: the shared facts (keys of :data:`FACTS`) the stage reads; :meth:`reads` may refine them by section
    facts: tuple[str, ...] = ()
    #: stages whose output this one reads (their cache keys are part of its key)
    needs: tuple[str, ...] = ()
    #: position among stages that do not depend on each other (the order of the tables)
    order: float = 100.0
    #: the tables this stage writes: name -> (what a row is, {column: meaning})
    tables: Mapping[str, TableSchema] = {}

    def enabled(self, cfg: Any) -> bool:
        """Whether the stage runs, given its section (by default: when the section is there)."""
        return cfg is not None or self.config is None

    def reads(self, cfg: Any) -> tuple[str, ...]:
        """The facts the stage reads with this section (by default :attr:`facts`)."""
        return self.facts

    def code_modules(self, cfg: Any) -> list[str]:
        """Modules whose code can change the result (their workbench imports are followed):
        by default the module defining the stage."""
        return [type(self).__module__]

    def run(self, cfg: Any, ctx: StageContext) -> StageOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


#: stages by name ("evaluate", "soundness", "probe:<name>")
STAGES: Registry[Stage] = Registry("stage")
#: the study sections that stages live under (``evaluation``, ``probes``): name -> the
#: pydantic model of the section's own fields (the stages' sections are added to it)
SECTIONS: Registry[type] = Registry("section")


def register_stage(stage: Stage) -> Stage:
    unknown = sorted(set(stage.facts) - set(FACTS))
    if unknown:
        raise ValueError(f"stage {stage.name!r} declares unknown facts {unknown}; the facts are {sorted(FACTS)}")
    STAGES.register(stage.name, config=stage.config, tables=stage.tables)(stage)
    return stage


def register_section(name: str, config: type) -> type:
    """Declare the study section ``name`` (its own fields: ``config``), under which stages register."""
    SECTIONS.register(name)(config)
    return config


def section_of(study: Any, stage: Stage) -> Any:
    """The stage's section of ``study``, as an instance of the stage's own config (a
    section that holds other stages' sections, like ``evaluation``, is cut to its own
    fields), or None when absent."""
    node = study
    for part in stage.section:
        node = getattr(node, part, None)
        if node is None:
            return None
    if not stage.section or stage.config is None:
        return None
    if type(node) is not stage.config:
        # the built section also holds other stages' sections: keep only this stage's fields
        node = stage.config.model_construct(**{f: getattr(node, f) for f in stage.config.model_fields})
    return node


class FactSource(Protocol):
    """Where the facts of a run come from (:class:`workbench.facts.RunFacts`)."""

    def key(self, name: str) -> Any: ...

    def value(self, name: str) -> Any: ...


def stage_key_inputs(stage: Stage, cfg: Any, facts: FactSource, need_keys: Mapping[str, str]) -> dict[str, Any]:
    """Everything a stage's result depends on, from which its cache key is hashed: its
    section, the keys of the facts it reads, the keys of the stages it needs, the hash of
    its code and the torch version. The one place a stage key is made."""
    return {
        "stage": stage.name,
        "section": cfg.model_dump(mode="json") if cfg is not None else None,
        "facts": {f: facts.key(f) for f in stage.reads(cfg)},
        "needs": {n: need_keys[n] for n in stage.needs},
        "code": code_hash(*stage.code_modules(cfg)),
        "torch": torch.__version__,
    }


def stage_context(stage: Stage, cfg: Any, facts: FactSource, needs: Mapping[str, Upstream], *,
                  progress: Progress = QUIET) -> StageContext:
    """The context of one stage: the values of exactly the facts it declared."""
    return StageContext({f: facts.value(f) for f in stage.reads(cfg)}, {n: needs[n] for n in stage.needs},
                        progress=progress, stage=stage.name)


def plan(study: Any, registry: Registry[Stage] | None = None) -> list[Stage]:
    """The enabled stages of ``study``, every stage after the ones it needs (ties by
    ``order``, then name). A needed stage that is disabled or unknown is an error."""
    reg = STAGES if registry is None else registry
    todo = {n: reg.get(n) for n in reg.in_order() if reg.get(n).enabled(section_of(study, reg.get(n)))}
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


def stage_keys(stages: list[Stage], study: Any, facts: FactSource) -> dict[str, str]:
    """The cache key of each planned stage (in plan order), without running any: what
    :func:`run_stages` will look up."""
    keys: dict[str, str] = {}
    for stage in stages:
        keys[stage.name] = ResultCache.key(stage_key_inputs(stage, section_of(study, stage), facts, keys))
    return keys


@dataclass
class StagesRun:
    """What :func:`run_stages` produced: every table, the artifacts (for the caller to
    write), the stages reused from the cache, each stage's output and key."""

    tables: dict[str, pd.DataFrame]
    artifacts: dict[str, bytes]
    reused: list[str]
    outputs: dict[str, StageOutput]
    keys: dict[str, str]


def run_stages(stages: list[Stage], study: Any, facts: FactSource, cache: Any, *, progress: Progress = QUIET,
               recompute: bool = False, timings: dict[str, float] | None = None) -> StagesRun:
    """Run (or read from the result cache) each planned stage in order, each on its
    section of ``study`` and the facts it declares."""
    out = StagesRun({}, {}, [], {}, {})
    upstream: dict[str, Upstream] = {}
    for stage in stages:
        t0 = time.perf_counter()
        cfg = section_of(study, stage)
        inputs = stage_key_inputs(stage, cfg, facts, out.keys)

        def compute(stage=stage, cfg=cfg) -> StageOutput:
            return stage.run(cfg, stage_context(stage, cfg, facts, upstream, progress=progress))

        got = cached_stage(cache, stage.name, inputs, compute, recompute=recompute, progress=progress)
        out.outputs[stage.name] = StageOutput(got.tables, got.artifacts, got.value)
        upstream[stage.name] = Upstream(cfg, got.tables, got.artifacts)
        out.keys[stage.name] = got.key
        if got.cached:
            out.reused.append(stage.name)
        clash = set(got.tables) & set(out.tables)
        if clash:
            raise ValueError(f"stage {stage.name} writes tables already written: {sorted(clash)}")
        out.tables.update(got.tables)
        out.artifacts.update(got.artifacts)
        if timings is not None:
            timings[stage.name] = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------- table steps


class TableStep:
    """A step after the stages that derives tables from every table written so far (the
    worst case over the attacks, the paired tests, the seeds as replicates). It is given
    the facts it declares, like a stage, and returns tables to add or to replace. Not
    cached: it is cheap, and what it reads is (the stages' results). Subclasses set
    ``name``, ``facts``, ``order`` and ``tables`` (the new tables it writes)."""

    name: str = ""
    facts: tuple[str, ...] = ()
    #: steps run by ``order`` (then name): a step reads what the steps before it wrote
    order: float = 100.0
    tables: Mapping[str, TableSchema] = {}
    #: keep the step's tables in the result cache, under a key derived from the keys of every
    #: stage and step before it, its facts and its code (for a step that takes seconds: the
    #: paired tests' permutations); it may then read only the stages' and steps' tables
    cached: bool = False

    def code_modules(self) -> list[str]:
        return [type(self).__module__]

    def run(self, tables: Mapping[str, pd.DataFrame], ctx: StageContext) -> dict[str, pd.DataFrame]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<table step {self.name}>"


#: table steps by name, run after the stages
TABLE_STEPS: Registry[TableStep] = Registry("table step")


def register_table_step(step: TableStep) -> TableStep:
    unknown = sorted(set(step.facts) - set(FACTS))
    if unknown:
        raise ValueError(f"table step {step.name!r} declares unknown facts {unknown}")
    TABLE_STEPS.register(step.name, tables=step.tables)(step)
    return step


def table_steps(registry: Registry[TableStep] | None = None) -> list[TableStep]:
    """The registered table steps, in the order they run."""
    reg = TABLE_STEPS if registry is None else registry
    return sorted((reg.get(n) for n in reg.in_order()), key=lambda s: (s.order, s.name))


def run_table_steps(tables: dict[str, pd.DataFrame], facts: FactSource, *, progress: Progress = QUIET,
                    cache: Any = None, keys: Mapping[str, str] | None = None, recompute: bool = False) -> dict[str, str]:
    """Run every table step on ``tables`` (updated in place). A ``cached`` step is read from
    ``cache`` when its key (from ``keys``, the stages' keys, and the steps' before it) is
    there; returns the keys of the cached steps."""
    before = dict(keys or {})
    step_keys: dict[str, str] = {}
    for step in table_steps():
        def compute(step=step) -> dict[str, pd.DataFrame]:
            ctx = StageContext({f: facts.value(f) for f in step.facts}, progress=progress, stage=step.name)
            return step.run(dict(tables), ctx)

        # what the step's tables derive from: every stage and step before it, its facts, its code
        inputs = {"stage": f"step:{step.name}", "before": dict(before), "facts": {f: facts.key(f) for f in step.facts},
                  "code": code_hash(*step.code_modules()), "torch": torch.__version__}
        if step.cached and cache is not None and keys is not None:
            # rank 0 alone runs the table steps (the runner): no collective with the other ranks
            got = cached_stage(cache, f"step:{step.name}", inputs, compute, recompute=recompute, ranks=False)
            out = got.tables
            step_keys[step.name] = got.key
        else:
            out = compute()
        before[f"step:{step.name}"] = ResultCache.key(inputs)
        tables.update(out)
    return step_keys

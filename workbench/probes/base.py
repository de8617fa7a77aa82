"""The probe registry, the probes' shared section, what every probe runner receives, and
the stage that runs a probe."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch
from pydantic import Field, PositiveInt, model_validator

from ..config import Strict
from ..data import DataSplits
from ..errors import UnknownNameError, WorkbenchError
from ..progress import QUIET, Progress
from ..registry import Registry, TableSchema
from ..seeds import derive_seed, seeded_generator, seeded_subset
from ..stages import STAGES, Examples, Stage, StageContext, StageOutput, register_section, register_stage
from ..store import RunFolder, atomic_write_bytes
from ..views import ReportSection, register_report_section
from .. import distributed

#: the facts every probe reads: the models, the probe examples and their batch size, the
#: device and the seed (a probe declares any other it reads when it registers)
PROBE_FACTS = ("models", "device", "seed", "probe_examples", "probe_batch_size")


class ProbeRegistry(Registry):
    """Probe runners by name (study field ``probes.<name>``): ProbeContext -> {table: frame}.
    Registering a probe (with its config and tables) also registers its stage
    ``probe:<name>``, so the runner needs no edit for a new probe.

    ``facts``: the shared facts the probe reads besides :data:`PROBE_FACTS` (e.g.
    ``("pairs",)``, ``("main_eps",)``, ``("data",)``); a probe whose config has an ``eps``
    (``eps_l2``) field left null reads the evaluation's grid, and declares it by having it.

    ``sharded=True`` declares that the probe splits its own work over the ranks under
    ``torchrun`` (:func:`~workbench.distributed.run_sharded`: units such as batches of
    examples or models, each seeded by its position, so the result does not depend on who
    computes it) and returns the whole result on every rank. Any other probe (a new one, by
    default) runs on rank 0 while the others wait, and its tables are sent to them."""

    def register(self, name=None, *, config=None, tables=None, sharded: bool = False, facts: tuple[str, ...] = ()):
        inner = super().register(name, config=config, tables=tables)

        def deco(fn):
            inner(fn)
            key = name or fn.__name__
            register_stage(ProbeStage(key, len(self), dict(tables or {}), config=config, sharded=sharded,
                                      facts=tuple(facts)))
            return fn

        return deco


PROBES: Registry[Callable[["ProbeContext"], dict[str, pd.DataFrame]]] = ProbeRegistry("probe")


class ProbeSettings(Strict):
    """The ``probes:`` section's own fields (each probe adds its section beside them)."""

    examples: PositiveInt = Field(256, description="fixed test examples shared by all models")
    batch_size: PositiveInt = 256

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, v):
        # `lipschitz:` with nothing under it (YAML null) or `{}` both mean "run with defaults";
        # `false` means off.
        if isinstance(v, Mapping):
            v = dict(v)
            for key in PROBES.in_order():
                if key in v and (v[key] is None or v[key] is True):
                    v[key] = {}
                elif key in v and v[key] is False:
                    v[key] = None
        return v

    def enabled(self) -> list[str]:
        """The probes this study runs, in registration order."""
        return [k for k in PROBES.in_order() if getattr(self, k, None) is not None]


register_section("probes", ProbeSettings)
# the report's section where the probes' figures go
register_report_section(ReportSection(
    "representations", "Representations", order=20,
    empty="No representation probes were run for this study (its probes section enables none)."))


@dataclass(frozen=True)
class ProbeContext:
    """Everything a probe runner may use. ``x, y`` are the probe examples: one fixed set of
    test examples shared by every model of the study (``index`` gives their positions in the
    test split). ``facts`` holds the shared facts the probe declared (``models``,
    ``pairs``, ``data``, ``main_eps``, ...: read them as ``ctx.models``; an undeclared one
    raises). A runner that makes files puts their bytes into ``artifacts`` (path inside
    the run folder -> bytes); whoever runs the probe writes them."""

    cfg: Any  # this probe's section of the study (e.g. LipschitzProbe)
    facts: StageContext
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    batch_size: int
    progress: Progress = QUIET
    artifacts: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: Any, *, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None,
           batch_size: int = 256, progress: Progress = QUIET, **facts: Any) -> ProbeContext:
        """A context built by hand (notebooks, tests): ``facts`` as keywords (``models=``,
        ``device=``, ``seed=``, ``pairs=``, ``data=``, ``main_eps=``, ``eval_eps=``, ...)."""
        index = torch.arange(len(y)) if index is None else index
        facts.setdefault("device", x.device)
        facts.setdefault("seed", 0)
        facts = {k: v for k, v in facts.items() if v is not None}
        return cls(cfg, StageContext(facts, progress=progress, stage="probe"), x, y, index, batch_size, progress)

    @property
    def models(self) -> dict[str, torch.nn.Module]:
        return self.facts.models

    @property
    def pairs(self) -> list[tuple[str, str, str]]:
        return self.facts.pairs

    @property
    def data(self) -> DataSplits:
        return self.facts.data

    @property
    def device(self) -> torch.device:
        return self.facts.device

    @property
    def seed(self) -> int:
        return self.facts.seed

    @property
    def main_eps(self) -> float:
        return self.facts.main_eps

    def eps_grid(self, norm: str = "linf") -> tuple[float, ...]:
        """The probe's own ε grid for ``norm``, else the study's evaluation grid (nonzero)."""
        own = getattr(self.cfg, "eps" if norm == "linf" else "eps_l2", None)
        grid = own if own is not None else (self.facts.eval_eps if norm == "linf" else self.facts.eval_eps_l2)
        return tuple(sorted({float(e) for e in grid if e > 0}))

    def seed_for(self, *parts: Any) -> int:
        return derive_seed(self.seed, "probe", *parts)


def probe_examples(data: DataSplits, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded subset of ``n`` test examples (sorted indices), the same for every model."""
    idx = seeded_subset(len(data.test_y), n, seeded_generator("cpu", seed, "probe-examples"))
    dev_idx = idx.to(data.test_x.device)
    return data.test_x[dev_idx], data.test_y[dev_idx], idx


def run_probes(
    study: Any,
    models: dict[str, torch.nn.Module],
    data: DataSplits,
    folder: RunFolder | str | None = None,
    *,
    device: torch.device,
    progress: Progress = QUIET,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Run every probe ``study`` enables, in a fixed order (a notebook helper; the runner
    runs each probe as a stage); returns all their tables (and writes their artifacts,
    e.g. the saliency arrays, into ``folder`` when given)."""
    tables: dict[str, pd.DataFrame] = {}
    for name in study.probes.enabled():
        base = probe_context(study, models, data, device=device, progress=progress, seed=seed, probe=name)
        out = run_probe(base, name)
        add_probe_tables(tables, name, out.tables)
        if folder is not None:
            root = folder.path if isinstance(folder, RunFolder) else RunFolder(folder).path
            for rel, data_ in out.artifacts.items():
                atomic_write_bytes(root / rel, data_)
    return tables


def probe_context(
    study: Any,
    models: dict[str, torch.nn.Module],
    data: DataSplits,
    *,
    device: torch.device,
    progress: Progress = QUIET,
    seed: int = 0,
    probe: str | None = None,
    examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    batch_size: int | None = None,
) -> ProbeContext:
    """The context of probe ``probe`` of ``study`` (a notebook helper), holding only the
    facts that probe declares (every fact when ``probe`` is None). ``examples`` ``(x, y,
    index)`` and ``batch_size`` replace the study's probe examples and batch size."""
    cfg = study.probes
    x, y, idx = examples if examples is not None else probe_examples(data, cfg.examples, seed)
    bs = batch_size or cfg.batch_size
    every = {
        "models": models, "pairs": study.pairs(), "data": data, "device": device, "seed": seed,
        "main_eps": float(study.main_eps()), "eval_eps": tuple(study.evaluation.eps),
        "eval_eps_l2": tuple(study.evaluation.eps_l2), "probe_examples": Examples(idx, x, y),
        "probe_batch_size": bs,
    }
    own = getattr(cfg, probe) if probe is not None else None
    names = STAGES.get(f"probe:{probe}").reads(own) if probe is not None else tuple(every)
    facts = StageContext({k: every[k] for k in names}, progress=progress, stage=f"probe:{probe}")
    return ProbeContext(own, facts, x, y, idx, bs, progress)


def run_probe(base: ProbeContext, name: str, cfg: Any = None) -> StageOutput:
    """One probe on a context (``name``: its registered name; ``cfg``: its section, by
    default the context's): its tables and the artifacts it made."""
    ctx = replace(base, cfg=base.cfg if cfg is None else cfg, artifacts={})
    try:
        return StageOutput(dict(PROBES.get(name)(ctx)), dict(ctx.artifacts))
    except WorkbenchError as e:
        if e.file is None and e.field is None:  # say which part of the study it concerns
            layer = isinstance(e, UnknownNameError) and e.kind == "layer"
            e.field = f"probes.{name}.layers" if layer else f"probes.{name}"
        raise


def add_probe_tables(tables: dict[str, pd.DataFrame], name: str, out: Mapping[str, pd.DataFrame]) -> None:
    clash = set(out) & set(tables)
    assert not clash, f"probe {name} writes tables already written: {clash}"
    tables.update(out)


class ProbeStage(Stage):
    """The stage of one registered probe: runs it on the probe examples every probe shares."""

    optional = True

    def __init__(self, probe: str, position: int, tables: dict[str, TableSchema], *, config: Any = None,
                 sharded: bool = False, facts: tuple[str, ...] = ()):
        self.probe = probe
        self.sharded = sharded
        self.name = f"probe:{probe}"
        self.section = ("probes", probe)
        self.config = config
        self.facts = PROBE_FACTS + tuple(f for f in facts if f not in PROBE_FACTS)
        self.order = 10.0 + position  # after the evaluation, in the order probes registered
        self.tables = tables

    def enabled(self, cfg: Any) -> bool:
        return cfg is not None

    def reads(self, cfg: Any) -> tuple[str, ...]:
        # a probe without its own ε grid uses the evaluation's
        fields = type(cfg).model_fields if cfg is not None else {}
        grids = tuple(fact for own, fact in (("eps", "eval_eps"), ("eps_l2", "eval_eps_l2"))
                      if own in fields and getattr(cfg, own) is None)
        return self.facts + grids

    def code_modules(self, cfg: Any) -> list[str]:
        return [PROBES.get(self.probe).__module__, __name__]

    def run(self, cfg: Any, ctx: StageContext) -> StageOutput:
        ex = ctx.probe_examples
        base = ProbeContext(cfg, ctx, ex.x, ex.y, ex.index, ctx.probe_batch_size, ctx.progress)
        w = distributed.world()
        if not w.active or self.sharded:  # a sharded probe splits its work over the ranks itself
            return run_probe(base, self.probe)
        # under torchrun, any other probe runs on rank 0; every rank gets the whole result
        # (a later stage may read it)
        mine: tuple[bool, Any] | None = None
        error: Exception | None = None
        if w.main:
            try:
                out = run_probe(base, self.probe)
                mine = (True, (out.tables, out.artifacts))
            except Exception as e:  # noqa: BLE001 - the other ranks must hear of it, or they wait forever
                error, mine = e, (False, e.one_line() if isinstance(e, WorkbenchError) else f"{type(e).__name__}: {e}")
        ok, got = distributed.broadcast(mine)
        if error is not None:
            raise error
        if not ok:
            raise WorkbenchError(f"{self.name} failed on rank 0: {got}")
        return StageOutput(*got)

"""The probe registry, what every probe runner receives, and the stage that runs a probe."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from ..data import DataSplits
from ..errors import UnknownNameError, WorkbenchError
from ..models import WorkbenchModel
from ..progress import QUIET, Progress
from ..registry import Registry, TableSchema
from ..seeds import derive_seed, seeded_generator, seeded_subset
from ..stages import Stage, StageContext, StageOutput, index_digest, register_stage
from ..store import RunFolder, atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ..study import Study


class ProbeRegistry(Registry):
    """Probe runners by name (study field ``probes.<name>``): ProbeContext -> {table: frame}.
    Registering a probe (with its config and tables) also registers its stage
    ``probe:<name>``, so the runner needs no edit for a new probe.

    ``sharded=True`` declares that the probe splits its own work over the ranks under
    ``torchrun`` (:func:`~workbench.distributed.run_sharded`: units such as batches of
    examples or models, each seeded by its position, so the result does not depend on who
    computes it) and returns the whole result on every rank. Any other probe (a new one, by
    default) runs on rank 0 while the others wait, and its tables are sent to them."""

    def register(self, name=None, *, config=None, tables=None, sharded: bool = False):
        inner = super().register(name, config=config, tables=tables)

        def deco(fn):
            inner(fn)
            key = name or fn.__name__
            register_stage(ProbeStage(key, len(self), dict(tables or {}), sharded=sharded))
            return fn

        return deco


PROBES: Registry[Callable[["ProbeContext"], dict[str, pd.DataFrame]]] = ProbeRegistry("probe")


@dataclass(frozen=True)
class ProbeContext:
    """Everything a probe runner may use. ``x, y`` are the probe examples: one fixed set of
    test examples shared by every model of the study (``index`` gives their positions in the
    test split). A runner that makes files puts their bytes into ``artifacts`` (path inside
    the run folder -> bytes); whoever runs the probe writes them."""

    study: Study
    cfg: Any  # this probe's section of the study (e.g. LipschitzProbe)
    models: dict[str, WorkbenchModel]
    pairs: list[tuple[str, str, str]]  # (architecture, reference model id, paired model id)
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    data: DataSplits
    device: torch.device
    batch_size: int
    seed: int
    progress: Progress = QUIET
    artifacts: dict[str, bytes] = field(default_factory=dict)

    def eps_grid(self, norm: str = "linf") -> tuple[float, ...]:
        """The probe's own ε grid for ``norm``, else the study's evaluation grid (nonzero)."""
        own = getattr(self.cfg, "eps" if norm == "linf" else "eps_l2", None)
        grid = own if own is not None else (self.study.evaluation.eps if norm == "linf" else self.study.evaluation.eps_l2)
        return tuple(sorted({float(e) for e in grid if e > 0}))

    def seed_for(self, *parts: Any) -> int:
        return derive_seed(self.seed, "probe", *parts)


def probe_examples(data: DataSplits, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded subset of ``n`` test examples (sorted indices), the same for every model."""
    idx = seeded_subset(len(data.test_y), n, seeded_generator("cpu", seed, "probe-examples"))
    dev_idx = idx.to(data.test_x.device)
    return data.test_x[dev_idx], data.test_y[dev_idx], idx


def run_probes(
    study: Study,
    models: dict[str, WorkbenchModel],
    data: DataSplits,
    folder: RunFolder | str | None = None,
    *,
    device: torch.device,
    progress: Progress = QUIET,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Run every probe the study enables, in a fixed order; returns all their tables (and
    writes their artifacts, e.g. the saliency arrays, into ``folder`` when given)."""
    base = probe_context(study, models, data, device=device, progress=progress, seed=seed)
    tables: dict[str, pd.DataFrame] = {}
    for name in study.probes.enabled():
        out = run_probe(base, name)
        add_probe_tables(tables, name, out.tables)
        if folder is not None:
            root = folder.path if isinstance(folder, RunFolder) else RunFolder(folder).path
            for rel, data_ in out.artifacts.items():
                atomic_write_bytes(root / rel, data_)
    return tables


def probe_context(
    study: Study,
    models: dict[str, WorkbenchModel],
    data: DataSplits,
    *,
    device: torch.device,
    progress: Progress = QUIET,
    seed: int = 0,
) -> ProbeContext:
    """The context every probe of the study shares (``cfg`` is set per probe by :func:`run_probe`)."""
    cfg = study.probes
    x, y, idx = probe_examples(data, cfg.examples, seed)
    return ProbeContext(
        study=study, cfg=None, models=models, pairs=study.pairs(), x=x, y=y, index=idx, data=data,
        device=device, batch_size=cfg.batch_size, seed=seed, progress=progress,
    )


def run_probe(base: ProbeContext, name: str) -> StageOutput:
    """One probe of the study (``name``: a key of ``study.probes``) on the shared context:
    its tables and the artifacts it made."""
    ctx = replace(base, cfg=getattr(base.study.probes, name), artifacts={})
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

    def __init__(self, probe: str, position: int, tables: dict[str, TableSchema], sharded: bool = False):
        self.probe = probe
        self.sharded = sharded
        self.name = f"probe:{probe}"
        self.order = 10.0 + position  # after the evaluation, in the order probes registered
        self.tables = tables

    def enabled(self, study: Study) -> bool:
        return getattr(study.probes, self.probe, None) is not None

    def _context(self, ctx: StageContext) -> ProbeContext:
        return ctx.shared("probe-context", lambda: probe_context(
            ctx.study, ctx.models, ctx.data, device=ctx.device, progress=ctx.progress, seed=ctx.seed))

    def inputs(self, ctx: StageContext) -> dict[str, Any]:
        study = ctx.study
        return {
            "probe": getattr(study.probes, self.probe).model_dump(mode="json"),
            "probes": study.probes.model_dump(mode="json", include={"examples", "batch_size"}),
            # a probe without its own ε grid uses the evaluation's; linearity uses the main ε
            "eps": {"linf": list(study.evaluation.eps), "l2": list(study.evaluation.eps_l2)},
            "main_eps": study.main_eps(),
            "examples": index_digest(self._context(ctx).index),
        }

    def code_modules(self, ctx: StageContext) -> list[str]:
        return [PROBES.get(self.probe).__module__, __name__]

    def run(self, ctx: StageContext) -> StageOutput:
        from .. import distributed

        base = self._context(ctx)
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

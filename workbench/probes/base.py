"""The probe registry and what every probe runner receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch

from ..data import DataSplits
from ..errors import UnknownNameError, WorkbenchError
from ..models import WorkbenchModel
from ..progress import QUIET, Progress
from ..registry import Registry
from ..seeds import derive_seed, seeded_generator, seeded_subset
from ..store import RunFolder
from ..study import Study

#: probe runners by name (study field ``probes.<name>``): ProbeContext -> {table name: DataFrame}
PROBES: Registry[Callable[["ProbeContext"], dict[str, pd.DataFrame]]] = Registry("probe")


@dataclass(frozen=True)
class ProbeContext:
    """Everything a probe runner may use. ``x, y`` are the probe examples: one fixed set of
    test examples shared by every model of the study (``index`` gives their positions in the
    test split)."""

    study: Study
    cfg: Any  # this probe's section of the study (e.g. LipschitzProbe)
    models: dict[str, WorkbenchModel]
    pairs: list[tuple[str, str, str]]  # (architecture, reference model id, paired model id)
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    data: DataSplits
    folder: RunFolder | None
    device: torch.device
    batch_size: int
    seed: int
    progress: Progress = QUIET

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
    folder: RunFolder | None,
    *,
    device: torch.device,
    progress: Progress = QUIET,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Run every probe the study enables, in a fixed order; returns all their tables."""
    base = probe_context(study, models, data, folder, device=device, progress=progress, seed=seed)
    tables: dict[str, pd.DataFrame] = {}
    for name in study.probes.enabled():
        add_probe_tables(tables, name, run_probe(base, name))
    return tables


def probe_context(
    study: Study,
    models: dict[str, WorkbenchModel],
    data: DataSplits,
    folder: RunFolder | None,
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
        folder=folder, device=device, batch_size=cfg.batch_size, seed=seed, progress=progress,
    )


def run_probe(base: ProbeContext, name: str) -> dict[str, pd.DataFrame]:
    """One probe of the study (``name``: a key of ``study.probes``) on the shared context."""
    try:
        return PROBES.get(name)(replace(base, cfg=getattr(base.study.probes, name)))
    except WorkbenchError as e:
        if e.file is None and e.field is None:  # say which part of the study it concerns
            layer = isinstance(e, UnknownNameError) and e.kind == "layer"
            e.field = f"probes.{name}.layers" if layer else f"probes.{name}"
        raise


def add_probe_tables(tables: dict[str, pd.DataFrame], name: str, out: dict[str, pd.DataFrame]) -> None:
    clash = set(out) & set(tables)
    assert not clash, f"probe {name} writes tables already written: {clash}"
    tables.update(out)

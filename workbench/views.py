"""What the report draws, declared by the components that make the tables.

A component registers here, next to its tables, each **figure** of the report drawn from
them (:func:`register_figure`), each **summary column** (one value per model in the
report's summary table) and each **measure** that ``workbench compare`` correlates with
robust accuracy across models (:func:`register_measure`). The report draws what is
registered, so a new probe with a figure touches no report code.

Drawing and computing functions are named by ``"module:function"`` and imported only
when the report draws: registering a figure imports no plotting code, so the component's
cache key (:mod:`workbench.codehash` follows imports) does not change when figure code does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .registry import Registry


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """The function a ``"module:function"`` reference names (a callable is returned as is)."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the report: file stem, title, the sentence that says how to read it, the
    report section (``robustness``, ``representations``, ``soundness``), the function drawing
    it and the tables it draws from (it is skipped when none of them is present).

    ``draw(tables, *, main_eps, run_dir)`` (it may leave out the keywords it does not use)
    returns a matplotlib figure, None (nothing to draw), or ``(figure or None, why not)``.
    ``order`` places it in the report (then registration order)."""

    name: str
    title: str
    caption: str
    section: str
    draw: str | Callable[..., Any]
    needs: tuple[str, ...]
    order: float = 100.0
    #: a file of the run's ``arrays/`` the figure draws from: ``draw(arrays, tables)`` then gets
    #: what ``load(path)`` returns (default: the npz file as a dict); skipped when the file is absent
    arrays: str | None = None
    load: str | Callable[..., Any] | None = None


@dataclass(frozen=True)
class Measure:
    """A per-model number read from a run's tables: a summary column of the report
    (``summary=True``) and/or a representation measure ``workbench compare`` correlates
    with worst-case accuracy (``compare=True``). ``compute(res)`` (``res``: a
    :class:`workbench.results.Results`) returns ``{model: value}`` and, for a summary
    column, its label (``(label, values)``); ``format`` is how the report prints it
    (``num``, ``pct``, ``text``)."""

    name: str
    label: str
    compute: str | Callable[..., Any]
    summary: bool = False
    compare: bool = False
    format: str = "num"
    order: float = 100.0


#: the report's figures, by stem
FIGURES: Registry[FigureSpec] = Registry("figure")
#: per-model measures: summary columns and the measures compare correlates
MEASURES: Registry[Measure] = Registry("measure")


def register_figure(spec: FigureSpec) -> FigureSpec:
    FIGURES.register(spec.name)(spec)
    return spec


def register_measure(measure: Measure) -> Measure:
    MEASURES.register(measure.name)(measure)
    return measure


def figures() -> list[FigureSpec]:
    """Every registered figure, in report order."""
    specs = [FIGURES.get(n) for n in FIGURES.in_order()]
    return sorted(specs, key=lambda s: (s.order, specs.index(s)))


def measures(*, summary: bool | None = None, compare: bool | None = None) -> list[Measure]:
    """The registered measures (only the summary columns, or only those compare uses), in order."""
    ms = [MEASURES.get(n) for n in MEASURES.in_order()]
    ms = [m for m in ms if (summary is None or m.summary == summary) and (compare is None or m.compare == compare)]
    return sorted(ms, key=lambda m: (m.order, ms.index(m)))

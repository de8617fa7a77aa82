"""What the report draws, declared by the components that make the tables.

A component registers here, next to its tables, each **figure** of the report drawn from
them (:func:`register_figure`), each **summary column** (one value per model in the
report's summary table), each **measure** that ``workbench compare`` correlates with
robust accuracy across models and each other **threat model** it ranks against the L∞
worst case (:func:`register_measure`), the report's **sections** (:func:`register_report_section`),
the tables a section shows (:func:`register_detail`) and the **notes** under the summary
(:func:`register_note`). The report draws what is registered, so a new probe with a figure,
a column or a section touches no report code.

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
    #: a summary measure with several columns: ``compute(res)`` returns ``[(label, {model: value},
    #: format), ...]`` (e.g. one column per attack); ``label`` and ``format`` are then unused
    many: bool = False
    #: CSS class of a summary cell by its text (e.g. a verdict shown in colour)
    classes: tuple[tuple[str, str], ...] = ()
    #: a column of ``workbench compare`` that is another threat model's accuracy, ranked
    #: against the L∞ worst case (``compute(res)``: ``{model: value}``, or with ``many``
    #: ``[(column, {model: value}, format), ...]``, the first being the accuracy)
    threat: bool = False


@dataclass(frozen=True)
class ReportSection:
    """A section of the report page: its figures are those registered with this ``id``.

    ``tables``: the tables it shows; with ``optional`` the section is left out when none of
    them is present and it has no figure, and ``absent`` is the sentence it shows instead
    when none is present; ``empty`` is shown when it has no figure. ``notes(res)`` returns
    sentences shown first; ``text`` is a paragraph after the figures (when a table is
    present). ``nav``: its label in the page's table of contents (default: the title)."""

    id: str
    title: str
    order: float = 100.0
    tables: tuple[str, ...] = ()
    optional: bool = False
    absent: str | None = None
    empty: str | None = None
    notes: str | Callable[..., Any] | None = None
    text: str | None = None
    nav: str | None = None


@dataclass(frozen=True)
class Detail:
    """A table shown in a report section (``section``: a registered section's id, or
    ``summary`` for the summary at the top): ``table`` (skipped when absent or empty), the
    ``columns`` shown (default: all, in the table's order; those missing are left out) and
    how each is printed (``formats``: ``num``, ``pct``, ``sec``, ``text``, ...; ``*``: every
    other column). Collapsed under ``summary`` unless ``open`` (then under the heading
    ``title``, followed by the sentences ``notes(res)``). ``rows(res, df)`` may reorder or
    derive the rows shown; ``row_class``: (column, ((value, css class), ...)) marks rows;
    ``id``: the HTML id of the table."""

    name: str
    section: str
    summary: str
    table: str
    columns: tuple[str, ...] | None = None
    formats: tuple[tuple[str, str], ...] = ()
    order: float = 100.0
    open: bool = False
    rows: str | Callable[..., Any] | None = None
    row_class: tuple[str, tuple[tuple[str, str], ...]] | None = None
    id: str = ""
    title: str | None = None
    notes: str | Callable[..., Any] | None = None


@dataclass(frozen=True)
class Note:
    """Sentences the report shows at ``place``: ``summary`` (the notes under the summary
    table) or ``banner`` (above it). ``text(res)`` returns a list of sentences (for a
    banner, ``(css class, sentence)`` pairs); an empty list shows nothing."""

    name: str
    text: str | Callable[..., Any]
    place: str = "summary"
    order: float = 100.0


#: the report's figures, by stem
FIGURES: Registry[FigureSpec] = Registry("figure")
#: per-model measures: summary columns and the measures compare correlates
MEASURES: Registry[Measure] = Registry("measure")
#: the report's sections, its section tables and its notes
REPORT_SECTIONS: Registry[ReportSection] = Registry("report section")
DETAILS: Registry[Detail] = Registry("report table")
NOTES: Registry[Note] = Registry("report note")


def register_figure(spec: FigureSpec) -> FigureSpec:
    FIGURES.register(spec.name)(spec)
    return spec


def register_measure(measure: Measure) -> Measure:
    MEASURES.register(measure.name)(measure)
    return measure


def register_report_section(section: ReportSection) -> ReportSection:
    REPORT_SECTIONS.register(section.id)(section)
    return section


def register_detail(detail: Detail) -> Detail:
    DETAILS.register(detail.name)(detail)
    return detail


def register_note(note: Note) -> Note:
    NOTES.register(note.name)(note)
    return note


def _ordered(registry: Registry[Any]) -> list[Any]:
    items = [registry.get(n) for n in registry.in_order()]
    return sorted(items, key=lambda s: (s.order, items.index(s)))


def report_sections() -> list[ReportSection]:
    """Every registered report section, in page order."""
    return _ordered(REPORT_SECTIONS)


def details(section: str) -> list[Detail]:
    """The tables registered for one section, in order."""
    return [d for d in _ordered(DETAILS) if d.section == section]


def notes(place: str) -> list[Note]:
    """The notes registered for one place (``summary``, ``banner``), in order."""
    return [n for n in _ordered(NOTES) if n.place == place]


def figures() -> list[FigureSpec]:
    """Every registered figure, in report order."""
    specs = [FIGURES.get(n) for n in FIGURES.in_order()]
    return sorted(specs, key=lambda s: (s.order, specs.index(s)))


def measures(*, summary: bool | None = None, compare: bool | None = None, threat: bool | None = None) -> list[Measure]:
    """The registered measures (only the summary columns, only those compare correlates, or
    only its other threat models), in order."""
    return [m for m in _ordered(MEASURES) if (summary is None or m.summary == summary)
            and (compare is None or m.compare == compare) and (threat is None or m.threat == threat)]

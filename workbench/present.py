"""How the workbench shows its numbers: ε labels, the grid value a summary reports, model
order, and the shared look of its figures (palette, panel layout, seaborn theme).

A foundation: the report, ``workbench compare`` and the components' own views (summary
columns, notes, figures: :mod:`workbench.views`) use it, and it imports no component.
seaborn and matplotlib are imported on first use: they take seconds to import, and a
report whose figures all come from the cache draws none."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class LazyModule:
    """A module imported on first attribute access (for a library that takes long to import and
    only some calls need, e.g. seaborn, matplotlib, scipy.ndimage)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


_Lazy = LazyModule
sns = _Lazy("seaborn")
_mpl_figure = _Lazy("matplotlib.figure")

Tables = Mapping[str, pd.DataFrame]

#: rendering resolution of the PNGs (embedded in index.html and saved next to it)
DPI = 100

#: seaborn look shared by every figure (applied inside a context manager: no global change)
_STYLE = {"axes.grid": True, "grid.linestyle": ":", "axes.spines.top": False, "axes.spines.right": False}
NORM_LABEL = {"linf": "L∞", "l2": "L2", "l1": "L1", "spatial": "spatial", "none": ""}
#: the tables whose ``model`` column gives the model order when the models table is absent
_ORDER_TABLES = ("robustness", "history", "lipschitz", "linearity", "linear_probe", "soundness", "loss_surface")


def table(tables: Tables, name: str) -> pd.DataFrame | None:
    """The named table, or None when absent or empty."""
    df = tables.get(name)
    return df if df is not None and len(df) else None


def eps_label(eps: float) -> str:
    """``0.2`` -> ``"0.2"``; ``8/255`` -> ``"8/255"`` (a decimal that long is a fraction of 255)."""
    text = f"{eps:g}"
    if len(text.replace("0.", "", 1)) > 4:
        frac = Fraction(eps).limit_denominator(255)
        if abs(float(frac) - eps) < 1e-9 and frac.denominator in (255, 51, 85, 17, 15, 5, 3):
            n = frac.numerator * (255 // frac.denominator)
            return f"{n}/255"
    return text


def closest(values: Sequence[float], target: float) -> float:
    """The value of ``values`` closest to ``target`` (the smaller one on a tie)."""
    vals = sorted({float(v) for v in values})
    return min(vals, key=lambda v: (abs(v - target), v))


def middle(values: Sequence[float]) -> float:
    """The middle value of a grid (upper middle for an even count): Study.main_eps's fallback rule."""
    vals = sorted({float(v) for v in values})
    return vals[len(vals) // 2]


def model_order(tables: Tables) -> list[str]:
    """Model ids in study order: the ``models`` table when present, else order of appearance."""
    order: list[str] = []
    models = table(tables, "models")
    if models is not None:
        order.extend(str(m) for m in models["model"])
    for name in _ORDER_TABLES:
        df = table(tables, name)
        if df is not None and "model" in df.columns:
            order.extend(str(m) for m in df["model"].drop_duplicates() if str(m) not in order)
    return list(dict.fromkeys(order))


def robust_eps(rob: pd.DataFrame, attack: str, main_eps: float, norm: str | None = None) -> float | None:
    """The ε at which a summary reports ``attack`` (robustness table rows): for L∞, the
    evaluated ε closest to the main ε; for L2, the middle of the attack's own grid (an L∞
    radius means nothing in L2). ``norm`` picks one norm of an attack that has several (the worst case)."""
    d = rob[(rob["attack"] == attack) & (rob["eps"] > 0)]
    if norm is not None:
        d = d[d["norm"] == norm]
    if d.empty:
        return None
    if (d["norm"] == "linf").all():
        return closest(d["eps"], main_eps)
    return middle(d["eps"])


def grid_eps(df: pd.DataFrame, norm: str, main_eps: float | None) -> float | None:
    """The ε a figure or summary uses from a probe's ε grid (its ``eps`` column) for ``norm``:
    the grid value closest to the main ε for L∞, the middle of the grid otherwise."""
    grid = df.loc[df["norm"] == norm, "eps"]
    if grid.empty:
        return None
    if norm == "linf" and main_eps is not None:
        return closest(grid, main_eps)
    return middle(grid)


def penultimate_layers(df: pd.DataFrame) -> dict[str, tuple[str, int]]:
    """model -> (layer, index) of the deepest measured layer other than the logits (the
    penultimate layer when the probe covered all layers), from ``layer``/``layer_index`` columns."""
    out = {}
    for m, d in df[df["layer"] != "logits"].groupby("model", sort=False):
        row = d.sort_values("layer_index").iloc[-1]
        out[str(m)] = (str(row["layer"]), int(row["layer_index"]))
    return out


def headline_warnings(soundness: pd.DataFrame) -> pd.Series:
    """Per row of a ``soundness`` table: does its warning apply to the worst case (column
    ``affects_worst_case``, :mod:`workbench.evaluation.soundness`)? A table written before that
    column existed: every warning does. The verdict, the report and ``--strict`` read this."""
    warn = soundness["status"] == "warn"
    if "affects_worst_case" not in soundness.columns:
        return warn
    return warn & soundness["affects_worst_case"].fillna(True).astype(bool)


def palette(models: Sequence[str]) -> dict[str, Any]:
    """One colour per model, stable across every figure of a report."""
    colours = sns.color_palette("colorblind", max(len(models), 1))
    return {m: colours[i % len(colours)] for i, m in enumerate(models)}


def new_figure(ncols: int, nrows: int = 1, *, w: float = 3.4, h: float = 2.8, extra_w: float = 0.0,
               **kw: Any) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of ``nrows × ncols`` panels of ``w × h`` inches (plus
    ``extra_w`` for the legend); ``axes`` is always 2-D."""
    fig = _mpl_figure.Figure(figsize=(w * ncols + extra_w, h * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


@contextlib.contextmanager
def theme() -> Iterator[None]:
    """The seaborn look of every figure, applied for the block only (no global change)."""
    with sns.axes_style("whitegrid", _STYLE), sns.plotting_context("notebook", font_scale=0.8):
        yield

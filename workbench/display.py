"""Compact summaries of a run, a loaded run and a comparison for notebooks (``_repr_html_``)
and for the interpreter (a one-line ``__repr__``), instead of the dataclasses' full field
dumps (tens of thousands of characters). Every user string is escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

import pandas as pd
from .verdict import verdict_table

STYLE = "font-family: sans-serif; font-size: 13px"


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0, na_rep="")


def _tables_line(tables: Mapping[str, pd.DataFrame]) -> str:
    parts = [f"{escape(name)} ({len(df)})" for name, df in tables.items() if df is not None and len(df)]
    return ", ".join(parts) or "none"


def run_repr(kind: str, name: str, path: Path, tables: Mapping[str, pd.DataFrame]) -> str:
    """``<Run 'quickstart' at reports/quickstart: 2 models, 31 tables>``"""
    rob = tables.get("robustness")
    n_models = rob["model"].nunique() if rob is not None and len(rob) else 0
    return f"<{kind} {name!r} at {path}: {n_models} models, {sum(1 for t in tables.values() if t is not None and len(t))} tables>"


def run_html(kind: str, name: str, path: Path, tables: Mapping[str, pd.DataFrame], main_eps: float | None) -> str:
    """The verdict (one row per model) above the list of tables and the report's path."""
    parts = [f'<div style="{STYLE}"><b>{escape(kind)} {escape(name)}</b> <code>{escape(str(path))}</code>']
    if tables.get("robustness") is not None and len(tables["robustness"]) and main_eps is not None:
        v = verdict_table(tables, main_eps).drop(columns=["warnings", "eps", "norm"])
        eps_text = f"{main_eps:g}"
        parts.append(_table_html(v.rename(columns={"clean": "clean accuracy",
                                                   "worst_case": f"worst case at ε={eps_text} [95% CI]"})))
    parts.append(f"<p>tables: {_tables_line(tables)}</p>")
    index = Path(path) / "index.html"
    if index.exists():
        parts.append(f"<p>report: <code>{escape(str(index))}</code></p>")
    parts.append("</div>")
    return "\n".join(parts)


def comparison_repr(names: Sequence[str], cross: pd.DataFrame) -> str:
    return f"<Comparison of {len(names)} runs ({', '.join(names)}): {len(cross)} models>"


def comparison_html(names: Sequence[str], cross: pd.DataFrame, differences: pd.DataFrame, significant: list[str]) -> str:
    """Every model of every run (the columns a reader compares first), the number of
    differences between runs and the significant paired tests in words."""
    parts = [f'<div style="{STYLE}"><b>Comparison of {len(names)} runs</b>: {escape(", ".join(names))}']
    if len(cross):
        keep = [c for c in ("run", "model", "main ε", "clean", "worst case", "worst-case ε") if c in cross.columns]
        view = cross[keep].copy() if keep else cross.iloc[:, :6].copy()
        for c in ("clean", "worst case"):
            if c in view.columns:
                view[c] = [f"{100 * v:.1f} %" if pd.notna(v) else "" for v in view[c]]
        parts.append(_table_html(view))
    parts.append(f"<p>{len(differences)} accuracy differences between runs (<code>.differences</code>)</p>")
    if significant:
        parts.append("<ul>" + "".join(f"<li>{escape(s)}</li>" for s in significant[:10]) + "</ul>")
    parts.append("</div>")
    return "\n".join(parts)

"""The verdict of a run, for the terminal: per model, clean accuracy, the worst-case robust
accuracy at the main ε with its interval, and the soundness verdict naming every check that
warns. ``workbench run`` prints it at the end; ``--strict`` turns a warning into exit 1.

Built from the run's tables only (``robustness``, ``soundness``), so a notebook gets the same
verdict from :func:`verdict_table` on ``run.tables`` or ``results.load(dir).tables``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .present import eps_label, headline_warnings

WORST = "worst_case"


def _closest_eps(rob: pd.DataFrame, attack: str, norm: str, main_eps: float) -> float | None:
    d = rob[(rob["attack"] == attack) & (rob["norm"] == norm) & (rob["eps"] > 0)]
    if d.empty:
        return None
    eps = np.sort(d["eps"].unique())
    if norm == "linf":
        return float(eps[np.argmin(np.abs(eps - main_eps))])
    return float(eps[len(eps) // 2])  # an L∞ radius means nothing in L2: the middle of its own grid


def _pct(row: pd.Series | None) -> str:
    if row is None:
        return "-"
    text = f"{100 * float(row['accuracy']):.1f} %"
    if "ci_low" in row.index and pd.notna(row["ci_low"]):
        text += f" [{100 * float(row['ci_low']):.1f}, {100 * float(row['ci_high']):.1f}]"
    return text


def verdict_table(tables: Mapping[str, pd.DataFrame], main_eps: float) -> pd.DataFrame:
    """One row per model: ``model``, ``clean`` (accuracy with its 95 % Wilson interval),
    ``worst_case`` (the per-example worst case over every white-box attack at the L∞ ε
    closest to ``main_eps``, else the L2 grid's middle ε, with its interval), ``eps``,
    ``norm``, ``soundness`` (``sound (n/n checks pass)``, ``WARNING: robustness may be
    overestimated (check, ...)``, ``sound worst case; single attacks overestimate (check, ...)``
    when every warning is an attack comparison whose stronger attack the worst case already
    holds, or ``not checked``) and ``warnings`` (the checks whose warning applies to the worst
    case: what ``--strict`` fails on)."""
    rob = tables["robustness"]
    snd = tables.get("soundness")
    models = list(dict.fromkeys(rob["model"].astype(str)))
    norm = next((n for n in ("linf", "l2") if ((rob["attack"] == WORST) & (rob["norm"] == n)).any()), None)
    eps = _closest_eps(rob, WORST, norm, main_eps) if norm else None
    rows = []
    for m in models:
        mine = rob[rob["model"].astype(str) == m]
        clean = mine[mine["attack"] == "clean"]
        worst = mine[(mine["attack"] == WORST) & (mine["norm"] == norm) & np.isclose(mine["eps"], eps)] if eps else mine[:0]
        checks = snd[snd["model"].astype(str) == m] if snd is not None and len(snd) else None
        if checks is None or checks.empty:
            warned, verdict = [], "not checked"
        else:
            warned = [str(c) for c in checks.loc[headline_warnings(checks), "check"]]
            held = [str(c) for c in checks.loc[checks["status"] == "warn", "check"] if c not in warned]
            verdict = (f"WARNING: robustness may be overestimated ({', '.join(warned)})" if warned
                       else f"sound worst case; single attacks overestimate ({', '.join(held)})" if held
                       else f"sound ({len(checks)}/{len(checks)} checks pass)")
        rows.append({"model": m, "clean": _pct(clean.iloc[0] if len(clean) else None),
                     "worst_case": _pct(worst.iloc[0] if len(worst) else None), "eps": eps, "norm": norm,
                     "soundness": verdict, "warnings": warned})
    return pd.DataFrame(rows, columns=["model", "clean", "worst_case", "eps", "norm", "soundness", "warnings"])


def verdict_text(tables: Mapping[str, pd.DataFrame], main_eps: float) -> str:
    """The verdict as a fixed-width table (the end of ``workbench run``)."""
    df = verdict_table(tables, main_eps)
    if df.empty:
        return ""
    e = df["eps"].iloc[0]
    worst_head = (f"worst case, {'L∞' if df['norm'].iloc[0] == 'linf' else 'L2'} ε={eps_label(float(e))}"
                  if e is not None and pd.notna(e) else "worst case")
    head = ["model", "clean accuracy", worst_head, "soundness"]
    body = [[r.model, r.clean, r.worst_case, r.soundness] for r in df.itertuples()]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in [head, *body]]
    return "\n".join(lines)

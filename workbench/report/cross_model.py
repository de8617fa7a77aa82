"""Every model of every run in one table, and its representation measures against robust accuracy.

``cross_model_table(runs, names)`` has one row per run × model: clean and worst-case robust
accuracy (L∞, at the run's main ε) with their 95 % Wilson intervals, AutoAttack's accuracy
where it ran, the penultimate-layer Lipschitz ratio (δ_loss, L∞), local linearity γ and
gradient alignment (means at the main ε), the Gini sparsity of the saliency maps, linear CKA
to the pair's reference at the penultimate layer, and whether the model's worst case differs
significantly from its reference (the run's ``significance`` table, Holm-corrected), and the other
threat models: the worst case at L2, L1 and spatial at each norm's summary ε and the mean accuracy
under the common corruptions (:func:`threat_correlations` ranks them against the L∞ worst case).
``measure_scatter`` draws each measure against worst-case accuracy across all models with
Spearman's ρ and its Fisher interval. Both take :func:`workbench.results.load` results, so a
notebook gets the same table and figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import components  # noqa: F401  (registers every component's measures)
from ..results import Results
from ..stats import spearman
from ..present import closest, model_order, robust_eps
from ..views import measures, resolve
from . import figures as F


def compare_measures() -> dict[str, str]:
    """name -> label of the representation measures the components register for compare
    (:func:`workbench.views.register_measure` with ``compare=True``), in order."""
    return {m.name: m.label for m in measures(compare=True)}


def threats() -> dict[str, str]:
    """column -> label of the other threat models the components register for compare
    (:func:`workbench.views.register_measure` with ``threat=True``: the worst case at L2,
    L1 and spatial, the common corruptions, ...), in order."""
    return {m.name: m.label for m in measures(threat=True)}


def _at(df: pd.DataFrame, **eq) -> pd.DataFrame:
    for k, v in eq.items():
        df = df[np.isclose(df[k], v)] if isinstance(v, float) else df[df[k] == v]
    return df


def _first(df: pd.DataFrame, col: str) -> float:
    return float(df[col].iloc[0]) if len(df) else np.nan


def _run_rows(res: Results, name: str) -> list[dict]:
    rob = res.get("robustness")
    if rob is None:
        return []
    main = res.study.main_eps()
    sig = res.get("significance")
    pairs = res.get("pairs")
    ref_of = dict(zip(pairs["model"], pairs["reference"])) if pairs is not None and len(pairs) else {}
    w_eps = robust_eps(rob, "worst_case", main, "linf") if (rob["attack"] == "worst_case").any() else None
    aa = rob[(rob["method"] == "autoattack") & (rob["norm"] == "linf")]
    values = {m.name: resolve(m.compute)(res) for m in measures(compare=True)}
    # the other threat models' columns (an accuracy, and e.g. the ε it is read at)
    threat_cols = [col for m in measures(threat=True) for col in (
        resolve(m.compute)(res) if m.many else [(m.name, resolve(m.compute)(res), m.format)])]
    mt = res.get("models")
    info = mt.set_index(mt["model"].astype(str)) if mt is not None else None
    rows = []
    for m in model_order(res.tables):
        clean = _at(rob, model=m, attack="clean")
        worst = _at(rob, model=m, attack="worst_case", norm="linf", eps=w_eps) if w_eps is not None else rob.iloc[0:0]
        a = aa[aa["model"] == m]
        a = _at(a, eps=closest(a["eps"], main)) if len(a) else a
        arch, recipe, seed = _identity(res, info, m)
        row = {
            "run": name, "model": m, "architecture": arch, "recipe": recipe, "seed": seed, "main ε": main,
            "clean": _first(clean, "accuracy"), "clean ci_low": _first(clean, "ci_low"),
            "clean ci_high": _first(clean, "ci_high"),
            "worst case": _first(worst, "accuracy"), "worst ci_low": _first(worst, "ci_low"),
            "worst ci_high": _first(worst, "ci_high"), "worst-case ε": w_eps if w_eps is not None else np.nan,
            "autoattack": _first(a, "accuracy"),
        }
        for measure, got in values.items():
            row[measure] = got.get(m, np.nan)
        ref = ref_of.get(m)
        for col, got, _ in threat_cols:
            row[col] = got.get(m, np.nan)
        row["worst case vs reference"] = ""
        if sig is not None and len(sig) and ref is not None and w_eps is not None:
            s = _at(sig, model=m, measure="worst_case", norm="linf", eps=w_eps)
            if len(s):
                r = s.iloc[0]
                row["worst case vs reference"] = (
                    f"{'significant' if r['significant'] else 'not significant'}: {100 * r['difference']:+.1f} points, "
                    f"p_holm = {r['p_holm']:.2g}")
        rows.append(row)
    return rows


def _identity(res: Results, info: pd.DataFrame | None, m: str) -> tuple[str, str, float]:
    """(architecture, recipe, seed) of a model: the models table's, else the study's (NaN seed: loaded)."""
    if info is not None and m in info.index:
        r = info.loc[m]
        seed = r["seed"] if "seed" in info.columns and pd.notna(r["seed"]) else res.study.seed_of(m)
        return str(r["architecture"]), str(r["recipe"]), float(seed) if seed is not None else np.nan
    seed = res.study.seed_of(m)
    return res.study.group_of(m), "", float(seed) if seed is not None else np.nan


def family(row: pd.Series | dict) -> str:
    """``<architecture>/<recipe>`` of a trained model (its replicates share it), else the model id."""
    arch, recipe = row.get("architecture"), row.get("recipe")
    if isinstance(arch, str) and isinstance(recipe, str) and arch and recipe and recipe != "loaded":
        return f"{arch}/{recipe}"
    return str(row["model"])


def replicated() -> tuple[str, ...]:
    """The cross-model columns summarised across seeds (accuracies, then the representation measures)."""
    return ("clean", "worst case", "autoattack", *compare_measures())


def replicate_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd across seeds of every measure of the cross-model table, one row per run ×
    architecture × recipe trained with two or more seeds (``<col> mean``, ``<col> sd``, n_seeds)."""
    cols = ["run", "model", "n_seeds"] + [f"{c} {s}" for c in replicated() for s in ("mean", "sd")]
    if table.empty or "seed" not in table.columns:
        return pd.DataFrame(columns=cols)
    rows = []
    t = table.assign(_family=[family(r) for _, r in table.iterrows()])
    for (run, fam), d in t[t["seed"].notna()].groupby(["run", "_family"], sort=False):
        if d["seed"].nunique() < 2:
            continue
        row = {"run": run, "model": fam, "n_seeds": int(d["seed"].nunique())}
        for c in replicated():
            v = d[c].to_numpy(float) if c in d.columns else np.array([np.nan])
            v = v[np.isfinite(v)]
            row[f"{c} mean"] = float(v.mean()) if len(v) else np.nan
            row[f"{c} sd"] = float(v.std(ddof=1)) if len(v) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def cross_model_table(runs: Sequence[Results], names: Sequence[str]) -> pd.DataFrame:
    """One row per run × model (see the module docstring); accuracies are fractions."""
    rows = [r for res, n in zip(runs, names) for r in _run_rows(res, n)]
    return pd.DataFrame(rows)


def correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman's ρ (Fisher interval) of each measure with worst-case accuracy across models."""
    out = []
    for col, label in compare_measures().items():
        if col in table.columns:
            s = spearman(table[col], table["worst case"])
            out.append({"measure": label, **s})
    return pd.DataFrame(out, columns=["measure", "n", "rho", "ci_low", "ci_high"])


def threat_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman's ρ (Fisher interval) across models between the L∞ worst case and each other
    threat model's accuracy (:func:`threats`): does the ranking by L∞ robustness carry over?"""
    out = []
    for col, label in threats().items():
        if col in table.columns and table[col].notna().sum() >= 2:
            out.append({"threat": label, **spearman(table["worst case"], table[col])})
    return pd.DataFrame(out, columns=["threat", "n", "rho", "ci_low", "ci_high"])


def measure_scatter(runs: Sequence[Results], names: Sequence[str]) -> Figure | None:
    """Each representation measure against worst-case robust accuracy, one point per model."""
    table = cross_model_table(runs, names)
    if table.empty:
        return None
    labels = compare_measures()
    cols = [c for c in labels if c in table.columns and table[c].notna().sum() >= 2 and table["worst case"].notna().any()]
    if not cols:
        return None
    # replicates of one architecture × recipe share a colour (the seeds are points of one kind)
    table = table.assign(_family=[family(r) for _, r in table.iterrows()])
    models = list(dict.fromkeys(table["_family"]))
    colours = F.palette(models)
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    run_marker = {n: markers[i % len(markers)] for i, n in enumerate(dict.fromkeys(table["run"]))}
    with F.theme():
        fig, axes = F.new_figure(len(cols), extra_w=2.6)
        for i, col in enumerate(cols):
            ax = axes[0, i]
            d = table[table[col].notna() & table["worst case"].notna()]
            for _, r in d.iterrows():
                err = [[r["worst case"] - r["worst ci_low"]], [r["worst ci_high"] - r["worst case"]]]
                ax.errorbar(r[col], r["worst case"], yerr=err, fmt=run_marker[r["run"]], color=colours[r["_family"]],
                            ms=5, capsize=2, lw=0.8)
            s = spearman(d[col], d["worst case"])
            rho = "ρ undefined" if not np.isfinite(s["rho"]) else (
                f"ρ = {s['rho']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]" if np.isfinite(s["ci_low"])
                else f"ρ = {s['rho']:.2f}")
            ax.set_title(f"{labels[col]}\nSpearman {rho}, n = {s['n']}", fontsize="small")
            ax.set_xlabel(labels[col])
        axes[0, 0].set_ylabel("worst-case robust accuracy")
        # matplotlib takes seconds to import; only drawing needs it
        from matplotlib.lines import Line2D

        handles = F.model_handles(models, colours) + [
            Line2D([], [], color="0.3", marker=mk, ls="", label=f"run {n}") for n, mk in run_marker.items()]
        F.legend(fig, handles)
    return fig

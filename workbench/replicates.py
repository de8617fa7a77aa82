"""Seeds as replicates: the ``replicates`` table.

A study with ``seed: [0, 1, 2]`` trains every architecture × recipe once per seed (the
models of one seed share initial weights and data order; :meth:`Study.models_trained`).
This module gathers, per architecture × recipe × measure, the value of every replicate
(with its per-example 95 % interval where the source table has one), how many seeds gave
a value, their mean and their sample standard deviation (ddof 1). The mean ± sd says how
much the measure moves when only the seed changes (initial weights, data order, attack
starts); the per-example interval says how much it would move on other test examples of
the same model. Neither contains the other (docs/statistics.md).

Measures: clean accuracy; the worst case at every norm and ε; every AutoAttack evaluation
(``detail`` is its attack label); the penultimate-layer Lipschitz ratio (δ_loss, every norm
and ε; ``detail`` the layer); γ and gradient alignment at every ε; the mean Gini sparsity
of each saliency method (``detail`` the method; interval: bootstrap over examples); linear
CKA to the pair's reference at the deepest layer before the logits (``detail`` the layer).

:func:`replicates_table` works on a run's tables (``results.load(run).tables``), so a
notebook gets the same table. A run of one seed has an empty table (same columns).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .registry import TableSchema
from .seeds import derive_seed
from .stages import TableStep, register_table_step
from .stats import bootstrap_interval
from .views import Detail, register_detail

COLUMNS = ["architecture", "recipe", "measure", "detail", "norm", "eps", "seed", "model", "value", "ci_low", "ci_high",
           "n_seeds", "mean", "sd"]
#: the table this module writes (collected by workbench.tables, after the significance table)
TABLES_REPLICATES: dict[str, TableSchema] = {
    "replicates": (
        "seeds as replicates (study `seed: [0, 1, 2]`): one row per architecture × recipe × measure × seed, with the "
        "mean and sample standard deviation across the seeds; empty for a study of one seed",
        {
            "architecture": "architecture label",
            "recipe": "recipe label",
            "measure": "`clean`, `worst_case`, `autoattack` (accuracies), `lipschitz_penultimate`, `gamma`, "
            "`grad_alignment`, `saliency_gini` or `cka_to_reference`",
            "detail": "AutoAttack: its attack label; Lipschitz ratio and CKA: the layer; saliency: the method; else empty",
            "norm": "`linf`, `l2`, or `none` (clean accuracy, saliency, CKA)",
            "eps": "ε (0 where the measure has none)",
            "seed": "the replicate's seed",
            "model": "the replicate's model id (`<architecture>/<recipe>/s<seed>`)",
            "value": "the measure for this replicate (accuracies as fractions)",
            "ci_low": "its 95% interval over examples, lower end (Wilson for accuracies, bootstrap otherwise; empty where "
            "the source table has none)",
            "ci_high": "upper end",
            "n_seeds": "seeds with a value for this architecture × recipe × measure (the same on each of its rows)",
            "mean": "mean of the values across those seeds",
            "sd": "sample standard deviation across those seeds (ddof 1; empty for one seed)",
        },
    ),
}
assert list(TABLES_REPLICATES["replicates"][1]) == COLUMNS

#: the measure rows per model (before grouping)
_MEASURE_COLUMNS = ["model", "measure", "detail", "norm", "eps", "value", "ci_low", "ci_high"]


def _ci(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col].astype(float) if col in df.columns else pd.Series(np.nan, index=df.index)


def _rows(df: pd.DataFrame, measure: str, detail, value: str = "mean") -> pd.DataFrame:
    out = pd.DataFrame({
        "model": df["model"].astype(str),
        "measure": measure,
        "detail": detail if isinstance(detail, pd.Series) else pd.Series(detail, index=df.index, dtype=object),
        "norm": df["norm"].astype(str) if "norm" in df.columns else "none",
        "eps": df["eps"].astype(float) if "eps" in df.columns else 0.0,
        "value": df[value].astype(float),
        "ci_low": _ci(df, "ci_low"),
        "ci_high": _ci(df, "ci_high"),
    })
    return out[_MEASURE_COLUMNS]


def _deepest(df: pd.DataFrame, layer: str, index: str) -> str | None:
    """The deepest layer other than the logits (the penultimate one when all layers are measured)."""
    d = df[df[layer] != "logits"]
    return None if d.empty else str(d.sort_values(index).iloc[-1][layer])


def model_measures(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per model × measure (see the module docstring): model, measure, detail, norm,
    eps, value and its per-example interval."""
    parts: list[pd.DataFrame] = []
    rob = tables.get("robustness")
    if rob is not None and len(rob):
        for method in ("clean", "worst_case", "autoattack"):
            d = rob[rob["method"] == method]
            if len(d):
                detail = d["attack"].astype(str) if method == "autoattack" else ""
                parts.append(_rows(d, method, detail, value="accuracy"))
    lip = tables.get("lipschitz")
    if lip is not None and len(lip):
        for m, d in lip[lip["kind"] == "loss"].groupby("model", sort=False):
            layer = _deepest(d, "layer", "layer_index")
            if layer is not None:
                parts.append(_rows(d[d["layer"] == layer], "lipschitz_penultimate", layer))
    lin = tables.get("linearity")
    if lin is not None and len(lin):
        for metric in ("gamma", "grad_alignment"):
            d = lin[lin["metric"] == metric].assign(norm="linf")
            if len(d):
                parts.append(_rows(d, metric, ""))
    sal = tables.get("saliency_metrics")
    if sal is not None and len(sal):
        rows = []
        for (m, method), d in sal.groupby(["model", "method"], sort=False):
            g = d["gini"].to_numpy(float)
            g = g[np.isfinite(g)]
            if not len(g):
                continue
            ci = bootstrap_interval(g, seed=derive_seed("replicates", "saliency_gini", str(m), str(method)))
            rows.append({"model": str(m), "measure": "saliency_gini", "detail": str(method), "norm": "none", "eps": 0.0,
                         "value": float(g.mean()), "ci_low": float(ci[0]), "ci_high": float(ci[1])})
        if rows:
            parts.append(pd.DataFrame(rows, columns=_MEASURE_COLUMNS))
    cka, pairs = tables.get("cka"), tables.get("pairs")
    if cka is not None and len(cka) and pairs is not None and len(pairs):
        for ref, m in zip(pairs["reference"].astype(str), pairs["model"].astype(str)):
            d = cka[(cka["model_a"] == ref) & (cka["model_b"] == m) & (cka["kind"] == "linear")
                    & (cka["layer_a"] == cka["layer_b"])]
            layer = _deepest(d, "layer_b", "layer_b_index")
            if layer is not None:
                d = d[d["layer_b"] == layer].assign(model=m, norm="none", eps=0.0)
                parts.append(_rows(d.iloc[:1], "cka_to_reference", layer, value="value"))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=_MEASURE_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def replicates_table(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The ``replicates`` table of a run's tables; empty (these columns) unless the ``models``
    table holds trained models of two or more seeds."""
    models = tables.get("models")
    empty = pd.DataFrame(columns=COLUMNS)
    if models is None or not len(models) or "seed" not in models.columns:
        return empty
    trained = models[(models["role"] != "loaded") & models["seed"].notna()]
    if trained["seed"].nunique() < 2:
        return empty
    info = trained.set_index(trained["model"].astype(str))[["architecture", "recipe", "seed"]]
    meas = model_measures(tables)
    meas = meas[meas["model"].isin(info.index)]
    if meas.empty:
        return empty
    df = meas.join(info, on="model")
    df["seed"] = df["seed"].astype(int)
    df["detail"] = df["detail"].fillna("").astype(str)
    df["eps"] = df["eps"].astype(float).round(12)  # one ε of a grid, written by the same code per seed
    keys = ["architecture", "recipe", "measure", "detail", "norm", "eps"]
    grouped = df.groupby(keys, sort=False)["value"]
    df["n_seeds"] = grouped.transform(lambda v: int(np.isfinite(v.to_numpy(float)).sum())).astype(int)
    df["mean"] = grouped.transform(lambda v: float(np.nanmean(v)) if np.isfinite(v.to_numpy(float)).any() else np.nan)
    df["sd"] = grouped.transform(
        lambda v: float(np.nanstd(v.to_numpy(float), ddof=1)) if np.isfinite(v.to_numpy(float)).sum() > 1 else np.nan)
    # rows of one group together, seeds in order; groups in the order they first appear
    df["_group"] = df.groupby(keys, sort=False).ngroup()
    df = df.sort_values(["_group", "seed"], kind="stable").drop(columns="_group")
    return df[COLUMNS].reset_index(drop=True)


class ReplicatesStep(TableStep):
    """The ``replicates`` table (empty for a run of one seed), after the paired tests."""

    name = "replicates"
    order = 20.0
    tables = TABLES_REPLICATES

    def run(self, tables, ctx):
        return {"replicates": replicates_table(tables)}


register_table_step(ReplicatesStep())


def mean_sd_text(mean: float, sd: float, n: int, *, percent: bool = False) -> str:
    """``91.2 ± 0.8 (5 seeds)``: the report's and compare's rendering of a replicate group."""
    if not np.isfinite(mean):
        return ""
    scale, digits = (100.0, ".1f") if percent else (1.0, ".3g")
    text = f"{scale * mean:{digits}}"
    if np.isfinite(sd):
        text += f" ± {scale * sd:{digits}}"
    return f"{text} ({n} seed{'s' if n != 1 else ''})"


#: how the report and compare name each measure
MEASURE_LABELS = {
    "clean": "clean accuracy (%)",
    "worst_case": "worst-case accuracy (%)",
    "autoattack": "AutoAttack accuracy (%)",
    "lipschitz_penultimate": "Lipschitz D, penultimate (δ_loss)",
    "gamma": "local linearity γ",
    "grad_alignment": "gradient alignment",
    "saliency_gini": "saliency Gini sparsity",
    "cka_to_reference": "linear CKA to the reference",
}
ACCURACIES = ("clean", "worst_case", "autoattack")


def _headline_eps(grid: pd.Series, norm: str, main_eps: float) -> float:
    """The summary's rule: the grid value closest to the main ε for L∞, the middle of the grid otherwise."""
    vals = sorted({float(v) for v in grid})
    if norm == "linf":
        return min(vals, key=lambda v: (abs(v - main_eps), v))
    return vals[len(vals) // 2]


def replicate_summary(rep: pd.DataFrame | None, main_eps: float) -> pd.DataFrame:
    """One row per architecture × recipe × measure at the summary's ε (see :func:`_headline_eps`):
    ``mean ± sd`` across seeds, then each seed's value with its per-example 95 % interval
    (accuracies in percent). Empty when ``rep`` has no rows."""
    if rep is None or not len(rep):
        return pd.DataFrame(columns=["model", "measure", "ε", "mean ± sd across seeds"])
    seeds = sorted({int(s) for s in rep["seed"]})
    rows = []
    keys = ["architecture", "recipe", "measure", "detail", "norm"]
    for key, d in rep.groupby(keys, sort=False):
        arch, recipe, measure, detail, norm = key
        eps = _headline_eps(d["eps"], norm, main_eps) if norm in ("linf", "l2") else 0.0
        d = d[np.isclose(d["eps"].astype(float), eps)]
        if d.empty:
            continue
        pct = measure in ACCURACIES
        label = MEASURE_LABELS.get(measure, measure) + (f" {detail}" if detail else "")
        if norm in ("linf", "l2"):
            label += " (L∞)" if norm == "linf" else " (L2)"
        first = d.iloc[0]
        row = {"model": f"{arch}/{recipe}", "measure": label, "ε": f"{eps:g}" if norm in ("linf", "l2") else "",
               "mean ± sd across seeds": mean_sd_text(float(first["mean"]), float(first["sd"]), int(first["n_seeds"]),
                                                      percent=pct)}
        for s in seeds:
            hit = d[d["seed"] == s]
            row[f"seed {s} [95% CI over examples]"] = "" if hit.empty else _value_text(hit.iloc[0], pct)
        rows.append(row)
    return pd.DataFrame(rows)


def _value_text(r: pd.Series, percent: bool) -> str:
    v, lo, hi = float(r["value"]), float(r["ci_low"]), float(r["ci_high"])
    if not np.isfinite(v):
        return ""
    scale, digits = (100.0, ".1f") if percent else (1.0, ".3g")
    text = f"{scale * v:{digits}}"
    if np.isfinite(lo) and np.isfinite(hi):
        text += f" [{scale * lo:{digits}}, {scale * hi:{digits}}]"
    return text

# in the report's summary: mean ± sd across seeds of each headline measure, with how to read it
register_detail(Detail("replicates", "summary", "", "replicates", formats=(("*", "text"),), open=True,
                       rows="workbench.evaluation.views:replicates_rows", id="replicates-table",
                       title="Replicates across seeds", notes="workbench.evaluation.views:replicates_notes"))

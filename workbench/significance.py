"""Paired tests between the models of each pair: the ``significance`` table.

The models of a study are scored on the same examples, so their differences are tested
pairwise (docs/statistics.md):

- accuracies (clean, and the worst case at every norm and ε): exact McNemar test on the
  per-example correctness; the interval of the difference is the paired Wald interval
  ``(c − b)/n ± z·√(b + c − (c − b)²/n)/n``;
- per-example representation measures, on the examples both models share: the saliency
  probe's Gini sparsity, infidelity and sensitivity of each method; the feature Lipschitz
  ratio at the penultimate layer (the deepest measured layer before the logits) for every
  norm, ε and kind of δ; γ and gradient alignment at every ε: the difference of means,
  tested by a sign-flip permutation test (exact for n ≤ 16), with a bootstrap interval;
- Holm's correction across every row of the run; ``significant`` is ``p_holm < 0.05``.

:func:`significance_table` works on a run's tables (``results.load(run).tables``), so a
notebook gets the same table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .registry import TableSchema
from .stages import TableStep, register_table_step
from .stats import discordant, holm, mcnemar, paired_test
from .views import Detail, Note, register_detail, register_note

ALPHA = 0.05
#: random sign vectors of the sign-flip test (and resamples of the bootstrap interval): its
#: p-value is at least 1/(1 + PAIRED_SAMPLES) above n = 16, and Holm's correction multiplies
#: the smallest by the number of rows (~50 on the quickstart), so 1,000 would leave no such
#: row significant past ~50 rows however large the difference
PAIRED_SAMPLES = 10_000
COLUMNS = ["reference", "model", "measure", "norm", "eps", "test", "n", "reference_value", "model_value", "difference",
           "ci_low", "ci_high", "b", "c", "p_value", "p_holm", "significant"]
#: the table this module writes (collected by workbench.tables, after every stage's: it reads them)
TABLES_SIGNIFICANCE: dict[str, TableSchema] = {
    "significance": (
        "paired tests between the models of each pair, Holm-corrected across all rows of a run",
        {
            "reference": "reference model id",
            "model": "paired model id",
            "measure": "`clean`, `worst_case` (accuracy, exact McNemar) or a representation measure (sign-flip test)",
            "norm": "norm (`none` for clean accuracy and the saliency metrics)",
            "eps": "ε (0 for clean and the saliency metrics)",
            "test": "`mcnemar` or `sign_flip` (paired permutation test of the mean difference)",
            "n": "paired examples",
            "reference_value": "the measure for the reference",
            "model_value": "the measure for the paired model",
            "difference": "model_value − reference_value",
            "ci_low": "95% interval of the difference, lower end (paired Wald for accuracies, percentile bootstrap otherwise)",
            "ci_high": "upper end",
            "b": "McNemar: examples only the reference gets right (empty for the sign-flip test)",
            "c": "McNemar: examples only the paired model gets right",
            "p_value": "two-sided p-value",
            "p_holm": "Holm-adjusted p-value across the run's comparisons",
            "significant": "p_holm < 0.05",
        },
    ),
}
assert list(TABLES_SIGNIFICANCE["significance"][1]) == COLUMNS
#: saliency_metrics columns compared per example
SALIENCY_MEASURES = ("gini", "infidelity", "sensitivity")
#: the linearity probe's per-example metrics, by their name in the table
LINEARITY_MEASURES = {"gamma": "local linearity γ (lower bound)", "grad_alignment": "gradient alignment"}


def _mean_row(ref: str, other: str, measure: str, norm: str, eps: float, x: np.ndarray, y: np.ndarray,
                   seed: int) -> dict:
    t = paired_test(x, y, samples=PAIRED_SAMPLES, permutations=PAIRED_SAMPLES, seed=seed)
    keep = np.isfinite(x) & np.isfinite(y)
    return {
        "reference": ref, "model": other, "measure": measure, "norm": norm, "eps": float(eps),
        "test": "sign_flip", "n": t["n"], "reference_value": float(x[keep].mean()) if keep.any() else math.nan,
        "model_value": float(y[keep].mean()) if keep.any() else math.nan, "difference": t["diff"],
        "ci_low": t["ci_low"], "ci_high": t["ci_high"], "b": np.nan, "c": np.nan, "p_value": t["p_value"],
    }


def _paired(d: pd.DataFrame, ref: str, other: str, keys: list[str], value: str) -> pd.DataFrame:
    """The two models' per-example values side by side, on the examples both have."""
    a, b = d[d["model"] == ref], d[d["model"] == other]
    return a[keys + ["index", value]].merge(b[keys + ["index", value]], on=keys + ["index"], suffixes=("_ref", "_model"))


def _lipschitz_rows(lpe: pd.DataFrame, ref: str, other: str, seed: int) -> list[dict]:
    """The feature Lipschitz ratio at the reference's penultimate layer (the deepest measured
    one before the logits, as the report's summary), per norm, ε and kind of δ."""
    d = lpe[(lpe["model"] == ref) & (lpe["layer"] != "logits")]
    if d.empty:
        return []
    layer = str(d["layer"].iloc[int(np.argmax(d["layer_index"].to_numpy()))])
    m = _paired(lpe[lpe["layer"] == layer], ref, other, ["norm", "eps", "kind"], "ratio")
    rows = []
    for (norm, eps, kind), g in m.groupby(["norm", "eps", "kind"], sort=False):
        x, y = g["ratio_ref"].to_numpy(float), g["ratio_model"].to_numpy(float)
        if np.isfinite(x).any():
            rows.append(_mean_row(ref, other, f"lipschitz {kind} ({layer})", str(norm), eps, x, y, seed))
    return rows


def _linearity_rows(lpe: pd.DataFrame, ref: str, other: str, seed: int) -> list[dict]:
    m = _paired(lpe, ref, other, ["metric", "eps"], "value")
    rows = []
    for (metric, eps), g in m.groupby(["metric", "eps"], sort=False):
        x, y = g["value_ref"].to_numpy(float), g["value_model"].to_numpy(float)
        if np.isfinite(x).any():
            rows.append(_mean_row(ref, other, LINEARITY_MEASURES.get(str(metric), str(metric)), "linf", eps, x, y, seed))
    return rows


def _accuracy_rows(pe: pd.DataFrame, ref: str, other: str) -> list[dict]:
    rows = []
    sel = pe[pe["attack"].isin(["clean", "worst_case"]) & pe["model"].isin([ref, other])]
    norm_col = "norm" if "norm" in sel.columns else None
    keys = ["attack", "eps"] + ([norm_col] if norm_col else [])
    for key, d in sel.groupby(keys, sort=False):
        attack, eps = key[0], float(key[1])
        norm = str(key[2]) if norm_col else ("none" if attack == "clean" else "")
        a = d[d["model"] == ref][["index", "correct"]]
        b_ = d[d["model"] == other][["index", "correct"]]
        m = a.merge(b_, on="index", suffixes=("_ref", "_model"))
        if m.empty:
            continue
        first, second = m["correct_ref"].to_numpy(bool), m["correct_model"].to_numpy(bool)
        b, c = discordant(first, second)
        n = len(m)
        diff = (c - b) / n
        se = math.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n
        rows.append({
            "reference": ref, "model": other, "measure": attack, "norm": norm, "eps": eps, "test": "mcnemar", "n": n,
            "reference_value": float(first.mean()), "model_value": float(second.mean()), "difference": diff,
            "ci_low": diff - 1.959964 * se, "ci_high": diff + 1.959964 * se, "b": b, "c": c, "p_value": mcnemar(b, c),
        })
    return rows


def _saliency_rows(sal: pd.DataFrame, ref: str, other: str, seed: int) -> list[dict]:
    rows = []
    for method, d in sal[sal["model"].isin([ref, other])].groupby("method", sort=False):
        a, b_ = d[d["model"] == ref], d[d["model"] == other]
        m = a.merge(b_, on="index", suffixes=("_ref", "_model"))
        for measure in SALIENCY_MEASURES:
            if f"{measure}_ref" not in m.columns:
                continue
            x, y = m[f"{measure}_ref"].to_numpy(float), m[f"{measure}_model"].to_numpy(float)
            if not np.isfinite(x).any():
                continue
            rows.append(_mean_row(ref, other, f"{measure} ({method})", "none", 0.0, x, y, seed))
    return rows


def significance_table(tables: Mapping[str, pd.DataFrame], pairs: Sequence[tuple[str, str, str]] | pd.DataFrame,
                       *, seed: int = 0) -> pd.DataFrame:
    """One row per pair × measure; ``pairs`` is ``study.pairs()`` or a run's ``pairs`` table."""
    if isinstance(pairs, pd.DataFrame):
        pairs = [(r["architecture"], r["reference"], r["model"]) for _, r in pairs.iterrows()]
    pe = tables.get("per_example")
    sal = tables.get("saliency_metrics")
    lip, lin = tables.get("lipschitz_per_example"), tables.get("linearity_per_example")
    rows: list[dict] = []
    for _, ref, other in pairs:
        if pe is not None and len(pe):
            rows += _accuracy_rows(pe, ref, other)
        if sal is not None and len(sal):
            rows += _saliency_rows(sal, ref, other, seed)
        if lip is not None and len(lip):
            rows += _lipschitz_rows(lip, ref, other, seed)
        if lin is not None and len(lin):
            rows += _linearity_rows(lin, ref, other, seed)
    df = pd.DataFrame(rows, columns=COLUMNS[:-2])
    df["p_holm"] = holm(df["p_value"].to_numpy(float)) if len(df) else []
    df["significant"] = df["p_holm"] < ALPHA
    return df[COLUMNS]


class SignificanceStep(TableStep):
    """The ``significance`` table, from every table the stages wrote and the study's pairs."""

    name = "significance"
    facts = ("pairs",)
    order = 10.0
    tables = TABLES_SIGNIFICANCE
    cached = True  # the sign-flip tests' permutations take seconds; a rerun reads them back

    def run(self, tables, ctx):
        return {"significance": significance_table(tables, ctx.pairs)}


register_table_step(SignificanceStep())


def describe(df: pd.DataFrame, limit: int = 12) -> list[str]:
    """Sentences naming the significant differences (for the report and compare)."""
    if df is None or df.empty:
        return []
    out = []
    sig = df[df["significant"]]
    for _, r in sig.head(limit).iterrows():
        what = r["measure"] if r["measure"] != "worst_case" else f"worst-case robust accuracy ({r['norm']} ε={r['eps']:g})"
        if r["measure"] == "clean":
            what = "clean accuracy"
        elif r["test"] != "mcnemar" and r["norm"] != "none":
            what = f"{r['measure']} ({r['norm']} ε={r['eps']:g})"
        if r["test"] == "mcnemar":
            delta = f"{100 * r['difference']:+.1f} points ({100 * r['reference_value']:.1f}% → {100 * r['model_value']:.1f}%)"
        else:
            delta = f"{r['difference']:+.3g} ({r['reference_value']:.3g} → {r['model_value']:.3g})"
        out.append(f"{r['model']} differs from {r['reference']} in {what}: {delta}, Holm-adjusted p = {r['p_holm']:.2g}.")
    if len(sig) > limit:
        out.append(f"… and {len(sig) - limit} more significant differences (table significance).")
    n_not = int((~df["significant"]).sum())
    if n_not:
        out.append(f"{n_not} of {len(df)} compared differences are not significant at {ALPHA:g} after Holm's correction.")
    return out

# in the report: the table in full under the robustness section, and its significant differences as a note
register_detail(Detail(
    "significance", "robustness", "Paired tests between the models of each pair (significance table; Holm-corrected)",
    "significance", formats=(("eps", "num"), ("reference_value", "num"), ("model_value", "num"), ("difference", "num"),
                             ("ci_low", "num"), ("ci_high", "num"), ("p_value", "num"), ("p_holm", "num")), order=20))
register_note(Note("significance", "workbench.evaluation.views:significance_note", order=60))

"""Intervals and paired tests of the representation measures (docs/statistics.md).

Per model, a proportion (the judge's agreement, its accuracy) gets a Wilson interval and a
mean of a per-example value (distance, SSIM, cosine) a percentile bootstrap interval.
Between the two models of a pair, measured on the same targets and seeds: McNemar on the
paired judge verdicts, the sign-flip test of the difference of means for per-example values
(:func:`workbench.stats.paired_test`);
Holm's correction runs over the rows of the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import stats

SUMMARY_COLUMNS = ["model", "task", "measure", "n", "value", "ci_low", "ci_high", "interval"]
TEST_COLUMNS = ["reference", "model", "task", "measure", "test", "n", "reference_value", "model_value", "difference",
                "ci_low", "ci_high", "b", "c", "p_value", "p_holm", "significant"]
#: random sign vectors of the paired test above n = 16 (a p-value is then at least 1/(1 + PAIRED_SAMPLES))
PAIRED_SAMPLES = 10_000


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int) -> dict[str, float]:
    """mean(b) − mean(a) on paired values: the sign-flip p-value and the bootstrap
    interval of :func:`workbench.stats.paired_test`."""
    return stats.paired_test(a, b, seed=seed, permutations=PAIRED_SAMPLES)


def proportion_row(model: str, task: str, measure: str, hits: np.ndarray) -> dict:
    hits = np.asarray(hits, dtype=bool)
    n, k = len(hits), int(hits.sum())
    lo, hi = stats.wilson_interval(k, n) if n else (math.nan, math.nan)
    return {"model": model, "task": task, "measure": measure, "n": n, "value": k / n if n else math.nan,
            "ci_low": lo, "ci_high": hi, "interval": "wilson"}


def mean_row(model: str, task: str, measure: str, values: np.ndarray, seed: int) -> dict:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = stats.bootstrap_interval(v, seed=seed)
    return {"model": model, "task": task, "measure": measure, "n": len(v), "value": float(v.mean()) if len(v) else math.nan,
            "ci_low": lo, "ci_high": hi, "interval": "bootstrap"}


def _paired_frame(pe: pd.DataFrame, ref: str, other: str, task: str, value: str) -> pd.DataFrame:
    keys = ["item"]
    a = pe[(pe["model"] == ref) & (pe["task"] == task)][keys + [value]]
    b = pe[(pe["model"] == other) & (pe["task"] == task)][keys + [value]]
    return a.merge(b, on=keys, suffixes=("_ref", "_model"))


def mcnemar_row(pe: pd.DataFrame, ref: str, other: str, task: str, measure: str, value: str) -> dict | None:
    m = _paired_frame(pe, ref, other, task, value)
    if m.empty:
        return None
    first, second = m[f"{value}_ref"].to_numpy(bool), m[f"{value}_model"].to_numpy(bool)
    b, c = stats.discordant(first, second)
    n = len(m)
    diff = (c - b) / n
    se = math.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n
    z = 1.959964
    return {"reference": ref, "model": other, "task": task, "measure": measure, "test": "mcnemar", "n": n,
            "reference_value": float(first.mean()), "model_value": float(second.mean()), "difference": diff,
            "ci_low": diff - z * se, "ci_high": diff + z * se, "b": b, "c": c, "p_value": stats.mcnemar(b, c)}


def mean_test_row(pe: pd.DataFrame, ref: str, other: str, task: str, measure: str, value: str, seed: int) -> dict | None:
    m = _paired_frame(pe, ref, other, task, value)
    if m.empty:
        return None
    x, y = m[f"{value}_ref"].to_numpy(float), m[f"{value}_model"].to_numpy(float)
    t = paired_difference(x, y, seed)
    keep = np.isfinite(x) & np.isfinite(y)
    return {"reference": ref, "model": other, "task": task, "measure": measure, "test": "sign_flip", "n": t["n"],
            "reference_value": float(x[keep].mean()) if keep.any() else math.nan,
            "model_value": float(y[keep].mean()) if keep.any() else math.nan, "difference": t["diff"],
            "ci_low": t["ci_low"], "ci_high": t["ci_high"], "b": np.nan, "c": np.nan, "p_value": t["p_value"]}


def tests_frame(rows: Sequence[dict | None]) -> pd.DataFrame:
    df = pd.DataFrame([r for r in rows if r is not None], columns=TEST_COLUMNS[:-2])
    df["p_holm"] = stats.holm(df["p_value"].to_numpy(float)) if len(df) else []
    df["significant"] = df["p_holm"] < 0.05
    return df[TEST_COLUMNS]

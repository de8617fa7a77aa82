"""How the report and ``workbench compare`` show the built-in probes' tables: the per-model
numbers they register (:mod:`workbench.views`) as summary columns and as the measures
compare correlates with robust accuracy, and their notes. Named by ``"module:function"``
and imported when the report is built, so editing them changes no probe's cache key.
(Imported with the probes package like every module here; it registers nothing.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..present import closest, eps_label, grid_eps, model_order, penultimate_layers


def _at(df: pd.DataFrame, **eq: Any) -> pd.DataFrame:
    for k, v in eq.items():
        df = df[np.isclose(df[k], v)] if isinstance(v, float) else df[df[k] == v]
    return df


def _first(df: pd.DataFrame, col: str) -> float:
    return float(df[col].iloc[0]) if len(df) else np.nan


# --------------------------------------------------------------------------- lipschitz


def _penultimate_lipschitz(res: Any) -> tuple[pd.DataFrame | None, dict]:
    """The lipschitz rows (L∞, δ_loss, at the grid ε closest to the main ε) and each model's penultimate layer."""
    lip = res.get("lipschitz")
    if lip is None:
        return None, {}
    e = grid_eps(lip, "linf", res.study.main_eps())
    if e is None:
        return None, {}
    lip_d = _at(lip, norm="linf", kind="loss", eps=e)
    return lip_d, penultimate_layers(lip_d)


def lipschitz_summary(res: Any) -> tuple[str, dict[str, float]]:
    """The summary column of the lipschitz probe: D at the penultimate layer (δ_loss, L∞, at the
    grid ε closest to the main ε), with the label naming the layer and ε."""
    lip = res.get("lipschitz")
    label = "Lipschitz D, penultimate layer (δ_loss, L∞)"
    values: dict[str, float] = {}
    if lip is not None:
        eps = grid_eps(lip, "linf", res.study.main_eps())
        if eps is not None:
            d = lip[(lip["norm"] == "linf") & (lip["kind"] == "loss") & np.isclose(lip["eps"], eps)]
            layers = penultimate_layers(d)
            names = sorted({layer for layer, _ in layers.values()})
            label = f"Lipschitz D at {', '.join(names) or 'penultimate layer'} (δ_loss, L∞ ε={eps_label(eps)})"
            for m, (layer, _) in layers.items():
                values[m] = float(d.loc[(d["model"] == m) & (d["layer"] == layer), "mean"].iloc[0])
    return label, values


def lipschitz_note(res: Any) -> list[str]:
    if res.get("lipschitz") is None:
        return ["Lipschitz ratio: the lipschitz probe was not run for this study."]
    return ["Lipschitz D = ‖φ(x+δ) − φ(x)‖₂ / ‖δ‖∞ at the deepest measured layer before the logits (the penultimate "
            "layer when the probe covers all layers), δ from PGD on the cross-entropy; lower means a more stable "
            "representation."]


def lipschitz_penultimate(res: Any) -> dict[str, float]:
    lip_d, pen = _penultimate_lipschitz(res)
    return {m: _first(lip_d[(lip_d["model"] == m) & (lip_d["layer"] == pen[m][0])], "mean") for m in pen} \
        if lip_d is not None else {}


# --------------------------------------------------------------------------- linearity, saliency, cka


def _linearity_metric(res: Any, metric: str) -> dict[str, float]:
    lin = res.get("linearity")
    if lin is None or not len(lin):
        return {}
    e = closest(lin["eps"], res.study.main_eps())
    return {m: _first(_at(lin, model=m, metric=metric, eps=e), "mean") for m in model_order(res.tables)}


def gamma(res: Any) -> dict[str, float]:
    return _linearity_metric(res, "gamma")


def grad_alignment(res: Any) -> dict[str, float]:
    return _linearity_metric(res, "grad_alignment")


def saliency_gini(res: Any) -> dict[str, float]:
    sal = res.get("saliency_metrics")
    if sal is None or not len(sal):
        return {}
    return {m: float(sal[(sal["model"] == m) & (sal["method"] == "saliency")]["gini"].mean())
            for m in model_order(res.tables)}


def cka_to_reference(res: Any) -> dict[str, float]:
    cka, pairs = res.get("cka"), res.get("pairs")
    if cka is None or not len(cka) or pairs is None or not len(pairs):
        return {}
    _, pen = _penultimate_lipschitz(res)  # the penultimate layer the Lipschitz ratio names
    out = {}
    for m, ref in zip(pairs["model"], pairs["reference"]):
        if m in pen:
            layer = pen[m][0]
            out[m] = _first(cka[(cka["model_a"] == ref) & (cka["model_b"] == m) & (cka["kind"] == "linear")
                                & (cka["layer_a"] == layer) & (cka["layer_b"] == layer)], "value")
    return out


# --------------------------------------------------------------------------- corruptions


def corruption_accuracy(res: Any) -> dict[str, float]:
    """Each model's mean accuracy under the common corruptions (compare's ``corruptions`` threat column)."""
    ce = res.get("corruption_errors")
    if ce is None or not len(ce):
        return {}
    return {m: _first(ce[(ce["model"] == m) & (ce["corruption"] == "mean")], "accuracy") for m in model_order(res.tables)}

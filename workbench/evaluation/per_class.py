"""Per-class robust accuracy and the confusion of adversarial predictions.

Both are derived from the ``per_example`` table (which carries each example's label and the
prediction at the clean or adversarial input) once the worst case is in it, so they cost no
forward pass:

- ``per_class``: model × attack × ε × true class → accuracy with its 95% Wilson interval, for
  clean accuracy, every attack and the per-example worst case. Weighted by the class counts,
  the accuracies of a setting give its overall accuracy in ``robustness``.
- ``adversarial_confusion``: model × attack × ε × true class × predicted class → count, at the
  main ε (L∞) for every attack and the worst case, and clean (ε 0); nonzero cells only. The
  diagonal is the robust count; a row sums to the class's examples. A worst-case example that
  only an attack recording no prediction broke (the soundness checks' extra attacks, the APGD
  cascade) is predicted ``-1`` (``unrecorded``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..registry import TableSchema
from ..stages import TableStep, register_table_step
from ..stats import wilson_interval
from ..views import FigureSpec, register_figure

#: the predicted class of a worst-case example broken only by attacks that record no prediction
UNRECORDED = -1

TABLES_PER_CLASS: dict[str, TableSchema] = {
    "per_class": (
        "accuracy per true class: model × attack × ε × class (clean: attack `clean`, ε 0; and the worst case)",
        {
            "model": "model id",
            "attack": "attack label, `clean` or `worst_case`",
            "norm": "`linf`, `l2`, … or `none` (clean)",
            "eps": "ε",
            "label": "true class (index)",
            "class": "the class's name (its index when the data set names none)",
            "n": "examples of the class evaluated",
            "correct": "of those, classified correctly at the (adversarial) input",
            "accuracy": "correct / n",
            "ci_low": "lower end of the 95% Wilson interval of the accuracy",
            "ci_high": "upper end of the 95% Wilson interval of the accuracy",
        },
    ),
    "adversarial_confusion": (
        "true class × predicted class at the adversarial inputs: model × attack at the main ε (L∞; every attack and "
        "the worst case) and clean; nonzero cells",
        {
            "model": "model id",
            "attack": "attack label, `clean` or `worst_case`",
            "norm": "norm (`none` for clean)",
            "eps": "ε (the main ε; 0 for clean)",
            "label": "true class (index)",
            "class": "its name",
            "prediction": "predicted class (index; -1: a worst-case example broken only by attacks that record no "
            "prediction)",
            "predicted_class": "its name (`unrecorded` for -1)",
            "count": "examples",
        },
    ),
}


def _names(classes, labels) -> dict[int, str]:
    out = {int(k): (str(classes[k]) if classes is not None and 0 <= int(k) < len(classes) else str(int(k)))
           for k in labels}
    out[UNRECORDED] = "unrecorded"
    return out


def per_class_table(per_example: pd.DataFrame, classes=None) -> pd.DataFrame:
    """The ``per_class`` table of a ``per_example`` table (with ``label``)."""
    cols = list(TABLES_PER_CLASS["per_class"][1])
    if per_example is None or not len(per_example) or "label" not in per_example.columns:
        return pd.DataFrame(columns=cols)
    pe = per_example.dropna(subset=["label"])
    g = (pe.assign(label=pe["label"].astype(np.int64), correct=pe["correct"].astype(bool))
         .groupby(["model", "attack", "norm", "eps", "label"], sort=False)["correct"].agg(["size", "sum"]).reset_index()
         .rename(columns={"size": "n", "sum": "correct"}))
    g["correct"] = g["correct"].astype(np.int64)
    g["accuracy"] = g["correct"] / g["n"]
    ci = [wilson_interval(int(k), int(n)) for k, n in zip(g["correct"], g["n"])]
    g["ci_low"] = [float(lo) for lo, _ in ci]
    g["ci_high"] = [float(hi) for _, hi in ci]
    names = _names(classes, g["label"].unique())
    g["class"] = g["label"].map(names)
    return g.sort_values(["model", "attack", "norm", "eps", "label"], kind="stable")[cols].reset_index(drop=True)


def confusion_table(per_example: pd.DataFrame, main_eps: float | None, classes=None) -> pd.DataFrame:
    """The ``adversarial_confusion`` table: clean, and every attack at (L∞, ``main_eps``)."""
    cols = list(TABLES_PER_CLASS["adversarial_confusion"][1])
    if per_example is None or not len(per_example) or "prediction" not in per_example.columns:
        return pd.DataFrame(columns=cols)
    pe = per_example.dropna(subset=["label", "prediction"])
    at_main = (pe["norm"] == "linf") & np.isclose(pe["eps"].astype(float), float(main_eps)) if main_eps else False
    pe = pe[(pe["attack"] == "clean") | at_main]
    if not len(pe):
        return pd.DataFrame(columns=cols)
    pe = pe.assign(label=pe["label"].astype(np.int64), prediction=pe["prediction"].astype(np.int64))
    g = pe.groupby(["model", "attack", "norm", "eps", "label", "prediction"], sort=False).size().reset_index(name="count")
    names = _names(classes, np.union1d(g["label"].unique(), g["prediction"].unique()))
    g["class"] = g["label"].map(names)
    g["predicted_class"] = g["prediction"].map(names)
    return g.sort_values(["model", "attack", "norm", "eps", "label", "prediction"], kind="stable")[cols].reset_index(drop=True)


class PerClassStep(TableStep):
    """``per_class`` and ``adversarial_confusion`` from ``per_example`` (after the worst case)."""

    name = "per_class"
    facts = ("main_eps", "data")  # data: the class names
    order = 0.5  # after the worst case (0), which adds its per-example rows
    tables = TABLES_PER_CLASS

    def run(self, tables, ctx):
        pe = tables.get("per_example")
        if pe is None or not len(pe) or "label" not in pe.columns:
            return {}
        classes = getattr(ctx.data, "classes", None)
        return {"per_class": per_class_table(pe, classes), "adversarial_confusion": confusion_table(pe, ctx.main_eps, classes)}


register_table_step(PerClassStep())

register_figure(FigureSpec(
    "per_class_accuracy",
    "Accuracy per class",
    "Each bar is one model's accuracy on the test examples of one class, clean (left) and under the per-example worst "
        "case at the main ε (right), with 95% Wilson intervals: robustness is rarely uniform across classes, and a "
        "class far below the others is where a model's robust accuracy is lost.",
    "robustness",
    "workbench.report.class_figures:per_class_accuracy",
    ("per_class",),
    order=5))

register_figure(FigureSpec(
    "adversarial_confusion",
    "Where adversarial examples go",
    "One panel per model: rows are the true class, columns the class predicted under the per-example worst case at "
        "the main ε; each row is normalised to the class's examples (the number is the count), so the diagonal is the "
        "class's robust accuracy and the bright cells off it are the classes attacks push examples into.",
    "robustness",
    "workbench.report.class_figures:adversarial_confusion",
    ("adversarial_confusion",),
    order=6))

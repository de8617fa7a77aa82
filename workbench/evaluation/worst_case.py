"""The per-example worst case: the headline robust accuracy.

For every model, norm and ε that the evaluation attacked, an example counts as robust only
if it is classified correctly clean and under **every** white-box attack run on it at that
norm and ε: the evaluation's attacks on all examples, and the soundness checks' extra
attacks (the reference rerun, more steps, more restarts, the margin loss, FGSM) on their
subset. Random noise and transferred examples are not white-box attacks and do not count.
The worst case is therefore at or below the accuracy of every single attack (tested), and
its loss per example is the highest any of those attacks reached.

Rows carry ``attack == method == "worst_case"``, ``loss == "any"``, steps and restarts 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..stages import TableStep, register_table_step
from .robustness import accuracy_interval

WORST = "worst_case"


def _key(eps: float) -> float:
    return round(float(eps), 12)


def worst_case(
    robustness: pd.DataFrame, per_example: pd.DataFrame, extra: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(robustness rows, per_example rows) of the worst case.

    ``robustness``/``per_example`` are the evaluation's tables; ``extra`` holds more
    per-example outcomes (columns model, norm, eps, index, correct, loss), such as the
    soundness checks' attacks; only (model, norm, ε) settings the evaluation attacked get a
    row, and an extra outcome counts only on the examples it was run on."""
    rob = robustness[(robustness["attack"] != "clean") & (robustness["method"] != WORST)]
    if rob.empty or per_example is None or per_example.empty:
        return robustness.iloc[0:0].copy(), per_example.iloc[0:0].copy() if per_example is not None else pd.DataFrame()
    norms = dict(zip(zip(rob["model"], rob["attack"]), rob["norm"]))
    pe = per_example[per_example["attack"] != WORST]
    rows, pe_rows = [], []
    for mid, dm in pe.groupby("model", sort=False):
        clean = dm[dm["attack"] == "clean"]
        if clean.empty:
            continue
        index = clean["index"].to_numpy()
        pos = pd.Index(index)
        base_ok = clean["correct"].to_numpy(dtype=bool)
        base_loss = clean["loss"].to_numpy(dtype=float)
        settings: dict[tuple[str, float], list[pd.DataFrame]] = {}
        for (attack, eps), d in dm[dm["attack"] != "clean"].groupby(["attack", "eps"], sort=False):
            norm = norms.get((mid, attack))
            if norm is not None:
                settings.setdefault((str(norm), _key(eps)), []).append(d)
        if extra is not None and len(extra):
            ex = extra[extra["model"] == mid]
            for (norm, eps), d in ex.groupby(["norm", "eps"], sort=False):
                if (str(norm), _key(eps)) in settings:
                    settings[(str(norm), _key(eps))].append(d)
        for (norm, eps), parts in settings.items():
            ok, loss = base_ok.copy(), base_loss.copy()
            for d in parts:
                at = pos.get_indexer(d["index"].to_numpy())
                if (at < 0).any():
                    raise KeyError(f"{mid}: examples {d['index'].to_numpy()[at < 0][:5].tolist()} have no clean outcome")
                # unbuffered: one part may hold several attacks on the same example
                np.logical_and.at(ok, at, d["correct"].to_numpy(dtype=bool))
                np.maximum.at(loss, at, d["loss"].to_numpy(dtype=float))
            n = len(ok)
            rows.append({
                "model": mid, "attack": WORST, "method": WORST, "norm": norm, "loss": "any", "steps": 0,
                "restarts": 0, "eps": float(eps), "n": n, "accuracy": float(ok.mean()) if n else float("nan"),
                **accuracy_interval(int(ok.sum()), n), "adv_risk": float(loss.mean()) if n else float("nan"),
                "seconds": 0.0,
            })
            pe_rows.append(pd.DataFrame({"model": mid, "attack": WORST, "norm": norm, "eps": float(eps),
                                         "index": index, "correct": ok, "loss": loss}))
    rob_out = pd.DataFrame(rows, columns=list(robustness.columns)) if rows else robustness.iloc[0:0].copy()
    pe_out = pd.concat(pe_rows, ignore_index=True) if pe_rows else per_example.iloc[0:0].copy()
    return rob_out, pe_out


def with_worst_case(
    robustness: pd.DataFrame, per_example: pd.DataFrame, extra: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tables with the worst-case rows appended (any earlier ones replaced)."""
    rob = robustness[robustness["attack"] != WORST]
    pe = per_example[per_example["attack"] != WORST] if len(per_example) else per_example
    w_rob, w_pe = worst_case(rob, pe, extra)
    if len(w_rob):
        rob = pd.concat([rob, w_rob], ignore_index=True)
        pe = pd.concat([pe, w_pe], ignore_index=True)
    return rob, pe


class WorstCaseStep(TableStep):
    """Appends the worst-case rows to ``robustness`` and ``per_example`` (the soundness
    checks' per-example outcomes count when the checks ran)."""

    name = "worst_case"
    order = 0.0  # first: the paired tests and the replicates read the worst case

    def run(self, tables, ctx):
        if "robustness" not in tables:
            return {}
        rob, pe = with_worst_case(tables["robustness"], tables["per_example"], tables.get("soundness_per_example"))
        return {"robustness": rob, "per_example": pe}


register_table_step(WorstCaseStep())

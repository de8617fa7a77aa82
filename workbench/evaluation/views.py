"""How the report shows the evaluation's tables: the summary's accuracy columns (clean, the
worst case per norm, each attack), its notes, the soundness verdicts and banner, and the
paired tests' note. Registered by the modules that write the tables (robustness.py,
worst_case.py, soundness.py, and the table steps over them: significance.py, replicates.py) through :mod:`workbench.views` and imported
only when the report is built, so editing this text changes no evaluation cache key (the
imports below go the other way: the report imports the components anyway)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..present import NORM_LABEL, eps_label, headline_warnings, model_order, robust_eps
from ..replicates import replicate_summary
from ..significance import describe
from .soundness import VERDICT_HELD, VERDICT_OK, VERDICT_WARN
from .worst_case import MISSING

WORST = "worst_case"

Columns = list[tuple[str, dict[str, Any], str]]


def _interval_text(d: pd.DataFrame, m: str) -> str:
    hit = d[d["model"] == m]
    if hit.empty or "ci_low" not in hit.columns:
        return ""
    return f"[{100 * float(hit['ci_low'].iloc[0]):.1f}, {100 * float(hit['ci_high'].iloc[0]):.1f}]"


def clean_columns(res: Any) -> Columns:
    """Clean accuracy and its 95% Wilson interval."""
    rob = res.get("robustness")
    if rob is None:
        return []
    models = model_order(res.tables)
    rows = rob[rob["attack"] == "clean"]
    acc = rows.groupby("model")["accuracy"].first()
    return [("clean accuracy (%)", {m: acc.get(m, np.nan) for m in models}, "pct"),
            ("clean 95% CI", {m: _interval_text(rows, m) for m in models}, "text")]


def worst_case_columns(res: Any) -> Columns:
    """The headline: per-example worst case over every white-box attack, one column per norm (and its interval)."""
    rob = res.get("robustness")
    if rob is None:
        return []
    models, main_eps = model_order(res.tables), res.study.main_eps()
    out: Columns = []
    for norm in [n for n in ("linf", "l2", "l1", "spatial") if ((rob["attack"] == WORST) & (rob["norm"] == n)).any()]:
        eps = robust_eps(rob, WORST, main_eps, norm)
        d = rob[(rob["attack"] == WORST) & (rob["norm"] == norm) & np.isclose(rob["eps"], eps)]
        label = f"worst case (%) {NORM_LABEL.get(norm, norm)} ε={eps_label(eps)}"
        acc = d.groupby("model")["accuracy"].first()
        out += [(label, {m: acc.get(m, np.nan) for m in models}, "pct"),
                (f"{label} 95% CI", {m: _interval_text(d, m) for m in models}, "text")]
    return out


def attack_columns(res: Any) -> Columns:
    """Each evaluation attack's robust accuracy at the summary's ε."""
    rob = res.get("robustness")
    if rob is None:
        return []
    models, main_eps = model_order(res.tables), res.study.main_eps()
    out: Columns = []
    for attack in rob.loc[~rob["attack"].isin(["clean", WORST]), "attack"].drop_duplicates():
        eps = robust_eps(rob, attack, main_eps)
        if eps is None:
            continue
        d = rob[(rob["attack"] == attack) & np.isclose(rob["eps"], eps)]
        norm = str(d["norm"].iloc[0])
        acc = d.groupby("model")["accuracy"].first()
        out.append((f"{attack} (%) {NORM_LABEL.get(norm, norm)} ε={eps_label(eps)}",
                    {m: acc.get(m, np.nan) for m in models}, "pct"))
    return out


def accuracy_note(res: Any) -> list[str]:
    rob = res.get("robustness")
    if rob is None:
        return []
    n = sorted({int(v) for v in rob["n"]})
    return [f"Accuracies are percentages of {' / '.join(map(str, n))} evaluated test examples; the bracketed ranges are "
            "95% Wilson intervals (the robustness table has them for every attack: ci_low, ci_high)."]


def worst_case_note(res: Any) -> list[str]:
    return ["Worst case: an example counts as robust only if it is classified correctly clean and under every white-box "
            "attack run on it at that norm and ε, the soundness checks' attacks and the AutoAttack cascade included; it is at "
            "or below every single attack's accuracy."]


def main_eps_note(res: Any) -> list[str]:
    return [f"Robust accuracy is white-box accuracy at the main ε = {eps_label(res.study.main_eps())} (evaluation.main_eps, "
            "else the training ε of the first L∞-adversarial recipe). An L∞ attack not evaluated at that ε shows its "
            "evaluated ε closest to it; an L2 attack shows the middle value of its own ε grid, since an L∞ radius has no "
            "meaning in L2. Each column header gives the ε used."]


def cascade_note(res: Any) -> list[str]:
    """What the worst case's AutoAttack cascade did, or that it is missing (never silently absent)."""
    cas = res.get("worst_case_cascade")
    if cas is None:
        return ["AutoAttack: the worst case has no AutoAttack cascade in this run (evaluation.worst_case.apgd: "
                "false, or a run older than it): it may overstate robustness, most of all at L2."]
    if (cas["status"] == MISSING).any():
        return ["AutoAttack: the pyautoattack package is missing, so the worst case holds no APGD, FAB-T or Square "
                "(pip install pyautoattack); it may overstate robustness, most of all at L2."]
    ran = cas[cas["status"] == "ran"]
    order = list(dict.fromkeys(cas["attack"]))
    broke = ", ".join(f"{a} {int(d['broken'].sum())}" for a, d in ran.groupby("attack", sort=False))
    other = cas[cas["status"] != "ran"]
    skipped = f" Not run: {'; '.join(sorted(set(other['status'])))}." if len(other) else ""
    return [f"AutoAttack cascade (its authors' code: {', '.join(order)}): at every norm and ε, each attack ran on the "
            "examples every evaluation attack and the earlier ones left robust; examples they broke, summed over "
            f"models, norms and ε: {broke or 'none'} (table worst_case_cascade).{skipped}"]


def significance_note(res: Any) -> list[str]:
    sig = res.get("significance")
    if sig is None or not len(sig):
        return []
    return ["Paired tests (exact McNemar on per-example correctness for accuracies, sign-flip permutation test for the "
            "representation measures (penultimate-layer Lipschitz ratio, γ, gradient alignment, saliency metrics); "
            "Holm-corrected across the run's comparisons): " + " ".join(describe(sig))]


def verdicts(df: pd.DataFrame) -> dict[str, str]:
    """model -> ``"robustness may be overestimated"`` if a warning of its checks applies to
    the worst case, ``"sound worst case; single attacks overestimate"`` if it has warnings but
    none does, else ``"sound"``."""
    head = headline_warnings(df)
    return {str(m): VERDICT_WARN if head[d.index].any() else VERDICT_HELD if (d["status"] == "warn").any() else VERDICT_OK
            for m, d in df.groupby("model", sort=False)}


def soundness_summary(res: Any) -> tuple[str, dict[str, str]]:
    """The summary column of the soundness checks: each model's verdict."""
    snd = res.get("soundness")
    return "soundness", verdicts(snd) if snd is not None else {}


def soundness_note(res: Any) -> list[str]:
    if res.get("soundness") is None:
        return ["Soundness: the checks were not run (evaluation.soundness.enabled: false)."]
    return [f"Soundness: “{VERDICT_WARN}” when a warning of that model's checks applies to its worst case; "
            f"“{VERDICT_HELD}” when every warning is an attack comparison (more steps, more restarts, the margin loss) "
            "whose stronger attack the worst case already holds, its other attacks breaking what that one breaks "
            "(see Soundness below)."]


def soundness_banner(res: Any) -> list[tuple[str, str]]:
    snd = res.get("soundness")
    if snd is None:
        return []
    warn = snd[snd["status"] == "warn"]
    if warn.empty:
        return [("ok", "Every soundness check passes for every model.")]
    head = headline_warnings(snd)
    out = []
    parts = [f"{m} ({', '.join(map(str, d['check']))})" for m, d in snd[head].groupby("model", sort=False)]
    if parts:
        out.append(("warn", "Robust accuracy may be overestimated for: " + "; ".join(parts) + "."))
    held = snd[(snd["status"] == "warn") & ~head]
    parts = [f"{m} ({', '.join(map(str, d['check']))})" for m, d in held.groupby("model", sort=False)]
    if parts:
        out.append(("ok", "Single attacks overestimate, the worst case does not: " + "; ".join(parts) + ". A stronger "
                    "attack beat the reference, but the worst case holds it, and its other attacks (AutoAttack's "
                    "included) break what it breaks."))
    return out


def soundness_rows(res: Any, snd: pd.DataFrame) -> pd.DataFrame:
    """The soundness table in model order."""
    order = {m: i for i, m in enumerate(model_order(res.tables))}
    return snd.assign(_o=snd["model"].map(lambda m: order.get(m, 99))).sort_values("_o", kind="stable").drop(columns="_o")


def replicates_rows(res: Any, rep: pd.DataFrame) -> pd.DataFrame:
    """The replicates table at the summary's ε, one row per model × measure (mean ± sd across seeds)."""
    return replicate_summary(rep, res.study.main_eps())


def replicates_notes(res: Any) -> list[str]:
    seeds = ", ".join(map(str, res.study.seeds))
    return [
        f"Every model was trained once per seed ({seeds}): the models of one seed share initial weights and data order, "
        "and pairs (and their paired tests) stay within a seed. The data split and the evaluation and probe examples "
        f"are those of the first seed ({res.study.seed}), the same for every replicate.",
        "mean ± sd: the mean over the seeds and the sample standard deviation (n − 1) across them: how much the measure "
        "moves when only the seed changes. The bracket after each seed's value is that model's 95% interval over test "
        "examples (Wilson for accuracies, bootstrap otherwise): how much it would move on other examples. An sd much "
        "smaller than the intervals says the examples, not the training seed, dominate the uncertainty. Table "
        "replicates has every measure at every ε.",
    ]


def _worst_at(res: Any, norm: str) -> Columns:
    """The worst case at ``norm`` and the ε it is read at (compare's threat columns ``worst <norm>``)."""
    rob = res.get("robustness")
    e = None
    if rob is not None and ((rob["attack"] == WORST) & (rob["norm"] == norm)).any():
        e = robust_eps(rob, WORST, res.study.main_eps(), norm)
    acc: dict[str, Any] = {}
    if e is not None:
        d = rob[(rob["attack"] == WORST) & (rob["norm"] == norm) & np.isclose(rob["eps"], e)]
        acc = {str(m): float(g["accuracy"].iloc[0]) for m, g in d.groupby("model", sort=False)}
    models = model_order(res.tables)
    return [(f"worst {norm}", acc, "pct"), (f"worst {norm} ε", {m: e for m in models} if e is not None else {}, "num")]


def worst_l2(res: Any) -> Columns:
    return _worst_at(res, "l2")


def worst_l1(res: Any) -> Columns:
    return _worst_at(res, "l1")


def worst_spatial(res: Any) -> Columns:
    return _worst_at(res, "spatial")


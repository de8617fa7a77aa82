"""Whether a soundness warning applies to the worst case (issue 19): an attack comparison
(``more_steps``, ``more_restarts``, ``margin_vs_ce``) that warns says the reference attack is
weak; it applies to the worst case only when its stronger attack breaks examples that no other
attack of the worst case (the evaluation's, the other checks', AutoAttack's cascade) breaks."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from workbench.evaluation.soundness import VERDICT_HELD, VERDICT_OK, VERDICT_WARN, SoundnessConfig, WorstCaseReach
from workbench.evaluation.views import verdicts
from workbench.present import headline_warnings
from workbench.evaluation.worst_case import with_worst_case
from workbench.stages import TABLE_STEPS, table_steps

N = 200
M = "m/pgd_at"


def _tables(cascade_breaks: np.ndarray | None, more_steps_breaks: np.ndarray, other_warn: bool = False):
    """One model, 200 examples all correct clean; the evaluation's PGD breaks 0–99; the check's
    reference rerun breaks the same, its PGD with more steps also ``more_steps_breaks``; the
    cascade (when given) breaks ``cascade_breaks`` of those the evaluation left."""
    idx = np.arange(N)
    ok = lambda broken: ~np.isin(idx, broken)  # noqa: E731
    rob = pd.DataFrame([
        {"model": M, "attack": "clean", "method": "clean", "norm": "none", "loss": "ce", "steps": 0, "restarts": 0,
         "eps": 0.0, "n": N, "accuracy": 1.0, "ci_low": 0.98, "ci_high": 1.0, "adv_risk": 0.0, "seconds": 0.0},
        {"model": M, "attack": "pgd10-linf", "method": "pgd", "norm": "linf", "loss": "ce", "steps": 10, "restarts": 1,
         "eps": 0.1, "n": N, "accuracy": 0.5, "ci_low": 0.43, "ci_high": 0.57, "adv_risk": 1.0, "seconds": 0.0},
    ])
    pe = pd.concat([
        pd.DataFrame({"model": M, "attack": "clean", "eps": 0.0, "index": idx, "correct": True, "loss": 0.1}),
        pd.DataFrame({"model": M, "attack": "pgd10-linf", "eps": 0.1, "index": idx, "correct": ok(np.arange(100)),
                      "loss": 1.0}),
    ], ignore_index=True)
    jobs = {"reference": np.arange(100), "more_steps": np.concatenate([np.arange(100), more_steps_breaks]),
            "extra_restarts": np.arange(100), "margin": np.arange(100)}
    checks = pd.concat([pd.DataFrame({"model": M, "job": j, "attack": j, "norm": "linf", "eps": 0.1, "index": idx,
                                      "correct": ok(b), "loss": 1.0}) for j, b in jobs.items()], ignore_index=True)
    extra = [checks]
    tables = {"soundness_per_example": checks}
    if cascade_breaks is not None:
        left = np.arange(100, N)
        cascade = pd.DataFrame({"model": M, "attack": "apgd-ce", "norm": "linf", "eps": 0.1, "index": left,
                                "correct": ok(cascade_breaks)[left], "loss": 2.0})
        tables["worst_case_per_example"] = cascade
        extra.append(cascade)
    tables["robustness"], tables["per_example"] = with_worst_case(rob, pe, pd.concat(extra, ignore_index=True))
    warn = lambda c: "warn" if c == "more_steps" or (other_warn and c == "zero_gradients") else "pass"  # noqa: E731
    tables["soundness"] = pd.DataFrame([{"model": M, "check": c, "status": warn(c), "value": 0.0, "threshold": 0.0,
                                         "p_value": np.nan, "detail": "d."}
                                        for c in ("more_steps", "more_restarts", "zero_gradients", "margin_vs_ce")])
    return tables


def _reach(tables):
    return WorstCaseReach().run(tables, types.SimpleNamespace(soundness=SoundnessConfig())).get("soundness")


def _row(snd, check):
    return snd.set_index("check").loc[check]


def test_a_warning_the_cascade_holds_does_not_apply_to_the_worst_case():
    # more steps break 20 examples beyond the reference; the cascade breaks all 20 (and 5 more)
    extra = np.arange(100, 120)
    snd = _reach(_tables(cascade_breaks=np.arange(100, 125), more_steps_breaks=extra))
    r = _row(snd, "more_steps")
    assert r["status"] == "warn" and r["worst_case_drop"] == 0.0 and not r["affects_worst_case"]
    assert "holds this attack too" in r["detail"]
    assert _row(snd, "more_restarts")["worst_case_drop"] == 0.0 and not _row(snd, "more_restarts")["affects_worst_case"]
    assert np.isnan(_row(snd, "zero_gradients")["worst_case_drop"])
    assert verdicts(snd) == {M: VERDICT_HELD}
    from workbench.verdict import verdict_table

    v = verdict_table(snd.pipe(lambda s: {**_tables(np.arange(100, 125), extra), "soundness": s}), 0.1).iloc[0]
    assert v["warnings"] == [] and v["soundness"].startswith("sound worst case") and "more_steps" in v["soundness"]


def test_a_warning_applies_when_only_the_stronger_attack_breaks_examples():
    # no cascade: the 20 examples only PGD with more steps breaks are 10 % of the worst case
    snd = _reach(_tables(cascade_breaks=None, more_steps_breaks=np.arange(100, 120)))
    r = _row(snd, "more_steps")
    assert r["worst_case_drop"] == pytest.approx(20 / N) and r["affects_worst_case"]
    assert "rests on this attack: 20 of its 200" in r["detail"]
    assert verdicts(snd) == {M: VERDICT_WARN}
    # the cascade breaks only half of them: still past the tolerance (0.5 points = 1 example)
    snd = _reach(_tables(cascade_breaks=np.arange(100, 110), more_steps_breaks=np.arange(100, 120)))
    assert _row(snd, "more_steps")["worst_case_drop"] == pytest.approx(10 / N)
    assert verdicts(snd) == {M: VERDICT_WARN}
    # one example only it breaks: within the tolerance (max(0.5 points, 1/n) = 1 example of 200)
    snd = _reach(_tables(cascade_breaks=np.arange(100, 119), more_steps_breaks=np.arange(100, 120)))
    assert _row(snd, "more_steps")["worst_case_drop"] == pytest.approx(1 / N)
    assert verdicts(snd) == {M: VERDICT_HELD}


def test_every_other_warning_applies_and_passes_never_do():
    snd = _reach(_tables(cascade_breaks=np.arange(100, 125), more_steps_breaks=np.arange(100, 120), other_warn=True))
    assert _row(snd, "zero_gradients")["affects_worst_case"] and not _row(snd, "more_restarts")["affects_worst_case"]
    assert verdicts(snd) == {M: VERDICT_WARN}
    assert headline_warnings(snd).tolist() == [False, False, True, False]


def test_a_table_without_the_columns_counts_every_warning():
    # a run folder written before this step: the verdict it had
    snd = _tables(cascade_breaks=np.arange(100, 125), more_steps_breaks=np.arange(100, 120))["soundness"]
    assert "affects_worst_case" not in snd.columns
    assert verdicts(snd) == {M: VERDICT_WARN}
    assert verdicts(snd.assign(status="pass")) == {M: VERDICT_OK}


def test_the_step_runs_after_the_worst_case_and_the_severity_row():
    import workbench.probes.corruptions  # noqa: F401  (registers monotonic_severity)

    order = [s.name for s in table_steps()]
    assert order.index("soundness_reach") > order.index("worst_case")
    assert order.index("soundness_reach") > order.index("monotonic_severity")
    assert "soundness_reach" in TABLE_STEPS

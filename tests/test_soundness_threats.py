"""Soundness checks beyond the L∞ and L2 balls (issue 24, item 6), each on crafted tables or
models whose answer is known, so that a wrong implementation fails:

- accuracy non-increasing in corruption severity (``monotonic_severity``, a table step after
  the probes): a one-sided exact paired test, not a raw difference; clean counts as severity 0;
- accuracy non-increasing in the L1 radius and the spatial box fraction (``monotonic_eps``);
- the spatial grid's worst case at or below random transformations of the box
  (``noise_vs_whitebox``): a grid that misses what random transformations find warns.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binomtest
from torch import nn

import workbench.components  # noqa: F401  (registers every component)
from test_corruptions import MONOTONE
from workbench.evaluation import evaluate
from workbench.evaluation.corruptions import CORRUPTIONS, NOT_MONOTONE
from workbench.evaluation.soundness import CHECKS, VERDICT_OK, VERDICT_WARN, SoundnessConfig, run_checks
from workbench.evaluation.views import verdicts
from workbench.probes.corruptions import (
    SeverityCheck,
    TABLES_CORRUPTIONS,
    corruption_errors,
    largest_rise,
    rise_test,
)
from workbench.stages import StageContext, table_steps
from workbench.study import study_from_dict
from workbench.tables import TABLES

N = 200


# ----------------------------------------------------------------------------- monotonic_severity


def test_largest_rise_and_its_one_sided_test():
    assert largest_rise([0.9, 0.8, 0.85, 0.6]) == pytest.approx((0.05, 1, 2))
    assert largest_rise([0.9, 0.7, 0.95]) == pytest.approx((0.25, 1, 2))  # from the running minimum
    r, i, j = largest_rise([0.9, 0.8, 0.6])
    assert (r, i, j) == (pytest.approx(-0.1), 0, 1)  # falls at every step: the smallest fall
    low = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    high = low.copy()
    high[50:58] = True   # 8 examples right only at the higher severity
    high[:2] = False     # 2 right only at the lower one
    b, c, p = rise_test(low, high)
    assert (b, c) == (8, 2)
    assert p == pytest.approx(binomtest(8, 10, 0.5, alternative="greater").pvalue)


def _corruption_tables(acc: dict[str, dict[str, list[int]]], n: int = N):
    """The corruptions and corruption_errors tables (and per-example outcomes) of models whose
    number of correct examples per corruption is ``acc[model][corruption]`` = [clean, s1, s2,
    s3]: the correct examples are always the first k, so a rise of r examples has r discordant
    examples all one way (b = r, c = 0)."""
    rows, correct = [], {}
    for m, per in acc.items():
        clean = next(iter(per.values()))[0]
        assert all(v[0] == clean for v in per.values())
        c0 = np.arange(n) < clean
        correct[(m, "clean", 0)] = c0
        rows.append({"model": m, "corruption": "clean", "severity": 0, "n": n, "accuracy": c0.mean(), "ci_low": 0.0,
                     "ci_high": 1.0, "error": 1 - c0.mean(), "distance": 0.0})
        for name, ks in per.items():
            for s, k in enumerate(ks[1:], start=1):
                c = np.arange(n) < k
                correct[(m, name, s)] = c
                rows.append({"model": m, "corruption": name, "severity": s, "n": n, "accuracy": c.mean(),
                             "ci_low": 0.0, "ci_high": 1.0, "error": 1 - c.mean(), "distance": float(s)})
    table = pd.DataFrame(rows, columns=list(TABLES_CORRUPTIONS["corruptions"][1]))
    return table, corruption_errors(table, correct, next(iter(acc)))


def _soundness(models) -> pd.DataFrame:
    """A soundness table in which every other check of every model passed."""
    return pd.DataFrame([{"model": m, "check": c, "status": "pass", "value": 0.0, "threshold": 0.01,
                          "p_value": math.nan, "detail": ""} for m in models for c in ("monotonic_eps", "large_eps")],
                        columns=list(TABLES["soundness"][1]))


def _run_step(acc, cfg=None):
    cor, err = _corruption_tables(acc)
    tables = {"soundness": _soundness(acc), "corruptions": cor, "corruption_errors": err}
    out = SeverityCheck().run(tables, StageContext({"soundness": cfg or SoundnessConfig()}, stage="monotonic_severity"))
    return out, err


def _severity_row(snd: pd.DataFrame, model: str) -> pd.Series:
    sel = snd[(snd["model"] == model) & (snd["check"] == "monotonic_severity")]
    assert len(sel) == 1
    return sel.iloc[0]


def test_monotonic_severity_warns_on_a_rise_beyond_sampling_noise_only():
    acc = {
        # 30 of 200 examples more right at fog severity 3 than at 2: far beyond chance
        "broken": {"fog": [180, 170, 140, 170], "contrast": [180, 160, 150, 140]},
        # 3 more (1.5 points: past the 1-example tolerance, within chance): a raw difference would warn
        "noisy": {"fog": [180, 170, 150, 153], "contrast": [180, 160, 150, 140]},
        # severity 1 beats clean by 25 examples: clean counts as severity 0
        "clean_low": {"fog": [150, 175, 170, 160], "contrast": [150, 140, 130, 120]},
        "monotone": {"fog": [180, 170, 150, 140], "contrast": [180, 160, 150, 140]},
    }
    out, err = _run_step(acc)
    snd = out["soundness"]
    assert list(snd.columns) == list(TABLES["soundness"][1])
    # each model's row right after its other checks
    assert snd["model"].tolist() == [m for m in acc for _ in range(3)]
    level = SoundnessConfig().level

    r = _severity_row(snd, "broken")
    assert r["status"] == "warn" and r["value"] == pytest.approx(30 / N)
    raw = binomtest(30, 30, 0.5, alternative="greater").pvalue
    assert r["p_value"] == pytest.approx(min(1.0, 2 * raw))  # Bonferroni over the 2 corruptions
    assert "fog" in r["detail"] and "severity 2" in r["detail"] and "severity 3" in r["detail"]

    r = _severity_row(snd, "noisy")
    assert r["value"] == pytest.approx(3 / N) and r["value"] > r["threshold"]
    assert r["p_value"] > level and r["status"] == "pass"

    r = _severity_row(snd, "clean_low")
    assert r["status"] == "warn" and r["value"] == pytest.approx(25 / N) and "severity 0" in r["detail"]

    r = _severity_row(snd, "monotone")
    assert r["status"] == "pass" and r["value"] == 0.0 and "never rises" in r["detail"]

    assert verdicts(snd) == {"broken": VERDICT_WARN, "noisy": VERDICT_OK, "clean_low": VERDICT_WARN,
                             "monotone": VERDICT_OK}
    # the probe's own table carries the same numbers
    e = err.set_index(["model", "corruption"])
    assert e.loc[("broken", "fog"), "max_rise"] == pytest.approx(30 / N)
    assert e.loc[("broken", "fog"), "rise_p"] == pytest.approx(raw)
    assert np.isnan(e.loc[("broken", "mean"), "rise_p"]) and e.loc[("broken", "mean"), "max_rise"] == pytest.approx(30 / N)
    assert e.loc[("monotone", "fog"), "max_rise"] == pytest.approx(-10 / N) and e.loc[("monotone", "fog"), "rise_p"] == 1.0


def test_corruptions_whose_severity_is_no_order_of_strength_are_left_out():
    """Glass blur, elastic and frost trade one effect against another across severities (their
    pixel distance is not monotone: test_corruptions): a rise there is no evaluation fault."""
    assert set(NOT_MONOTONE) == set(CORRUPTIONS) - set(MONOTONE)
    acc = {"m": {"fog": [180, 170, 150, 140], "elastic_transform": [180, 150, 175, 170]}}
    out, err = _run_step(acc)
    r = _severity_row(out["soundness"], "m")
    assert r["status"] == "pass" and r["value"] == 0.0 and "elastic_transform left out" in r["detail"]
    # the probe's table still shows the rise and its test
    e = err.set_index(["model", "corruption"])
    assert e.loc[("m", "elastic_transform"), "max_rise"] == pytest.approx(25 / N)
    assert e.loc[("m", "elastic_transform"), "rise_p"] < 1e-6


def test_monotonic_severity_follows_the_soundness_settings_and_is_skipped_without_them():
    acc = {"m": {"fog": [180, 170, 150, 160]}}  # 10 examples: p = 2^-10 ≈ 0.001
    out, _ = _run_step(acc)
    assert _severity_row(out["soundness"], "m")["status"] == "warn"
    out, _ = _run_step(acc, SoundnessConfig(level=1e-4))  # a stricter level: not significant
    assert _severity_row(out["soundness"], "m")["status"] == "pass"
    out, _ = _run_step(acc, SoundnessConfig(tolerance=0.1))  # a wider tolerance: within it
    r = _severity_row(out["soundness"], "m")
    assert r["status"] == "pass" and r["threshold"] == pytest.approx(0.1)
    # soundness off (the fact is None), or no corruptions probe: nothing added
    cor, err = _corruption_tables(acc)
    off = StageContext({"soundness": None}, stage="monotonic_severity")
    assert SeverityCheck().run({"soundness": _soundness(acc), "corruptions": cor, "corruption_errors": err}, off) == {}
    on = StageContext({"soundness": SoundnessConfig()}, stage="monotonic_severity")
    assert SeverityCheck().run({"soundness": _soundness(acc)}, on) == {}


def test_monotonic_severity_is_a_check_and_runs_after_the_worst_case():
    assert CHECKS["monotonic_severity"].rule == "max"
    names = [s.name for s in table_steps()]
    assert names.index("worst_case") < names.index("monotonic_severity") < names.index("significance")


# ----------------------------------------------------------------------------- L1 radius and spatial box

D, K, M = 16, 3, 120


def _images():
    """120 4×4 grey images x ∈ 0.5 + U[−0.3, 0.3] labelled by a random linear map (a linear model
    with that map is right everywhere, as in test_soundness)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(K, D, generator=g)
    x = 0.5 + 0.3 * (2 * torch.rand(M, D, generator=g) - 1)
    y = ((x - 0.5) @ w.T).argmax(1)
    lin = nn.Linear(D, K)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(-w.sum(1) * 0.5)
    return nn.Sequential(nn.Flatten(), lin).eval(), x.view(M, 1, 4, 4), y


def _checks(attacks, edit=None, **evaluation):
    study = study_from_dict({"name": "t", "architectures": ["small_cnn"], "recipes": ["standard"],
                             "evaluation": {"examples": None, "eps": [0.05], "main_eps": 0.05,
                                            "attacks": [{"name": "pgd", "steps": 5}, *attacks], **evaluation}})
    model, x, y = _images()
    result = evaluate({"m": model}, x, y, study.evaluation, (), seed=0)
    if edit is not None:
        edit(result)
    return run_checks(study, {"m": model}, x, y, result, num_classes=K, seed=0), result


def _rise(result, attack: str, e_low: float, e_high: float, k: int) -> None:
    """k examples broken at e_low made right at e_high (per-example table and robustness row)."""
    pe, rob = result.per_example, result.robustness
    at = lambda e: (pe["attack"] == attack) & np.isclose(pe["eps"], e)  # noqa: E731
    low = pe[at(e_low)]["correct"].to_numpy(bool)
    high = pe[at(e_high)]["correct"].to_numpy(bool).copy()
    flip = np.flatnonzero(~low & ~high)[:k]
    assert len(flip) == k, (attack, int((~low & ~high).sum()))
    high[flip] = True
    pe.loc[at(e_high), "correct"] = high
    rob.loc[(rob["attack"] == attack) & np.isclose(rob["eps"], e_high), "accuracy"] = float(high.mean())


def _row(df, check):
    sel = df[(df["model"] == "m") & (df["check"] == check)]
    assert len(sel) == 1
    return sel.iloc[0]


L1 = {"name": "pgd", "norm": "l1", "steps": 10}


def test_accuracy_rising_with_the_l1_radius_warns():
    df, result = _checks([L1], eps_l1=[1.0, 2.0, 4.0])
    l1_id = next(a for a in result.robustness["attack"].unique() if "l1" in a)
    assert _row(df, "monotonic_eps")["status"] == "pass"
    df, _ = _checks([L1], edit=lambda r: _rise(r, l1_id, 2.0, 4.0, 15), eps_l1=[1.0, 2.0, 4.0])
    r = _row(df, "monotonic_eps")
    assert r["status"] == "warn" and l1_id in r["detail"] and "ε=4" in r["detail"]


SPATIAL = {"name": "spatial-grid", "max_angle": 90, "max_shift": 1, "angles": 5, "shifts": 3}


def test_accuracy_rising_with_the_spatial_box_warns():
    df, result = _checks([SPATIAL], eps_spatial=[0.5, 1.0])
    assert _row(df, "monotonic_eps")["status"] == "pass"
    df, _ = _checks([SPATIAL], edit=lambda r: _rise(r, "spatial-grid5x3", 0.5, 1.0, 15), eps_spatial=[0.5, 1.0])
    r = _row(df, "monotonic_eps")
    assert r["status"] == "warn" and "spatial-grid5x3" in r["detail"]


def test_a_grid_that_misses_what_random_transformations_find_warns():
    """The grid worst case must be at or below random transformations of the same box: a grid
    reporting the clean outcome (a broken grid: no transformation applied) warns."""
    df, result = _checks([SPATIAL], eps_spatial=[1.0], soundness={"noise_draws": 3})
    r = _row(df, "noise_vs_whitebox")
    assert r["status"] == "pass"
    pe, rob = result.per_example, result.robustness
    clean = pe[pe["attack"] == "clean"]["correct"].to_numpy(bool)
    grid = (pe["attack"] == "spatial-grid5x3") & np.isclose(pe["eps"], 1.0)
    assert clean.mean() - pe[grid]["correct"].mean() > 0.2  # the box really breaks examples

    def broken(result):
        pe, rob = result.per_example, result.robustness
        pe.loc[grid, "correct"] = clean
        rob.loc[(rob["attack"] == "spatial-grid5x3") & np.isclose(rob["eps"], 1.0), "accuracy"] = float(clean.mean())

    df, _ = _checks([SPATIAL], edit=broken, eps_spatial=[1.0], soundness={"noise_draws": 3})
    r = _row(df, "noise_vs_whitebox")
    assert r["status"] == "warn" and "spatial" in r["detail"] and r["p_value"] < 0.01

"""The verdict at the end of ``workbench run``: per model, clean accuracy, the worst case at
the main ε with its interval, the soundness verdict naming every warning; --strict exits 1."""

from __future__ import annotations

import types

import pandas as pd
import pytest
from typer.testing import CliRunner


def rob_row(model, attack, eps, acc, lo, hi, norm="linf"):
    return {"model": model, "attack": attack, "norm": norm, "eps": eps, "accuracy": acc, "ci_low": lo, "ci_high": hi,
            "n": 100}


def tables(warn: bool):
    rob = pd.DataFrame([
        rob_row("a/standard", "clean", 0.0, 0.978, 0.957, 0.989, "none"),
        rob_row("a/standard", "worst_case", 0.1, 0.30, 0.2, 0.4),
        rob_row("a/standard", "worst_case", 0.2, 0.006, 0.002, 0.020),
        rob_row("a/standard", "worst_case", 0.5, 0.0, 0.0, 0.01, "l2"),
        rob_row("a/standard", "pgd", 0.2, 0.008, 0.003, 0.02),
        rob_row("a/pgd_at", "clean", 0.0, 0.986, 0.968, 0.994, "none"),
        rob_row("a/pgd_at", "worst_case", 0.1, 0.80, 0.7, 0.9),
        rob_row("a/pgd_at", "worst_case", 0.2, 0.666, 0.615, 0.713),
        rob_row("a/pgd_at", "pgd", 0.2, 0.674, 0.62, 0.72),
    ])
    snd = pd.DataFrame([{"model": m, "check": c, "status": "warn" if warn and m == "a/pgd_at" and c in ("noise", "transfer")
                         else "pass"} for m in ("a/standard", "a/pgd_at") for c in ("noise", "transfer", "monotone")])
    return {"robustness": rob, "soundness": snd}


def test_verdict_table_reads_the_worst_case_at_the_main_eps_and_names_warnings():
    from workbench.verdict import verdict_table, verdict_text

    v = verdict_table(tables(warn=True), main_eps=0.19).set_index("model")
    assert v.loc["a/pgd_at", "worst_case"] == "66.6 % [61.5, 71.3]"  # ε closest to 0.19, L∞ (not the L2 row)
    assert v.loc["a/standard", "clean"] == "97.8 % [95.7, 98.9]"
    assert v.loc["a/standard", "soundness"] == "sound (3/3 checks pass)"
    assert v.loc["a/pgd_at", "warnings"] == ["noise", "transfer"]
    assert "noise, transfer" in v.loc["a/pgd_at", "soundness"] and "WARNING" in v.loc["a/pgd_at", "soundness"]
    text = verdict_text(tables(warn=True), 0.19)
    assert "worst case, L∞ ε=0.2" in text.splitlines()[0] and len(text.splitlines()) == 3
    no_checks = {"robustness": tables(False)["robustness"]}
    assert verdict_table(no_checks, 0.2)["soundness"].tolist() == ["not checked"] * 2


@pytest.mark.parametrize("warn,strict,code", [(True, True, 1), (True, False, 0), (False, True, 0)])
def test_run_prints_the_verdict_and_strict_exits_1_on_a_warning(monkeypatch, tmp_path, warn, strict, code):
    import workbench.runner as runner
    from workbench.cli import app

    study = tmp_path / "s.yaml"
    study.write_text("name: s\ndata: {name: digits}\narchitectures: [small_cnn]\nrecipes: [standard]\n"
                     "evaluation: {eps: [0.2], attacks: [pgd]}\n")

    def fake_run_study(s, out, **kw):
        return types.SimpleNamespace(tables=tables(warn), study=s, path=tmp_path / "run", cached_stages=[],
                                     timings={"total": 1.0})

    monkeypatch.setattr(runner, "run_study", fake_run_study)
    result = CliRunner().invoke(app, ["run", str(study), *(["--strict"] if strict else [])])
    assert result.exit_code == code, result.output
    assert "worst case, L∞ ε=0.2" in result.output and "66.6 % [61.5, 71.3]" in result.output
    assert ("WARNING: robustness may be overestimated (noise, transfer)" in result.output) == warn
    if code:
        assert "--strict" in result.output and "a/pgd_at" in result.output

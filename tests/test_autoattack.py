"""AutoAttack through pyautoattack: the workbench's attack is the authors' code, run as they run it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pyautoattack")  # a core dependency; skipped only where it is not installed
from pyautoattack import AutoAttack  # noqa: E402

import sys  # noqa: E402

import workbench.attacks  # noqa: E402,F401
from workbench.attacks import ATTACKS, perturbation_norm  # noqa: E402
from workbench.errors import StudyError  # noqa: E402
from workbench.evaluation import evaluate  # noqa: E402
from workbench.attacks.autoattack import AutoAttackAttack  # noqa: E402
from workbench.study import EvaluationConfig, study_from_dict  # noqa: E402

aa_mod = sys.modules["workbench.attacks.autoattack"]


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained for a few hundred steps on scikit-learn's digits (8×8, 10 classes)."""
    from conftest import digits_mlp

    model, xt, yt = digits_mlp()
    assert (model(xt).argmax(1) == yt).float().mean() > 0.85  # it learned something
    return model, xt, yt


def _direct(model, x, y, eps, norm, seed, attacks=None):
    ref = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed, device="cpu")
    if attacks:
        ref.attacks_to_run = list(attacks)
    ref.verbose = False
    x_adv, _ = ref.run_standard_evaluation(x, y, batch_size=len(y))
    return x_adv


@pytest.mark.slow  # ~40 s on one CPU thread: Square's 5,000 queries on the examples left
def test_standard_linf_equals_pyautoattack_on_the_same_examples_and_seed(trained):
    model, x, y = trained
    ours = ATTACKS.get("autoattack")(model, x, y, 0.1, norm="linf", version="standard", seed=3)
    theirs = _direct(model, x, y, 0.1, "Linf", 3)
    acc_ours = (model(ours).argmax(1) == y).float().mean().item()
    acc_theirs = (model(theirs).argmax(1) == y).float().mean().item()
    assert acc_ours == acc_theirs
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    clean = (model(x).argmax(1) == y).float().mean().item()
    assert acc_ours < clean  # it attacked
    assert perturbation_norm(ours - x, "linf").max() <= 0.1 + 1e-6


def test_single_attack_l2_equals_pyautoattack_with_that_attack_alone(trained):
    model, x, y = trained
    ours = aa_mod.autoattack(model, x, y, 0.5, norm="l2", attacks=["apgd-ce"], seed=1)
    theirs = _direct(model, x, y, 0.5, "L2", 1, attacks=["apgd-ce"])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert perturbation_norm(ours - x, "l2").max() <= 0.5 + 1e-4
    assert (model(ours).argmax(1) == y).float().mean() < (model(x).argmax(1) == y).float().mean()


def test_seed_given_leaves_global_rng_untouched(trained):
    model, x, y = trained
    before = torch.get_rng_state()
    aa_mod.autoattack(model, x[:8], y[:8], 0.05, attacks=["apgd-ce"], seed=0)
    assert torch.equal(before, torch.get_rng_state())


def test_evaluation_runs_autoattack_and_the_single_attack_seeded(trained):
    model, x, y = trained
    # APGD-CE then APGD-T (the standard version's first two attacks) stands in for the whole
    # ensemble here: FAB-T and Square cost ~30 s on one CPU thread
    cfg = EvaluationConfig(eps=(0.1,), batch_size=30, transfer=False,
                           attacks=[{"name": "autoattack", "attacks": ["apgd-ce", "apgd-t"]},
                                    {"name": "autoattack", "attacks": ["apgd-ce"]}, {"name": "pgd", "steps": 10}])
    a = evaluate({"m": model}, x, y, cfg, seed=5, keep_adversarial=False)
    b = evaluate({"m": model}, x, y, cfg, seed=5, keep_adversarial=False)
    rob = a.robustness.set_index("attack")
    both, single = "aa-apgd-ce+apgd-t-linf", "aa-apgd-ce-linf"
    assert {both, single} <= set(rob.index)
    # the pair starts with the same seeded APGD-CE and only attacks what it left, so it is
    # at least as strong on every example
    pe = a.per_example
    c_both = pe[pe["attack"] == both]["correct"].to_numpy()
    c_single = pe[pe["attack"] == single]["correct"].to_numpy()
    assert len(c_both) == len(y)
    assert rob.loc[both, "accuracy"] < rob.loc["clean", "accuracy"]
    assert rob.loc[both, "method"] == "autoattack" and rob.loc[both, "loss"] == "mixed"
    assert rob.loc[single, "loss"] == "ce"
    assert c_both.sum() <= c_single.sum() + 1  # different seeds per attack setting: allow one example
    assert a.robustness["accuracy"].tolist() == b.robustness["accuracy"].tolist()


def test_ids_and_options():
    assert AutoAttackAttack(name="autoattack").id == "aa-standard-linf"
    assert AutoAttackAttack(name="autoattack", norm="l2", attacks=["apgd-ce", "square"]).id == "aa-apgd-ce+square-l2"
    assert AutoAttackAttack(name="autoattack", version="plus").restarts == 5


def test_missing_package_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(aa_mod, "available", lambda: False)
    with pytest.raises(StudyError) as e:
        study_from_dict({"name": "t", "architectures": ["small_cnn"], "recipes": ["standard"],
                         "evaluation": {"attacks": ["fgsm", {"name": "autoattack"}]}}, source="s.yaml")
    text = str(e.value)
    assert "pyautoattack" in text and "evaluation.attacks[1]" in text and "\n" not in text


def test_unknown_single_attack_is_a_study_error():
    with pytest.raises(StudyError, match="attacks"):
        study_from_dict({"name": "t", "architectures": ["small_cnn"], "recipes": ["standard"],
                         "evaluation": {"attacks": [{"name": "autoattack", "attacks": ["pgd"]}]}})

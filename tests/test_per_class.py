"""Per-example labels and predictions, the per-class accuracy table and the confusion of
adversarial predictions (issue 23, item 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workbench.evaluation.per_class import confusion_table, per_class_table
from workbench.evaluation.robustness import EvaluationConfig, evaluate
from workbench.evaluation.worst_case import with_worst_case, worst_case
from workbench.stats import wilson_interval

K, N, D = 5, 120, 16
MAIN = 0.1


def _models():
    g = torch.Generator().manual_seed(0)
    teacher = nn.Linear(D, K)
    with torch.no_grad():
        teacher.weight.copy_(torch.randn(K, D, generator=g))
        teacher.bias.zero_()
    x = torch.rand(N, D, generator=g)
    y = teacher(x).argmax(1)
    # b: the teacher with noise, so it errs clean on some examples (their clean prediction enters the worst case)
    other = nn.Linear(D, K)
    with torch.no_grad():
        other.weight.copy_(teacher.weight + 0.8 * torch.randn(K, D, generator=g))
        other.bias.zero_()
    return {"a": teacher, "b": other}, x, y


@pytest.fixture(scope="module")
def run():
    models, x, y = _models()
    cfg = EvaluationConfig(examples=None, eps=(0.05, MAIN), attacks=("fgsm", {"name": "pgd", "steps": 5}), transfer=False,
                           batch_size=50)
    index = torch.arange(1000, 1000 + N)
    r = evaluate(models, x, y, cfg, seed=0, index=index)
    rob, pe = with_worst_case(r.robustness, r.per_example)
    return models, x, y, index, rob, pe


def test_per_example_carries_the_label_and_the_prediction_at_each_input(run):
    models, x, y, index, rob, pe = run
    ev = pe[pe["attack"] != "worst_case"]
    for (m, attack, eps), d in ev.groupby(["model", "attack", "eps"]):
        assert d["index"].tolist() == index.tolist()
        assert d["label"].tolist() == y.tolist()
        assert (d["correct"].to_numpy() == (d["prediction"].to_numpy() == d["label"].to_numpy())).all()
        if attack == "clean":
            with torch.no_grad():
                assert d["prediction"].tolist() == models[m](x).argmax(1).tolist()
    # the adversarial predictions differ from the clean ones where an attack broke a correct example
    clean = ev[(ev["attack"] == "clean") & (ev["model"] == "a")]["prediction"].to_numpy()
    pgd = ev[(ev["attack"] == "pgd5-linf") & (ev["model"] == "a") & np.isclose(ev["eps"], MAIN)]["prediction"].to_numpy()
    assert (clean != pgd).any()


def test_per_class_accuracies_weighted_by_class_counts_give_the_overall_accuracy(run):
    *_, y, index, rob, pe = run
    pc = per_class_table(pe, classes=[f"c{k}" for k in range(K)])
    counts = np.bincount(y.numpy(), minlength=K)
    assert set(pc["attack"]) == {"clean", "fgsm", "pgd5-linf", "worst_case"}
    for (m, attack, norm, eps), d in pc.groupby(["model", "attack", "norm", "eps"]):
        overall = rob[(rob["model"] == m) & (rob["attack"] == attack) & (rob["norm"] == norm) & np.isclose(rob["eps"], eps)]
        assert len(overall) == 1
        assert (d["n"].to_numpy() == counts[d["label"].to_numpy()]).all()
        assert (d["accuracy"] * d["n"]).sum() / d["n"].sum() == pytest.approx(overall["accuracy"].iloc[0])
        for _, r in d.iterrows():
            assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(int(r["correct"]), int(r["n"])))
            assert r["class"] == f"c{r['label']}"


def test_confusion_rows_sum_to_class_counts_and_the_diagonal_is_the_robust_count(run):
    *_, y, index, rob, pe = run
    cm = confusion_table(pe, MAIN)
    counts = np.bincount(y.numpy(), minlength=K)
    # clean, and every attack at the main ε (L∞) only
    assert set(zip(cm["attack"], cm["eps"].round(6))) == {("clean", 0.0), ("fgsm", MAIN), ("pgd5-linf", MAIN),
                                                           ("worst_case", MAIN)}
    assert (cm["count"] > 0).all()
    for (m, attack, eps), d in cm.groupby(["model", "attack", "eps"]):
        rows = d.groupby("label")["count"].sum()
        assert (rows.to_numpy() == counts[rows.index.to_numpy()]).all()
        robust = rob[(rob["model"] == m) & (rob["attack"] == attack) & np.isclose(rob["eps"], eps)].iloc[0]
        diag = d[d["label"] == d["prediction"]]["count"].sum()
        assert diag == round(robust["accuracy"] * robust["n"])
    w = cm[(cm["attack"] == "worst_case") & (cm["model"] == "a")]
    assert (w["label"] != w["prediction"]).any()  # the worst case broke some, and says where they went


def test_the_worst_case_prediction_is_the_first_breaking_attacks():
    idx = np.arange(5)
    label = np.array([0, 1, 2, 3, 4])
    rows = {  # per attack: prediction per example
        "clean": [0, 1, 2, 0, 4],       # example 3 is wrong clean
        "fgsm": [0, 3, 2, 0, 4],        # breaks 1 (-> 3)
        "pgd": [2, 4, 2, 1, 4],         # breaks 0 (-> 2) and 1 (-> 4, but fgsm came first)
    }
    pe = pd.concat([pd.DataFrame({"model": "m", "attack": a, "norm": "none" if a == "clean" else "linf",
                                  "eps": 0.0 if a == "clean" else 0.1, "index": idx, "label": label, "prediction": p,
                                  "correct": np.array(p) == label, "loss": 1.0}) for a, p in rows.items()])
    rob = pd.DataFrame([{"model": "m", "attack": a, "method": a, "norm": "linf", "loss": "ce", "steps": 1, "restarts": 1,
                         "eps": 0.1, "n": 5, "accuracy": 0.0, "ci_low": 0, "ci_high": 1, "adv_risk": 0, "seconds": 0}
                        for a in ("fgsm", "pgd")])
    # an extra attack (no prediction recorded) breaks example 2, which every other attack left correct
    extra = pd.DataFrame({"model": "m", "norm": "linf", "eps": 0.1, "index": [2, 4], "correct": [False, True],
                          "loss": 5.0})
    _, w = worst_case(rob, pe, extra)
    assert w["prediction"].tolist() == [2, 3, -1, 0, 4]
    assert w["label"].tolist() == label.tolist()
    assert w["correct"].tolist() == [False, False, False, False, True]


def test_per_class_figures_draw(run):
    from workbench.report.class_figures import adversarial_confusion, per_class_accuracy

    *_, rob, pe = run
    tables = {"per_class": per_class_table(pe), "adversarial_confusion": confusion_table(pe, MAIN), "robustness": rob}
    fig = per_class_accuracy(tables, main_eps=MAIN)
    assert len(fig.axes) == 2
    fig = adversarial_confusion(tables, main_eps=MAIN)
    assert len([a for a in fig.axes if a.get_title()]) == 2


# --------------------------------------------------------------------------- attack curves (item 6d)


def test_the_engine_trace_sees_every_iterate_and_changes_nothing():
    from workbench.attacks.pgd import pgd

    models, x, y = _models()
    m = models["b"]
    seen = []
    plain = pgd(m, x, y, 0.1, steps=4, restarts=2, generator=torch.Generator().manual_seed(3))
    traced = pgd(m, x, y, 0.1, steps=4, restarts=2, generator=torch.Generator().manual_seed(3),
                 trace=lambda s, t, loss, correct: seen.append((s, t, loss.clone(), correct.clone())))
    assert torch.equal(plain, traced)
    assert [(s, t) for s, t, *_ in seen] == [(s, t) for s in range(2) for t in range(5)]
    # step 0 is the random start, not the clean input; the loss is per example and detached
    assert all(loss.shape == (N,) and not loss.requires_grad for *_, loss, _ in seen)
    with torch.no_grad():
        clean_loss = torch.nn.functional.cross_entropy(m(x), y, reduction="none")
    assert not torch.allclose(seen[0][2], clean_loss)
    # per example the attack keeps a fooling restart: its adversarial correctness is the AND of the restarts' last
    final = [c for s, t, _, c in seen if t == 4]
    with torch.no_grad():
        assert torch.equal(m(traced).argmax(1) == y, final[0] & final[1])


def test_the_step_curves_last_point_is_the_attacks_accuracy(run):
    models, x, y = _models()
    cfg = EvaluationConfig(examples=None, eps=(0.05, MAIN), transfer=False, batch_size=50,
                           attacks=("fgsm", {"name": "pgd", "steps": 6}, {"name": "pgd", "steps": 3, "restarts": 2}))
    r = evaluate(models, x, y, cfg, seed=0)
    ac, rob = r.curves, r.robustness
    # PGD only (FGSM reports no steps), every model, ε, restart and iterate
    assert set(ac["attack"]) == {"pgd6-linf", "pgd3-linf-r2"}
    assert len(ac) == 2 * 2 * (7 + 2 * 4)
    for (m, attack, eps), d in ac.groupby(["model", "attack", "eps"]):
        row = rob[(rob["model"] == m) & (rob["attack"] == attack) & np.isclose(rob["eps"], eps)].iloc[0]
        last = d[d["step"] == d["step"].max()]
        if attack == "pgd6-linf":
            assert last["accuracy"].iloc[0] == pytest.approx(row["accuracy"])
            assert last["mean_loss"].iloc[0] == pytest.approx(row["adv_risk"], rel=1e-5)
        else:  # the kept restart fools where any does: at or below each restart's final accuracy
            assert sorted(last["restart"]) == [0, 1]
            assert (row["accuracy"] <= last["accuracy"] + 1e-6).all()  # robustness: a float32 mean
        assert (d["n"] == N).all()
    # the attack lowers the accuracy of the teacher from its start
    a = ac[(ac["model"] == "a") & (ac["attack"] == "pgd6-linf") & np.isclose(ac["eps"], MAIN)].sort_values("step")
    assert a["accuracy"].iloc[-1] < a["accuracy"].iloc[0]
    # off: no table, same robustness
    off = evaluate(models, x, y, cfg.model_copy(update={"curves": False}), seed=0)
    assert off.curves.empty
    pd.testing.assert_frame_equal(off.robustness.drop(columns="seconds"), rob.drop(columns="seconds"))


def test_attack_curves_figure_draws(run):
    from workbench.report.class_figures import attack_curves

    models, x, y = _models()
    cfg = EvaluationConfig(examples=None, eps=(MAIN,), transfer=False, attacks=({"name": "pgd", "steps": 3, "restarts": 2},))
    r = evaluate(models, x, y, cfg, seed=0)
    fig = attack_curves({"attack_curves": r.curves, "robustness": r.robustness}, main_eps=MAIN)
    assert len(fig.axes) == 4 and all(ax.lines for ax in fig.axes)
    assert attack_curves({"attack_curves": r.curves.iloc[0:0]}, main_eps=MAIN) is None

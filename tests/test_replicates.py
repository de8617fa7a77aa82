"""Seeds as replicates: planning (ids, pairs within a seed, shared initial weights), the
``replicates`` table against numpy, single-seed studies unchanged, and compare on tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.errors import StudyError
from workbench.replicates import COLUMNS, replicate_summary, replicates_table
from workbench.study import load_study, study_from_dict
from workbench.tables import TABLES
from conftest import CHEAP_CASCADE

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"


def _study(**over):
    raw = {"name": "rep", "data": {"name": "digits"}, "architectures": ["small_cnn"],
           "recipes": ["standard", {"name": "pgd_at", "eps": 0.2, "steps": 2}], **over}
    return study_from_dict(raw)


# --------------------------------------------------------------------------- planning


def test_several_seeds_train_every_model_once_per_seed_and_pair_within_a_seed():
    s = _study(seed=[0, 1, 2])
    assert s.seeds == (0, 1, 2) and s.seed == 0 and s.replicated
    assert s.model_ids() == [f"small_cnn/{r}/s{k}" for k in (0, 1, 2) for r in ("standard", "pgd_at")]
    assert [m.seed for m in s.models_trained()] == [0, 0, 1, 1, 2, 2]
    assert s.pairs() == [("small_cnn", f"small_cnn/standard/s{k}", f"small_cnn/pgd_at/s{k}") for k in (0, 1, 2)]
    assert {s.seed_of(m) for m in s.model_ids()} == {0, 1, 2}
    assert s.to_dict()["seed"] == [0, 1, 2]
    # `all` and an explicit list stay within a seed too
    three = _study(seed=[3, 5], recipes=["standard", {"name": "fgsm_rs", "eps": 0.1}, {"name": "trades", "eps": 0.1}], pairs="all")
    assert len(three.pairs()) == 2 * 3
    for _, a, b in three.pairs():
        assert a.rsplit("/", 1)[1] == b.rsplit("/", 1)[1]
    listed = _study(seed=[3, 5], pairs=[["small_cnn/pgd_at", "small_cnn/standard"]])
    assert listed.pairs() == [("small_cnn", "small_cnn/pgd_at/s3", "small_cnn/standard/s3"),
                              ("small_cnn", "small_cnn/pgd_at/s5", "small_cnn/standard/s5")]


def test_one_seed_is_unchanged_whether_written_as_a_number_or_a_list_of_one():
    plain = load_study(QUICKSTART)
    assert plain.model_ids() == ["small_cnn/standard", "small_cnn/pgd_at"] and not plain.replicated
    assert plain.pairs() == [("small_cnn", "small_cnn/standard", "small_cnn/pgd_at")]
    assert plain.to_dict()["seed"] == 0 and "seed: 0\n" in plain.to_yaml()
    one = load_study(QUICKSTART, {"seed": [0]})
    assert one.digest() == plain.digest() and one.model_ids() == plain.model_ids()


@pytest.mark.parametrize("value, words", [([], "at least one seed"), ([1, 1], "appears twice"),
                                          ([0, "x"], "whole number"), (True, "whole number")])
def test_bad_seed_lists_name_the_field(value, words):
    with pytest.raises(StudyError) as e:
        _study(seed=value)
    assert e.value.field == "seed" and words in e.value.message


def test_the_plural_spelling_is_refused_with_the_one_that_works():
    with pytest.raises(StudyError) as e:
        _study(seeds=[0, 1])
    assert e.value.field == "seeds" and "seed: [0, 1, 2]" in e.value.message


def test_a_seeds_models_share_initial_weights_and_seeds_differ():
    from workbench.data import load_dataset
    from workbench.runner import model_jobs
    from workbench.training.jobs import TrainJob
    from workbench.training.loop import build_model

    s = _study(seed=[0, 1])
    data = load_dataset("digits", seed=s.seed, limit_train=64, limit_test=32)
    specs = s.models_trained()
    weights = {spec.id: build_model(spec, data).state_dict() for spec in specs}

    def same(a, b):
        return all(torch.equal(weights[a][k], weights[b][k]) for k in weights[a])

    assert same("small_cnn/standard/s0", "small_cnn/pgd_at/s0") and same("small_cnn/standard/s1", "small_cnn/pgd_at/s1")
    assert not same("small_cnn/standard/s0", "small_cnn/standard/s1")
    # seed 0's replicate is the single-seed study's model (same store key); other seeds are other models
    jobs = {j.id: j for j in model_jobs(s, data)}
    single = {j.id: j for j in model_jobs(_study(seed=0), data)}
    assert jobs["small_cnn/pgd_at/s0"].key() == single["small_cnn/pgd_at"].key()
    assert jobs["small_cnn/pgd_at/s1"].key() != single["small_cnn/pgd_at"].key()
    # a job sent to another process trains the same model (same key)
    back = TrainJob.from_json(jobs["small_cnn/pgd_at/s1"].to_json())
    assert back.key() == jobs["small_cnn/pgd_at/s1"].key() and back.spec.seed == 1


# --------------------------------------------------------------------------- the table against numpy


def _hand_made(seeds=(0, 1, 2), drop=None):
    """Tables of a run with two recipes × ``seeds``; accuracies and probe values drawn at random."""
    rng = np.random.default_rng(7)
    models, rob, lip, lin, cka, pairs = [], [], [], [], [], []
    for s in seeds:
        for recipe in ("standard", "pgd_at"):
            m = f"cnn/{recipe}/s{s}"
            models.append({"model": m, "architecture": "cnn", "recipe": recipe, "role": "paired", "seed": s})
            for attack, method, norm, e in (("clean", "clean", "none", 0.0), ("worst_case", "worst_case", "linf", 0.1),
                                            ("worst_case", "worst_case", "linf", 0.2), ("pgd", "pgd", "linf", 0.1)):
                acc = np.nan if (m, attack, e) == drop else float(rng.uniform())
                rob.append({"model": m, "attack": attack, "method": method, "norm": norm, "eps": e, "accuracy": acc,
                            "ci_low": acc - 0.05, "ci_high": acc + 0.05})
            for li, layer in enumerate(("conv", "fc", "logits")):
                for kind in ("loss", "rand"):
                    lip.append({"model": m, "layer": layer, "layer_index": li, "norm": "linf", "eps": 0.1, "kind": kind,
                                "mean": float(rng.uniform(1, 9)), "ci_low": 0.0, "ci_high": 10.0})
            lin.append({"model": m, "eps": 0.1, "metric": "gamma", "mean": float(rng.uniform()), "ci_low": 0, "ci_high": 1})
        ref, other = f"cnn/standard/s{s}", f"cnn/pgd_at/s{s}"
        pairs.append({"pair": f"{ref}~{other}", "architecture": "cnn", "reference": ref, "model": other})
        for li, layer in enumerate(("conv", "fc", "logits")):
            cka.append({"model_a": ref, "model_b": other, "layer_a": layer, "layer_b": layer, "layer_a_index": li,
                        "layer_b_index": li, "kind": "linear", "value": float(rng.uniform())})
    models.append({"model": "zoo", "architecture": "loaded", "recipe": "loaded", "role": "loaded", "seed": pd.NA})
    return {"models": pd.DataFrame(models), "robustness": pd.DataFrame(rob), "lipschitz": pd.DataFrame(lip),
            "linearity": pd.DataFrame(lin), "cka": pd.DataFrame(cka), "pairs": pd.DataFrame(pairs)}


def test_replicates_mean_and_sd_equal_numpy_per_group():
    t = _hand_made()
    rep = replicates_table(t)
    assert list(rep.columns) == COLUMNS == list(TABLES["replicates"][1])
    rob = t["robustness"].assign(recipe=lambda d: d["model"].str.split("/").str[1])
    for (recipe, attack, e), d in rob[rob["method"].isin(["clean", "worst_case"])].groupby(["recipe", "attack", "eps"]):
        got = rep[(rep["recipe"] == recipe) & (rep["measure"] == attack) & np.isclose(rep["eps"], e)]
        assert list(got["seed"]) == [0, 1, 2] and (got["n_seeds"] == 3).all()
        assert got["value"].tolist() == pytest.approx(d["accuracy"].tolist())
        assert got["mean"].iloc[0] == pytest.approx(np.mean(d["accuracy"]))
        assert got["sd"].iloc[0] == pytest.approx(np.std(d["accuracy"], ddof=1))
    assert not (rep["measure"] == "pgd").any()  # single attacks are not replicated measures; the worst case is
    # the penultimate layer is the deepest before the logits; δ_loss only
    lip = rep[rep["measure"] == "lipschitz_penultimate"]
    assert set(lip["detail"]) == {"fc"}
    want = t["lipschitz"].query("layer == 'fc' and kind == 'loss' and model.str.contains('pgd_at')")["mean"]
    got = lip[lip["recipe"] == "pgd_at"]
    assert got["value"].tolist() == pytest.approx(want.tolist()) and got["sd"].iloc[0] == pytest.approx(np.std(want, ddof=1))
    # CKA to the reference: only the paired model, at its penultimate layer
    c = rep[rep["measure"] == "cka_to_reference"]
    assert set(c["recipe"]) == {"pgd_at"} and set(c["detail"]) == {"fc"}
    assert c["mean"].iloc[0] == pytest.approx(t["cka"].query("layer_a == 'fc'")["value"].mean())
    assert "zoo" not in set(rep["model"])  # loaded models are not replicates


def test_a_missing_value_is_left_out_of_the_mean_and_counted():
    t = _hand_made(drop=("cnn/pgd_at/s1", "clean", 0.0))
    rep = replicates_table(t)
    got = rep[(rep["recipe"] == "pgd_at") & (rep["measure"] == "clean")]
    vals = t["robustness"].query("attack == 'clean' and model.str.contains('pgd_at')")["accuracy"].dropna()
    assert (got["n_seeds"] == 2).all() and got["mean"].iloc[0] == pytest.approx(vals.mean())
    assert got["sd"].iloc[0] == pytest.approx(np.std(vals, ddof=1))


def test_one_seed_gives_an_empty_table_and_the_summary_shows_nothing():
    rep = replicates_table(_hand_made(seeds=(4,)))
    assert rep.empty and list(rep.columns) == COLUMNS
    assert replicate_summary(rep, 0.1).empty


def test_the_summary_picks_the_main_eps_and_shows_every_seed_with_its_interval():
    rep = replicates_table(_hand_made())
    s = replicate_summary(rep, 0.2)
    wc = s[(s["model"] == "cnn/pgd_at") & s["measure"].str.startswith("worst-case")]
    assert len(wc) == 1 and wc["ε"].iloc[0] == "0.2"
    r = rep[(rep["recipe"] == "pgd_at") & (rep["measure"] == "worst_case") & np.isclose(rep["eps"], 0.2)]
    assert wc["mean ± sd across seeds"].iloc[0] == (
        f"{100 * r['mean'].iloc[0]:.1f} ± {100 * r['sd'].iloc[0]:.1f} (3 seeds)")
    assert wc["seed 1 [95% CI over examples]"].iloc[0].startswith(f"{100 * r['value'].iloc[1]:.1f} [")


# --------------------------------------------------------------------------- tiny runs

TINY = {
    "train.epochs": 3, "train.lr": 0.1, "train.monitor_examples": 32, "train.monitor_steps": 2, "data.limit_train": 600,
    "recipes": ["standard", {"name": "pgd_at", "eps": 0.2, "steps": 2}],
    "evaluation.examples": 40, "evaluation.eps": [0.1, 0.2], "evaluation.eps_l2": [],
    "evaluation.attacks": ["fgsm", {"name": "pgd", "steps": 3}],
    "evaluation.soundness": {"enabled": True, "examples": 30}, "evaluation.worst_case": CHEAP_CASCADE,
    "probes": {"examples": 16, "lipschitz": {"steps": 2, "eps": [0.2], "eps_l2": []},
               "linearity": {"eps": [0.2], "steps": 2, "surface": {"grid": 3, "examples": 1}}, "cka": {}},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from workbench.runner import run_study

    base = tmp_path_factory.mktemp("replicates")
    store = base / "store"
    two = run_study(load_study(QUICKSTART, {**TINY, "seed": [0, 1]}), base / "two", store=store, progress=False,
                    threads=1, report=False)
    one = run_study(load_study(QUICKSTART, {**TINY, "seed": 0}), base / "one", store=store, progress=False, threads=1,
                    report=False)
    return {"two": two, "one": one, "base": base}


def test_every_stage_runs_on_every_replicate(tiny):
    t = tiny["two"].tables
    ids = [f"small_cnn/{r}/s{k}" for k in (0, 1) for r in ("standard", "pgd_at")]
    assert t["models"]["model"].tolist() == ids and t["models"]["seed"].tolist() == [0, 0, 1, 1]
    for name in ("history", "robustness", "soundness", "lipschitz", "linearity"):
        assert set(t[name]["model"]) == set(ids), name
    sig = t["significance"]
    assert len(sig) and (sig["reference"].str[-3:] == sig["model"].str[-3:]).all()  # paired tests within a seed
    assert set(sig["model"]) == {"small_cnn/pgd_at/s0", "small_cnn/pgd_at/s1"}
    rep = t["replicates"]
    assert set(rep["seed"]) == {0, 1} and (rep["n_seeds"] == 2).all()
    rob = t["robustness"]
    for recipe in ("standard", "pgd_at"):
        want = rob[(rob["attack"] == "worst_case") & np.isclose(rob["eps"], 0.2) & rob["model"].str.contains(recipe)]
        got = rep[(rep["recipe"] == recipe) & (rep["measure"] == "worst_case") & np.isclose(rep["eps"], 0.2)]
        assert got["mean"].iloc[0] == pytest.approx(want["accuracy"].mean())
        assert got["sd"].iloc[0] == pytest.approx(np.std(want["accuracy"], ddof=1))
    assert {"clean", "worst_case", "lipschitz_penultimate", "gamma", "grad_alignment", "cka_to_reference"} <= set(rep["measure"])
    env = json.loads((tiny["two"].path / "environment.json").read_text())
    assert env["seed"] == 0 and env["seeds"] == [0, 1]


def test_a_single_seed_run_keeps_its_ids_and_has_no_replicate_rows(tiny):
    from workbench.results import load

    one, two = tiny["one"].tables, tiny["two"].tables
    assert one["models"]["model"].tolist() == ["small_cnn/standard", "small_cnn/pgd_at"]
    assert one["models"]["seed"].tolist() == [0, 0] and one["replicates"].empty
    assert set(one["robustness"]["model"]) == {"small_cnn/standard", "small_cnn/pgd_at"}
    # seed 0's replicates are the single-seed models (one store entry), so they score the same clean
    k1, k2 = one["models"].set_index("model")["key"], two["models"].set_index("model")["key"]
    assert k1["small_cnn/pgd_at"] == k2["small_cnn/pgd_at/s0"]
    c1 = one["robustness"].query("attack == 'clean'").set_index("model")["accuracy"]
    c2 = two["robustness"].query("attack == 'clean'").set_index("model")["accuracy"]
    assert c1["small_cnn/pgd_at"] == c2["small_cnn/pgd_at/s0"]
    res = load(tiny["one"].path)  # read back: the replicates table is there, empty, with its columns
    assert list(res.tables["replicates"].columns) == COLUMNS and res.get("replicates") is None


def test_an_older_run_without_the_seed_column_loads_with_the_study_seed(tiny, tmp_path):
    import shutil

    from workbench.results import load

    old = tmp_path / "old"
    shutil.copytree(tiny["one"].path, old)
    mt = pd.read_parquet(old / "tables" / "models.parquet").drop(columns="seed")
    mt.to_parquet(old / "tables" / "models.parquet")
    (old / "tables" / "replicates.parquet").unlink()
    res = load(old)
    assert res.models["seed"].tolist() == [0, 0] and res.get("replicates") is None


def test_compare_shows_replicates_and_significance_of_every_run(tiny):
    from workbench.report import compare_runs, write_comparison

    page = write_comparison([tiny["two"].path, tiny["one"].path], tiny["base"] / "cmp")
    cross = pd.read_parquet(page.parent / "tables" / "cross_model.parquet")
    assert len(cross) == 6 and cross.groupby("run").size().to_dict() == {"two": 4, "one": 2}
    assert cross.loc[cross["run"] == "two", "seed"].tolist() == [0, 0, 1, 1]
    reps = pd.read_parquet(page.parent / "tables" / "cross_model_replicates.parquet")
    assert reps["model"].tolist() == ["small_cnn/standard", "small_cnn/pgd_at"] and (reps["n_seeds"] == 2).all()
    two = cross[(cross["run"] == "two") & cross["model"].str.contains("pgd_at")]
    row = reps[reps["model"] == "small_cnn/pgd_at"].iloc[0]
    assert row["worst case mean"] == pytest.approx(two["worst case"].mean())
    assert row["worst case sd"] == pytest.approx(np.std(two["worst case"], ddof=1))
    text = page.read_text()
    assert 'id="replicates-table"' in text and 'id="significance-table"' in text and "measure_scatter" in text
    # the notebook function gives the same tables
    c = compare_runs([tiny["two"].path, tiny["one"].path])
    pd.testing.assert_frame_equal(c.cross.reset_index(drop=True), cross, check_dtype=False)
    assert set(c.significance["run"]) == {"two", "one"}
    assert len(c.significance) == len(tiny["two"].tables["significance"]) + len(tiny["one"].tables["significance"])
    assert all(s.startswith(("two: ", "one: ")) for s in c.significant()) and c.significant()


def test_the_report_shows_mean_sd_beside_each_seeds_interval(tiny):
    from workbench.replicates import mean_sd_text
    from workbench.report.html import build_report
    from workbench.results import load

    res = load(tiny["two"].path)
    page = build_report(res)
    assert 'id="replicates-table"' in page and "seeds 0, 1 (replicates)" in page
    rep = res.replicates
    r = rep[(rep["recipe"] == "pgd_at") & (rep["measure"] == "clean")]
    assert mean_sd_text(r["mean"].iloc[0], r["sd"].iloc[0], 2, percent=True) in page
    lo, hi = 100 * r["ci_low"].iloc[1], 100 * r["ci_high"].iloc[1]
    assert f"{100 * r['value'].iloc[1]:.1f} [{lo:.1f}, {hi:.1f}]" in page  # seed 1's value with its Wilson interval

"""The result cache (workbench/cache.py): a rerun reuses the evaluation, soundness checks and
probe outputs and gives the same tables; a changed setting recomputes only the stages it
determines; --recompute, --retrain and corrupt entries recompute; the code hash follows the
source."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workbench import stages as stages_mod
from workbench.cache import ResultCache, cached_stage
from workbench.codehash import code_hash
from workbench.report.html import _provenance
from workbench.results import load
from workbench.runner import run_study
from workbench.study import study_from_dict
from conftest import CHEAP_CASCADE

ROOT = Path(__file__).resolve().parents[1]

RAW = {
    "name": "cachetest",
    "data": {"name": "digits", "limit_train": 640},
    "architectures": [{"name": "small_cnn", "options": {"width": 8, "fc": 32}}],
    "recipes": ["standard", {"name": "pgd_at", "eps": 0.1, "steps": 2}],
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.1, "monitor_examples": 32, "monitor_steps": 2},
    "evaluation": {"examples": 48, "eps": [0.1], "eps_l2": [0.5],
                   "attacks": ["fgsm", {"name": "pgd", "steps": 3}, {"name": "pgd", "norm": "l2", "steps": 2}],
                   "soundness": {"enabled": True, "examples": 24}, "worst_case": CHEAP_CASCADE},
    "probes": {
        "examples": 16,
        "lipschitz": {"steps": 2, "eps": [0.1], "eps_l2": [0.5], "layers": "penultimate"},
        "linearity": {"eps": [0.1], "steps": 2, "pgd_steps": 2, "surface": {"grid": 3, "examples": 1, "refine": 1}},
        "saliency": {"examples": 2, "ig_steps": 2, "smoothgrad_samples": 2, "metrics": False},
        "cka": {"kinds": ["linear"]},
        "linear_probe": {"eps": [0.1], "train_examples": 100, "C": [1.0], "max_iter": 50, "steps": 2, "layers": "penultimate"},
    },
    "report": {"enabled": False},
}
ALL_STAGES = ["evaluate", "apgd_cascade", "soundness", "probe:lipschitz", "probe:linearity", "probe:saliency", "probe:cka",
              "probe:linear_probe"]


def study(**changes):
    """RAW with dotted-path changes, e.g. study(**{"probes.cka.kinds": ["debiased"]})."""
    raw = yaml.safe_load(yaml.safe_dump(RAW))
    for path, value in changes.items():
        node = raw
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return study_from_dict(raw)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("cache-store")


@pytest.fixture(scope="module")
def first(store, tmp_path_factory):
    """The study computed once into a fresh store (models trained, every result stored)."""
    return run_study(study(), tmp_path_factory.mktemp("first") / "run", store=store, progress=False, threads=1)


def run(store, out, s=None, **kw):
    return run_study(s or study(), out, store=store, progress=False, threads=1, **kw)


def cached_stages(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "run.json").read_text())["cached_stages"]


TIMES = ("seconds", "train_seconds")


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame], *, computed_twice: bool = False) -> None:
    """Equal tables; ``computed_twice``: both were computed, so wall times may differ."""
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        if name == "models":  # says whether the weights came from the store
            x, y = x.drop(columns="cached"), y.drop(columns="cached")
        if computed_twice:
            x, y = x.drop(columns=[c for c in TIMES if c in x]), y.drop(columns=[c for c in TIMES if c in y])
        pd.testing.assert_frame_equal(x, y, obj=name)


def test_rerun_reuses_every_result_and_gives_identical_tables(first, store, tmp_path):
    assert first.cached_stages == [] and cached_stages(first.path) == []
    again = run(store, tmp_path / "again")
    assert again.cached_stages == ALL_STAGES and cached_stages(again.path) == ALL_STAGES
    assert "reused cached results" in (again.path / "run.log").read_text()
    # in memory and in the run folder, the cached tables are those computed the first time
    assert_same_tables(first.tables, again.tables)
    assert_same_tables(load(first.path).tables, load(again.path).tables)
    # each stage's own output is the same (the evaluation's before the worst case is appended)
    for t in ("robustness", "per_example", "transfer"):
        pd.testing.assert_frame_equal(first.outputs["evaluate"].tables[t], again.outputs["evaluate"].tables[t])
    assert first.outputs["evaluate"].value is not None and again.outputs["evaluate"].value is None  # not cached
    # files the probes write into the run folder come back too
    npz = again.path / "arrays" / "saliency.npz"
    assert npz.read_bytes() == (first.path / "arrays" / "saliency.npz").read_bytes()
    timings = json.loads((again.path / "run.json").read_text())["timings"]
    assert {"evaluate", "soundness", "probes"} <= set(timings)
    # the paired tests (a table step taking seconds) are cached too, under a key derived from the stages'
    step_keys = json.loads((again.path / "run.json").read_text())["table_step_keys"]
    assert step_keys == json.loads((first.path / "run.json").read_text())["table_step_keys"]
    assert set(step_keys) == {"significance"} and (store / "results" / step_keys["significance"] / "meta.json").is_file()
    keys = json.loads((again.path / "run.json").read_text())["result_keys"]
    assert set(keys) == set(ALL_STAGES) and all((store / "results" / k / "meta.json").is_file() for k in keys.values())
    meta = json.loads((store / "results" / keys["evaluate"] / "meta.json").read_text())
    # the code in the key is that of the evaluation and the attacks it runs (and their imports)
    own_code = code_hash("workbench.evaluation.robustness", "workbench.attacks.fgsm", "workbench.attacks.pgd")
    assert meta["inputs"]["stage"] == "evaluate" and meta["inputs"]["code"] == own_code and meta["computed_at"]
    # the report's provenance says which results were reused
    assert dict(_provenance(load(again.path)))["results reused from the store"] == ", ".join(ALL_STAGES)
    assert dict(_provenance(load(first.path)))["results reused from the store"] == "none (all computed)"


def test_a_changed_setting_recomputes_only_what_it_determines(first, store, tmp_path):
    # an attack's own ε: the evaluation, and the checks that read it; no probe
    attacks = ["fgsm", {"name": "pgd", "steps": 3, "eps": [0.15]}, {"name": "pgd", "norm": "l2", "steps": 2}]
    r = run(store, tmp_path / "eps", study(**{"evaluation.attacks": attacks}))
    assert r.cached_stages == [s for s in ALL_STAGES if s.startswith("probe:")]
    assert sorted(r.tables["robustness"].eps.unique()) == [0.0, 0.1, 0.15, 0.5]
    # a probe option: that probe only
    r = run(store, tmp_path / "cka", study(**{"probes.cka.kinds": ["debiased"]}))
    assert r.cached_stages == [s for s in ALL_STAGES if s != "probe:cka"]
    assert set(r.tables["cka"].kind) == {"debiased"}
    # a soundness option: the checks run on the cached evaluation's tables ...
    changed = study(**{"evaluation.soundness.restarts": 2})
    r = run(store, tmp_path / "sound", changed)
    assert r.cached_stages == [s for s in ALL_STAGES if s != "soundness"]
    assert r.outputs["evaluate"].value is None  # the evaluation came from the cache
    # ... and give what a run computing everything gives (--recompute)
    fresh = run(store, tmp_path / "fresh", changed, recompute=True)
    assert fresh.cached_stages == [] and cached_stages(fresh.path) == []
    assert json.loads((fresh.path / "run.json").read_text())["recompute"] is True
    assert_same_tables(r.tables, fresh.tables, computed_twice=True)


def test_recompute_and_retrain_ignore_and_overwrite_cached_results(first, store, tmp_path):
    key = json.loads((first.path / "run.json").read_text())["result_keys"]["probe:saliency"]
    meta = store / "results" / key / "meta.json"
    before = json.loads(meta.read_text())
    time.sleep(1.1)  # computed_at has one-second resolution
    r = run(store, tmp_path / "retrain", retrain=True)
    assert r.cached_stages == [] and not r.tables["models"].cached.any()
    after = json.loads(meta.read_text())
    assert after["computed_at"] > before["computed_at"]  # overwritten, still under the same key
    assert_same_tables(first.tables, r.tables, computed_twice=True)  # retrained on the CPU: the same weights, the same results


def test_cli_recompute_flag(first, store, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(RAW))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "workbench.cli", "run", str(path), "--store", str(store), "-q",
                               *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "WORKBENCH_THREADS": "1"})

    p = cli("--out", tmp_path / "a", "--recompute")
    assert p.returncode == 0, p.stderr
    assert cached_stages(tmp_path / "a") == [] and "reused cached results" not in p.stdout
    p = cli("--out", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    assert cached_stages(tmp_path / "b") == ALL_STAGES and "reused cached results: evaluate" in p.stdout
    help_text = subprocess.run([sys.executable, "-m", "workbench.cli", "run", "--help"], capture_output=True, text=True,
                               cwd=ROOT).stdout
    assert "--recompute" in help_text


def test_corrupt_entries_are_recomputed_not_trusted(first, store, tmp_path, caplog):
    keys = json.loads((first.path / "run.json").read_text())["result_keys"]
    entry = store / "results" / keys["evaluate"]
    table = entry / "tables" / "per_example.parquet"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])  # truncated
    (store / "results" / keys["probe:cka"] / "meta.json").write_text("{not json")
    (store / "results" / keys["probe:saliency"] / "files" / "arrays" / "saliency.npz").unlink()
    partial = store / "results" / keys["probe:linearity"]  # an entry without its meta.json
    (partial / "meta.json").unlink()
    with caplog.at_level(logging.WARNING, logger="workbench"):
        r = run(store, tmp_path / "after")
    # the APGD cascade's key holds the evaluation's, which did not change: it is reused too
    assert r.cached_stages == ["apgd_cascade", "soundness", "probe:lipschitz", "probe:linear_probe"]
    warned = "\n".join(rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING)
    for k in ("evaluate", "probe:cka", "probe:saliency", "probe:linearity"):
        assert keys[k] in warned, k
    assert_same_tables(first.tables, r.tables, computed_twice=True)
    assert (r.path / "arrays" / "saliency.npz").read_bytes() == (first.path / "arrays" / "saliency.npz").read_bytes()
    # the entries were rewritten whole: the next run reuses everything
    assert run(store, tmp_path / "next").cached_stages == ALL_STAGES
    assert not list((store / "results").glob(".*"))  # no temporary folders left behind


def test_a_code_change_recomputes_everything(first, store, tmp_path, monkeypatch):
    monkeypatch.setattr(stages_mod, "code_hash", lambda *modules: "another version of the code")
    r = run(store, tmp_path / "code")
    assert r.cached_stages == []


def test_two_writers_of_one_key_compute_once(tmp_path):
    cache = ResultCache(tmp_path)
    calls, results = [], []

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return {"t": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})}

    threads = [threading.Thread(target=lambda: results.append(cached_stage(cache, "s", {"k": 1}, compute)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(r.cached for r in results) == [False, True]
    pd.testing.assert_frame_equal(results[0].tables["t"], results[1].tables["t"])


def test_the_report_reuses_its_figures_when_nothing_changed(first, store, tmp_path, monkeypatch):
    import workbench.codehash as codehash_mod
    import workbench.report.html as html
    from workbench.report import write_report

    r = run(store, tmp_path / "rep")
    drawn = []
    real = html.draw_figures
    monkeypatch.setattr(html, "draw_figures", lambda *a, **k: drawn.append(1) or real(*a, **k))
    write_report(r.path)
    assert drawn == [1]  # first report of these tables: drawn
    page = (r.path / "index.html").read_text()
    figures = {p.name: p.read_bytes() for p in (r.path / "figures").iterdir()}
    assert figures and "data:image/png;base64," in page
    again = run(store, tmp_path / "rep2")
    write_report(again.path)
    assert drawn == [1]  # same tables, study and figure code: reused, nothing drawn
    assert {p.name: p.read_bytes() for p in (again.path / "figures").iterdir()} == figures
    assert (again.path / "index.html").read_text().count("data:image/png;base64,") == page.count("data:image/png;base64,")
    real_hash = codehash_mod.code_hash
    monkeypatch.setattr(html, "code_hash", lambda *m, **k: "edited figure code" + real_hash(*m, **k))
    write_report(again.path)
    assert drawn == [1, 1]  # the figure code changed: drawn again

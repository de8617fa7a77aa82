"""The open seams: keys hash the code that computes a result (as syntax, through the import
graph), stages run in one generic loop, training jobs are JSON and run through executors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import workbench.codehash as codehash
from workbench.cache import ResultCache
from workbench.codehash import CodeIndex, code_hash
from workbench.registry import Registry
from workbench.runner import model_jobs, run_study
from workbench.stages import STAGES, TABLE_STEPS, Stage, StageOutput, TableStep, plan, run_stages, section_of
from workbench.study import study_from_dict
from workbench.training import TrainJob, plan_jobs
from conftest import CHEAP_CASCADE

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "seams",
    "data": {"name": "digits", "limit_train": 320},
    "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 16}}],
    "recipes": ["standard", {"name": "pgd_at", "eps": 0.1, "steps": 2}],
    "train": {"epochs": 2, "batch_size": 64, "monitor_examples": 32, "monitor_steps": 2},
    "evaluation": {"examples": 32, "eps": [0.1], "attacks": ["fgsm", {"name": "pgd", "steps": 2}],
                   "soundness": {"enabled": False}, "worst_case": CHEAP_CASCADE},
    "report": {"enabled": False},
}
DISTILLATION = {
    **TINY,
    "name": "seams-distillation",
    "recipes": ["standard", {"name": "distillation", "temperature": 20, "teacher_epochs": 1,
                             "train": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0}},
                {"name": "pgd_at", "eps": 0.1, "steps": 2}],
}


@pytest.fixture()
def package_copy(tmp_path, monkeypatch):
    """A copy of the workbench sources that the keys are computed from (edit it freely)."""
    dest = tmp_path / "workbench"
    shutil.copytree(ROOT / "workbench", dest, ignore=shutil.ignore_patterns("__pycache__"))

    def use() -> CodeIndex:
        index = CodeIndex(dest)
        monkeypatch.setattr(codehash, "installed", lambda: index)
        return index

    use()
    return dest, use


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _stage_hashes(study) -> dict[str, str]:
    return {s.name: code_hash(*s.code_modules(section_of(study, s))) for s in plan(study)}


def _model_keys(study, data_name_digest=None) -> dict[str, str]:
    # the data identity of a named data set does not need the data itself
    from workbench.training import data_identity

    ident = data_identity(study.data)
    return {spec.id: TrainJob(spec, ident, 0.1).key() for spec in study.models()}


QUICK = study_from_dict({**TINY, "evaluation": {**TINY["evaluation"], "soundness": {"enabled": True}},
                         "probes": {"lipschitz": {}, "linearity": {}, "saliency": {}, "cka": {}, "linear_probe": {}}})


def test_comments_docstrings_and_formatting_change_no_key(package_copy):
    dest, use = package_copy
    stages0, models0 = _stage_hashes(QUICK), _model_keys(QUICK)
    _edit(dest / "attacks" / "pgd.py", '"""Projected Gradient Descent', '"""Projected gradient descent, reworded')
    _edit(dest / "attacks" / "pgd.py", "    check_batch(x, y)\n", "    # a new comment\n    check_batch(x,   y)  # spaced\n")
    _edit(dest / "training" / "loop.py", "def lr_factor(", "# why the schedule is per batch\n\n\ndef lr_factor(")
    _edit(dest / "probes" / "cka.py", "def run_cka(ctx: ProbeContext)", "def run_cka(ctx: ProbeContext)  ")
    use()
    assert _stage_hashes(QUICK) == stages0
    assert _model_keys(QUICK) == models0


def test_attack_code_changes_every_model_and_result_that_uses_it(package_copy):
    dest, use = package_copy
    stages0, models0 = _stage_hashes(QUICK), _model_keys(QUICK)
    _edit(dest / "attacks" / "pgd.py", "    check_batch(x, y)\n", "    check_batch(x, y)\n    eps = eps * 1\n")
    use()
    stages1, models1 = _stage_hashes(QUICK), _model_keys(QUICK)
    # PGD-AT trains with PGD, every model is monitored with it; every stage but CKA runs it
    assert all(models1[m] != models0[m] for m in models0)
    assert {s for s in stages0 if stages1[s] != stages0[s]} == set(stages0) - {"probe:cka", "probe:saliency"}


def test_figure_and_html_code_change_no_stage_or_model_key(package_copy):
    dest, use = package_copy
    stages0, models0 = _stage_hashes(QUICK), _model_keys(QUICK)
    _edit(dest / "report" / "figures.py", "_KIND_STYLE = ", "FIGURE_TWEAK = 2\n_KIND_STYLE = ")
    # the components' own views (summary columns, notes) and the shared look of the figures
    for f in ("present.py", "evaluation/views.py", "probes/views.py"):
        _edit(dest / f, "\n\n\ndef ", "\n\n\ndef _unused_view():\n    return 1\n\n\ndef ")
    _edit(dest / "report" / "html.py", "def write_report(", "def _unused():\n    return 1\n\n\ndef write_report(")
    use()
    assert _stage_hashes(QUICK) == stages0 and _model_keys(QUICK) == models0
    # no stage imports report code at all
    index = codehash.installed()
    for s in plan(QUICK):
        assert not [m for m in index.closure(s.code_modules(section_of(QUICK, s))) if m.startswith("workbench.report")], s.name


def test_a_probe_change_invalidates_only_that_probe(package_copy):
    dest, use = package_copy
    stages0 = _stage_hashes(QUICK)
    _edit(dest / "probes" / "cka.py", "COLUMNS = [", "EXTRA = 0\nCOLUMNS = [")
    use()
    changed = {s for s, h in _stage_hashes(QUICK).items() if h != stages0[s]}
    assert changed == {"probe:cka"}


def test_import_graph_follows_reexports_not_whole_packages(tmp_path):
    pkg = tmp_path / "workbench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\nfrom .b import g\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    return 1\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    return 2\n")
    (pkg / "user.py").write_text("from .sub import f\n\ndef h():\n    from . import other\n    return f()\n")
    (pkg / "other.py").write_text("X = 1\n")
    index = CodeIndex(pkg)
    assert index.closure(["workbench.user"]) == ["workbench.other", "workbench.sub.a", "workbench.user"]
    h0 = index.hash("workbench.user")
    (pkg / "sub" / "b.py").write_text("def g():\n    return 3\n")
    assert CodeIndex(pkg).hash("workbench.user") == h0  # b is not used by user
    (pkg / "other.py").write_text("X = 2\n")  # imported inside a function: still a dependency
    assert CodeIndex(pkg).hash("workbench.user") != h0


# --------------------------------------------------------------------------- stages


class _Fake(Stage):
    def __init__(self, name, needs=(), order=0.0, value=1):
        self.name, self.needs, self.order, self.value, self.calls = name, tuple(needs), order, value, 0
        self.tables = {f"t_{name}": ("a fake table", {"v": "value"})}

    def code_modules(self, cfg):
        return [__name__]

    def run(self, cfg, ctx):
        self.calls += 1
        self.seen = sorted(ctx.needs)
        before = sum(float(o.tables[f"t_{n}"]["v"].sum()) for n, o in ctx.needs.items()
                     if n in self.needs and f"t_{n}" in o.tables)
        return StageOutput({f"t_{self.name}": pd.DataFrame({"v": [self.value + before]})},
                           artifacts={f"arrays/{self.name}.bin": bytes([self.value])})


class _Facts:
    """A fact source by hand: each fact's key is its value."""

    def __init__(self, **values):
        self.values = values

    def key(self, name):
        return self.values[name]

    def value(self, name):
        return self.values[name]


def test_generic_loop_plans_by_needs_runs_caches_and_writes_nothing(tmp_path):
    reg: Registry[Stage] = Registry("stage")
    late, early = _Fake("late", needs=("early",), order=0.0), _Fake("early", order=5.0, value=2)
    for s in (late, early):
        reg.register(s.name)(s)
    study = study_from_dict(TINY)
    stages = plan(study, reg)
    assert [s.name for s in stages] == ["early", "late"]  # needs beat order

    early.facts = ("seed",)
    facts = _Facts(seed=0)

    def go():
        return run_stages(stages, study, facts, ResultCache(tmp_path / "store"))

    r = go()
    assert r.tables["t_late"]["v"].tolist() == [1 + 2] and r.reused == []
    assert r.artifacts == {"arrays/early.bin": b"\x02", "arrays/late.bin": b"\x01"}
    assert not (tmp_path / "arrays").exists()  # the loop hands artifacts back; it writes no run folder
    r2 = go()
    assert r2.reused == ["early", "late"] and r2.artifacts == r.artifacts and (early.calls, late.calls) == (1, 1)
    pd.testing.assert_frame_equal(r2.tables["t_late"], r.tables["t_late"])
    assert r2.keys == r.keys
    # a change to what a needed stage reads reaches the stage that reads it, through its key
    facts.values["seed"] = 1
    early.value = 5
    r3 = go()
    assert r3.reused == [] and r3.tables["t_late"]["v"].tolist() == [1 + 5] and r3.keys["late"] != r.keys["late"]


def test_plan_rejects_a_missing_need():
    reg: Registry[Stage] = Registry("stage")
    reg.register("lonely")(_Fake("lonely", needs=("absent",)))
    with pytest.raises(ValueError, match="absent"):
        plan(study_from_dict(TINY), reg)


def test_a_registered_stage_runs_in_run_study_and_its_table_is_documented(tmp_path, monkeypatch):
    from workbench.tables import all_tables

    fake = _Fake("fake", needs=("evaluate",), order=50.0, value=7)
    monkeypatch.setitem(STAGES._entries, "fake", fake)
    monkeypatch.setitem(STAGES._tables, "fake", dict(fake.tables))

    class Doubled(TableStep):  # a step after the stages, given the facts it declares
        name, facts, order = "doubled", ("seed",), 15.0
        tables = {"t_doubled": ("twice the fake table", {"v": "value", "seed": "seed"})}

        def run(self, tables, ctx):
            assert "significance" in tables and "replicates" not in tables  # after the steps of lower order
            return {"t_doubled": tables["t_fake"].assign(v=lambda d: 2 * d["v"], seed=ctx.seed)}

    monkeypatch.setitem(TABLE_STEPS._entries, "doubled", Doubled())
    monkeypatch.setitem(TABLE_STEPS._tables, "doubled", dict(Doubled.tables))
    assert "t_fake" in all_tables() and list(all_tables())[-2:] == ["t_doubled", "replicates"]
    r = run_study(study_from_dict(TINY), tmp_path / "run", store=tmp_path / "store", progress=False, threads=1,
                  report=True)
    assert fake.calls == 1 and r.tables["t_fake"]["v"].tolist() == [7] and fake.seen == ["evaluate"]
    # the report was written in the staging folder; its provenance names the published one
    page = (tmp_path / "run" / "index.html").read_text()
    assert str((tmp_path / "run").resolve()) in page and ".staging" not in page
    assert r.tables["t_doubled"]["v"].tolist() == [14] and (tmp_path / "run" / "tables" / "t_doubled.parquet").is_file()
    assert (tmp_path / "run" / "arrays" / "fake.bin").read_bytes() == b"\x07"
    assert (tmp_path / "run" / "tables" / "t_fake.parquet").is_file()
    keys = json.loads((tmp_path / "run" / "run.json").read_text())["result_keys"]
    meta = json.loads((tmp_path / "store" / "results" / keys["fake"] / "meta.json").read_text())
    assert meta["inputs"]["needs"] == {"evaluate": keys["evaluate"]}


# --------------------------------------------------------------------------- training jobs


def test_train_job_round_trips_through_json_with_its_key():
    study = study_from_dict(DISTILLATION)
    from workbench.training import data_identity

    for job in [TrainJob(s, data_identity(study.data), 0.1, source={"data": {"name": "digits"}, "seed": 0})
                for s in study.models()]:
        again = TrainJob.from_json(job.to_json())
        assert again == job and again.key() == job.key()
        json.loads(job.to_json())  # plain JSON


def test_distillation_declares_its_teacher_and_the_planner_puts_it_first():
    study = study_from_dict(DISTILLATION)
    from workbench.training import data_identity

    jobs = [TrainJob(s, data_identity(study.data), 0.1) for s in study.models()]
    planned = plan_jobs(jobs)
    ids = [j.id for j in planned]
    assert ids == ["small_cnn/standard", "small_cnn/distillation:teacher", "small_cnn/distillation", "small_cnn/pgd_at"]
    teacher = planned[1]
    assert teacher.train_config.epochs == 1 and jobs[1].train_config.epochs == 2
    assert teacher.key() not in {j.key() for j in jobs}
    assert plan_jobs(jobs + jobs) == planned  # each job once


TIMES = ("seconds", "train_seconds")


def _comparable(tables):
    out = {}
    for name, df in tables.items():
        drop = [c for c in (*TIMES, "cached") if c in df.columns]
        out[name] = df.drop(columns=drop)
    return out


@pytest.mark.slow
def test_two_processes_train_the_same_models_as_one(tmp_path):
    study = study_from_dict(DISTILLATION)
    one = run_study(study, tmp_path / "one", store=tmp_path / "s1", progress=False, threads=1)
    # each worker trains with the run's --threads (not a share of it), as the in-process run did
    two = run_study(study, tmp_path / "two", store=tmp_path / "s2", progress=False, threads=1, jobs=2)
    assert not one.tables["models"].cached.any() and not two.tables["models"].cached.any()
    a, b = _comparable(one.tables), _comparable(two.tables)
    assert sorted(a) == sorted(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)
    for mid, t in one.models.items():  # the weights themselves, bit for bit
        for (k, v), (k2, v2) in zip(t.model.state_dict().items(), two.models[mid].model.state_dict().items()):
            assert k == k2 and torch.equal(v, v2), (mid, k)
    # the teacher was trained once, as its own job, and is in the store
    teacher = [j for j in plan_jobs(model_jobs(study, one.data)) if j.role == "teacher"]
    assert len(teacher) == 1 and (tmp_path / "s2" / "models" / teacher[0].key() / "model.pt").is_file()


def test_the_runner_names_no_stage_and_no_table_step():
    """The runner plans and runs what is registered: no stage, step or stage table is named in it."""
    import ast

    from workbench.stages import table_steps

    tree = ast.parse((ROOT / "workbench" / "runner.py").read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    names = set(STAGES.in_order()) | {s.name for s in table_steps()}
    tables = {t for n in STAGES.in_order() for t in STAGES.get(n).tables} | {t for s in table_steps() for t in s.tables}
    assert not strings & (names | tables), sorted(strings & (names | tables))

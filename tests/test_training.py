"""Training recipes, pairing, the model store (cache, checkpoints, corruption) and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from workbench.errors import CheckpointError, StudyError
from workbench.runner import load_study_data
from workbench.store import ModelStore
from workbench.study import study_from_dict
from workbench.training import RECIPES, TrainJob, build_model, fit
from workbench.training import loop as loop_mod
from workbench.training.loop import cycle_momentum, data_identity, lr_factor

ROOT = Path(__file__).resolve().parents[1]

RECIPE_CFGS = {
    "standard": {"name": "standard"},
    "pgd_at": {"name": "pgd_at", "eps": 0.1, "steps": 3},
    "fgsm_rs": {"name": "fgsm_rs", "eps": 0.1},
    "trades": {"name": "trades", "eps": 0.1, "steps": 3},
    "distillation": {"name": "distillation", "temperature": 20},
    "robust_features": {"name": "robust_features", "set": "d_r", "source": {"name": "standard"}, "steps": 3},
}


def tiny_study(recipes=("standard",), **over):
    raw = {
        "name": "tiny",
        "data": {"name": "digits", "limit_train": 256},
        "architectures": [{"name": "small_cnn", "options": {"width": 8, "fc": 32}}],
        "recipes": [RECIPE_CFGS[r] for r in recipes],
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "monitor_examples": 64, "monitor_steps": 3},
        "evaluation": {"examples": 64, "eps": [0.1], "attacks": ["fgsm", {"name": "pgd", "steps": 3}],
                       "soundness": {"enabled": False}},
        "report": {"enabled": False},
    }
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return study_from_dict(raw)


@pytest.fixture(scope="module")
def digits():
    return load_study_data(tiny_study(), torch.device("cpu"))


def job_for(study, i=0):
    spec = study.models()[i]
    return TrainJob(spec, data_identity(study.data), study.main_eps())


def test_registry_lists_every_recipe():
    assert set(RECIPE_CFGS) == set(RECIPES.names())


@pytest.mark.parametrize("name", sorted(RECIPE_CFGS))
def test_every_recipe_trains_without_nan(name, digits, tmp_path):
    study = tiny_study(("standard", name) if name != "standard" else ("standard",))
    job = job_for(study, len(study.recipes) - 1)
    before = build_model(job.spec, digits).state_dict()
    out = fit(job, digits, ModelStore(tmp_path))
    hist = out.history
    assert len(hist) == 2 and hist[["train_loss", "train_acc", "val_acc"]].notna().all().all()
    assert all(torch.isfinite(v).all() for v in out.model.state_dict().values() if v.is_floating_point())
    changed = any(not torch.equal(before[k], v) for k, v in out.model.state_dict().items())
    assert changed, "training did not change the weights"
    assert "val_robust_acc" in hist  # robust accuracy on the held-out batch every epoch


def test_paired_models_share_initial_weights_and_data_order(digits, tmp_path, monkeypatch):
    study = tiny_study(("standard", "pgd_at"))
    a, b = (build_model(s, digits) for s in study.models())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    seeds: dict[str, list] = {}
    real = loop_mod.iterate_batches

    def spy(*args, seed=None, **kw):
        seeds.setdefault(current, []).append(seed)
        return real(*args, seed=seed, **kw)

    monkeypatch.setattr(loop_mod, "iterate_batches", spy)
    for i, current in enumerate(["standard", "pgd_at"]):
        fit(job_for(study, i), digits, ModelStore(tmp_path))
    assert seeds["standard"] == seeds["pgd_at"] and len(set(seeds["standard"])) == 2  # same order, new each epoch


def test_cache_reuse_and_keys(digits, tmp_path):
    store = ModelStore(tmp_path)
    study = tiny_study(("standard", "pgd_at"))
    first = fit(job_for(study, 1), digits, store)
    again = fit(job_for(study, 1), digits, store)
    assert not first.cached and again.cached
    assert all(torch.equal(x, y) for x, y in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    pd.testing.assert_frame_equal(first.history, again.history)
    # anything that determines the weights changes the key; labels do not
    other = tiny_study(("standard", "pgd_at"), train={"epochs": 3})
    assert job_for(other, 1).key() != job_for(study, 1).key()
    relabelled = study_from_dict({**study.to_dict(), "recipes": [RECIPE_CFGS["standard"], {**RECIPE_CFGS["pgd_at"], "label": "madry"}]})
    assert job_for(relabelled, 1).key() == job_for(study, 1).key()
    # monitoring (ε, examples, steps) does not change the weights but is what the history
    # records: another main ε is another model entry, so a study's history is its own (issue 22)
    spec = study.models()[0]
    a = TrainJob(spec, data_identity(study.data), 0.1)
    b = TrainJob(spec, data_identity(study.data), 0.3)
    assert a.key() != b.key()


def test_corrupt_model_and_checkpoint_are_reported(digits, tmp_path):
    store = ModelStore(tmp_path)
    job = job_for(tiny_study())
    fit(job, digits, store)
    path = store.entry(job.key()) / "model.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        fit(job, digits, store)
    # --retrain moves the bad entry aside (nothing deleted) and trains anew
    out = fit(job, digits, store, retrain=True)
    assert not out.cached and list(tmp_path.glob("models/*.bad-*"))
    (store.entry(job.key()) / "model.pt").unlink()
    (store.entry(job.key()) / "meta.json").unlink()
    (store.entry(job.key()) / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        fit(job, digits, store)


def test_lr_schedules():
    t = tiny_study().train
    cos = t.model_copy(update={"schedule": "cosine"})
    assert lr_factor(cos, 0, 100) == 1.0 and lr_factor(cos, 50, 100) == pytest.approx(0.5) and lr_factor(cos, 100, 100) == pytest.approx(0)
    one = t.model_copy(update={"schedule": "onecycle", "onecycle_pct": 0.4})
    assert lr_factor(one, 0, 100) == 0 and lr_factor(one, 40, 100) == pytest.approx(1) and lr_factor(one, 70, 100) == pytest.approx(0.5)
    step = t.model_copy(update={"schedule": "step", "milestones": (0.5, 0.75), "gamma": 0.1})
    assert [lr_factor(step, s, 100) for s in (10, 60, 80)] == pytest.approx([1, 0.1, 0.01])


@pytest.mark.parametrize("name", sorted(RECIPE_CFGS))
def test_every_recipe_trains_in_bf16_on_the_cpu(name, digits, tmp_path):
    # train.precision: bf16 autocasts on the CPU too (it used to be silently ignored there)
    study = tiny_study(("standard", name) if name != "standard" else ("standard",), train={"epochs": 1})
    job = job_for(study, len(study.recipes) - 1)
    bf16 = tiny_study(("standard", name) if name != "standard" else ("standard",), train={"epochs": 1, "precision": "bf16"})
    job16 = job_for(bf16, len(bf16.recipes) - 1)
    assert job16.key() != job.key()
    out32 = fit(job, digits, ModelStore(tmp_path))
    out16 = fit(job16, digits, ModelStore(tmp_path))
    assert out16.history["train_loss"].notna().all()
    assert all(torch.isfinite(v).all() for v in out16.model.state_dict().values() if v.is_floating_point())
    # same seed, data order and initial weights: only the precision differs, and it shows
    w16, w32 = out16.model.state_dict(), out32.model.state_dict()
    assert any(not torch.equal(w16[k], w32[k]) for k in w32 if w32[k].is_floating_point())
    assert all(v.dtype != torch.bfloat16 for v in out16.model.state_dict().values())  # weights stay float32
    with loop_mod._autocast(torch.device("cpu"), "bf16"):
        assert out16.model(digits.test_x[:2]).dtype == torch.bfloat16


def test_onecycle_with_cycled_momentum_is_torchs_cyclic_lr_step_for_step():
    # Wong et al.'s code: CyclicLR(base_lr=0, max_lr=0.2, step_size_up=total/2, step_size_down=total/2)
    # with its default momentum cycling 0.9 -> 0.8 -> 0.9. Ours must give the same lr and
    # momentum at every optimiser step.
    from workbench.study import TrainConfig

    total = 40
    t = TrainConfig(schedule="onecycle", lr=0.2, onecycle_pct=0.5, onecycle_momentum=(0.8, 0.9))
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([p1], lr=t.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(ours, lambda s: lr_factor(t, s, total))
    cycle_momentum(ours, t)
    ref = torch.optim.SGD([p2], lr=0.2, momentum=0.9)
    ref_sched = torch.optim.lr_scheduler.CyclicLR(ref, base_lr=0.0, max_lr=0.2, step_size_up=total / 2, step_size_down=total / 2)
    for _ in range(total):
        assert ours.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], abs=1e-12)
        assert ours.param_groups[0]["momentum"] == pytest.approx(ref.param_groups[0]["momentum"], abs=1e-12)
        ours.step(), ref.step()
        sched.step(), ref_sched.step()
        cycle_momentum(ours, t)
    fixed = t.model_copy(update={"onecycle_momentum": None})
    cycle_momentum(ours, fixed)  # unset: momentum is left alone
    assert ours.param_groups[0]["momentum"] == pytest.approx(0.9)


def test_cycled_momentum_validation_and_model_key():
    study = tiny_study()
    with pytest.raises(StudyError, match="onecycle_momentum needs schedule: onecycle"):
        tiny_study(train={"epochs": 1, "onecycle_momentum": [0.8, 0.9]})
    with pytest.raises(StudyError, match="low <= high"):
        tiny_study(train={"epochs": 1, "schedule": "onecycle", "onecycle_momentum": [0.9, 0.8]})
    spec = study.models()[0]
    plain = TrainJob(spec, data_identity(study.data), 0.1)
    assert "onecycle_momentum" not in plain.identity()["train"]  # unset: keys of earlier versions stand
    cyc = tiny_study(train={"epochs": 1, "schedule": "onecycle", "onecycle_momentum": [0.8, 0.9]}).models()[0]
    assert TrainJob(cyc, data_identity(study.data), 0.1).identity()["train"]["onecycle_momentum"] == [0.8, 0.9]


# --------------------------------------------------------------------------- processes


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT, **kw)


STUDY_YAML = """
name: resume
data: {name: digits, limit_train: 400}
architectures: [{name: small_cnn, options: {width: 8, fc: 32}}]
recipes: [{name: pgd_at, eps: 0.1, steps: 3}]
train: {epochs: 6, batch_size: 64, lr: 0.05, monitor_examples: 64, monitor_steps: 3}
evaluation: {examples: 100, eps: [0.1], attacks: [fgsm, {name: pgd, steps: 5}], soundness: {enabled: false}}
report: {enabled: false}
"""


def test_resume_after_kill_gives_the_same_metrics(tmp_path):
    study = tmp_path / "resume.yaml"
    study.write_text(STUDY_YAML)
    # uninterrupted reference
    ref = _cli("run", study, "--out", tmp_path / "ref", "--store", tmp_path / "s1", "-q", timeout=300)
    assert ref.returncode == 0, ref.stderr
    # killed after some epochs (a slowed-down copy widens the window), then resumed
    env = {"WORKBENCH_TEST_EPOCH_DELAY": "1.0"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "run", str(study), "--out", str(tmp_path / "run"),
                             "--store", str(tmp_path / "s2"), "-q"], env={**os.environ, **env}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "s2" / "models"
    deadline = time.time() + 240
    while time.time() < deadline and not any(
        p.is_file() and torch.load(p, weights_only=True)["epoch"] >= 2 for p in ckpts.glob("*/checkpoint.pt")
    ):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(ckpts.glob("*/model.pt")), "training finished before it could be killed"
    resumed = _cli("run", study, "--out", tmp_path / "run", "--store", tmp_path / "s2", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    models = pd.read_parquet(tmp_path / "run" / "tables" / "models.parquet")
    assert models.resumed_from_epoch.iloc[0] >= 2
    a = pd.read_parquet(tmp_path / "ref" / "tables" / "robustness.parquet").drop(columns="seconds")
    b = pd.read_parquet(tmp_path / "run" / "tables" / "robustness.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    ha = pd.read_parquet(tmp_path / "ref" / "tables" / "history.parquet").drop(columns="seconds")
    hb = pd.read_parquet(tmp_path / "run" / "tables" / "history.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(ha, hb)


def test_two_processes_share_a_store(tmp_path):
    study = tmp_path / "resume.yaml"
    study.write_text(STUDY_YAML.replace("epochs: 6", "epochs: 2"))
    procs = [
        subprocess.Popen([sys.executable, "-m", "workbench.cli", "run", str(study), "--out", str(tmp_path / f"r{i}"),
                          "--store", str(tmp_path / "shared"), "-q"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    for p in procs:
        p.wait(timeout=300)
        assert p.returncode == 0, p.stderr.read()
    cached = [pd.read_parquet(tmp_path / f"r{i}" / "tables" / "models.parquet").cached.iloc[0] for i in range(2)]
    assert sorted(cached) == [False, True]  # one trained, the other waited and reused
    a, b = (pd.read_parquet(tmp_path / f"r{i}" / "tables" / "robustness.parquet").drop(columns="seconds") for i in range(2))
    pd.testing.assert_frame_equal(a, b)


def test_fixed_batches_are_class_stratified_on_class_sorted_data(digits, tmp_path, monkeypatch):
    """An imagefolder set is stored class by class; the overfitting check and the monitor
    must still see every class (the first 256 CIFAR-10 images are all airplanes)."""
    import dataclasses

    from workbench.training.loop import FitContext

    order = torch.argsort(digits.train_y, stable=True)
    sorted_data = dataclasses.replace(digits, train_x=digits.train_x[order], train_y=digits.train_y[order],
                                      val_x=digits.val_x[:0], val_y=digits.val_y[:0])
    assert sorted_data.train_y[:64].unique().numel() <= 3  # the old first-n batch saw at most 3 classes
    study = tiny_study(("fgsm_rs",), train={"batch_size": 64, "epochs": 1, "monitor_examples": 40})
    store = ModelStore(tmp_path / "store")
    x, y = FitContext(job_for(study), sorted_data, store, torch.device("cpu")).check_batch()
    counts = torch.bincount(y, minlength=10)
    assert len(y) == 256 and (counts >= 25).all() and (counts <= 26).all()
    x2, _ = FitContext(job_for(study), sorted_data, store, torch.device("cpu")).check_batch()
    assert torch.equal(x, x2)  # seeded: the same batch every epoch and every run

    seen = {}
    real_pgd = loop_mod.pgd

    def spy(model, x, y, *a, **k):
        seen.setdefault("y", y.clone())
        return real_pgd(model, x, y, *a, **k)

    monkeypatch.setattr(loop_mod, "pgd", spy)
    fit(job_for(study), sorted_data, store, "cpu")
    assert torch.bincount(seen["y"], minlength=10).min() >= 4  # the monitor batch (40 examples) has every class

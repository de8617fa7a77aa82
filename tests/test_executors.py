"""Every executor trains what the in-process run trains: one data path (a streamed study
stays streamed in the workers) and one threads setting (--threads, then $WORKBENCH_THREADS,
then the default) in every process that trains; the same weights and tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.runner import run_study
from workbench.store import ModelStore
from workbench.study import load_study, study_from_dict

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {"seconds", "train_seconds", "cached", "resumed_from_epoch"}
TINY = ["data.limit_train=96", "data.limit_test=32", "train.epochs=1", "recipes=[standard]",
        "evaluation.examples=32", "evaluation.attacks=[fgsm]", "evaluation.soundness.enabled=false", "probes={}",
        "evaluation.worst_case.apgd=false"]  # the AutoAttack cascade is test_worst_case's; here it only costs minutes


def _same_tables(a, b) -> None:
    assert set(a.tables) == set(b.tables)
    for name, want in a.tables.items():
        cols = [c for c in want.columns if c not in VOLATILE]
        pd.testing.assert_frame_equal(want[cols], b.tables[name][cols], check_exact=True, obj=name)


def _same_weights(store_a: Path, store_b: Path, keys) -> list[dict]:
    metas = []
    for key in keys:
        want, _ = ModelStore(store_a).load_model(key)
        have, meta = ModelStore(store_b).load_model(key)
        for k, v in want.items():
            assert torch.equal(v, have[k]), (key, k)
        metas.append(meta)
    return metas


def _folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / split / c / f"{k}.png")
    return root


def test_two_jobs_on_a_streamed_study_stream_in_the_workers_and_give_the_in_process_tables(tmp_path, monkeypatch):
    # The workers load the data through the runner's one function: streamed, as the study says
    # (they used to drop stream/workers/decode and decode the whole folder into memory,
    # caching it as imagefolder-*.pt, which a streamed run never writes).
    monkeypatch.setenv("WORKBENCH_DATA_CACHE", str(tmp_path / "cache"))  # the data caches; inherited by the workers
    study = study_from_dict({
        "name": "streamed", "seed": 1,
        "data": {"name": "imagefolder", "root": str(_folder(tmp_path / "imgs")), "val_fraction": 0.2, "stream": True,
                 "workers": 0},
        "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 16}}],
        "recipes": ["standard", {"name": "pgd_at", "eps": 0.05, "steps": 2}],
        "train": {"epochs": 1, "batch_size": 8, "monitor_examples": 8, "monitor_steps": 2},
        "evaluation": {"examples": 8, "eps": [0.05], "attacks": ["fgsm"], "soundness": {"enabled": False}},
        "probes": {}, "report": {"enabled": False},
    })
    kw = dict(device="cpu", progress=False, report=False, threads=1)
    ref = run_study(study, tmp_path / "inprocess", store=tmp_path / "s1", **kw)
    got = run_study(study, tmp_path / "jobs", store=tmp_path / "s2", jobs=2, **kw)
    assert not list((tmp_path / "cache").rglob("imagefolder-*.pt")), "a worker decoded the streamed folder into memory"
    assert list((tmp_path / "cache").rglob("stream-*.json"))
    _same_weights(tmp_path / "s1", tmp_path / "s2", ref.tables["models"]["key"])
    _same_tables(ref, got)


@pytest.mark.parametrize("executor", ["processes", "local"])
def test_executors_train_with_the_runs_threads_setting_from_the_environment(executor, tmp_path, monkeypatch):
    # Only $WORKBENCH_THREADS is set (no --threads): the in-process run and every process or
    # job that trains use it. 3 is neither this machine's default (half its cores) nor a
    # share of it among 2 processes, nor torch's own default in a fresh process.
    if executor == "local":
        pytest.importorskip("submitit")
    monkeypatch.setenv("WORKBENCH_THREADS", "3")
    study = load_study(ROOT / "studies" / "quickstart.yaml", TINY + ["recipes=[standard, {name: pgd_at, eps: 0.2, steps: 2}]"])
    before = torch.get_num_threads()
    ref = run_study(study, tmp_path / "inprocess", store=tmp_path / "s1", device="cpu", progress=False, report=False)
    if executor == "local":
        from workbench.cluster import ClusterOptions, LocalExecutor

        ex = LocalExecutor(options=ClusterOptions(kind="local", parallel=2, poll_s=0.3))
        got = run_study(study, tmp_path / "other", store=tmp_path / "s2", device="cpu", progress=False, report=False,
                        executor=ex)
    else:
        got = run_study(study, tmp_path / "other", store=tmp_path / "s2", device="cpu", progress=False, report=False,
                        jobs=2)
    assert torch.get_num_threads() == before  # the run restored this process's setting
    keys = list(ref.tables["models"]["key"])
    assert [m["threads"] for m in _same_weights(tmp_path / "s1", tmp_path / "s1", keys)] == [3, 3]
    assert [m["threads"] for m in _same_weights(tmp_path / "s1", tmp_path / "s2", keys)] == [3, 3]
    _same_tables(ref, got)

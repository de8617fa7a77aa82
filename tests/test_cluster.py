"""Study grids as submitit jobs: the local executor gives the in-process tables; a killed job
is reported with its log and resumed by resubmission; the sbatch file carries the options."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("submitit")

from workbench.cluster import ClusterDriver, ClusterOptions, TrainTask  # noqa: E402
from workbench.grid import run_grid  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.runner import load_study_data, model_jobs, run_study  # noqa: E402
from workbench.store import ModelStore  # noqa: E402
from workbench.study import load_study  # noqa: E402
from workbench.training import fit  # noqa: E402
from conftest import CHEAP_CASCADE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the distillation study's grid, shrunk (3 models, the student with its teacher)
SMALL = ["data.limit_train=192", "data.limit_test=64", "train.epochs=2",
         "recipes=[standard, {name: pgd_at, eps: 0.2, steps: 2}, {name: distillation, temperature: 100, "
         "train: {optimizer: adam, lr: 0.01, weight_decay: 0}}]",
         "evaluation.attacks=[fgsm, {name: pgd, steps: 2, restarts: 1}]", "evaluation.soundness.enabled=false",
         f"evaluation.worst_case.attacks=[{', '.join(CHEAP_CASCADE['attacks'])}]"]
#: columns that legitimately differ between two runs (wall times, how a model was obtained)
VOLATILE = {"seconds", "train_seconds", "cached", "resumed_from_epoch"}


def _small_distillation():
    return load_study(ROOT / "studies" / "distillation.yaml", SMALL)


def _tables(run: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted((run / "tables").glob("*.parquet"))}


def test_local_executor_grid_gives_the_in_process_tables(tmp_path: Path) -> None:
    study = _small_distillation()
    torch.set_num_threads(1)
    ref = run_study(study, tmp_path / "inprocess", store=tmp_path / "s1", device="cpu", progress=False, report=False,
                    threads=1)
    opts = ClusterOptions.from_study(study, "local", parallel=2, threads=1)
    opts.poll_s = 0.5
    path = run_grid(study, tmp_path / "grid", opts, store=tmp_path / "s2", report=False)
    got, want = _tables(path), _tables(ref.path)
    assert set(got) == set(want) and {"robustness", "history", "models", "per_example"} <= set(got)
    for name in want:
        a, b = want[name], got[name]
        cols = [c for c in a.columns if c not in VOLATILE]
        pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True, obj=name)
    # the models came from the jobs (the stages job found them in the store)
    assert got["models"]["cached"].all()
    assert len(list((tmp_path / "s2" / "models").glob("*/model.pt"))) == 4  # 3 models and the teacher
    assert (tmp_path / "s2" / "jobs" / study.name / "board.json").exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's task through /proc (Linux)")
def test_killed_job_is_reported_and_resumed_by_resubmission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = load_study(ROOT / "studies" / "quickstart.yaml", [
        "data.limit_train=192", "train.epochs=4", "recipes=[standard]", "evaluation.examples=32"])
    data = load_study_data(study, torch.device("cpu"))
    (job,) = model_jobs(study, data)
    store = tmp_path / "store"
    opts = ClusterOptions(kind="local", threads=1, poll_s=0.3)
    driver = ClusterDriver(opts, store, study.name)
    monkeypatch.setenv("WORKBENCH_TEST_EPOCH_DELAY", "1.5")  # inherited by the job: a window for the kill
    s = driver._submit(f"train {job.id}", job.key(), TrainTask(job, study.to_dict(), str(store), False, 1), [], [])
    ckpt = store / "models" / job.key() / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= 1):
        assert not s.job.done(), Path(s.job.paths.stderr).read_text()[-2000:]
        time.sleep(0.2)
    # The job dies as on a node failure or an OOM kill: SIGKILL to the process that trains.
    # (submitit's cancel sends SIGINT to the job's controller, which a process started with
    # SIGINT ignored, e.g. from a background shell as in CI, inherits and ignores: the job then
    # went on to finish and was not reported as failed.)
    trainer = _children(int(s.job.job_id))
    assert trainer, "the job's controller started no task"
    for pid in trainer:
        os.kill(pid, signal.SIGKILL)
    # the state the driver reads: the job is done (its controller exits once its task died)
    deadline = time.time() + 60
    while not s.job.done() and time.time() < deadline:
        time.sleep(0.1)
    assert s.job.done(), "the killed job's controller did not exit"
    with pytest.raises(WorkbenchError) as err:
        driver._wait([s], lambda s, r: None)
    assert str(s.job.paths.stderr) in err.value.message and "resubmit" in err.value.message
    assert not (store / "models" / job.key() / "model.pt").exists()

    monkeypatch.delenv("WORKBENCH_TEST_EPOCH_DELAY")
    results = driver.train([job], study.to_dict())
    assert results[job.key()]["resumed_from_epoch"] >= 1
    torch.set_num_threads(1)
    whole = fit(job, data, ModelStore(tmp_path / "whole"), "cpu")
    resumed, _ = ModelStore(store).load_model(job.key())
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed[k]), k


def test_submitit_executors_are_registered_executors_and_train_as_in_process(tmp_path: Path) -> None:
    from workbench.cluster import LocalExecutor, SlurmExecutor
    from workbench.executors import EXECUTORS, Executor, make_executor

    assert EXECUTORS.get("slurm") is SlurmExecutor and EXECUTORS.get("local") is LocalExecutor
    assert all(issubclass(EXECUTORS.get(n), Executor) for n in EXECUTORS.names())
    assert isinstance(make_executor("slurm"), SlurmExecutor)
    # run_study trains through the local executor's jobs (the stages run in this process):
    # the same weights, and so the same tables, as in-process training
    study = load_study(ROOT / "studies" / "quickstart.yaml", [
        "data.limit_train=96", "train.epochs=1", "recipes=[standard]", "evaluation.examples=32",
        "evaluation.attacks=[fgsm]", "evaluation.soundness.enabled=false", "probes={}"])
    torch.set_num_threads(1)
    ref = run_study(study, tmp_path / "inprocess", store=tmp_path / "s1", device="cpu", progress=False, report=False,
                    threads=1)
    opts = ClusterOptions(kind="local", threads=1, poll_s=0.3)
    got = run_study(study, tmp_path / "local", store=tmp_path / "s2", device="cpu", progress=False, report=False,
                    threads=1, executor=LocalExecutor(options=opts))
    assert list((tmp_path / "s2" / "jobs").glob("jobs-*/board.json"))  # trained by a submitit job
    (key,) = got.tables["models"]["key"]
    want, _ = ModelStore(tmp_path / "s1").load_model(key)
    have, _ = ModelStore(tmp_path / "s2").load_model(key)
    for k, v in want.items():
        assert torch.equal(v, have[k]), k
    cols = [c for c in ref.tables["robustness"].columns if c not in VOLATILE]
    pd.testing.assert_frame_equal(ref.tables["robustness"][cols], got.tables["robustness"][cols], check_exact=True)
    with pytest.raises(ValueError):
        LocalExecutor(options=ClusterOptions(kind="slurm"))


def test_sbatch_file_has_the_study_and_command_line_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # no srun on this machine
    study = load_study(ROOT / "studies" / "imagenet_pgd_at.yaml",
                       ["cluster.slurm={account: vision, qos: high, reservation: wb}"])
    opts = ClusterOptions.from_study(study, "slurm", partition="gpu-long", time_min=600)
    script = ClusterDriver(opts, tmp_path, study.name).sbatch_script("train x", after=["101", "102"])
    for line in ("#SBATCH --partition=gpu-long", "#SBATCH --time=600", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --ntasks-per-node=8", "#SBATCH --cpus-per-task=10", "#SBATCH --mem=480GB",
                 "#SBATCH --account=vision", "#SBATCH --qos=high", "#SBATCH --reservation=wb",
                 "#SBATCH --dependency=afterok:101:102"):
        assert line in script, (line, script)
    # the stages job is one process on one GPU, after the training jobs
    stages = ClusterDriver(opts, tmp_path, study.name).sbatch_script("stages", after=["101"])
    assert "#SBATCH --ntasks-per-node=1" in stages and "#SBATCH --gpus-per-node=1" in stages
    with pytest.raises(WorkbenchError, match="--executor"):
        ClusterOptions.from_study(study, "kubernetes")

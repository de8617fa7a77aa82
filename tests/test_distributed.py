"""Data-parallel training on the CPU: two gloo processes (torch.multiprocessing spawn), each
with half of every global batch, against one process with the whole batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from workbench.store import ModelStore
from workbench.study import study_from_dict
from workbench.training import TrainJob, fit
from workbench.training.loop import data_identity

#: the two-rank run adds two half-batch mean gradients where one process takes the mean of
#: the whole batch: equal up to float32 rounding, which a few dozen SGD steps grow to ~1e-6
WEIGHT_ATOL = 1e-4
LOSS_ATOL = 1e-4


def _study(recipe: dict, arch: dict):
    return study_from_dict({
        "name": "ddp",
        "data": {"name": "digits", "limit_train": 128, "augment": {"crop_padding": 1, "flip": True}},
        "architectures": [arch],
        "recipes": [recipe],
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "monitor_examples": 64, "monitor_steps": 2},
        "evaluation": {"examples": 32, "eps": [0.1], "soundness": {"enabled": False}},
        "report": {"enabled": False},
    })


CASES = {
    "standard-mlp": ({"name": "standard"}, {"name": "mlp", "options": {"hidden": [32]}}),
    "pgd_at-cnn": ({"name": "pgd_at", "eps": 0.1, "steps": 2}, {"name": "small_cnn", "options": {"width": 4, "fc": 16}}),
}


def _fit(case: str, store: Path):
    from workbench.runner import load_study_data

    study = _study(*CASES[case])
    data = load_study_data(study, torch.device("cpu"))
    job = TrainJob(study.models()[0], data_identity(study.data, data), 0.1)
    return fit(job, data, ModelStore(store), "cpu")


def _rank(rank: int, world: int, port: int, store: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from workbench import distributed

    distributed.setup(torch.device("cpu"))
    try:
        for case in CASES:  # one spawn for all cases: starting the processes is most of the cost
            t = _fit(case, Path(store) / case)
            torch.save({"state": t.model.state_dict(), "history": t.history.to_dict("list")},
                       Path(out) / f"{case}-rank{rank}.pt")
        from workbench.runner import run_study

        run = run_study(_study(*CASES["standard-mlp"]), Path(out) / "run", store=Path(store) / "standard-mlp",
                        device="cpu", progress=False, report=False, threads=1)
        (Path(out) / f"run-rank{rank}.txt").write_text(",".join(sorted(run.tables)))
    finally:
        distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(2, _free_port(), str(out / "store-ddp"), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_ranks_train_as_one_process(case: str, ddp_runs: Path, tmp_path: Path) -> None:
    r0, r1 = (torch.load(ddp_runs / f"{case}-rank{r}.pt", weights_only=False) for r in range(2))
    # the ranks stay in step: DDP averages gradients, so both hold the same weights
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # only rank 0 wrote the store
    assert len(list((ddp_runs / "store-ddp" / case).glob("models/*/model.pt"))) == 1

    torch.set_num_threads(1)
    one = _fit(case, tmp_path / "store-one")
    hist = r0["history"]
    if case.startswith("standard"):
        for k, v in one.model.state_dict().items():
            assert torch.allclose(r0["state"][k], v, atol=WEIGHT_ATOL), k
        for col in ("train_loss", "val_acc"):
            assert hist[col] == pytest.approx(list(one.history[col]), abs=LOSS_ATOL), col
        assert hist["train_acc"] == pytest.approx(list(one.history["train_acc"]), abs=2 / 128)
    else:
        # PGD's random starts come from each rank's own stream, so the adversarial examples
        # (and the metrics) differ from one process's within the noise of the random start
        assert hist["train_acc"] == pytest.approx(list(one.history["train_acc"]), abs=0.1)


def test_rank_zero_alone_writes_the_run_folder(ddp_runs: Path) -> None:
    # both ranks trained (the model came from the store the DDP fit above wrote); rank 0 did the rest
    assert (ddp_runs / "run-rank1.txt").read_text() == ""
    assert "robustness" in (ddp_runs / "run-rank0.txt").read_text().split(",")
    assert (ddp_runs / "run" / "tables" / "robustness.parquet").exists()
    import pandas as pd

    models = pd.read_parquet(ddp_runs / "run" / "tables" / "models.parquet")
    assert models["cached"].tolist() == [True]

"""Data-parallel training on the CPU: two gloo processes (torch.multiprocessing spawn), each
with half of every global batch, against one process with the whole batch."""

from __future__ import annotations

import contextlib
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
    "fgsm_rs-mlp": ({"name": "fgsm_rs", "eps": 0.1}, {"name": "mlp", "options": {"hidden": [32]}}),
    "trades-mlp": ({"name": "trades", "eps": 0.1, "steps": 2}, {"name": "mlp", "options": {"hidden": [32]}}),
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
    # adversarial recipes too: each rank's rows get the random starts one process draws for
    # them on the whole batch (attacks.base.global_batch_rows), so the adversarial examples,
    # hence the weights, are one process's up to float rounding
    for k, v in one.model.state_dict().items():
        assert torch.allclose(r0["state"][k], v, atol=WEIGHT_ATOL), k
    for col in ("train_loss", "val_acc"):
        assert hist[col] == pytest.approx(list(one.history[col]), abs=LOSS_ATOL), col
    assert hist["train_acc"] == pytest.approx(list(one.history["train_acc"]), abs=2 / 128)
    if "val_robust_acc" in one.history:  # the end-of-epoch PGD monitor: the same draws on every rank
        assert hist["val_robust_acc"] == pytest.approx(list(one.history["val_robust_acc"]), abs=2 / 64)


def test_rank_zero_alone_writes_the_run_folder(ddp_runs: Path) -> None:
    # both ranks trained (the model came from the store the DDP fit above wrote); rank 0 did the rest
    assert (ddp_runs / "run-rank1.txt").read_text() == ""
    assert "robustness" in (ddp_runs / "run-rank0.txt").read_text().split(",")
    assert (ddp_runs / "run" / "tables" / "robustness.parquet").exists()
    import pandas as pd

    models = pd.read_parquet(ddp_runs / "run" / "tables" / "models.parquet")
    assert models["cached"].tolist() == [True]


# --------------------------------------------------------------------------- sharded stages

#: the stages' tables; their rows are the same per-example outcomes however the batches (or,
#: for the per-model probes, the models) are split over ranks: compared exactly but for
#: float columns, to 1e-12 relative (they are computed from the same batches, in the same order)
STAGE_TABLES = ("robustness", "per_example", "transfer", "soundness", "soundness_per_example", "significance",
                "worst_case_cascade", "worst_case_per_example",
                "lipschitz", "logit_lipschitz", "linearity", "fgsm_pgd_gap", "loss_surface", "loss_slice",
                "linear_probe", "cka", "saliency_metrics", "saliency_agreement")
TIMING_COLUMNS = {"seconds"}


def _sharded_study():
    return study_from_dict({
        "name": "sharded",
        "data": {"name": "digits", "limit_train": 96},
        "architectures": [{"name": "mlp", "options": {"hidden": [16]}}],
        "recipes": [{"name": "standard"}, {"name": "fgsm_rs", "eps": 0.1}],
        "train": {"epochs": 1, "batch_size": 32, "monitor_examples": 32, "monitor_steps": 2},
        # 3 batches of the evaluation (2 on rank 0, 1 on rank 1), 2 of the checks; PGD with
        # random restarts, so a batch seeded by its rank instead of its position would differ
        "evaluation": {"examples": 40, "batch_size": 16, "eps": [0.1], "main_eps": 0.1,
                       "attacks": ["fgsm", {"name": "pgd", "steps": 3, "restarts": 2}],
                       "soundness": {"examples": 24}},
        "probes": {"examples": 24, "batch_size": 8,
                   "lipschitz": {"steps": 2, "feat_restarts": 1, "norms": ["linf"]},
                   "linearity": {"steps": 2, "pgd_steps": 2, "surface": {"examples": 2, "grid": 3}},
                   "linear_probe": {"train_examples": 48, "C": [1.0], "max_iter": 50, "steps": 2},
                   "cka": {"batch_size": 8},
                   "saliency": {"examples": 4, "ig_steps": 4, "smoothgrad_samples": 2, "infidelity_samples": 4,
                                "sensitivity_samples": 2}},
        "report": {"enabled": False},
    })


@contextlib.contextmanager
def _counting_pgd(path: Path):
    """PGD as registered, counting the examples it attacks into ``path``."""
    from workbench.attacks import ATTACKS

    orig, seen = ATTACKS.get("pgd"), [0]

    def counted(model, x, *args, **kwargs):
        seen[0] += len(x)
        return orig(model, x, *args, **kwargs)

    counted.__module__ = orig.__module__  # the same code, so the same result-cache keys
    ATTACKS._entries["pgd"] = counted
    try:
        yield
    finally:
        ATTACKS._entries["pgd"] = orig
        path.write_text(str(seen[0]))


@contextlib.contextmanager
def _recording_units(path: Path):
    """``distributed.run_sharded`` as it is, recording into ``path`` (JSON) which units this
    rank really computed, per ``what`` (with the model name cut off: the same work for every model)."""
    import json

    from workbench import distributed

    orig, seen = distributed.run_sharded, {}

    def recorded(n_units, compute, what):
        kind = what.split(" of ")[0]
        mine = seen.setdefault(kind, {"n": 0, "units": []})

        def logged(u, base=mine["n"]):
            mine["units"].append(base + u)
            return compute(u)

        mine["n"] += n_units
        return orig(n_units, logged, what)

    distributed.run_sharded = recorded
    try:
        yield
    finally:
        distributed.run_sharded = orig
        path.write_text(json.dumps(seen))


def _sharded_rank(rank: int, world: int, port: int, store: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from workbench import distributed
    from workbench.runner import run_study

    distributed.setup(torch.device("cpu"))
    try:
        # computed anew on both ranks (the models come from the store), then read from the cache
        for name, recompute in (("sharded", True), ("cached", False)):
            counting = name == "sharded"
            with (_counting_pgd(Path(out) / f"pgd-rank{rank}.txt") if counting else contextlib.nullcontext(),
                  _recording_units(Path(out) / f"units-rank{rank}.json") if counting else contextlib.nullcontext()):
                run = run_study(_sharded_study(), Path(out) / name, store=store, device="cpu", progress=False,
                                report=False, threads=1, recompute=recompute)
            (Path(out) / f"{name}-rank{rank}.txt").write_text(",".join(run.cached_stages))
    finally:
        distributed.teardown()


def _stage_tables(run: Path) -> dict:
    import pandas as pd

    return {t: pd.read_parquet(run / "tables" / f"{t}.parquet") for t in STAGE_TABLES}


def test_evaluation_and_probes_sharded_over_two_ranks_give_the_tables_of_one_process(tmp_path: Path) -> None:
    import pandas as pd

    from workbench.runner import run_study

    torch.set_num_threads(1)
    store = tmp_path / "store"
    with _counting_pgd(tmp_path / "pgd-one.txt"):
        one = run_study(_sharded_study(), tmp_path / "one", store=store, device="cpu", progress=False, report=False,
                        threads=1)
    assert not one.cached_stages
    mp.spawn(_sharded_rank, args=(2, _free_port(), str(store), str(tmp_path)), nprocs=2, join=True)
    # the first two-rank run computed every stage (nothing from the cache), the second reused them all
    assert (tmp_path / "sharded-rank0.txt").read_text() == ""
    cached = (tmp_path / "cached-rank0.txt").read_text().split(",")
    assert "evaluate" in cached and "probe:lipschitz" in cached and "soundness" in cached
    expected = _stage_tables(tmp_path / "one")
    pe = expected["per_example"]
    assert (pe.attack != "worst_case").sum() == 2 * 3 * 40  # the clean, FGSM and PGD outcome of every example
    for name in ("sharded", "cached"):
        got = _stage_tables(tmp_path / name)
        for table, want in expected.items():
            if table == "worst_case_per_example" and not len(want):
                # the cascade's per-example rows exist only where APGD had examples left to attack
                assert expected["worst_case_cascade"]["candidates"].sum() == 0, table
            else:
                assert len(want), table  # every table has rows to compare
            cols = [c for c in want.columns if c not in TIMING_COLUMNS]
            pd.testing.assert_frame_equal(got[table][cols], want[cols], check_exact=False, rtol=1e-12, atol=0,
                                          obj=f"{name}: {table}")
    # the work was split, not repeated: the two ranks together attacked as many examples with
    # PGD as the single process did, each some of them
    counts = [int((tmp_path / f"pgd-rank{r}.txt").read_text()) for r in range(2)]
    assert all(c > 0 for c in counts) and sum(counts) == int((tmp_path / "pgd-one.txt").read_text()), counts
    # and so was every sharded step's: each unit (a batch of examples, a chunk of resamples, a
    # model) computed by exactly one rank, and both ranks had a share of every kind
    import json

    units = [json.loads((tmp_path / f"units-rank{r}.json").read_text()) for r in range(2)]
    assert units[0].keys() == units[1].keys()
    assert {"the lipschitz probe", "the local linearity probe", "the gradient alignment probe", "the FGSM–PGD gap",
            "the logit Lipschitz estimate", "the saliency probe", "the CKA features", "the CKA bootstrap",
            "the linear probe", "the evaluation", "the soundness check more_steps"} <= units[0].keys(), units[0].keys()
    for kind in units[0]:
        a, b = (set(u[kind]["units"]) for u in units)
        assert units[0][kind]["n"] == units[1][kind]["n"], kind
        assert a and b and not a & b and a | b == set(range(units[0][kind]["n"])), (kind, a, b)


def _failing_rank(rank: int, world: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist

    from workbench import distributed
    from workbench.errors import WorkbenchError

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    # a short timeout: a rank left waiting in the collective fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))

    def compute(u: int) -> int:
        if u == 3:  # rank 1's second unit
            raise ValueError("unit 3 is broken")
        return u * u

    try:
        try:
            distributed.run_sharded(6, compute, "the test step")
            outcome = "returned"
        except WorkbenchError as e:
            outcome = f"WorkbenchError: {e.one_line()}"
        except ValueError as e:
            outcome = f"ValueError: {e}"
        # the ranks are still in step: a working call after the failed one
        values = distributed.run_sharded(5, lambda u: u + 1, "the next step")
        (Path(out) / f"fail-rank{rank}.txt").write_text(f"{outcome}\n{values}")
    finally:
        dist.destroy_process_group()


def test_an_error_on_one_rank_is_raised_on_every_rank_not_left_waiting(tmp_path: Path) -> None:
    mp.spawn(_failing_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = (tmp_path / "fail-rank0.txt").read_text().splitlines()
    rank1 = (tmp_path / "fail-rank1.txt").read_text().splitlines()
    assert rank0[0] == "WorkbenchError: the test step failed on rank 1: ValueError: unit 3 is broken"
    assert rank1[0] == "ValueError: unit 3 is broken"
    assert rank0[1] == rank1[1] == "[1, 2, 3, 4, 5]"


# --------------------------------------------------------------------------- the CLI under torchrun

CLI_STUDY = """
name: ddpcli
data: {name: digits, limit_train: 128}
architectures: [{name: mlp, options: {hidden: [16]}}]
recipes: [standard, {name: fgsm_rs, eps: 0.1}]
train: {epochs: 2, batch_size: 32, monitor_examples: 32, monitor_steps: 2}
evaluation:
  examples: 40
  batch_size: 16
  eps: [0.1]
  main_eps: 0.1
  attacks: [fgsm, {name: pgd, steps: 3, restarts: 2}]
  soundness: {examples: 24}
probes:
  examples: 24
  batch_size: 8
  lipschitz: {steps: 2, norms: [linf]}
  # one γ start: the models trained on two ranks equal one process's only to float rounding, and the
  # best of several starts can jump between optima at that distance (the sharded test above
  # checks several starts on identical models to 1e-12)
  linearity: {steps: 2, restarts: 1, pgd_steps: 2, surface: {examples: 2, grid: 3}}
  cka: {batch_size: 8, bootstrap: 200}
report: {enabled: false}
"""


def test_workbench_run_gpus_2_on_cpus_runs_under_torchrun_and_gives_the_tables_of_one_process(tmp_path: Path) -> None:
    """`workbench run --gpus 2` restarts itself under torchrun (gloo on CPUs): the study is
    trained with DistributedDataParallel and evaluated and probed on two ranks, and every
    table equals the one-process run's: the two ranks' half-batch gradients average to the
    whole batch's, up to float rounding, and FGSM-RS's random starts are one process's."""
    import json
    import subprocess
    import sys

    import pandas as pd

    study = tmp_path / "ddpcli.yaml"
    study.write_text(CLI_STUDY)

    def run(name: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "workbench.cli", "run", str(study), "--device", "cpu", "--threads", "1", "-q",
             "--out", str(tmp_path / name), *extra],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "WORKBENCH_STORE": str(tmp_path / f"store-{name}")},  # each trains its own model
        )

    one, two = run("one"), run("two", "--gpus", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "torch.distributed.run" in two.stderr and "--nproc-per-node=2" in two.stderr
    manifest = json.loads((tmp_path / "two" / "run.json").read_text())
    assert (manifest["processes"], manifest["backend"]) == (2, "gloo")
    assert json.loads((tmp_path / "one" / "run.json").read_text())["processes"] == 1
    want_tables = sorted(p.name for p in (tmp_path / "one" / "tables").glob("*.parquet"))
    assert want_tables == sorted(p.name for p in (tmp_path / "two" / "tables").glob("*.parquet"))
    assert {"history.parquet", "per_example.parquet", "lipschitz.parquet", "cka.parquet"} <= set(want_tables)
    skip = {"seconds", "train_seconds", "key", "cached"}
    for name in want_tables:
        a, b = pd.read_parquet(tmp_path / "one" / "tables" / name), pd.read_parquet(tmp_path / "two" / "tables" / name)
        cols = [c for c in a.columns if c not in skip]
        pd.testing.assert_frame_equal(b[cols], a[cols], check_exact=False, rtol=LOSS_ATOL, atol=LOSS_ATOL, obj=name)

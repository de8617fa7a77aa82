"""Reliability battery, second round (issue 22): the faults that clusters, shared stores,
changing data and user code produce. One parametrised test per class of fault; every case
builds its input in temporary folders, and each failed on commit 0714894 (docs/reliability.md
says what each did there).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# the tiny study's finished run and the per-case copies of it are test_reliability's fixtures
from test_reliability import TINY, Ctx, assert_one_line_error, base, ctx, invoke, no_staging_left, snapshot  # noqa: F401


def rerun(c: Ctx, *extra: object):
    return invoke("run", c.study, "--out", c.prev, "--store", c.store, "-q", *extra)


# --------------------------------------------------------------------------- 1. nothing outside a run's files


def _user_folder(c: Ctx, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "notes.txt").write_text("mine")
    (where / "index.html").write_text("<p>my page</p>")
    (where / "figures").mkdir(exist_ok=True)
    (where / "figures" / "plot.png").write_bytes(b"my figure")
    return where


def _started_at(value: str) -> Callable[[Ctx], tuple[Path, Callable[[], object]]]:
    """Rerun into a folder whose environment.json says ``started_at: value`` (a path, not a time)."""
    def case(c: Ctx):
        env = c.prev / "environment.json"
        data = json.loads(env.read_text())
        data["started_at"] = value
        env.write_text(json.dumps(data))
        before = snapshot(c.prev)
        res = rerun(c)
        assert res.exit_code == 0, res.stderr
        (archived,) = (c.prev / "archive").iterdir()  # the previous run, whole, in the archive
        assert snapshot(archived) == before
        return res
    return case


def _publish_marker(c: Ctx):
    """A staging folder left by a kill between the publish's renames, whose PUBLISH marker
    names a user's folder: finishing the publish must not move that folder's files."""
    mine = _user_folder(c, c.prev.parent / "mine")
    mine_before = snapshot(mine)
    staging = c.prev.parent / ".prev.staging-1-x"
    shutil.copytree(c.prev, staging / "prev")
    (staging / "prev" / "archive").mkdir()  # as publish makes it before its first rename
    (staging / "PUBLISH").write_text("../../mine")
    shutil.rmtree(c.prev)
    res = rerun(c)
    assert res.exit_code == 0, res.stderr
    assert snapshot(mine) == mine_before
    return res


def _compare_foreign(c: Ctx):
    """`compare --out DIR` where DIR is the user's own folder: refused, nothing touched."""
    other = c.tmp / "runs" / "other"
    shutil.copytree(c.prev, other)
    mine = _user_folder(c, c.tmp / "mine")
    before = snapshot(mine)
    res = invoke("compare", c.prev, other, "--out", mine)
    assert_one_line_error(res, str(mine), "no comparison")
    assert snapshot(mine) == before
    no_staging_left(c.tmp)
    return res


def _compare_again(c: Ctx):
    """A second comparison into the same folder archives the first, whole."""
    other = c.tmp / "runs" / "other"
    shutil.copytree(c.prev, other)
    out = c.tmp / "cmp"
    assert invoke("compare", c.prev, other, "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    first = {k: v for k, v in snapshot(out).items() if k != "notes.txt"}
    res = invoke("compare", c.prev, other, "--out", out)
    assert res.exit_code == 0, res.stderr
    (archived,) = (out / "archive").iterdir()
    assert snapshot(archived) == first and (out / "notes.txt").read_text() == "mine"
    assert (out / "index.html").is_file() and (out / "comparison.json").is_file()
    no_staging_left(c.tmp)
    return res


OUTSIDE: dict[str, Callable[[Ctx], object]] = {
    "started-at-path-into-the-staging-folder": _started_at("../../gone"),
    "started-at-path-beside-the-run": _started_at("../../../gone"),
    "publish-marker-names-a-user-folder": _publish_marker,
    "compare-into-a-user-folder": _compare_foreign,
    "compare-twice-archives-the-first": _compare_again,
}


@pytest.mark.parametrize("case", sorted(OUTSIDE))
def test_nothing_outside_a_runs_files_moves(ctx: Ctx, case: str):
    OUTSIDE[case](ctx)
    no_staging_left(ctx.prev.parent)
    assert not (ctx.tmp / "runs" / "gone").exists()


# --------------------------------------------------------------------------- 2. pinned inputs, any bit depth


def _png(path: Path, value: int, *, bits: int = 8, size: int = 8) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:  # 16-bit grey (PIL's I;16), the depth of scientific and medical images
        Image.fromarray(np.full((size, size), value * 257, dtype=np.uint16)).save(path)
    else:
        Image.new("RGB", (size, size), (value, value, value)).save(path)


def _tree(root: Path, bits: Callable[[int], int] = lambda i: 8) -> Path:
    for c, cls in enumerate(("cat", "dog")):
        for i in range(4):
            _png(root / cls / f"{i}.png", 40 * i + 20 * c, bits=bits(4 * c + i))
    return root


STREAMED = TINY.replace("{name: digits, limit_train: 200, limit_test: 60}",
                        "{name: imagefolder, root: 'ROOT', test_fraction: 0.25, stream: true, workers: 0}")


def _changed_while_training(c: Ctx):
    """One image rewritten after the first training batch: the run stops at the end of the
    epoch naming it, and neither a checkpoint nor a model is stored under the key of the
    original images."""
    root = _tree(c.tmp / "images")
    study = c.tmp / "s.yaml"
    study.write_text(STREAMED.replace("ROOT", str(root)).replace("epochs: 1", "epochs: 2"))
    from workbench.data import stream

    real = stream.StreamedImages.batches
    victim = root / "dog" / "3.png"

    def batches(self, order):
        for b in real(self, order):
            if not (c.tmp / "rewritten").exists():  # once, once the first batch was read
                _png(victim, 255)
                os.utime(victim, ns=(1, 1))  # a different mtime whatever the clock's resolution
                (c.tmp / "rewritten").write_text("")
            yield b

    c.monkeypatch.setattr(stream.StreamedImages, "batches", batches)
    fresh = c.tmp / "fresh-store"
    res = invoke("run", study, "--out", c.tmp / "new", "--store", fresh, "-q")
    assert (c.tmp / "rewritten").exists()
    assert_one_line_error(res, str(victim), "changed while", "data.root")
    assert not list(fresh.glob("models/*/model.pt")) and not list(fresh.glob("models/*/checkpoint.pt"))
    assert not (c.tmp / "new").exists()


def _images(c: Ctx, bits: Callable[[int], int]) -> Callable[[bool], object]:
    root = _tree(c.tmp / "images", bits)

    def load(stream: bool):
        from workbench.data import load_dataset

        return load_dataset("imagefolder", root=root, stream=stream, workers=0, test_fraction=0.25, val_fraction=0.0,
                            cache_dir=c.tmp / "cache")
    return load


def _same_in_unit_range(bits: Callable[[int], int]):
    """Every image reaches the model in [0, 1] at the value it encodes (v/255 of an 8-bit
    image, v·257/65535 of a 16-bit one), streamed and in memory alike."""
    def case(c: Ctx):
        load = _images(c, bits)
        held, streamed = load(False), load(True)
        import torch

        for split in ("train", "test"):
            a = getattr(held, f"{split}_x")
            b = getattr(streamed, f"{split}_x")[:]
            assert a.dtype == b.dtype == torch.float32
            assert float(a.max()) <= 1.0 and float(b.max()) <= 1.0, (float(a.max()), float(b.max()))
            assert torch.equal(a, b)
        # cat/3.png holds 120 (as 8 or 16 bits): 120/255 whatever the depth
        expected = {round(v / 255, 5) for v in (0, 40, 80, 120, 20, 60, 100, 140)}
        got = {round(float(v), 5) for v in torch.cat([held.train_x, held.test_x]).flatten().unique()}
        assert got == expected, (got, expected)
    return case


def _non_utf8_name(c: Ctx):
    """A file whose name is not UTF-8 in a streamed folder trains like any other."""
    root = _tree(c.tmp / "images")
    os.rename(root / "cat" / "0.png", os.path.join(os.fsencode(root / "cat"), b"\xff\xfe.png"))
    study = c.tmp / "s.yaml"
    study.write_text(STREAMED.replace("ROOT", str(root)))
    res = invoke("run", study, "--out", c.tmp / "new", "--store", c.tmp / "fresh-store", "-q")
    assert res.exit_code == 0, (res.stderr, repr(res.exception))


def _worker_error_is_one_line(c: Ctx):
    """An image that changes size under a DataLoader worker: the worker's error comes back
    as its own one line, not a flattened traceback."""
    load = _images(c, lambda i: 8)
    import torch

    from workbench.errors import DataError

    data = load(True)
    data.train_x.workers = 1
    for p in (c.tmp / "images").rglob("*.png"):
        _png(p, 10, size=12)
    with pytest.raises(DataError) as e:
        list(data.train_x.batches([torch.arange(len(data.train_y))]))
    assert "Traceback" not in e.value.message and "\n" not in e.value.message.strip(), e.value.message
    assert "12×12" in e.value.message and ".png" in e.value.message


PINNED: dict[str, Callable[[Ctx], object]] = {
    "streamed-images-rewritten-while-training": _changed_while_training,
    "png-16-bit-streamed-and-in-memory": _same_in_unit_range(lambda i: 16),
    "png-16-bit-among-8-bit": _same_in_unit_range(lambda i: 16 if i == 3 else 8),
    "non-utf8-file-name-streamed": _non_utf8_name,
    "image-size-changes-under-a-worker": _worker_error_is_one_line,
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_inputs_are_pinned_and_in_unit_range(ctx: Ctx, case: str):
    PINNED[case](ctx)


# --------------------------------------------------------------------------- 3. loaded weights validated


def _weights_study(c: Ctx, weights: Path) -> Path:
    study = c.tmp / "loaded.yaml"
    study.write_text(TINY + f"models:\n  - id: mine\n    source: {{arch: small_cnn, options: {{width: 4, fc: 16}}, "
                            f"checkpoint: '{weights}'}}\n")
    return study


def _trained_state(c: Ctx) -> dict:
    import torch

    (entry,) = [p for p in (c.store / "models").iterdir() if p.is_dir()]
    full = torch.load(entry / "model.pt", weights_only=True)  # a WorkbenchModel's: the network under net.
    return {k.removeprefix("net."): v for k, v in full.items() if k.startswith("net.")}


def _edited(edit: Callable[[dict], None], *words: str):
    def case(c: Ctx):
        import torch

        state = _trained_state(c)
        edit(state)
        path = c.tmp / "weights.pt"
        torch.save(state, path)
        res = invoke("run", _weights_study(c, path), "--out", c.tmp / "new", "--store", c.store, "-q")
        assert_one_line_error(res, str(path), "models[0] (mine)", *words)
    return case


def _first_weight(state: dict) -> str:
    return next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)


def _set_nan(state: dict) -> None:
    state[_first_weight(state)].view(-1)[0] = float("nan")


def _to(dtype_name: str) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        import torch

        k = _first_weight(state)
        v = state[k]
        state[k] = (v * 100).to(torch.int8) if dtype_name == "int8" else v.to(getattr(torch, dtype_name))
    return edit


def _bomb(c: Ctx):
    """A torch file whose one record inflates to 1 GiB: refused from its declared sizes,
    before anything is allocated."""
    import resource
    import zipfile

    import torch

    state = _trained_state(c)
    plain = c.tmp / "plain.pt"
    torch.save(state, plain)
    path = c.tmp / "bomb.pt"
    # the same archive with one record deflated to 1 GiB of zeros (written in chunks)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
        names = src.namelist()
        record = next(n for n in names if "/data/" in n)
        for n in names:
            if n != record:
                dst.writestr(src.getinfo(n), src.read(n))
        info = zipfile.ZipInfo(record)
        info.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(info, "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(64):
                f.write(chunk)
    assert path.stat().st_size < 4 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = invoke("run", _weights_study(c, path), "--out", c.tmp / "new", "--store", c.store, "-q")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert_one_line_error(res, str(path), "declares")
    assert grown_mib < 256, grown_mib


def _huge_float64(state: dict) -> None:
    k = _first_weight(state)
    state[k] = state[k].double().fill_(1e300)


WEIGHTS: dict[str, Callable[[Ctx], object]] = {
    "nan-weight": _edited(_set_nan, "non-finite"),
    "int8-weights": _edited(_to("int8"), "int8"),
    "complex-weights": _edited(_to("complex64"), "complex64"),
    "float64-overflowing-float32": _edited(_huge_float64, "non-finite", "after the cast"),
    "zip-bomb": _bomb,
}


@pytest.mark.parametrize("case", sorted(WEIGHTS))
def test_loaded_weights_are_validated(ctx: Ctx, case: str):
    WEIGHTS[case](ctx)
    assert not (ctx.tmp / "new").exists()


# --------------------------------------------------------------------------- 4. SIGTERM, preemption


def _wait_for_checkpoint(store: Path, proc_alive: Callable[[], bool], epoch: int = 1) -> Path:
    import time

    import torch

    deadline = time.time() + 240
    while True:
        found = list(store.glob("models/*/checkpoint.pt"))
        if found:
            try:
                if torch.load(found[0], weights_only=True)["epoch"] >= epoch:
                    return found[0]
            except Exception:  # noqa: BLE001 - being replaced right now
                pass
        assert time.time() < deadline and proc_alive()
        time.sleep(0.2)


def _sigterm_run(c: Ctx):
    """`kill` (SIGTERM) in the sleep after epoch 1 of 2: exit 143 with one line, the staging
    folder gone, prev as it was, and the rerun resumes from epoch 1."""
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd

    study = c.tmp / "two.yaml"
    study.write_text(TINY.replace("epochs: 1", "epochs: 2"))
    before = snapshot(c.prev)
    fresh = c.tmp / "fresh-store"
    env = {**os.environ, "WORKBENCH_STORE": str(fresh), "WORKBENCH_TEST_EPOCH_DELAY": "60"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "run", str(study), "--out", str(c.prev), "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(fresh, lambda: proc.poll() is None)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (proc.returncode, err)
    assert time.time() - t0 < 30  # it stopped; it did not sleep out its 60 s
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "resume" in lines[0] and "Traceback" not in err, err
    assert snapshot(c.prev) == before
    no_staging_left(c.prev.parent)
    res = invoke("run", study, "--out", c.prev, "--store", fresh, "-q")
    assert res.exit_code == 0, res.stderr
    models = pd.read_parquet(c.prev / "tables" / "models.parquet")
    assert models["resumed_from_epoch"].tolist() == [1]


def _preempted_job(c: Ctx):
    """A submitit job preempted (or timed out: the same signal) mid-training is requeued by
    submitit and resumes from the model's checkpoint (local executor)."""
    pytest.importorskip("submitit")
    import time

    import torch

    from workbench.cluster import ClusterDriver, ClusterOptions, TrainTask
    from workbench.runner import load_study_data, model_jobs
    from workbench.study import load_study

    study_path = c.tmp / "three.yaml"
    study_path.write_text(TINY.replace("epochs: 1", "epochs: 3"))
    study = load_study(study_path)
    (job,) = model_jobs(study, load_study_data(study, torch.device("cpu")))
    store = c.tmp / "fresh-store"
    driver = ClusterDriver(ClusterOptions(kind="local", threads=1, poll_s=0.3), store, study.name)
    c.monkeypatch.setenv("WORKBENCH_TEST_EPOCH_DELAY", "3")  # inherited by the job: a window for the signal
    s = driver._submit(f"train {job.id}", job.key(), TrainTask(job, study.to_dict(), str(store), False, 1), [], [])
    _wait_for_checkpoint(store, lambda: not s.job.done())
    # what SLURM sends before preempting a job or at its time limit: USR2, to the task that trains
    import signal

    from test_cluster import _children

    tasks = _children(int(s.job.job_id))
    assert tasks, "the job's controller started no task"
    for pid in tasks:
        os.kill(pid, signal.SIGUSR2)
    deadline = time.time() + 240
    while not s.job.done():
        assert time.time() < deadline
        time.sleep(0.3)
    result = s.job.result()
    assert result["resumed_from_epoch"] is not None and result["resumed_from_epoch"] >= 1, result
    assert (store / "models" / job.key() / "model.pt").is_file()


SIGNALS: dict[str, Callable[[Ctx], object]] = {
    "sigterm-keeps-the-epoch-and-resumes": _sigterm_run,
    "preempted-submitit-job-requeued-and-resumed": _preempted_job,
}


@pytest.mark.parametrize("case", sorted(SIGNALS))
def test_termination_keeps_the_last_epoch(ctx: Ctx, case: str):
    SIGNALS[case](ctx)


# --------------------------------------------------------------------------- 5. user code in one line


def _module(c: Ctx, body: str) -> tuple[str, Path]:
    """A module of its own name (fresh per test) on sys.path, with ``build()`` unless the body
    says otherwise."""
    import re

    name = "usermod_" + re.sub(r"\W", "_", c.tmp.name)
    path = c.tmp / "code" / f"{name}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(body)
    c.monkeypatch.syspath_prepend(str(path.parent))
    return name, path


OK_FACTORY = ("import torch\n"
              "def build():\n"
              "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), "
              "torch.nn.Linear(16, 10))\n")


def _user_code(body: str, *words: str, command: str = "run"):
    def case(c: Ctx):
        name, path = _module(c, body)
        study = c.tmp / "user.yaml"
        study.write_text(TINY + f"models:\n  - id: theirs\n    source: {{python: '{name}:build'}}\n")
        args = ["run", study, "--out", c.tmp / "new", "--store", c.store, "-q"] if command == "run" else ["validate", study]
        res = invoke(*args)
        line = assert_one_line_error(res, *words)
        assert line.startswith(f"error: {path}: models[0] (theirs): "), line
        assert not (c.tmp / "new").exists()
    return case


USER_CODE: dict[str, Callable[[Ctx], object]] = {
    "syntax-error": _user_code("def build(:\n    pass\n", "SyntaxError", "line 1"),
    "raises-at-import": _user_code("import torch\nx = 1 / 0\n" + OK_FACTORY, "ZeroDivisionError", "line 2"),
    "factory-raises": _user_code("def build():\n    raise RuntimeError('no GPU here')\n", "RuntimeError",
                                 "no GPU here", "line 2"),
    "factory-calls-sys-exit-0": _user_code("import sys\ndef build():\n    sys.exit(0)\n", "sys.exit(0)"),
    "module-parses-argv": _user_code("import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', "
                                     "required=True)\nargs = p.parse_args()\n" + OK_FACTORY, "sys.exit(2)", "--lr"),
    "validate-imports-the-module": _user_code("import torch\nraise ImportError('needs cuda')\n", "ImportError",
                                              "needs cuda", command="validate"),
}


@pytest.mark.parametrize("case", sorted(USER_CODE))
def test_user_code_fails_in_one_line(ctx: Ctx, case: str):
    USER_CODE[case](ctx)


# --------------------------------------------------------------------------- 6. nothing outlives its driver


def _pool_run(c: Ctx):
    """`workbench run --jobs 2` on two models, each worker in the sleep after its epoch 1
    of 2; returns the process and its worker pids."""
    import subprocess
    import sys
    import time

    from test_cluster import _children

    study = c.tmp / "pair.yaml"
    study.write_text(TINY.replace("epochs: 1", "epochs: 2").replace("recipes: [standard]",
                                                                     "recipes: [standard, {name: fgsm_rs, eps: 0.1}]"))
    fresh = c.tmp / "fresh-store"
    env = {**os.environ, "WORKBENCH_STORE": str(fresh), "WORKBENCH_TEST_EPOCH_DELAY": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "run", str(study), "--out", str(c.tmp / "new"),
                             "-q", "--jobs", "2", "--threads", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(list(fresh.glob("models/*/checkpoint.pt"))) < 2:
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.3)
    workers = [p for p in _children(proc.pid) if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) >= 2, workers
    return proc, workers


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _driver_killed(c: Ctx):
    import signal
    import time

    proc, workers = _pool_run(c)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:  # don't leave them to the next test
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their driver"


def _worker_killed(c: Ctx):
    import signal

    proc, workers = _pool_run(c)
    try:
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, (proc.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "worker process died" in lines[0] and "rerun" in lines[0] and "small_cnn/" in lines[0], lines[0]
    assert not any(_alive(p) for p in workers)


def _claim_case(holder: str, age_s: float, release_after: float | None):
    """A cluster job (``fit(..., lock=False)``, no flock) finds the model claimed by
    ``holder`` ("other": a process on another node; "dead": a gone process of this host),
    with a heartbeat ``age_s`` old, released after ``release_after`` seconds (heartbeating
    until then) or never."""
    def case(c: Ctx):
        import json
        import logging
        import socket
        import subprocess
        import sys
        import threading
        import time

        import torch

        from workbench.runner import load_study_data, model_jobs
        from workbench.store import ModelStore
        from workbench.study import load_study
        from workbench.training import fit

        study = load_study(c.study)
        data = load_study_data(study, torch.device("cpu"))
        (job,) = model_jobs(study, data)
        store = ModelStore(c.tmp / "fresh-store")
        claim = store.root / "models" / f"{job.key()}.claim"
        claim.parent.mkdir(parents=True)
        if holder == "dead":
            gone = subprocess.Popen([sys.executable, "-c", "pass"])
            gone.wait()
            owner = {"host": socket.gethostname(), "pid": gone.pid, "token": "x"}
        else:
            owner = {"host": "node-17", "pid": 4242, "token": "x"}
        claim.write_text(json.dumps(owner))
        os.utime(claim, (time.time() - age_s, time.time() - age_s))
        stop = threading.Event()

        def holder_side() -> None:  # the other job: heartbeats, then finishes and releases
            t_end = time.time() + (release_after or 0)
            while not stop.wait(0.2) and time.time() < t_end:
                os.utime(claim)
            claim.unlink()

        t = threading.Thread(target=holder_side)
        if release_after is not None:
            t.start()
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
        logging.getLogger("workbench").addHandler(handler)
        c.monkeypatch.setenv("WORKBENCH_CLAIM_STALE_S", "30")
        t0 = time.time()
        try:
            trained = fit(job, data, store, "cpu", lock=False)
        finally:
            stop.set()
            logging.getLogger("workbench").removeHandler(handler)
            if t.is_alive():
                t.join()
        took = time.time() - t0
        assert not trained.cached and store.has_model(job.key())
        assert not claim.exists()  # released by the one that trained
        said = " ".join(records)
        if release_after is not None:
            assert took >= release_after and "waiting for it" in said and "node-17" in said, (took, said)
        else:
            assert took < 20 and "taking over" in said, (took, said)
            assert ("no heartbeat" if holder == "other" else "process is gone") in said, said
    return case


DRIVER: dict[str, Callable[[Ctx], object]] = {
    "driver-killed-workers-end": _driver_killed,
    "worker-killed-one-line": _worker_killed,
    "claim-of-a-live-job-elsewhere-is-waited-for": _claim_case("other", 0, 3.0),
    "claim-without-heartbeat-is-taken-over": _claim_case("other", 3600, None),
    "claim-of-a-dead-local-process-is-taken-over": _claim_case("dead", 0, None),
}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc (Linux)")
@pytest.mark.parametrize("case", sorted(DRIVER))
def test_nothing_outlives_its_driver(ctx: Ctx, case: str):
    DRIVER[case](ctx)


# --------------------------------------------------------------------------- 7. tables independent of timing


def _history(run: Path):
    import pandas as pd

    return pd.read_parquet(run / "tables" / "history.parquet").drop(columns=["seconds"])


def _two_studies(c: Ctx, other: str):
    """Studies A (the tiny one) and B (``other`` changed) share a model: B's tables are the
    same whether A trained it first or B did."""
    import pandas as pd

    a, b = c.study, c.tmp / "b.yaml"
    b.write_text(TINY.replace(*other.split(" -> ")))
    runs = {}
    for order in ("ab", "ba"):
        store = c.tmp / f"store-{order}"
        for name in order:
            study = a if name == "a" else b
            res = invoke("run", study, "--out", c.tmp / f"{order}-{name}", "--store", store, "-q")
            assert res.exit_code == 0, res.stderr
            runs[order, name] = c.tmp / f"{order}-{name}"
    for name in "ab":
        pd.testing.assert_frame_equal(_history(runs["ab", name]), _history(runs["ba", name]), obj=f"history of {name}")
    assert (_history(runs["ab", "b"])["monitor_eps"] == (0.2 if "eps" in other else 0.1)).all()


TIMING: dict[str, Callable[[Ctx], object]] = {
    "other-main-eps": lambda c: _two_studies(c, "eps: [0.1] -> eps: [0.2]"),
    "other-monitor-examples": lambda c: _two_studies(c, "monitor_examples: 32 -> monitor_examples: 16"),
}


@pytest.mark.parametrize("case", sorted(TIMING))
def test_tables_do_not_depend_on_which_study_trained_first(ctx: Ctx, case: str):
    TIMING[case](ctx)


# --------------------------------------------------------------------------- 8. growth bounded


def _keeps(n: int | None, reruns: int):
    def case(c: Ctx):
        extra = [] if n is None else ["--keep", n]
        for _ in range(reruns):
            res = rerun(c, *extra)
            assert res.exit_code == 0, res.stderr
        kept = sorted((c.prev / "archive").iterdir()) if (c.prev / "archive").exists() else []
        assert len(kept) == min(reruns, 5 if n is None else n), kept
    return case


def _gc(c: Ctx):
    """Two studies in one store; gc given one run folder lists (dry run, sizes) then removes
    the other's model and results, and the kept run still reuses everything."""
    other = c.tmp / "other.yaml"
    other.write_text(TINY.replace("width: 4", "width: 3"))
    assert invoke("run", other, "--out", c.tmp / "other", "--store", c.store, "-q").exit_code == 0
    before = snapshot(c.store)
    res = invoke("gc", c.prev, "--store", c.store)
    assert res.exit_code == 0, res.stderr
    assert "would remove" in res.stdout and "MiB" in res.stdout and "--delete" in res.stdout, res.stdout
    assert snapshot(c.store) == before  # a dry run
    other_models = [p for p in (c.store / "models").iterdir() if p.is_dir()]
    assert len(other_models) == 2
    res = invoke("gc", c.prev, "--store", c.store, "--delete")
    assert res.exit_code == 0 and "removed" in res.stdout, res.stderr
    assert len([p for p in (c.store / "models").iterdir() if p.is_dir()]) == 1
    res = rerun(c)
    assert res.exit_code == 0 and "reused cached results" in res.stdout, res.stdout
    import pandas as pd

    assert pd.read_parquet(c.prev / "tables" / "models.parquet")["cached"].all()


def _data_cache_in_store(c: Ctx):
    """The decoded-data cache lives in the store given, not in ~/.cache, and gc lists it."""
    root = _tree(c.tmp / "images")
    study = c.tmp / "folder.yaml"
    study.write_text(STREAMED.replace("ROOT", str(root)).replace(", stream: true, workers: 0", ""))
    c.monkeypatch.delenv("WORKBENCH_STORE", raising=False)
    store = c.tmp / "own-store"
    res = invoke("run", study, "--out", c.tmp / "new", "--store", store, "-q")
    assert res.exit_code == 0, res.stderr
    assert list((store / "data").glob("imagefolder-*.pt")), list(store.rglob("*"))[:20]
    assert not (c.tmp / "xdg").exists() or not list((c.tmp / "xdg").rglob("*.pt"))
    res = invoke("gc", c.tmp / "new", "--store", store, "--data")
    assert res.exit_code == 0 and "imagefolder-" in res.stdout, (res.stdout, res.stderr)


GROWTH: dict[str, Callable[[Ctx], object]] = {
    "keep-2": _keeps(2, 4),
    "keep-default-5": _keeps(None, 6),
    "gc-dry-run-then-delete": _gc,
    "data-cache-under-the-store": _data_cache_in_store,
}


@pytest.mark.parametrize("case", sorted(GROWTH))
def test_growth_is_bounded(ctx: Ctx, case: str):
    GROWTH[case](ctx)


def test_runs_archived_within_one_second_keep_the_newest(tmp_path, monkeypatch):
    """Five runs published within one second: archive names never compound (-1-1), a later
    suffix is a later run, and --keep 2 keeps the two runs before the current one."""
    import workbench.store as store

    monkeypatch.setattr(store, "_previous_stamp", lambda path: "20261206T034243")
    target = tmp_path / "run"
    for i in range(5):
        folder = store.RunFolder(target, keep=2)
        folder.begin()
        folder.write_json("run.json", {"i": i})
        folder.publish()
    kept = sorted((target / "archive").iterdir(), key=lambda p: int(p.name[16:] or 0))
    assert [store._STAMP.fullmatch(p.name) is not None for p in kept] == [True, True], kept
    assert [json.loads((p / "run.json").read_text())["i"] for p in kept] == [2, 3], kept
    assert json.loads((target / "run.json").read_text())["i"] == 4


# --------------------------------------------------------------------------- 9. memory, wrongly typed tables


def _out_of(what: str):
    """Memory runs out while the models train (simulated: the allocation's exception)."""
    def case(c: Ctx):
        import torch

        import workbench.runner as runner

        def train_models(*a, **k):
            if what == "ram":
                raise MemoryError()
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")

        c.monkeypatch.setattr(runner, "train_models", train_models)
        before = snapshot(c.prev)
        res = rerun(c)
        assert_one_line_error(res, "out of GPU memory" if what == "gpu" else "out of memory (this machine's RAM)",
                              *(("Tried to allocate 20.00 GiB",) if what == "gpu" else ()))
        assert snapshot(c.prev) == before
        no_staging_left(c.prev.parent)
    return case


def _retyped(table: str, column: str, command: str):
    """A table whose column was rewritten as text (or numbers): `report`/`compare` name the
    table and the column in one line."""
    def case(c: Ctx):
        import pandas as pd

        other = c.tmp / "runs" / "other"
        shutil.copytree(c.prev, other)  # a sound run to compare with
        path = c.prev / "tables" / f"{table}.parquet"
        df = pd.read_parquet(path)
        df[column] = df[column].astype(str) if df[column].dtype.kind in "fiub" else range(len(df))
        df.to_parquet(path, index=False)
        if command == "report":
            res = invoke("report", c.prev)
        else:
            res = invoke("compare", other, c.prev, "--out", c.tmp / "cmp")
        assert_one_line_error(res, str(path), repr(table), repr(column))
    return case


RESOURCES: dict[str, Callable[[Ctx], object]] = {
    "out-of-ram": _out_of("ram"),
    "out-of-gpu-memory": _out_of("gpu"),
    "report-accuracy-as-text": _retyped("robustness", "accuracy", "report"),
    "compare-accuracy-as-text": _retyped("robustness", "accuracy", "compare"),
    "report-model-as-numbers": _retyped("models", "model", "report"),
}


@pytest.mark.parametrize("case", sorted(RESOURCES))
def test_resources_and_table_types_in_one_line(ctx: Ctx, case: str):
    RESOURCES[case](ctx)

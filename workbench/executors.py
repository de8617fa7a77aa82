"""Executors: where training jobs run.

An executor takes the planned :class:`~workbench.training.jobs.TrainJob` list (every
dependency before the jobs that need it) and trains each job into the model store; the
runner then loads the weights from there. Registered by name in :data:`EXECUTORS`:

- ``inprocess`` (default): one after the other in this process;
- ``processes``: a local pool of ``jobs`` spawned processes (``workbench run --jobs N``),
  each training one job at a time; a job starts once the jobs it depends on are done.
  Every job reseeds all its random streams and each worker trains with the run's threads
  setting (:func:`~workbench.state.threads_setting`: ``--threads``, ``$WORKBENCH_THREADS``,
  half the cores), not a share of it: on the CPU a different thread count can change the
  summation order, so the weights are the in-process run's bit for bit.

- ``slurm`` and ``local`` (:mod:`workbench.cluster`, the ``cluster`` extra): each job a
  submitit job, on a SLURM cluster or on this machine's GPUs.

A new executor (a cluster queue, another machine) is one class with :meth:`Executor.run`
that ships :meth:`TrainJob.to_json` to where the store is reachable, registered in
:data:`EXECUTORS`.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import UnknownNameError, WorkbenchError
from .progress import QUIET, Progress
from .registry import Registry
from .store import ModelStore
from .state import threads_setting

if TYPE_CHECKING:  # pragma: no cover
    from .data import DataSplits
    from .store import ModelStore
    from .training.jobs import TrainJob

log = logging.getLogger("workbench")


@dataclass
class JobResult:
    """What running a job reports (the weights are in the store under ``key``)."""

    key: str
    cached: bool
    resumed_from_epoch: int | None = None
    seconds: float = 0.0


class Executor:
    """Trains planned jobs into the store; returns key -> :class:`JobResult`."""

    def run(
        self,
        jobs: list[TrainJob],
        data: DataSplits,
        store: ModelStore,
        device: torch.device,
        *,
        retrain: bool = False,
        progress: Progress = QUIET,
        done: Callable[[TrainJob, JobResult], None] = lambda job, result: None,
    ) -> dict[str, JobResult]:
        raise NotImplementedError


#: executors by name (``workbench run --executor``; ``--jobs N`` picks ``processes``)
EXECUTORS: Registry[type[Executor]] = Registry("executor")


@EXECUTORS.register("inprocess")
class InProcess(Executor):
    """Train the jobs one after the other in this process (the default)."""

    def __init__(self, jobs: int = 1, threads: int | None = None):
        pass

    def run(self, jobs, data, store, device, *, retrain=False, progress=QUIET, done=lambda job, result: None):
        # the training loop is imported where a job runs: registering the executors (with
        # the study schema, when a run folder is read) needs none of it
        from .training.loop import fit

        out: dict[str, JobResult] = {}
        for job in jobs:
            t = fit(job, data, store, device, progress=progress, retrain=retrain)
            out[t.key] = JobResult(t.key, t.cached, t.resumed_from_epoch, t.seconds)
            done(job, out[t.key])
        return out


# --------------------------------------------------------------------------- process pool

_WORKER: dict[str, Any] = {}


def _end_with_parent(parent: int) -> None:
    """Make this worker end when its parent dies (``kill -9`` of the driver included), so no
    orphan goes on training: Linux's PR_SET_PDEATHSIG, else a thread watching the parent."""
    if sys.platform.startswith("linux"):
        try:
            PR_SET_PDEATHSIG = 1
            if ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before the call
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="workbench-parent-watch", daemon=True).start()


def _worker_init(threads: int | None, parent: int | None = None) -> None:
    if parent is not None:
        _end_with_parent(parent)
    # each worker sets its own threads (a spawned process starts from torch's default);
    # None: the run leaves them alone too (training on a GPU)
    if threads is None:
        return
    torch.set_num_threads(threads)
    # threadpoolctl: only when a thread limit is set
    from threadpoolctl import threadpool_limits

    _WORKER["limits"] = threadpool_limits(threads)


def _worker_data(job: TrainJob, device: torch.device) -> DataSplits:
    """The job's data (:meth:`TrainJob.load_data`: every field of the data section), loaded
    once per worker for all the jobs that share it."""
    src = job.source or {}
    key = repr(sorted(src.get("data", {}).items())) + repr(src.get("seed")) + job.decode
    if _WORKER.get("data_key") != key:
        _WORKER["data"] = job.load_data(device)
        _WORKER["data_key"] = key
    return _WORKER["data"]


def _run_in_worker(job_json: str, store_root: str, device: str, retrain: bool) -> dict[str, Any]:
    """Train one job in a worker; errors come back as one line (exceptions with keyword
    arguments do not always survive pickling)."""
    # the training code is imported where a job runs: registering the executors (with the
    # study schema, when a run folder is read) needs none of it
    from .training.jobs import TrainJob
    from .training.loop import fit

    try:
        job = TrainJob.from_json(job_json)
        dev = torch.device(device)
        t = fit(job, _worker_data(job, dev), ModelStore(store_root), dev, retrain=retrain)
        return {"key": t.key, "cached": t.cached, "resumed_from_epoch": t.resumed_from_epoch, "seconds": t.seconds}
    except WorkbenchError as e:
        return {"error": e.one_line(), "exit_code": e.exit_code}


@EXECUTORS.register("processes")
class ProcessPool(Executor):
    """Train independent jobs in parallel in ``jobs`` spawned local processes."""

    def __init__(self, jobs: int = 2, threads: int | None = None):
        self.jobs = max(1, int(jobs))
        # the in-process run's setting in every worker (not divided among them: the same
        # weights matter more than oversubscribed cores; lower --threads to share them)
        self.threads = threads

    def run(self, jobs, data, store, device, *, retrain=False, progress=QUIET, done=lambda job, result: None):
        keys = {j.key(): j for j in jobs}
        deps = {k: {d.key() for d in j.dependencies().values()} & set(keys) for k, j in keys.items()}
        out: dict[str, JobResult] = {}
        running: dict[Future, str] = {}
        ctx = multiprocessing.get_context("spawn")
        t0 = time.perf_counter()
        threads = self.threads
        if threads is None and torch.device(device).type == "cpu":  # as run_study resolves it
            threads = threads_setting()
        pool = ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_worker_init,
                                   initargs=(threads, os.getpid()))
        try:
            pending = list(keys)
            while pending or running:
                for k in [k for k in pending if deps[k] <= set(out)]:
                    pending.remove(k)
                    log.info("%s: training in a worker process", keys[k].id)
                    running[pool.submit(_run_in_worker, keys[k].to_json(), str(store.root), str(device), retrain)] = k
                if not running:
                    raise WorkbenchError(f"training jobs wait for each other: {[keys[k].id for k in pending]}")
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in finished:
                    k = running.get(f)
                    try:
                        got = f.result()
                    except BrokenProcessPool:
                        # a worker was killed (out of memory, kill -9): the pool is gone with it
                        ids = [keys[k].id] + [keys[o].id for o in running.values() if o != k]
                        raise WorkbenchError(
                            f"a worker process died (killed, or out of memory) while training {', '.join(ids)}; "
                            "what it finished is in the store: rerun the same command to resume from the last "
                            "finished epoch (with fewer --jobs if memory ran out)", field=keys[k].id) from None
                    running.pop(f)
                    if "error" in got:
                        raise WorkbenchError(got["error"])
                    out[k] = JobResult(got["key"], got["cached"], got["resumed_from_epoch"], got["seconds"])
                    done(keys[k], out[k])
        except BaseException as e:
            if isinstance(e, WorkbenchError) and not isinstance(e.__context__, BrokenProcessPool):
                pool.shutdown(wait=True)  # a job's error: the others finish (their models are kept)
            else:
                _stop_workers(pool)  # Ctrl-C, SIGTERM or a dead worker: no worker outlives the run
            raise
        pool.shutdown(wait=True)
        log.info("trained %d jobs in %d processes in %.1fs", len(jobs), self.jobs, time.perf_counter() - t0)
        return out


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End a pool's workers now (their last finished epochs are in the store)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)


def make_executor(name: str | None = None, jobs: int = 1, threads: int | None = None) -> Executor:
    """``name`` (default: ``processes`` when ``jobs`` > 1, else ``inprocess``)."""
    name = name or ("processes" if jobs > 1 else "inprocess")
    if name not in EXECUTORS:
        raise UnknownNameError("executor", name, EXECUTORS.names(), field="--executor")
    return EXECUTORS.get(name)(jobs=jobs, threads=threads)

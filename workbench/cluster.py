"""Study grids as jobs: SLURM (``workbench run --executor slurm``) or this machine's GPUs
(``--executor local``), both through ``submitit`` (the ``cluster`` extra).

The driver (the ``workbench run`` process) submits one job per model still to train, then
one job for everything downstream (evaluation, checks, probes, tables, report) that depends
on them (``afterok`` on SLURM; on the local executor it starts once they are done). Jobs
meet in the model store, which must be on a file system every node sees:

- a training job writes checkpoints and finally its model with atomic renames (``meta.json``
  last marks it done); it takes no file lock (locks are unreliable on NFS): the driver
  submits at most one job per model key;
- the driver records every job it submitted in ``<store>/jobs/<study>/board.json``; a
  restarted driver re-attaches to SLURM jobs still queued or running instead of submitting
  them again, and resubmits the others: a resubmitted job resumes from its model's last
  checkpoint (``train.checkpoint_steps`` for checkpoints inside an epoch);
- a SLURM job that reaches its time limit or is preempted is requeued by submitit and resumes
  the same way;
- a job that dies is reported with its log file; the driver stops, and running it again
  resubmits what is missing.

``gpus_per_job`` > 1 runs a job as that many tasks, one per GPU, with DistributedDataParallel
(:mod:`workbench.distributed`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import WorkbenchError, install_hint
from .executors import EXECUTORS, Executor, JobResult
from .progress import QUIET, Progress
from .state import threads_setting
from . import distributed
from .store import ModelStore, atomic_write_text
from .config import content_hash

log = logging.getLogger("workbench")

KINDS = ("slurm", "local")


def _submitit():
    try:
        # optional extra (cluster): imported when a job is submitted
        import submitit
    except ImportError:
        raise WorkbenchError(f"--executor slurm/local needs submitit: {install_hint('cluster')}",
                             field="--executor") from None
    return submitit


@dataclass
class ClusterOptions:
    """How jobs are submitted (the study's ``cluster`` section, overridden by the command line)."""

    kind: str = "local"
    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 8
    mem_gb: int | None = None
    time_min: int = 240
    slurm: dict[str, Any] = field(default_factory=dict)
    #: local executor: jobs at once (default: GPUs // gpus_per_job, or 1 without GPUs)
    parallel: int | None = None
    #: torch CPU threads in each job (None: the job's default)
    threads: int | None = None
    poll_s: float = 2.0

    @classmethod
    def from_study(cls, study, kind: str, **override: Any) -> ClusterOptions:
        if kind not in KINDS:
            raise WorkbenchError(f"unknown executor {kind!r}; use one of: inprocess, {', '.join(KINDS)}", field="--executor")
        c = study.cluster
        base = dict(partition=c.partition, gpus_per_job=c.gpus_per_job, cpus_per_job=c.cpus_per_job, mem_gb=c.mem_gb,
                    time_min=c.time_min, slurm=dict(c.slurm))
        base.update({k: v for k, v in override.items() if v is not None})
        return cls(kind=kind, **base)

    def local_slots(self) -> list[list[int]]:
        """GPU index lists of the local executor's concurrent jobs ([] per job without GPUs)."""
        if self.gpus_per_job <= 0:
            return [[] for _ in range(max(1, self.parallel or 1))]
        n = torch.cuda.device_count()
        if n < self.gpus_per_job:
            raise WorkbenchError(f"--gpus-per-job {self.gpus_per_job} but this machine has {n} GPUs", field="--gpus-per-job")
        slots = [list(range(i, i + self.gpus_per_job)) for i in range(0, n - self.gpus_per_job + 1, self.gpus_per_job)]
        return slots[: self.parallel] if self.parallel else slots


# --------------------------------------------------------------------------- what runs in a job


class TrainTask:
    """One model's training, run inside a job. Callable and picklable; ``checkpoint`` is
    submitit's hook on timeout or preemption: requeue the same task, which resumes from the
    store's last checkpoint."""

    def __init__(self, job: Any, study_dict: dict[str, Any] | None, store_root: str, retrain: bool, threads: int | None):
        self.job, self.study_dict, self.store_root, self.retrain = job, study_dict, store_root, retrain
        # resolved where the task is made (the driver): --threads, else the driver's
        # $WORKBENCH_THREADS, which a job's environment need not carry; else None, and the
        # job counts its own machine's cores (threads_setting), as an in-process run there would
        self.threads = threads_setting(threads, default=False)

    def __call__(self) -> dict[str, Any]:
        # the training loop, in the job only: registering this executor needs none of it
        from .training.loop import fit

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # the in-process run's setting on the CPU (the same weights); on a GPU only an explicit one
        _distributed_env(threads_setting(self.threads) if device.type == "cpu" else self.threads)
        device = distributed.setup(device)
        data = self.job.load_data(device)  # the data section and seed the job carries, as the runner loads them
        try:
            t = fit(self.job, data, ModelStore(self.store_root), device, retrain=self.retrain, lock=False)
        finally:
            distributed.teardown()
        return {"key": t.key, "cached": t.cached, "resumed_from_epoch": t.resumed_from_epoch, "seconds": t.seconds}

    def checkpoint(self, *args: Any, **kwargs: Any):
        submitit = _submitit()
        # the requeued task resumes; it must not move the half-trained entry aside
        return submitit.helpers.DelayedSubmission(TrainTask(self.job, self.study_dict, self.store_root, False, self.threads))


def _distributed_env(threads: int | None) -> None:
    """Inside a job of several tasks: the torch.distributed variables from SLURM's."""
    if threads:
        torch.set_num_threads(threads)
    try:
        # optional extra (cluster): imported when a job is submitted
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            os.environ["LOCAL_RANK"] = str(env.local_rank)
    except (ImportError, RuntimeError):
        pass  # not inside a submitit job (called directly)


# --------------------------------------------------------------------------- the board


class Board:
    """The jobs a driver submitted, by model key (``<store>/jobs/<study>/board.json``),
    written atomically so a killed driver leaves it whole."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "board.json"
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def record(self, name: str, entry: dict[str, Any]) -> None:
        self.entries[name] = entry
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.entries, indent=1))


# --------------------------------------------------------------------------- the driver


@dataclass
class Submitted:
    name: str  # "train <model id>" or "stages"
    key: str | None
    job: Any
    gpus: list[int] = field(default_factory=list)


class ClusterDriver:
    """Submits and follows the jobs of one study (see the module docstring)."""

    def __init__(self, options: ClusterOptions, store_root: Path, study_name: str, progress: Progress = QUIET):
        self.o = options
        self.store_root = Path(store_root)
        self.folder = self.store_root / "jobs" / study_name
        self.board = Board(self.folder)
        self.progress = progress
        self.submitit = _submitit()

    # -- executors

    def _executor(self, name: str, gpus: list[int], after: list[str]):
        o = self.o
        # a training job runs one task per GPU (DDP); the stages job is one process on one GPU
        stages = name == "stages"
        tasks = 1 if stages else max(1, o.gpus_per_job)
        job_gpus = min(1, o.gpus_per_job) if stages else o.gpus_per_job
        if o.kind == "slurm":
            ex = self.submitit.SlurmExecutor(folder=self.folder / "logs", max_num_timeout=20)
            extra = dict(o.slurm)
            params: dict[str, Any] = dict(
                job_name=f"wb-{name}"[:60].replace(" ", "-"), time=o.time_min, nodes=1, ntasks_per_node=tasks,
                cpus_per_task=max(1, o.cpus_per_job // tasks), signal_delay_s=120,
            )
            if job_gpus:
                params["gpus_per_node"] = job_gpus
            if o.partition:
                params["partition"] = o.partition
            if o.mem_gb:
                params["mem"] = f"{o.mem_gb}GB"
            if after:
                params["dependency"] = "afterok:" + ":".join(after)
            known = {k: extra.pop(k) for k in list(extra) if k in ("account", "qos", "constraint", "exclude", "comment")}
            ex.update_parameters(**params, **known, additional_parameters=extra or None)
            return ex
        ex = self.submitit.LocalExecutor(folder=self.folder / "logs", max_num_timeout=20)
        ex.update_parameters(timeout_min=o.time_min, tasks_per_node=tasks, gpus_per_node=len(gpus),
                             visible_gpus=tuple(gpus))
        return ex

    def sbatch_script(self, name: str = "train", after: list[str] | None = None) -> str:
        """The sbatch file a job would be submitted with (for checking the options)."""
        ex = self._executor(name, [], after or [])
        return ex._make_submission_file_text("python -m submitit.core._submit", "UID")

    # -- submission

    def _submit(self, name: str, key: str | None, task: Callable[[], Any], gpus: list[int], after: list[str]) -> Submitted:
        ex = self._executor(name, gpus, after)
        job = ex.submit(task)
        self.board.record(name, {"job_id": str(job.job_id), "kind": self.o.kind, "key": key, "submitted": time.time(),
                                 "log": str(job.paths.stderr)})
        log.info("%s: submitted job %s (log %s)", name, job.job_id, job.paths.stderr)
        return Submitted(name, key, job, gpus)

    def _reattach(self, name: str) -> Any | None:
        """A SLURM job this study's driver submitted earlier that is still queued or running."""
        entry = self.board.entries.get(name)
        if not entry or entry.get("kind") != "slurm" or self.o.kind != "slurm":
            return None
        job = self.submitit.SlurmJob(folder=self.folder / "logs", job_id=entry["job_id"])
        if job.state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED"):
            log.info("%s: re-attached to job %s (%s)", name, job.job_id, job.state)
            return job
        return None

    def _failed(self, s: Submitted) -> WorkbenchError:
        state = getattr(s.job, "state", "?")
        tail = ""
        try:
            lines = Path(s.job.paths.stderr).read_text(errors="replace").strip().splitlines()
            tail = f"; last line: {lines[-1][:200]}" if lines else ""
        except OSError:
            pass
        return WorkbenchError(
            f"job {s.job.job_id} ({s.name}) ended {state}: see {s.job.paths.stderr}{tail}; run the same command again "
            "to resubmit it (training resumes from its last checkpoint)"
        )

    def train(self, jobs: list[Any], study_dict: dict[str, Any] | None, *, retrain: bool = False, wait: bool = True,
              done: Callable[[Any, dict[str, Any]], None] = lambda job, result: None) -> dict[str, dict[str, Any]]:
        """Train ``jobs`` (those not in the store, or all with ``retrain``) as jobs; returns
        key -> each job's report. Local: at most one job per slot at once. SLURM: all are
        submitted at once (the scheduler queues them); ``wait=False`` returns then, and
        :meth:`stages` follows them."""
        store = ModelStore(self.store_root)
        results: dict[str, dict[str, Any]] = {}
        todo = []
        for job in jobs:
            if not retrain and store.has_model(job.key()):
                results[job.key()] = {"key": job.key(), "cached": True, "resumed_from_epoch": None, "seconds": 0.0}
                done(job, results[job.key()])
            elif job.key() not in {j.key() for j in todo}:
                todo.append(job)
        by_key = {j.key(): j for j in todo}
        self._advance = self.progress.task("jobs", len(todo) + 1)
        advance = self._advance.__enter__()

        def finished(s: Submitted, result: Any) -> None:
            if s.key is None:
                return
            results[s.key] = result
            advance(1, status=f"{s.name} done")
            log.info("%s: done (job %s)", s.name, s.job.job_id)
            done(by_key[s.key], result)

        self._finished = finished
        if self.o.kind == "slurm":
            self.training = []
            for job in todo:
                name = f"train {job.id}"
                attached = self._reattach(name)
                task = TrainTask(job, study_dict, str(self.store_root), retrain, self.o.threads)
                self.training.append(Submitted(name, job.key(), attached) if attached is not None
                                     else self._submit(name, job.key(), task, [], []))
            if wait:
                self._wait(list(self.training), finished)
            return results
        free = self.o.local_slots()
        running: list[Submitted] = []
        pending = list(todo)

        def finished_local(s: Submitted, result: Any) -> None:
            free.append(s.gpus)
            finished(s, result)

        while pending or running:
            while pending and free:
                job = pending.pop(0)
                task = TrainTask(job, study_dict, str(self.store_root), retrain, self.o.threads)
                running.append(self._submit(f"train {job.id}", job.key(), task, free.pop(0), []))
            self._wait(running, finished_local, until_one=True)
        self.training = []
        return results

    def _wait(self, running: list[Submitted], on_done: Callable[[Submitted, Any], None], until_one: bool = False) -> None:
        """Until every job in ``running`` (or one, ``until_one``) is done, removing them from
        it; raises on the first that failed (cancelling the others on SLURM, whose stages
        job could never start)."""
        while running:
            for s in list(running):
                if not s.job.done():
                    continue
                running.remove(s)
                try:
                    result = s.job.result()
                except Exception:  # noqa: BLE001 - any failure of the job is reported with its log
                    if self.o.kind == "slurm":
                        for other in running:
                            if other.name == "stages":
                                other.job.cancel(check=False)
                    raise self._failed(s) from None
                on_done(s, result)
                if until_one:
                    return
            if running:
                time.sleep(self.o.poll_s)

    def stages(self, task: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The downstream job (after every training job) and its result. ``task`` runs the rest
        of the study in the job (:class:`workbench.grid.StagesTask`: the runner's level, so it
        is handed in, not imported here)."""
        training = list(getattr(self, "training", []))
        after = [str(s.job.job_id) for s in training]
        gpus = self.o.local_slots()[0][:1] if self.o.kind == "local" and self.o.gpus_per_job else []
        s = self._submit("stages", None, task, gpus, after)
        out_result: dict[str, Any] = {}
        finished = getattr(self, "_finished", lambda s, r: None)

        def on_done(sub: Submitted, result: Any) -> None:
            finished(sub, result)
            if sub.name == "stages":
                out_result.update(result)

        try:
            self._wait(training + [s], on_done)
        finally:
            if getattr(self, "_advance", None) is not None:
                self._advance.__exit__(None, None, None)
                self._advance = None
        return out_result


# --------------------------------------------------------------------------- the executors


class SubmititExecutor(Executor):
    """Training jobs as submitit jobs (``kind``: ``slurm`` or ``local``), through the same
    :class:`~workbench.executors.Executor` interface as the in-process and process-pool
    executors: :meth:`run` submits the jobs still to train, waits for them and returns
    their reports. ``workbench run --executor slurm|local`` uses its driver through
    :func:`run_grid`, which also submits the stages as a job after them."""

    kind = "local"

    def __init__(self, jobs: int = 1, threads: int | None = None, options: ClusterOptions | None = None,
                 board: str | None = None):
        if options is None:
            options = ClusterOptions(kind=self.kind, threads=threads, parallel=jobs if jobs > 1 else None)
        if options.kind != self.kind:
            raise ValueError(f"{type(self).__name__} got options for {options.kind!r}")
        self.options = options
        #: the folder under ``<store>/jobs`` where the jobs and their logs are recorded
        self.board = board

    def driver(self, store_root: str | Path, board: str, progress: Progress = QUIET) -> ClusterDriver:
        return ClusterDriver(self.options, Path(store_root), board, progress)

    def run(self, jobs, data, store, device, *, retrain=False, progress=QUIET, done=lambda job, result: None):
        # without a study name, the board is named by the jobs (a rerun of them finds it)
        board = self.board or "jobs-" + content_hash(sorted(j.key() for j in jobs))[:12]
        driver = self.driver(store.root, board, progress)
        got = driver.train(jobs, None, retrain=retrain, done=lambda job, r: done(job, _job_result(r)))
        return {k: _job_result(r) for k, r in got.items()}


def _job_result(r: dict[str, Any]) -> JobResult:
    return JobResult(r["key"], r["cached"], r["resumed_from_epoch"], r["seconds"])


@EXECUTORS.register("slurm")
class SlurmExecutor(SubmititExecutor):
    """Each model a SLURM job through submitit (the cluster extra); with ``--executor slurm``
    the stages follow as a job that depends on them."""

    kind = "slurm"


@EXECUTORS.register("local")
class LocalExecutor(SubmititExecutor):
    """The same jobs through submitit's local executor on this machine (its GPUs, or CPU
    jobs one at a time; the cluster extra)."""

    kind = "local"

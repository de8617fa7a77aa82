"""``run_study(study, out)``: data → train (paired, cached; through an executor) → the
stages (evaluation, soundness checks, probes: ``stages.py``) → tables → report.

Training: every model is a :class:`~workbench.training.jobs.TrainJob`; the planned jobs
(dependencies first) run through an :mod:`executor <workbench.executors>` into the model
store. The stages are planned from the registry and run in one generic loop
(:func:`run_stages`); each reads what the stages it needs produced, nothing goes through
globals, and the runner writes every table and artifact into the run folder. Each stage's
result is cached in the store (``cache.py``) under a hash of what determines it, so a
rerun with nothing changed reuses them."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import distributed
from .cache import ResultCache
from .data import DataSplits, load_section
from .errors import WorkbenchError
from .executors import Executor, InProcess, make_executor
from .progress import Progress
from .facts import RunFacts
from .stages import StageOutput, plan, run_stages, run_table_steps
from .state import cpu_threads, cudnn_benchmark, preserved_rng, threads_setting
from .store import ModelStore, RunFolder, atomic_write_bytes, environment, now
from .study import Study
from .tables import TABLES_RUN  # noqa: F401  (the tables the runner itself writes: models, pairs, history)
from .training.jobs import TrainJob, plan_jobs, recipe_class
from .training.loop import TrainedModel, data_identity, fit, load_trained
from .display import run_repr, run_html
from .models.sources import load_study_models
from .results import column_kinds
from .report import write_report

log = logging.getLogger("workbench")


def default_threads() -> int:
    """CPU threads for torch when ``--threads`` is not given: ``$WORKBENCH_THREADS``, else
    half the cores (:func:`~workbench.state.threads_setting`)."""
    return threads_setting()


def resolve_device(name: str | None = None) -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU; otherwise a torch device string."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise WorkbenchError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", field="--device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device {name!r} requested but no CUDA GPU is available", field="--device")
    if dev.type not in ("cpu", "cuda"):
        raise WorkbenchError(f"device {name!r} is not supported; use cpu or cuda", field="--device")
    return dev


@dataclass(repr=False)
class Run:
    path: Path
    study: Study
    device: torch.device
    data: DataSplits
    models: dict[str, TrainedModel]
    tables: dict[str, pd.DataFrame]
    timings: dict[str, float] = field(default_factory=dict)
    #: each stage's output (its tables as computed, before any table step; ``value``, e.g. the
    #: evaluation's EvalResult, only when it was computed in this run, not read from the cache)
    outputs: dict[str, StageOutput] = field(default_factory=dict)
    #: stages whose tables came from the result cache (``evaluate``, ``soundness``, ``probe:<name>``)
    cached_stages: list[str] = field(default_factory=list)
    #: the study's loaded models (``models:``), by id
    loaded: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return run_repr("Run", self.study.name, self.path, self.tables)

    def _repr_html_(self) -> str:
        return run_html("Run", self.study.name, self.path, self.tables, self.study.main_eps())


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("workbench")
    old_level = logger.level
    logger.setLevel(min(old_level or logging.INFO, logging.INFO))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)


def load_study_data(study: Study, device: torch.device, *, decode: str | None = None,
                    cache_dir: Path | None = None) -> DataSplits:
    """The study's data on ``device`` (:func:`~workbench.data.load_section` of its data
    section and seed); ``decode`` overrides data.decode; ``cache_dir``: where decoded data is
    cached (default :func:`~workbench.data.default_cache_dir`)."""
    return load_section(study.data, study.seed, device, decode=decode, cache_dir=cache_dir)


def model_jobs(study: Study, data: DataSplits) -> list[TrainJob]:
    """The training job of every model of the study (architectures × recipes, in order)."""
    ident = data_identity(study.data, data)
    source = {"data": study.data.model_dump(mode="json"), "seed": study.seed}
    monitor_eps = study.main_eps()
    jobs = []
    for spec in study.models():
        eps = getattr(spec.recipe, "eps", None)
        own = float(eps) if eps and getattr(spec.recipe, "norm", "linf") == "linf" else monitor_eps
        jobs.append(TrainJob(spec, ident, own, source=source))
    return jobs


def train_models(
    study: Study,
    data: DataSplits,
    store: ModelStore,
    device: torch.device,
    *,
    progress: Progress,
    retrain: bool = False,
    executor: Executor | None = None,
) -> dict[str, TrainedModel]:
    """Train (or reuse) every model of the study through ``executor`` (default: in this
    process): the planned jobs (dependencies such as distillation's teacher first) run
    there and land in the store, then the weights are loaded from the store."""
    jobs = model_jobs(study, data)
    if distributed.world().active:
        # data-parallel ranks train every job together, in study order, in this process
        out: dict[str, TrainedModel] = {}
        with progress.task("models", len(jobs)) as advance:
            for spec, job in zip(study.models(), jobs):
                out[spec.id] = fit(job, data, store, device, progress=progress, retrain=retrain)
                out[spec.id].model.eval()
                advance(1)
        return out
    executor = executor or InProcess()

    def untrained(job: TrainJob) -> bool:
        return retrain or not store.has_model(job.key())

    # a dependency (distillation's teacher) is planned only for a model still to train
    planned = [j for j in plan_jobs([j for j in jobs if untrained(j)]) if untrained(j)]
    with progress.task("models", len(planned)) as advance:
        reports = executor.run(planned, data, store, device, retrain=retrain, progress=progress,
                               done=lambda job, result: advance(1))
    out: dict[str, TrainedModel] = {}
    for spec, job in zip(study.models(), jobs):
        t = load_trained(job, data, store, device)
        r = reports.get(t.key)
        if r is not None:  # how the executor obtained it (this was only a read)
            t.cached, t.resumed_from_epoch, t.seconds = r.cached, r.resumed_from_epoch, r.seconds
        else:
            log.info("%s: reusing trained model %s", job.id, t.key)
        t.model.eval()
        out[spec.id] = t
    return out


def model_table(study: Study, trained: dict[str, TrainedModel], loaded: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per model: the trained ones (architectures × recipes), then the loaded ones."""
    rows = []
    ref = study.recipes[0].id if study.recipes else None
    for spec in study.models():
        t = trained[spec.id]
        hist = t.meta.get("history", [])
        rows.append(
            {
                "model": spec.id,
                "architecture": spec.arch.id,
                "arch_name": spec.arch.name,
                "recipe": spec.recipe.id,
                "recipe_name": spec.recipe.name,
                "train_eps": float(getattr(spec.recipe, "eps", 0.0) or 0.0),
                "train_norm": getattr(spec.recipe, "norm", "none") if getattr(spec.recipe, "eps", None) else "none",
                "role": "reference" if spec.recipe.id == ref else "paired",
                "seed": spec.seed,
                "key": t.key,
                "cached": t.cached,
                "resumed_from_epoch": t.resumed_from_epoch,
                "epochs": len(hist),
                "train_seconds": float(t.meta.get("train_seconds", 0.0)),
                "stopped_early": t.meta.get("stopped_early") or "",
                "parameters": sum(p.numel() for p in t.model.parameters()),
                "source": "",
                "file": "",
                "sha256": "",
            }
        )
    for m in study.loaded:
        lm = (loaded or {})[m.id]
        rows.append(
            {
                "model": m.id, "architecture": "loaded", "arch_name": type(lm.model.net).__name__,
                "recipe": "loaded", "recipe_name": "loaded", "train_eps": 0.0, "train_norm": "none", "role": "loaded",
                "seed": None,
                "key": lm.key, "cached": True, "resumed_from_epoch": None, "epochs": 0, "train_seconds": 0.0,
                "stopped_early": "", "parameters": sum(p.numel() for p in lm.model.parameters()),
                "source": lm.source, "file": lm.file, "sha256": lm.sha256,
            }
        )
    df = pd.DataFrame(rows)
    if "seed" in df.columns:
        df["seed"] = df["seed"].astype("Int64")  # empty for loaded models, whole numbers otherwise
    return df


TRAINING_ARRAYS = "arrays/training_samples.npz"


def training_arrays(study: Study, trained: dict[str, TrainedModel], store: ModelStore) -> bytes | None:
    """What each model's recipe kept beside it in the store for the report (a recipe's
    ``report_arrays(entry)``, e.g. robust_features' sample of its derived set), as one npz:
    ``models`` (ids) and ``{name}.{j}`` for the j-th of them; None when no recipe kept any."""
    ids: list[str] = []
    out: dict[str, Any] = {}
    for spec in study.models():
        read = getattr(recipe_class(spec.recipe.name), "report_arrays", None)
        got = read(store.entry(trained[spec.id].key)) if read is not None else None
        if got:
            out.update({f"{k}.{len(ids)}": v for k, v in got.items()})
            ids.append(spec.id)
    if not ids:
        return None
    buf = io.BytesIO()
    np.savez_compressed(buf, models=np.array(ids), **out)
    return buf.getvalue()


def model_keys(study: Study, trained: dict[str, TrainedModel], loaded: dict[str, Any] | None = None) -> dict[str, str]:
    """id -> store key of every model of the study, in order (the ``models`` fact's key)."""
    return {spec.id: trained[spec.id].key for spec in study.models()} | {m.id: (loaded or {})[m.id].key for m in study.loaded}


def run_facts(study: Study, data: DataSplits, device: torch.device, trained: dict[str, TrainedModel],
              loaded: dict[str, Any] | None = None) -> RunFacts:
    """The shared facts the stages of this run may declare (:mod:`workbench.facts`)."""
    models = {k: v.model for k, v in trained.items()} | {k: v.model for k, v in (loaded or {}).items()}
    return RunFacts(study, data, device, model_keys(study, trained, loaded), models)


def run_study(
    study: Study,
    out: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    store: ModelStore | str | Path | None = None,
    retrain: bool = False,
    recompute: bool = False,
    progress: Progress | bool | None = None,
    report: bool | None = None,
    threads: int | None = None,
    jobs: int = 1,
    executor: Executor | str | None = None,
    keep: int | None = None,
) -> Run:
    """Run a validated study into ``out`` (default ``reports/<study name>``).

    ``store``: the model cache (default ``$WORKBENCH_STORE`` or ``~/.cache/workbench``);
    ``retrain``: ignore (and move aside) cached models, and recompute every result;
    ``recompute``: ignore the results cached in the store (evaluation, soundness checks,
    each probe) and overwrite them with fresh ones; ``report``: write figures and
    ``index.html`` (default: the study's ``report.enabled``); ``threads``: torch CPU
    threads (default :func:`default_threads`; only set when the device is the CPU);
    ``jobs``: train up to this many models at once in separate processes (the
    ``processes`` executor); ``executor``: an :class:`~workbench.executors.Executor` or its
    registered name (default ``inprocess``, or ``processes`` when ``jobs`` > 1); ``keep``:
    archived runs kept in ``<out>/archive`` (default :attr:`RunFolder.KEEP`).

    The thread counts (torch's and, through threadpoolctl, BLAS's), cuDNN's benchmark flag
    and the global RNG are set for the run only and restored on return.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    device = distributed.setup(device)  # under torchrun: join the process group, on the rank's own GPU
    # one threads setting for the run and every process that trains for it (bit-identical
    # weights on the CPU); on a GPU the in-process run leaves torch's count alone, and so do the workers
    threads = threads_setting(threads) if device.type == "cpu" else threads
    if not isinstance(executor, Executor):
        executor = make_executor(executor, jobs=jobs, threads=threads)
    with contextlib.ExitStack() as scope:
        scope.enter_context(preserved_rng(device))
        if device.type == "cuda":
            scope.enter_context(cudnn_benchmark(True))
        else:
            # numpy/scikit-learn (OpenBLAS) ignore torch's setting and have the same spin-wait
            # problem: the linear probe was measured 18x slower with 2 BLAS threads on a busy box
            scope.enter_context(cpu_threads(threads))
        return _run_study(study, out, device=device, store=store, retrain=retrain, recompute=recompute,
                          progress=progress, report=report, executor=executor, keep=keep)


def _run_study(study: Study, out, *, device: torch.device, store, retrain: bool, recompute: bool, progress,
               report: bool | None, executor: Executor, keep: int | None = None) -> Run:
    recompute = recompute or retrain
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    store = store if isinstance(store, ModelStore) else ModelStore(store)
    progress = progress if isinstance(progress, Progress) else Progress(progress)
    folder = RunFolder(out if out is not None else Path("reports") / study.name, keep=keep)
    folder.check()  # refuse a folder that is not ours before any work
    store.check()

    # Data first: a missing data root fails before the run folder is touched.
    t0 = time.perf_counter()
    # the decoded-data cache lives in the store given (where `workbench gc` sees it)
    import os

    data = load_study_data(study, device, cache_dir=None if os.environ.get("WORKBENCH_DATA_CACHE") else store.root / "data")
    timings["data"] = time.perf_counter() - t0
    # Loaded models next, for the same reason: a missing or refused file fails first.
    t0 = time.perf_counter()
    loaded = load_study_models(study, data, device)
    timings["load_models"] = time.perf_counter() - t0

    if not distributed.world().main:
        # the other ranks train with rank 0 (DistributedDataParallel), then attack and probe
        # their shards of the examples (or models) for it; rank 0 alone reads and writes the
        # result cache and writes the tables and the run folder
        quiet = Progress(False)
        trained = train_models(study, data, store, device, progress=quiet, retrain=retrain)
        run_stages(plan(study), study, run_facts(study, data, device, trained, loaded), ResultCache(store.root),
                   progress=quiet, recompute=recompute)
        return Run(folder.path, study, device, data, trained, {}, timings)

    # Written into a staging folder, published when complete: a failure leaves the previous run as it was.
    with folder.staged(), _log_to(folder.path / "run.log"), progress.showing_log():
        env = environment(device, study.seed)
        env["data"] = data.describe()
        if study.replicated:
            env["seeds"] = list(study.seeds)  # `seed` is the first: the splits and the examples
        folder.write_json("environment.json", env)
        folder.write_text("study.yaml", study.to_yaml())
        log.info("Study %s runs on %s. Data: %s.", study.name, device, data.summary())

        t0 = time.perf_counter()
        trained = train_models(study, data, store, device, progress=progress, retrain=retrain, executor=executor)
        timings["train"] = time.perf_counter() - t0
        tables: dict[str, pd.DataFrame] = {"models": model_table(study, trained, loaded)}
        tables["pairs"] = pd.DataFrame(
            [{"pair": f"{ref}~{other}", "architecture": a, "reference": ref, "model": other} for a, ref, other in study.pairs()],
            columns=["pair", "architecture", "reference", "model"],
        )
        tables["history"] = pd.concat(
            [t.history.assign(model=k) for k, t in trained.items() if len(t.history)], ignore_index=True
        ) if any(len(t.history) for t in trained.values()) else pd.DataFrame()

        # The stages (evaluation, checks, probes) in a generic loop; each result is cached in
        # the store under a hash of what determines it (stages.py, cache.py), so a rerun with
        # nothing changed reads it back. The runner, not the stage, writes its artifacts.
        stage_timings: dict[str, float] = {}
        facts = run_facts(study, data, device, trained, loaded)
        ran = run_stages(plan(study), study, facts, ResultCache(store.root), progress=progress, recompute=recompute,
                         timings=stage_timings)
        stage_tables, artifacts, cached_stages = ran.tables, ran.artifacts, ran.reused
        timings.update(stage_timings)
        if any(k.startswith("probe:") for k in stage_timings):
            timings["probes"] = sum(v for k, v in stage_timings.items() if k.startswith("probe:"))
        tables.update(stage_tables)
        for rel, blob in artifacts.items():
            atomic_write_bytes(folder.path / rel, blob)
        if (kept := training_arrays(study, trained, store)) is not None:
            atomic_write_bytes(folder.path / TRAINING_ARRAYS, kept)
        result_keys = dict(ran.keys)
        if cached_stages:
            log.info("reused cached results: %s", ", ".join(cached_stages))
        # the table steps derive tables from all of these (the worst case, the paired tests,
        # the seeds as replicates: stages.TABLE_STEPS)
        step_keys = run_table_steps(tables, facts, progress=progress, cache=ResultCache(store.root), keys=ran.keys,
                                    recompute=recompute)

        for name, df in tables.items():
            folder.write_table(name, df)
        timings["total_before_report"] = time.perf_counter() - t_start
        manifest: dict[str, Any] = {
            "study": study.name,
            "started_at": env["started_at"],
            "finished_at": now(),
            "device": str(device),
            # torchrun: how many processes ran the study together, and how they talked
            "processes": distributed.world().size,
            "backend": distributed.backend(),
            "store": str(store.root),
            "timings": timings,
            "tables": sorted(tables),
            # each column's kind, so `report`/`compare` name a table whose types were changed since
            "table_kinds": {name: column_kinds(folder.tables / f"{name}.parquet") for name in tables},
            "cached_stages": cached_stages,
            "result_keys": result_keys,
            "table_step_keys": step_keys,
            "recompute": recompute,
        }
        folder.write_json("run.json", manifest)
        log.info("tables written to %s", folder.target / folder.TABLES)

        if report if report is not None else study.report.enabled:
            t0 = time.perf_counter()
            write_report(folder.path, published=folder.target)
            timings["report"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        manifest["timings"] = timings
        folder.write_json("run.json", manifest)
        log.info("run finished in %.1fs", timings["total"])
        archived = folder.publish()
        if archived:
            log.info("previous run moved to %s", archived)
    return Run(folder.path, study, device, data, trained, tables, timings, ran.outputs, cached_stages, loaded)

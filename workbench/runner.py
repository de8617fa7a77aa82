"""``run_study(study, out)``: data → train (paired, cached) → attack → soundness → probes →
tables → report. Each stage reads what the earlier ones produced; nothing goes through
globals, and every table lands in the run folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .data import DataSplits, load_dataset
from .errors import WorkbenchError
from .evaluation import EvalResult, evaluate, evaluation_subset
from .progress import Progress
from .store import ModelStore, RunFolder, environment, now
from .study import Study
from .training import TrainedModel, TrainJob, fit
from .training.loop import data_identity

log = logging.getLogger("workbench")


def default_threads() -> int:
    """CPU threads for torch: half the cores (at least one).

    On a small shared machine a two-thread OpenMP team whose second core is busy elsewhere
    spin-waits at every barrier: a small CNN's training step was measured 180x slower with
    2 threads than with 1 on a loaded 2-core box. Half the cores keeps large models fast
    and small ones safe; ``--threads`` or ``$WORKBENCH_THREADS`` overrides.
    """
    import os

    if os.environ.get("WORKBENCH_THREADS"):
        return max(1, int(os.environ["WORKBENCH_THREADS"]))
    return max(1, (os.cpu_count() or 2) // 2)


def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory in the process instead of returning it to the OS at once.

    glibc serves allocations above 128 KiB with mmap and unmaps them on free, so every
    attack step's activations cost page faults: a third of PGD's time on the quickstart
    was system time. Raising the mmap and trim thresholds (256/512 MiB) removed it (PGD
    0.87 s -> 0.59 s). Process-wide and harmless elsewhere; a no-op off glibc.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 256 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 512 << 20))
    except (OSError, AttributeError):
        return False


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


@dataclass
class Run:
    path: Path
    study: Study
    device: torch.device
    data: DataSplits
    models: dict[str, TrainedModel]
    tables: dict[str, pd.DataFrame]
    timings: dict[str, float] = field(default_factory=dict)
    evaluation: EvalResult | None = None


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


def load_study_data(study: Study, device: torch.device) -> DataSplits:
    d = study.data
    return load_dataset(
        d.name,
        root=d.resolved_root(),
        download=d.download,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        seed=study.seed,
        limit_train=d.limit_train,
        limit_test=d.limit_test,
        device=device,
        **dict(d.options),
    )


def train_models(
    study: Study, data: DataSplits, store: ModelStore, device: torch.device, *, progress: Progress, retrain: bool = False
) -> dict[str, TrainedModel]:
    """Train (or reuse) every model of the study: architectures × recipes."""
    ident = data_identity(study.data)
    monitor_eps = study.main_eps()
    out: dict[str, TrainedModel] = {}
    specs = study.models()
    with progress.task("models", len(specs)) as advance:
        for spec in specs:
            eps = getattr(spec.recipe, "eps", None)
            job = TrainJob(spec, ident, float(eps) if eps and spec.recipe.norm == "linf" else monitor_eps)
            out[spec.id] = fit(job, data, store, device, progress=progress, retrain=retrain)
            out[spec.id].model.eval()
            advance(1)
    return out


def model_table(study: Study, trained: dict[str, TrainedModel]) -> pd.DataFrame:
    rows = []
    ref = study.recipes[0].id
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
                "key": t.key,
                "cached": t.cached,
                "resumed_from_epoch": t.resumed_from_epoch,
                "epochs": len(hist),
                "train_seconds": float(t.meta.get("train_seconds", 0.0)),
                "stopped_early": t.meta.get("stopped_early") or "",
                "parameters": sum(p.numel() for p in t.model.parameters()),
            }
        )
    return pd.DataFrame(rows)


def run_study(
    study: Study,
    out: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    store: ModelStore | str | Path | None = None,
    retrain: bool = False,
    progress: Progress | bool | None = None,
    report: bool | None = None,
    threads: int | None = None,
) -> Run:
    """Run a validated study into ``out`` (default ``reports/<study name>``).

    ``store``: the model cache (default ``$WORKBENCH_STORE`` or ``~/.cache/workbench``);
    ``retrain``: ignore (and move aside) cached models; ``report``: write figures and
    ``index.html`` (default: the study's ``report.enabled``); ``threads``: torch CPU
    threads (default :func:`default_threads`; only set when the device is the CPU).
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    device = device if isinstance(device, torch.device) else resolve_device(device)
    store = store if isinstance(store, ModelStore) else ModelStore(store)
    progress = progress if isinstance(progress, Progress) else Progress(progress)
    folder = RunFolder(out if out is not None else Path("reports") / study.name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        n_threads = threads or default_threads()
        torch.set_num_threads(n_threads)
        tune_cpu_allocator()
        # numpy/scikit-learn (OpenBLAS) ignore torch's setting and have the same spin-wait
        # problem: the linear probe was measured 18x slower with 2 BLAS threads on a busy box
        from threadpoolctl import threadpool_limits

        threadpool_limits(n_threads)

    # Data first: a missing data root fails before the run folder is touched.
    t0 = time.perf_counter()
    data = load_study_data(study, device)
    timings["data"] = time.perf_counter() - t0

    archived = folder.prepare()
    with _log_to(folder.path / "run.log"):
        if archived:
            log.info("previous run moved to %s", archived)
        env = environment(device, study.seed)
        env["data"] = data.describe()
        folder.write_json("environment.json", env)
        folder.write_text("study.yaml", study.to_yaml())
        log.info("study %s on %s: %s", study.name, device, data.describe())

        t0 = time.perf_counter()
        trained = train_models(study, data, store, device, progress=progress, retrain=retrain)
        timings["train"] = time.perf_counter() - t0
        models = {k: v.model for k, v in trained.items()}
        tables: dict[str, pd.DataFrame] = {"models": model_table(study, trained)}
        tables["pairs"] = pd.DataFrame(
            [{"pair": f"{ref}~{other}", "architecture": a, "reference": ref, "model": other} for a, ref, other in study.pairs()],
            columns=["pair", "architecture", "reference", "model"],
        )
        tables["history"] = pd.concat(
            [t.history.assign(model=k) for k, t in trained.items() if len(t.history)], ignore_index=True
        ) if any(len(t.history) for t in trained.values()) else pd.DataFrame()

        t0 = time.perf_counter()
        idx = evaluation_subset(len(data.test_y), study.evaluation.examples, study.seed)
        x, y = data.test_x[idx.to(data.test_x.device)], data.test_y[idx.to(data.test_y.device)]
        result = evaluate(models, x, y, study.evaluation, study.pairs(), seed=study.seed, progress=progress, index=idx)
        tables.update(robustness=result.robustness, per_example=result.per_example, transfer=result.transfer)
        timings["evaluate"] = time.perf_counter() - t0

        if study.evaluation.soundness.enabled:
            from .evaluation.soundness import run_checks

            t0 = time.perf_counter()
            tables["soundness"] = run_checks(
                study, models, x, y, result, num_classes=data.num_classes, progress=progress, seed=study.seed
            )
            timings["soundness"] = time.perf_counter() - t0

        if study.probes.enabled():
            from .probes import run_probes

            t0 = time.perf_counter()
            tables.update(
                run_probes(study, models, data, folder, device=device, progress=progress, seed=study.seed)
            )
            timings["probes"] = time.perf_counter() - t0

        for name, df in tables.items():
            folder.write_table(name, df)
        timings["total_before_report"] = time.perf_counter() - t_start
        manifest: dict[str, Any] = {
            "study": study.name,
            "started_at": env["started_at"],
            "finished_at": now(),
            "device": str(device),
            "store": str(store.root),
            "timings": timings,
            "tables": sorted(tables),
        }
        folder.write_json("run.json", manifest)
        log.info("tables written to %s", folder.tables)

        if report if report is not None else study.report.enabled:
            from .report import write_report

            t0 = time.perf_counter()
            write_report(folder.path)
            timings["report"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        manifest["timings"] = timings
        folder.write_json("run.json", manifest)
        log.info("run finished in %.1fs", timings["total"])
    return Run(folder.path, study, device, data, trained, tables, timings, result)

"""``run_study(study, out)``: data → train (paired, cached) → attack → soundness → probes →
tables → report. Each stage reads what the earlier ones produced; nothing goes through
globals, and every table lands in the run folder. The results of the evaluation, the
checks and each probe are cached in the store (``cache.py``) under a hash of what
determines them, so a rerun with nothing changed reuses them."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .cache import ResultCache, cached_stage, code_hash
from .data import DataSplits, load_dataset
from .errors import WorkbenchError
from .evaluation import EvalResult, evaluate, evaluation_subset
from . import distributed
from .progress import Progress
from .state import cpu_threads, cudnn_benchmark, preserved_rng
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
        text = os.environ["WORKBENCH_THREADS"]
        try:
            return max(1, int(text))
        except ValueError:
            raise WorkbenchError(f"expected a whole number of threads, got {text!r}", field="$WORKBENCH_THREADS") from None
    return max(1, (os.cpu_count() or 2) // 2)


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
    #: the evaluation's tables; ``adversarial`` is empty when they came from the result cache
    evaluation: EvalResult | None = None
    #: stages whose tables came from the result cache (``evaluate``, ``soundness``, ``probe:<name>``)
    cached_stages: list[str] = field(default_factory=list)
    #: the study's loaded models (``models:``), by id
    loaded: dict[str, Any] = field(default_factory=dict)


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
        stream=d.stream,
        workers=d.workers,
        **dict(d.options),
    )


def model_jobs(study: Study, data: DataSplits) -> list[TrainJob]:
    """The training job of every model of the study (architectures × recipes, in order)."""
    ident = data_identity(study.data, data)
    monitor_eps = study.main_eps()
    jobs = []
    for spec in study.models():
        eps = getattr(spec.recipe, "eps", None)
        jobs.append(TrainJob(spec, ident, float(eps) if eps and spec.recipe.norm == "linf" else monitor_eps))
    return jobs


def train_models(
    study: Study, data: DataSplits, store: ModelStore, device: torch.device, *, progress: Progress, retrain: bool = False
) -> dict[str, TrainedModel]:
    """Train (or reuse) every model of the study: architectures × recipes."""
    out: dict[str, TrainedModel] = {}
    specs = study.models()
    with progress.task("models", len(specs)) as advance:
        for spec, job in zip(specs, model_jobs(study, data)):
            out[spec.id] = fit(job, data, store, device, progress=progress, retrain=retrain)
            out[spec.id].model.eval()
            advance(1)
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
                "key": lm.key, "cached": True, "resumed_from_epoch": None, "epochs": 0, "train_seconds": 0.0,
                "stopped_early": "", "parameters": sum(p.numel() for p in lm.model.parameters()),
                "source": lm.source, "file": lm.file, "sha256": lm.sha256,
            }
        )
    return pd.DataFrame(rows)


def _index_digest(idx: torch.Tensor) -> dict[str, Any]:
    a = idx.detach().cpu().to(torch.int64).numpy()
    return {"n": int(len(a)), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def result_inputs(study: Study, data: DataSplits, trained: dict[str, TrainedModel], device: torch.device,
                  loaded: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every cached stage result depends on (each stage adds its own study section):
    the models (store keys, which hash everything that determines the weights, and ids) in
    order, the pairs, the data, the seed, the device type, torch and the workbench code."""
    return {
        "code": code_hash(),
        "torch": torch.__version__,
        "device": device.type,
        "seed": study.seed,
        "models": [{"id": spec.id, "key": trained[spec.id].key} for spec in study.models()]
        + [{"id": m.id, "key": (loaded or {})[m.id].key} for m in study.loaded],
        "pairs": [list(p) for p in study.pairs()],
        "data": {
            **data_identity(study.data, data),
            "limit_test": study.data.limit_test,
            "sizes": {"train": len(data.train_y), "val": len(data.val_y), "test": len(data.test_y)},
            "num_classes": data.num_classes,
        },
    }


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
) -> Run:
    """Run a validated study into ``out`` (default ``reports/<study name>``).

    ``store``: the model cache (default ``$WORKBENCH_STORE`` or ``~/.cache/workbench``);
    ``retrain``: ignore (and move aside) cached models, and recompute every result;
    ``recompute``: ignore the results cached in the store (evaluation, soundness checks,
    each probe) and overwrite them with fresh ones; ``report``: write figures and
    ``index.html`` (default: the study's ``report.enabled``); ``threads``: torch CPU
    threads (default :func:`default_threads`; only set when the device is the CPU).

    The thread counts (torch's and, through threadpoolctl, BLAS's), cuDNN's benchmark flag
    and the global RNG are set for the run only and restored on return.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    device = distributed.setup(device)  # under torchrun: join the process group, on the rank's own GPU
    with contextlib.ExitStack() as scope:
        scope.enter_context(preserved_rng(device))
        if device.type == "cuda":
            scope.enter_context(cudnn_benchmark(True))
        else:
            # numpy/scikit-learn (OpenBLAS) ignore torch's setting and have the same spin-wait
            # problem: the linear probe was measured 18x slower with 2 BLAS threads on a busy box
            scope.enter_context(cpu_threads(threads or default_threads()))
        return _run_study(study, out, device=device, store=store, retrain=retrain, recompute=recompute,
                          progress=progress, report=report)


def _run_study(study: Study, out, *, device: torch.device, store, retrain: bool, recompute: bool, progress,
               report: bool | None) -> Run:
    recompute = recompute or retrain
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    store = store if isinstance(store, ModelStore) else ModelStore(store)
    progress = progress if isinstance(progress, Progress) else Progress(progress)
    folder = RunFolder(out if out is not None else Path("reports") / study.name)
    folder.check()  # refuse a folder that is not ours before any work
    store.check()

    # Data first: a missing data root fails before the run folder is touched.
    t0 = time.perf_counter()
    data = load_study_data(study, device)
    timings["data"] = time.perf_counter() - t0
    # Loaded models next, for the same reason: a missing or refused file fails first.
    from .models.sources import load_study_models

    t0 = time.perf_counter()
    loaded = load_study_models(study, data, device)
    timings["load_models"] = time.perf_counter() - t0

    if not distributed.world().main:
        # the other ranks train with rank 0 (DistributedDataParallel) and leave the rest to it:
        # the evaluation, the checks, the probes, the tables and the run folder
        trained = train_models(study, data, store, device, progress=Progress(False), retrain=retrain)
        return Run(folder.path, study, device, data, trained, {}, timings)

    # Written into a staging folder, published when complete: a failure leaves the previous run as it was.
    with folder.staged(), _log_to(folder.path / "run.log"):
        env = environment(device, study.seed)
        env["data"] = data.describe()
        folder.write_json("environment.json", env)
        folder.write_text("study.yaml", study.to_yaml())
        log.info("Study %s runs on %s. Data: %s.", study.name, device, data.summary())

        t0 = time.perf_counter()
        trained = train_models(study, data, store, device, progress=progress, retrain=retrain)
        timings["train"] = time.perf_counter() - t0
        models = {k: v.model for k, v in trained.items()} | {k: v.model for k, v in loaded.items()}
        tables: dict[str, pd.DataFrame] = {"models": model_table(study, trained, loaded)}
        tables["pairs"] = pd.DataFrame(
            [{"pair": f"{ref}~{other}", "architecture": a, "reference": ref, "model": other} for a, ref, other in study.pairs()],
            columns=["pair", "architecture", "reference", "model"],
        )
        tables["history"] = pd.concat(
            [t.history.assign(model=k) for k, t in trained.items() if len(t.history)], ignore_index=True
        ) if any(len(t.history) for t in trained.values()) else pd.DataFrame()

        # Results are cached in the store under a hash of everything that determines them
        # (workbench/cache.py): a rerun with nothing changed reads them back.
        cache = ResultCache(store.root)
        common = result_inputs(study, data, trained, device, loaded)
        cached_stages: list[str] = []
        result_keys: dict[str, str] = {}

        def stage(name: str, inputs: dict[str, Any], compute, **kw) -> dict[str, pd.DataFrame]:
            got = cached_stage(cache, name, {**common, **inputs}, compute, recompute=recompute, progress=progress, **kw)
            result_keys[name] = got.key
            if got.cached:
                cached_stages.append(name)
            return got.tables

        t0 = time.perf_counter()
        idx = evaluation_subset(len(data.test_y), study.evaluation.examples, study.seed)
        if data.streamed:  # the evaluation reads its batches from the files; the checks get them decoded
            x_eval = data.test_x.subset(idx)  # type: ignore[attr-defined]
            y = data.test_y[idx.to(data.test_y.device)]
        else:
            x_eval, y = data.test_x[idx.to(data.test_x.device)], data.test_y[idx.to(data.test_y.device)]
        x = x_eval
        fresh: list[EvalResult] = []

        def run_evaluation() -> dict[str, pd.DataFrame]:
            fresh.append(evaluate(models, x_eval, y, study.evaluation, study.pairs(), seed=study.seed, progress=progress, index=idx))
            return {"robustness": fresh[0].robustness, "per_example": fresh[0].per_example, "transfer": fresh[0].transfer}

        eval_inputs = {
            "evaluation": study.evaluation.model_dump(mode="json", exclude={"soundness"}),
            "examples": _index_digest(idx),
        }
        ev = stage("evaluate", eval_inputs, run_evaluation)
        # the checks read only the evaluation's tables, so cached ones serve them as well
        result = fresh[0] if fresh else EvalResult(ev["robustness"], ev["per_example"], ev["transfer"])
        tables.update(robustness=result.robustness, per_example=result.per_example, transfer=result.transfer)
        timings["evaluate"] = time.perf_counter() - t0

        if study.evaluation.soundness.enabled:
            from .evaluation.soundness import run_checks_full

            t0 = time.perf_counter()
            if data.streamed:
                x = x_eval.load()
            sound_inputs = {
                # the rest of the evaluation section, and the examples, are in the evaluation's key
                "soundness": study.evaluation.soundness.model_dump(mode="json"),
                "main_eps": study.main_eps(),
                "evaluate_key": result_keys["evaluate"],  # the checks read the evaluation's tables
            }
            def run_soundness() -> dict[str, pd.DataFrame]:
                table, outcomes = run_checks_full(study, models, x, y, result, num_classes=data.num_classes,
                                                  progress=progress, seed=study.seed)
                return {"soundness": table, "soundness_per_example": outcomes}

            tables.update(stage("soundness", sound_inputs, run_soundness))
            timings["soundness"] = time.perf_counter() - t0

        # the headline: per example, robust only if no white-box attack run on it broke it
        # (the checks' attacks included), then paired tests between the models of each pair
        from .evaluation.worst_case import with_worst_case
        from .significance import significance_table

        tables["robustness"], tables["per_example"] = with_worst_case(
            tables["robustness"], tables["per_example"], tables.get("soundness_per_example"))

        if study.probes.enabled():
            from .probes.base import add_probe_tables, probe_context, run_probe

            t0 = time.perf_counter()
            ctx = probe_context(study, models, data, folder, device=device, progress=progress, seed=study.seed)
            for name in study.probes.enabled():
                probe_inputs = {
                    "probe": getattr(study.probes, name).model_dump(mode="json"),
                    "probes": study.probes.model_dump(mode="json", include={"examples", "batch_size"}),
                    # a probe without its own ε grid uses the evaluation's; linearity uses the main ε
                    "eps": {"linf": list(study.evaluation.eps), "l2": list(study.evaluation.eps_l2)},
                    "main_eps": study.main_eps(),
                    "examples": _index_digest(ctx.index),
                }
                out = stage(f"probe:{name}", probe_inputs, lambda name=name: run_probe(ctx, name), folder=folder.path)
                add_probe_tables(tables, name, out)
            timings["probes"] = time.perf_counter() - t0
        if cached_stages:
            log.info("reused cached results: %s", ", ".join(cached_stages))
        tables["significance"] = significance_table(tables, study.pairs())

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
            "cached_stages": cached_stages,
            "result_keys": result_keys,
            "recompute": recompute,
        }
        folder.write_json("run.json", manifest)
        log.info("tables written to %s", folder.target / folder.TABLES)

        if report if report is not None else study.report.enabled:
            from .report import write_report

            t0 = time.perf_counter()
            write_report(folder.path)
            timings["report"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        manifest["timings"] = timings
        folder.write_json("run.json", manifest)
        log.info("run finished in %.1fs", timings["total"])
        archived = folder.publish()
        if archived:
            log.info("previous run moved to %s", archived)
    return Run(folder.path, study, device, data, trained, tables, timings, result, cached_stages, loaded)

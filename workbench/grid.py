"""Run a study grid on a cluster (``workbench run --executor slurm|local``): the driver trains
every model as a job (:mod:`workbench.cluster`), then submits one job that runs the rest of
the study (:class:`StagesTask`: evaluation, checks, probes, tables, report). This module is
the runner's level (it runs studies); the cluster executors below it only ship jobs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .cluster import ClusterOptions, _submitit
from .executors import EXECUTORS
from .progress import QUIET, Progress
from .runner import load_study_data, model_jobs, run_study
from .state import threads_setting
from .store import ModelStore
from .study import study_from_dict


class StagesTask:
    """Everything after training, run inside a job once the models are in the store."""

    def __init__(self, study_dict: dict[str, Any], out: str, store_root: str, recompute: bool, report: bool | None,
                 threads: int | None):
        self.study_dict, self.out, self.store_root = study_dict, out, store_root
        self.recompute, self.report, self.threads = recompute, report, threads_setting(threads, default=False)

    def __call__(self) -> dict[str, Any]:
        run = run_study(study_from_dict(self.study_dict), self.out, store=self.store_root, recompute=self.recompute,
                        report=self.report, progress=False, threads=self.threads)
        return {"path": str(run.path), "cached_stages": run.cached_stages}

    def checkpoint(self, *args: Any, **kwargs: Any):
        return _submitit().helpers.DelayedSubmission(self)


def run_grid(
    study,
    out: str | Path | None,
    options: ClusterOptions,
    *,
    store: str | Path | None = None,
    retrain: bool = False,
    recompute: bool = False,
    report: bool | None = None,
    progress: Progress = QUIET,
) -> Path:
    """Train every model of ``study`` as jobs, then run the stages as a job; the run folder."""
    store_root = ModelStore(store).root
    out = Path(out if out is not None else Path("reports") / study.name)
    # The driver cannot see the jobs' devices, so data.decode auto means cpu here, and every
    # job (training and stages) is handed the resolved mode: the model keys the driver
    # computes are those the jobs train and read.
    if study.data.decode == "auto":
        study = study.model_copy(update={"data": study.data.model_copy(update={"decode": "cpu"})})
    # the driver needs the data's identity for the model keys (for a folder: a digest of it)
    data = load_study_data(study, torch.device("cpu"), decode="cpu")
    if study.data.decode == "gpu":  # what the GPU jobs will decode (checked there, by fit)
        data = dataclasses.replace(data, decode="gpu")
    jobs = model_jobs(study, data)
    study_dict = study.to_dict()
    executor = EXECUTORS.get(options.kind)(options=options, board=study.name)
    driver = executor.driver(store_root, study.name, progress)
    driver.train(jobs, study_dict, retrain=retrain, wait=False)
    result = driver.stages(StagesTask(study_dict, str(Path(out).absolute()), str(store_root), recompute or retrain,
                                      report, options.threads))
    return Path(result["path"])

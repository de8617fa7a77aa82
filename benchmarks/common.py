"""Helpers shared by the benchmark scripts: trained models from a study, timing, printing.

Benchmarks are not tests: they measure side by side in one process and print ratios, so
that the noise of a shared machine hits both sides alike (interleaved repetitions,
medians).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.progress import Progress  # noqa: E402
from workbench.cli import tune_cpu_allocator  # noqa: E402
from workbench.runner import default_threads, load_study_data, resolve_device, train_models  # noqa: E402
from workbench.store import ModelStore  # noqa: E402
from workbench.study import load_study  # noqa: E402


def setup(device: str, threads: int | None) -> torch.device:
    dev = resolve_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(threads or default_threads())
        tune_cpu_allocator()  # same process for both sides of every comparison
    else:
        torch.backends.cudnn.benchmark = True
    return dev


def trained(study_path: str, overrides: list[str], device: torch.device, store: str | None):
    """(study, data, {model id: trained model}) — trained once, then reused from the store."""
    study = load_study(study_path, overrides)
    data = load_study_data(study, device)
    models = train_models(study, data, ModelStore(store), device, progress=Progress(None))
    return study, data, {k: v.model.eval() for k, v in models.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores (torch {torch.__version__})"


def paired_ratio(mine: list[float], other: list[float], *, boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of the per-repetition ratios mine[i] / other[i] and a 95% bootstrap interval.

    Repetitions are interleaved, so pairing them cancels slow drifts of a shared machine;
    the interval says whether a ratio is below 1 or only equal within noise.
    """
    import random

    ratios = [a / b for a, b in zip(mine, other)]
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(boot))
    return statistics.median(ratios), meds[int(0.025 * boot)], meds[int(0.975 * boot) - 1]


def verdict(ratio: float, lo: float, hi: float, limit: float) -> str:
    if hi <= limit:
        return f"at most {limit:g}x (whole interval)"
    if lo > limit:
        return f"ABOVE {limit:g}x"
    return f"equal to {limit:g}x within noise (interval contains it)"

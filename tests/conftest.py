"""Shared test settings.

One torch thread: on a small shared machine a two-thread OpenMP team spin-waits whenever
the other core is busy, which makes tiny models 10-100x slower (see runner.default_threads).
Every test gets its own model store so nothing leaks between tests or into ~/.cache.
"""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits

from workbench.cli import tune_cpu_allocator

torch.set_num_threads(1)
threadpool_limits(1)  # numpy / scikit-learn BLAS threads, same reason
tune_cpu_allocator()  # fewer page faults (see cli.tune_cpu_allocator)


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path_factory.mktemp("store")))
    monkeypatch.setenv("WORKBENCH_THREADS", "1")

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

#: The suite writes about 1 GiB below pytest's temporary folder (a CIFAR-10 extraction, run
#: folders, stores); passing tests' folders are deleted as they end (pyproject's
#: tmp_path_retention_policy). With less free, hundreds of tests would error on ENOSPC one by
#: one, as a CI run once did; refuse at the start with one line instead.
NEEDED_FREE_BYTES = 1 << 30


def _temp_root(config):
    import tempfile
    from pathlib import Path

    return Path(config.option.basetemp or tempfile.gettempdir())


def _free_bytes(path):
    import shutil

    while not path.exists():  # --basetemp may not exist yet
        path = path.parent
    return shutil.disk_usage(path).free


def pytest_report_header(config):
    root = _temp_root(config)
    return f"temporary files: {root} ({_free_bytes(root) / 2**30:.1f} GiB free)"


def pytest_sessionstart(session):
    root = _temp_root(session.config)
    free = _free_bytes(root)
    if free < NEEDED_FREE_BYTES:
        pytest.exit(
            f"{root}: only {free / 2**20:.0f} MiB free; the tests need about "
            f"{NEEDED_FREE_BYTES / 2**30:.0f} GiB (set TMPDIR or --basetemp to a roomier disk)",
            returncode=2,
        )


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path_factory.mktemp("store")))
    monkeypatch.setenv("WORKBENCH_THREADS", "1")


#: ``evaluation.worst_case`` for studies whose tests are not about the AutoAttack cascade:
#: APGD-CE alone keeps the stage and its tables. The default (AutoAttack standard, with APGD-T,
#: FAB-T and Square) is test_worst_case's, and test_readme's on the full quickstart; Square's
#: 5,000 queries and APGD-T's 900 iterations cost seconds per model × norm × ε however few
#: examples are left (per-iteration overhead), about 4 minutes over these fixtures.
CHEAP_CASCADE = {"attacks": ["apgd-ce"]}


def digits_mlp():
    """A small MLP (64-64-10) trained for 300 Adam steps on scikit-learn's digits (8×8, 10
    classes), seeded, in eval mode, and 60 test examples (images 1500-1559) as (model, x, y).
    Shared by the AutoAttack and worst-case tests (import it: ``from conftest import digits_mlp``)."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        i = torch.randint(0, 1400, (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    return model.eval(), x[1500:1560], y[1500:1560]

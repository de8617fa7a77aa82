"""torch's process-wide state, changed only inside a block and restored on exit.

Library calls (``run_study``, the probes, training, evaluation) must leave the caller's
process as they found it: the global RNG, torch's and BLAS's thread counts, module modes.
Each change is made here, by a context manager that undoes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn
from .errors import WorkbenchError


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; each module's own ``training`` flag restored
    afterwards (even on an exception), so a partly frozen model comes back the same."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _cuda_devices(device: torch.device | str | None) -> list[int]:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def seed_global_rng(seed: int, device: torch.device | str | None = None) -> None:
    """Seed torch's global CPU generator and, for a CUDA ``device``, that device's: what
    ``torch.manual_seed`` does for the generators a computation on ``device`` draws from.
    Only for code whose draws cannot take a generator (dropout, ``rand_like``); call it
    inside :func:`preserved_rng`."""
    torch.random.default_generator.manual_seed(int(seed))
    for index in _cuda_devices(device):
        with torch.cuda.device(index):
            torch.cuda.manual_seed(int(seed))


@contextlib.contextmanager
def preserved_rng(device: torch.device | str | None = None) -> Iterator[None]:
    """The global CPU generator (and ``device``'s, if CUDA) are restored on exit."""
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        yield


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Global draws inside the block come from ``seed``; the caller's state is restored on exit."""
    with preserved_rng(device):
        seed_global_rng(seed, device)
        yield


def threads_setting(threads: int | None = None, *, default: bool = True) -> int | None:
    """The CPU threads a run trains and evaluates with, resolved in one order everywhere (the
    in-process run, the process-pool workers, the cluster jobs): ``threads`` (``--threads``),
    else ``$WORKBENCH_THREADS``, else half the cores (at least one); ``default=False`` gives
    None instead of the last, for a job to count the cores of the machine it runs on.

    Why half the cores: on a small shared machine a two-thread OpenMP team whose second core
    is busy elsewhere spin-waits at every barrier (a small CNN's training step was measured
    180x slower with 2 threads than with 1 on a loaded 2-core box), while large models want
    the cores. The same setting in every process is what makes an executor train the
    in-process run's weights bit for bit on the CPU.
    """
    if threads:
        return max(1, int(threads))
    text = os.environ.get("WORKBENCH_THREADS")
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            raise WorkbenchError(f"expected a whole number of threads, got {text!r}", field="$WORKBENCH_THREADS") from None
    return max(1, (os.cpu_count() or 2) // 2) if default else None


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads and the BLAS/OpenMP pools of numpy and scikit-learn
    (threadpoolctl) limited to ``n`` inside the block, restored afterwards (None: unchanged)."""
    if n is None:
        yield
        return
    # threadpoolctl: only when a thread limit is set
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` set inside the block, restored afterwards."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before

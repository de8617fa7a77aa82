"""torch's process-wide state, changed only inside a block and restored on exit.

Library calls (``run_study``, the probes, training, evaluation) must leave the caller's
process as they found it: the global RNG, torch's and BLAS's thread counts, module modes.
Each change is made here, by a context manager that undoes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


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


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads and the BLAS/OpenMP pools of numpy and scikit-learn
    (threadpoolctl) limited to ``n`` inside the block, restored afterwards (None: unchanged)."""
    if n is None:
        yield
        return
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

"""Data-parallel training across processes (``torchrun``; ``workbench run --gpus N``).

Under ``torchrun`` every process runs the whole ``workbench run``: :func:`setup` joins the
process group (NCCL on GPUs, each rank on ``cuda:LOCAL_RANK``; gloo on CPUs). Training
then wraps the model in ``DistributedDataParallel`` with ``SyncBatchNorm`` and gives each
rank an equal contiguous share of every batch (the global batch and the learning rate are
the study's, as in one process; each rank crafts the adversarial examples of its share).
Only rank 0 writes: checkpoints, the model store, the result cache and the run folder.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op
and the world has one rank.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import WorkbenchError

log = logging.getLogger("workbench")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the process group (one rank when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def backend() -> str | None:
    """The process group's backend (``nccl``, ``gloo``), None outside torchrun."""
    return dist.get_backend() if world().active else None


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device | None) -> torch.device | None:
    """Join the process group if launched by torchrun; returns this rank's device (the
    rank's own GPU on CUDA). A no-op (``device`` unchanged) otherwise."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return device
    if not dist.is_available():
        raise WorkbenchError("this torch build has no torch.distributed; run without torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = (device is None or device.type == "cuda") and torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise WorkbenchError(f"torchrun started rank {local} but this machine has {torch.cuda.device_count()} GPUs",
                                 field="--nproc-per-node")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    log.info("rank %d of %d on %s (%s)", dist.get_rank(), dist.get_world_size(), device, dist.get_backend())
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world().active:
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (one picklable object)."""
    if not world().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    w = world()
    if not w.active:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over ranks (a new tensor; ``t`` itself on one rank)."""
    if not world().active:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def shard_of(batch_size: int) -> tuple[int, int]:
    """``(rank, world size)`` for :func:`~workbench.data.iterate_batches`; the global batch
    must split evenly so every rank's mean loss weighs the same."""
    w = world()
    if w.active and batch_size % w.size:
        raise WorkbenchError(f"train.batch_size {batch_size} does not split over {w.size} processes; "
                             f"use a multiple of {w.size}", field="train.batch_size")
    return w.rank, w.size


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model to train: ``DistributedDataParallel`` over SyncBatchNorm when there are
    several ranks, else ``model`` itself. The returned module shares ``model``'s parameters."""
    if not world().active:
        return model
    if device.type == "cuda":
        # in place: the layers keep their parameters and buffers (and state-dict names)
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # SyncBatchNorm keeps the running statistics equal on every rank: no buffer broadcast
        return DistributedDataParallel(model, device_ids=[device.index], broadcast_buffers=False)
    # torch's SyncBatchNorm runs on GPUs only: on CPUs (gloo) BatchNorm normalises each rank's
    # share, and rank 0's running statistics are broadcast at every forward
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log.warning("BatchNorm statistics are per rank on CPUs (torch's SyncBatchNorm needs GPUs)")
    return DistributedDataParallel(model, broadcast_buffers=True)


@contextlib.contextmanager
def main_only_lock(lock: Any) -> Iterator[None]:
    """``lock`` on rank 0, nothing on the others (they never write the store, and waiting for
    rank 0's lock would deadlock against its collective calls)."""
    if world().main:
        with lock:
            yield
    else:
        yield


# --------------------------------------------------------------------------- sharded stages


def my_batches(n_batches: int) -> range:
    """The batches (by position) this rank computes of a stage's ``n_batches``: every
    ``W``-th from its rank (all of them on one rank). A batch's random stream is seeded by
    its position, so who computes it does not change its result."""
    w = world()
    return range(w.rank, n_batches, w.size)


def run_sharded(n_units: int, compute: Callable[[int], Any], what: str) -> list[Any]:
    """``[compute(0), …, compute(n_units − 1)]`` on every rank, each unit computed by one
    rank (unit u by rank u mod W, :func:`my_batches`) and the values (picklable, CPU) gathered
    in unit order. ``compute`` must not call collectives.

    An exception on any rank is raised on every rank once all have finished their units:
    the failing rank raises its own, the others a :class:`WorkbenchError` naming ``what``
    and the failing rank, so no rank is left waiting in a collective for its timeout."""
    w = world()
    if not w.active:
        return [compute(u) for u in range(n_units)]
    error: Exception | None = None
    try:
        part: tuple[bool, Any] = (True, {u: compute(u) for u in my_batches(n_units)})
    except Exception as e:  # noqa: BLE001 - the other ranks must hear of it, or they wait forever
        error = e
        part = (False, e.one_line() if isinstance(e, WorkbenchError) else f"{type(e).__name__}: {e}")
    parts = gather(part)
    if error is not None:
        raise error
    merged: dict[int, Any] = {}
    for rank, (ok, values) in enumerate(parts):
        if not ok:
            raise WorkbenchError(f"{what} failed on rank {rank}: {values}")
        merged.update(values)
    return [merged[u] for u in range(n_units)]

"""Device-resident mini-batches and batch augmentation (no DataLoader, no per-example loop).

The whole data set already lives on the training device (:class:`~.base.DataSplits`), so a
batch is an index slice and augmentation is a few tensor ops on the whole batch. All
randomness comes from generators seeded by the caller: the same seed gives the same
order and the same crops on every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


import torch

from ..seeds import purpose_seed


@dataclass(frozen=True)
class Augmentation:
    """Random crop after zero padding, and random horizontal flip, per example.

    ``aug(x, generator)`` takes a batch (N, C, H, W) on any device and returns a new batch
    of the same shape, dtype and device; ``generator`` must live on ``x.device``. The crop
    pads each side by ``crop_padding`` zeros and cuts an H×W window at a random offset
    (so each image is shifted by up to ±crop_padding pixels with zero fill); the flip
    mirrors the width axis of each image with probability ½. Crop is drawn before flip,
    as in the usual CIFAR recipe (``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip``).
    With both off it returns ``x`` itself.
    """

    crop_padding: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator, *, total: int | None = None,
                 offset: int = 0) -> torch.Tensor:
        """``total``/``offset``: ``x`` is rows ``offset..offset+len(x)`` of a batch of
        ``total`` (one rank's shard): the draws are made for the whole batch, so every
        shard gets the augmentation one process would give its rows."""
        if x.ndim != 4:
            raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
        total = x.shape[0] if total is None else total
        rows = slice(offset, offset + x.shape[0])
        if self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator, total=total, offset=offset)
        if self.flip:
            flip = (torch.rand(total, generator=generator, device=x.device) < 0.5)[rows]
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def skip(self, n: int, generator: torch.Generator) -> None:
        """Advance ``generator`` past the draws of one batch of ``n`` (resuming mid-epoch):
        the draws depend on the batch size only, so a 1×1 stand-in batch replays them."""
        self(torch.zeros(n, 1, 1, 1, device=generator.device), generator)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, *, total: int | None = None,
                offset: int = 0) -> torch.Tensor:
    """Per-example random H×W window of ``x`` zero-padded by ``padding`` on each side."""
    n, _, h, w = x.shape
    p = padding
    total = n if total is None else total
    padded = torch.nn.functional.pad(x, (p, p, p, p))  # zeros
    dy = torch.randint(0, 2 * p + 1, (total,), generator=generator, device=x.device)[offset : offset + n]
    dx = torch.randint(0, 2 * p + 1, (total,), generator=generator, device=x.device)[offset : offset + n]
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices split by the channel slice go first: result is (N, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None = None,
    augment: Augmentation | None = None,
    drop_last: bool = False,
    start_batch: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (x, y) batches from tensors already on their device.

    The permutation is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (so it
    is identical on every device and run) and the augmentation from a generator on the
    data's device seeded from ``seed`` as well. ``seed=None`` draws a seed from torch's
    global generator (so ``torch.manual_seed`` still makes a run repeatable). Pass a
    different seed per epoch (e.g. ``seed + epoch``) for a new order each epoch. Without
    shuffle, batches are views in stored order. Every example appears exactly once per
    epoch unless ``drop_last`` drops the final short batch.

    ``start_batch``: begin with that batch (a run resumed mid-epoch), the augmentation
    stream advanced past the batches before it. ``shard=(rank, world)``: yield only this
    rank's equal, contiguous share of every batch (data-parallel training), augmented as
    one process would augment those rows.
    ``x`` may be streamed images (:class:`~.stream.StreamedImages`): the same batches are
    then read from their files.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    needs_seed = shuffle or (augment is not None and augment.active)
    if seed is None and needs_seed:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    if not isinstance(x, torch.Tensor):  # streamed images read batch by batch (their batches(order))
        yield from stream_batches(x, y, batch_size, shuffle=shuffle, seed=seed, augment=augment,  # type: ignore[arg-type]
                                  drop_last=drop_last, start_batch=start_batch, shard=shard)
        return
    order, aug_gen = epoch_plan(len(x), batch_size, shuffle=shuffle, seed=seed, augment=augment, drop_last=drop_last,
                                start_batch=start_batch, device=x.device)
    rank, world = shard
    for rows in order:
        per = len(rows) // world
        lo, hi = rank * per, (rank + 1) * per if world > 1 else len(rows)
        if not shuffle:  # views in stored order
            start = int(rows[0]) if len(rows) else 0
            bx, by = x[start + lo : start + hi], y[start + lo : start + hi]
        else:
            idx = rows[lo:hi].to(x.device)
            bx, by = x[idx], y[idx]
        if aug_gen is not None:
            bx = augment(bx, aug_gen, total=len(rows), offset=lo)  # type: ignore[misc]
        yield bx, by


def epoch_plan(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None,
    augment: Augmentation | None,
    drop_last: bool,
    start_batch: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[list[torch.Tensor], torch.Generator | None]:
    """The rows (CPU index tensors) of every batch of an epoch from ``start_batch`` on, and
    the augmentation generator positioned at that batch (shared by both data paths)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    aug_gen = None
    if augment is not None and augment.active:
        # A different stream from the permutation's, on the data's device (CUDA generators
        # do not accept CPU draws and vice versa).
        aug_gen = torch.Generator(device=device).manual_seed(purpose_seed(seed, "augment"))
    end = n - n % batch_size if drop_last else n
    order = [perm[start : min(start + batch_size, n)] for start in range(0, end, batch_size)]
    if aug_gen is not None:
        for rows in order[:start_batch]:
            augment.skip(len(rows), aug_gen)  # type: ignore[union-attr]
    return order[start_batch:], aug_gen


def stream_batches(
    x: Any,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    augment: Augmentation | None = None,
    drop_last: bool = False,
    start_batch: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of :func:`iterate_batches` from streamed images (:class:`~.stream.StreamedImages`,
    whose ``batches(order)`` reads the given index lists): the same permutation and augmentation
    draws, so the same batches (see that function for ``start_batch`` and ``shard``)."""
    order, aug_gen = epoch_plan(len(y), batch_size, shuffle=shuffle, seed=seed, augment=augment, drop_last=drop_last,
                                start_batch=start_batch, device=x.device)
    rank, world = shard
    local = [rows[rank * (len(rows) // world):(rank + 1) * (len(rows) // world)] for rows in order]
    for rows, mine, bx in zip(order, local, x.batches(local)):
        by = y[mine.to(y.device)]
        if aug_gen is not None:
            bx = augment(bx, aug_gen, total=len(rows), offset=rank * (len(rows) // world))  # type: ignore[misc]
        yield bx, by

"""Device-resident mini-batches and batch augmentation (no DataLoader, no per-example loop).

The whole data set already lives on the training device (:class:`~.base.DataSplits`), so a
batch is an index slice and augmentation is a few tensor ops on the whole batch. All
randomness comes from generators seeded by the caller: the same seed gives the same
order and the same crops on every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


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

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
        if self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-example random H×W window of ``x`` zero-padded by ``padding`` on each side."""
    n, _, h, w = x.shape
    p = padding
    padded = torch.nn.functional.pad(x, (p, p, p, p))  # zeros
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
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
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (x, y) batches from tensors already on their device.

    The permutation is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (so it
    is identical on every device and run) and the augmentation from a generator on the
    data's device seeded from ``seed`` as well. ``seed=None`` draws a seed from torch's
    global generator (so ``torch.manual_seed`` still makes a run repeatable). Pass a
    different seed per epoch (e.g. ``seed + epoch``) for a new order each epoch. Without
    shuffle, batches are views in stored order. Every example appears exactly once per
    epoch unless ``drop_last`` drops the final short batch.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    n = len(x)
    needs_seed = shuffle or (augment is not None and augment.active)
    if seed is None and needs_seed:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    perm = None
    if shuffle:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
    aug_gen = None
    if augment is not None and augment.active:
        # A different stream from the permutation's, on the data's device (CUDA generators
        # do not accept CPU draws and vice versa).
        aug_gen = torch.Generator(device=x.device).manual_seed(purpose_seed(seed, "augment"))
    end = n - n % batch_size if drop_last else n
    for start in range(0, end, batch_size):
        stop = min(start + batch_size, n)
        if perm is None:
            bx, by = x[start:stop], y[start:stop]
        else:
            idx = perm[start:stop]
            bx, by = x[idx], y[idx]
        if aug_gen is not None:
            bx = augment(bx, aug_gen)  # type: ignore[misc]
        yield bx, by


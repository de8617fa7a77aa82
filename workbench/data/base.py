"""The data-set registry and the raw/split containers (:func:`~.section.load_dataset` splits them).

A loader is a plain function registered in :data:`DATASETS`::

    @DATASETS.register("digits")
    def load_digits(root: Path | None, download: bool, cache_dir: Path | None) -> RawData: ...

Its keyword-only parameters after ``cache_dir`` are the data set's options (with their
defaults), which :func:`dataset_options` reads so a study can be validated before any
file is touched. :func:`~.section.load_dataset` turns a loader's :class:`RawData` into fixed,
seeded :class:`DataSplits` of float32 tensors in [0, 1] on the requested device. A data set
read from image files can also stream: :func:`stream_source` gives its entry the function
listing its files.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, WorkbenchError
from ..registry import Registry
from ..seeds import purpose_seed

Loader = Callable[..., "RawData"]

#: data-set loaders by name; ``DATASETS.get(name)`` raises UnknownNameError listing them
DATASETS: Registry[Loader] = Registry("data set")

# Parameters every loader takes; everything else in its signature is an option.
_COMMON_PARAMS = ("root", "download", "cache_dir")


def stream_source(files: Callable[..., Any]) -> Callable[[Loader], Loader]:
    """Mark a registered loader as able to stream: ``files(root, cache_dir, **options)`` lists
    its image files (a :class:`~.stream.FileSet`, read batch by batch when ``data.stream``)."""

    def deco(loader: Loader) -> Loader:
        loader.stream_files = files  # type: ignore[attr-defined]
        return loader

    return deco


def stream_files(name: str) -> Callable[..., Any] | None:
    """The file lister of data set ``name`` when it can stream, else None."""
    return getattr(DATASETS.get(name), "stream_files", None)


def streaming_sets() -> list[str]:
    """The data sets that can stream."""
    return [n for n in DATASETS.in_order() if stream_files(n) is not None]


@dataclass
class RawData:
    """What a loader returns: images as stored, labels, class names.

    ``train_x``/``test_x`` are (N, C, H, W), uint8 in [0, 255] or float32 in [0, 1];
    labels are int64 in ``[0, len(classes))``. ``test_x is None`` means the data set has
    no test split of its own and :func:`load_dataset` carves one from train by seed.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    classes: list[str]
    #: sha256 of the contents (:func:`content_digest`), set by loaders whose data is not
    #: fixed by its name (``imagefolder``): then the data's identity is what it holds, not
    #: where it lies, so a changed file retrains models and a moved copy reuses them.
    digest: str | None = None


def content_digest(raw: RawData) -> str:
    """sha256 of a data set's images, labels and class names (train, then test)."""
    h = hashlib.sha256()
    h.update(repr(list(raw.classes)).encode())
    for t in (raw.train_x, raw.train_y, raw.test_x, raw.test_y):
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


@dataclass
class DataSplits:
    """Fixed train/val/test splits on one device: x float32 in [0, 1], y int64.

    ``mean``/``std`` are per channel over the training split (for a normalization layer
    inside the model). ``indices`` records where each split came from: ``train`` and
    ``val`` index the loader's training examples; ``test`` indexes the loader's test
    examples, or its training examples when ``test_carved`` (no own test split).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    num_classes: int
    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    indices: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    test_carved: bool = False
    digest: str | None = None  # the loader's content digest (RawData.digest), if any
    #: the x of each split are :class:`~.stream.StreamedImages` (decoded when read), not tensors
    streamed: bool = False
    #: who decoded the images: "cpu" (libjpeg-turbo, libpng, PIL) or "gpu" (nvjpeg, data.decode)
    decode: str = "cpu"

    def summary(self) -> str:
        """One sentence for the run log, e.g. "digits: 1,294 training, 144 validation and 359
        test images of 1×8×8 in 10 classes (test carved from train), on cpu"."""
        shape = "×".join(str(v) for v in self.in_shape)
        source = "carved from train" if self.test_carved else "own test split"
        return (f"{self.name}: {self.train_y.numel():,} training, {self.val_y.numel():,} validation and "
                f"{self.test_y.numel():,} test images of {shape} in {self.num_classes} classes ({source}), "
                f"on {self.train_x.device}")

    def describe(self) -> dict[str, Any]:
        """Sizes, shape, classes and statistics as plain Python values (for run records)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "in_shape": list(self.in_shape),
            "train": int(self.train_y.numel()),
            "val": int(self.val_y.numel()),
            "test": int(self.test_y.numel()),
            "test_source": "carved from train" if self.test_carved else "own test split",
            "mean": [round(m, 6) for m in self.mean],
            "std": [round(s, 6) for s in self.std],
            "device": str(self.train_x.device),
            "streamed": self.streamed,
            "decode": self.decode,
        }


def dataset_options(name: str) -> dict[str, Any]:
    """Options of data set ``name`` mapped to their defaults (read from the loader).

    Raises UnknownNameError for an unknown data set.
    """
    loader = DATASETS.get(name)
    out: dict[str, Any] = {}
    for p in inspect.signature(loader).parameters.values():
        if p.name in _COMMON_PARAMS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = None if p.default is p.empty else p.default
    return out


def split_indices(
    name: str,
    train_y: torch.Tensor,
    test_y: torch.Tensor | None,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    limit_train: int | None,
    limit_test: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) positions from the labels alone (see :func:`load_dataset`): the
    in-memory and the streamed path share it, so both pick the same examples."""
    train_idx = torch.arange(len(train_y))
    if test_y is None:
        n_test = round(test_fraction * len(train_idx))
        test_idx, train_idx = stratified_pick(train_y, n_test, _generator(seed, "test"))
        test_pool_y = train_y
    else:
        test_idx = torch.arange(len(test_y))
        test_pool_y = test_y

    # Val: a stratified share of what is left of train.
    n_val = round(val_fraction * len(train_idx))
    pick, rest = stratified_pick(train_y[train_idx], n_val, _generator(seed, "val"))
    val_idx, train_idx = train_idx[pick], train_idx[rest]
    if len(train_idx) == 0:
        raise DataError(f"{name}: no training examples left after the val/test splits")

    if limit_train is not None and limit_train < len(train_idx):
        pick, _ = stratified_pick(train_y[train_idx], limit_train, _generator(seed, "limit_train"))
        train_idx = train_idx[pick]
    if limit_test is not None and limit_test < len(test_idx):
        pick, _ = stratified_pick(test_pool_y[test_idx], limit_test, _generator(seed, "limit_test"))
        test_idx = test_idx[pick]
    return train_idx, val_idx, test_idx


def stratified_pick(y: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions ``0..len(y)-1`` into (k picked, the rest), stratified by label.

    Each class gives ``k·n_c/N`` examples rounded by largest remainder, so the total is
    exactly ``k`` and class shares match the whole to within one example. Both index
    tensors are sorted, so the order of examples inside a split is the stored order.
    """
    n = len(y)
    k = max(0, min(int(k), n))
    if k == 0 or n == 0:
        return torch.zeros(0, dtype=torch.long), torch.arange(n)
    y = y.cpu()
    labels, counts = torch.unique(y, return_counts=True)
    quota = counts.double() * k / n
    take = quota.floor().long()
    short = k - int(take.sum())
    if short > 0:
        # Largest fractional remainders first; stable sort keeps ties in label order.
        order = torch.sort(quota - take, descending=True, stable=True).indices
        take[order[:short]] += 1
    picked = []
    for label, t in zip(labels.tolist(), take.tolist()):
        members = (y == label).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:t]])
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.cat(picked)] = True
    return mask.nonzero().flatten(), (~mask).nonzero().flatten()


def stratified_subset(y: torch.Tensor, n: int, seed: int, purpose: str) -> torch.Tensor:
    """Sorted positions of a seeded, class-stratified subset of ``n`` of the labels ``y``
    (all of them when ``n >= len(y)``), on ``y``'s device.

    For every "fixed batch" (the overfitting check, the training monitor): splits keep the
    stored order, and an ``imagefolder`` set is stored class by class, so the first 256
    CIFAR-10 training images are all airplanes.
    """
    if n >= len(y):
        return torch.arange(len(y), device=y.device)
    picked, _ = stratified_pick(y, n, _generator(seed, purpose))
    return picked.to(y.device)


def _generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose, derived from the study seed by a stable hash."""
    return torch.Generator().manual_seed(purpose_seed(seed, purpose))


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise WorkbenchError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 in [0, 1] on ``device``; uint8 is converted after the move (4× less to copy)."""
    x = x.to(device)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std over all examples and pixels."""
    # var_mean reduces in one pass without materialising a float64 or transposed copy
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    std = var.sqrt()
    return tuple(float(m) for m in mean.cpu()), tuple(float(s) for s in std.cpu())


def _check_raw(name: str, raw: RawData) -> None:
    """A loader's output must be well formed; a bad one is a bug or a malformed file."""
    if not isinstance(raw, RawData):
        raise TypeError(f"loader for {name!r} returned {type(raw).__name__}, not RawData")
    pairs = [("train", raw.train_x, raw.train_y)]
    if raw.test_x is not None or raw.test_y is not None:
        if raw.test_x is None or raw.test_y is None:
            raise DataError(f"{name}: test images and labels must both be given or both be None")
        pairs.append(("test", raw.test_x, raw.test_y))
    n_classes = len(raw.classes)
    if n_classes == 0:
        raise DataError(f"{name}: the data set has no classes")
    for split, x, y in pairs:
        if x.ndim != 4:
            raise DataError(f"{name}: {split} images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if x.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"{name}: {split} images must be uint8 or float32, got {x.dtype}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{name}: {split} has {len(x)} images but labels of shape {tuple(y.shape)}")
        if y.dtype != torch.int64:
            raise DataError(f"{name}: {split} labels must be int64, got {y.dtype}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise DataError(f"{name}: {split} labels outside [0, {n_classes}) for {n_classes} classes")
        if x.dtype == torch.float32 and x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise DataError(f"{name}: {split} float images must lie in [0, 1]")
    if len(raw.train_y) == 0:
        raise DataError(f"{name}: the data set has no training examples")
    if raw.test_x is not None and raw.test_x.shape[1:] != raw.train_x.shape[1:]:
        raise DataError(
            f"{name}: train images are {tuple(raw.train_x.shape[1:])} but test images {tuple(raw.test_x.shape[1:])}"
        )

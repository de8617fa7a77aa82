"""MNIST, Fashion-MNIST, CIFAR-10 and SVHN through torchvision, read as whole arrays.

torchvision already holds each split as one array (``.data``); converting that array is
a copy, where iterating the data set would decode a PIL image per example. Nothing is
downloaded unless ``download=True``; missing files raise a one-line :class:`DataError`
saying where they were expected and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import DATASETS, RawData


@dataclass(frozen=True)
class _Spec:
    name: str  # registry name
    label: str  # human name used in messages
    cls: str  # torchvision.datasets class
    expected: Callable[[Path], list[Path]]  # the folder or files torchvision reads under root
    classes: list[str] | None  # None: take the data set's own ``classes``


_DIGIT_NAMES = [str(i) for i in range(10)]


def _open(spec: _Spec, root: Path | None, download: bool, train: bool) -> Any:
    """Instantiate the torchvision data set, turning its failures into DataError."""
    expected = ", ".join(str(p) for p in spec.expected(root)) if root is not None else ""
    if root is None:
        raise DataError(
            f"{spec.name}: no data root given; set data.root to the folder that holds (or should hold) the "
            f"{spec.label} files, and data.download: true to fetch them there"
        )
    if not download and not root.is_dir():
        raise DataError(
            f"{spec.name}: data root {root} does not exist (expected the {spec.label} files in {expected}); "
            "set data.download: true to fetch them, or place them there"
        )
    import torchvision.datasets as tvd  # lazy: keeps `import workbench.data` fast

    cls = getattr(tvd, spec.cls)
    kwargs: dict[str, Any] = {"split": "train" if train else "test"} if spec.cls == "SVHN" else {"train": train}
    try:
        return cls(str(root), download=download, **kwargs)
    except RuntimeError as e:
        if download:
            raise DataError(f"{spec.name}: could not fetch {spec.label} into {root}: {_first_line(e)}") from None
        if "not found" not in str(e).lower():
            raise DataError(f"{spec.name}: could not read {spec.label} under {expected}: {_first_line(e)}") from None
        if any(p.exists() for p in spec.expected(root)):
            # torchvision says "not found or corrupted": some files are there, so they fail its md5 check
            raise DataError(
                f"{spec.name}: the {spec.label} files in {expected} are incomplete or corrupt (missing files or "
                "wrong checksums); replace them, or delete them and set data.download: true to fetch them again"
            ) from None
        raise DataError(
            f"{spec.name}: no {spec.label} files under {root} (expected {expected}); "
            "set data.download: true to fetch them, or place them there"
        ) from None
    except ImportError as e:  # SVHN needs scipy
        raise DataError(f"{spec.name}: reading {spec.label} needs a missing package: {e}") from None
    except Exception as e:  # noqa: BLE001 - malformed files or a failed download: one line, no traceback
        why = f"{type(e).__name__}: {_first_line(e)}" if str(e).strip() else type(e).__name__
        if download:
            raise DataError(f"{spec.name}: could not fetch {spec.label} into {root} (is the network reachable?): {why}") from None
        raise DataError(f"{spec.name}: could not read {spec.label} in {expected} (malformed files?): {why}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _as_nchw_uint8(data: Any) -> torch.Tensor:
    """(N, H, W), (N, H, W, C) HWC or already (N, C, H, W) uint8 → contiguous (N, C, H, W)."""
    x = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(data))
    if x.ndim == 3:
        return x.unsqueeze(1).contiguous()
    return x


def _load(spec: _Spec, root: Path | None, download: bool) -> RawData:
    train = _open(spec, root, download, train=True)
    test = _open(spec, root, download, train=False)
    xs, ys = [], []
    for ds in (train, test):
        data = ds.data
        if spec.cls in ("CIFAR10",):
            data = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()  # HWC → CHW
        labels = getattr(ds, "targets", None)
        if labels is None:
            labels = ds.labels  # SVHN
        xs.append(_as_nchw_uint8(data))
        ys.append(torch.as_tensor(np.asarray(labels), dtype=torch.int64))
    classes = spec.classes if spec.classes is not None else [str(c) for c in train.classes]
    return RawData(train_x=xs[0], train_y=ys[0], test_x=xs[1], test_y=ys[1], classes=classes)


_MNIST = _Spec("mnist", "MNIST", "MNIST", lambda r: [r / "MNIST" / "raw"], _DIGIT_NAMES)
_FASHION = _Spec("fashion-mnist", "Fashion-MNIST", "FashionMNIST", lambda r: [r / "FashionMNIST" / "raw"], None)
_CIFAR10 = _Spec("cifar10", "CIFAR-10", "CIFAR10", lambda r: [r / "cifar-10-batches-py"], None)
_SVHN = _Spec("svhn", "SVHN", "SVHN", lambda r: [r / "train_32x32.mat", r / "test_32x32.mat"], _DIGIT_NAMES)


@DATASETS.register("mnist")
def load_mnist(root: Path | None, download: bool, cache_dir: Path | None) -> RawData:
    """MNIST handwritten digits, 60k/10k 28×28 grey images (torchvision; files under root/MNIST/raw)."""
    return _load(_MNIST, root, download)


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(root: Path | None, download: bool, cache_dir: Path | None) -> RawData:
    """Fashion-MNIST clothing, 60k/10k 28×28 grey images (torchvision; files under root/FashionMNIST/raw)."""
    return _load(_FASHION, root, download)


@DATASETS.register("cifar10")
def load_cifar10(root: Path | None, download: bool, cache_dir: Path | None) -> RawData:
    """CIFAR-10, 50k/10k 32×32 colour images, 10 classes (torchvision; root/cifar-10-batches-py)."""
    return _load(_CIFAR10, root, download)


@DATASETS.register("svhn")
def load_svhn(root: Path | None, download: bool, cache_dir: Path | None) -> RawData:
    """SVHN house numbers, 73k/26k 32×32 colour images (torchvision; root/{train,test}_32x32.mat)."""
    return _load(_SVHN, root, download)

"""scikit-learn's bundled handwritten digits: the offline default data set."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, RawData


@DATASETS.register("digits")
def load_digits(root: Path | None, download: bool, cache_dir: Path | None) -> RawData:
    """Handwritten digits, 1,797 8×8 grey images, 10 classes (scikit-learn, offline).

    Ships with scikit-learn, so it needs no root and no download (both are ignored).
    Pixel values 0..16 are divided by 16. It has no test split of its own: the caller
    carves one by seed.
    """
    images, target = _read_bundled()
    x = torch.from_numpy(images).to(torch.float32).div_(16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(target).to(torch.int64)
    return RawData(train_x=x, train_y=y, test_x=None, test_y=None, classes=[str(i) for i in range(10)])


def _read_bundled() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 64) pixel values and (1797,) labels.

    Reads scikit-learn's ``datasets/data/digits.csv.gz`` directly: importing
    ``sklearn.datasets`` takes about a second (it pulls in scipy), the file ~20 ms.
    Falls back to ``sklearn.datasets.load_digits`` if the file is not where expected.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        try:
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            if data.shape == (1797, 65):
                return data[:, :-1], data[:, -1].astype(np.int64)
        except (OSError, ValueError):
            pass
    # scikit-learn takes seconds to import; only this step needs it
    from sklearn.datasets import load_digits as sk_load_digits

    images, target = sk_load_digits(return_X_y=True)
    return images, target

"""Time the imagefolder path on the shared CIFAR-10 JPEG tarball: cold decode, then cached.

    PYTHONPATH=. python benchmarks/data_decode.py [ARCHIVE_OR_DIR] [--device cuda]

Uses a fresh temporary cache folder, so the first load always decodes. Not a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from workbench.data import load_dataset
from workbench.data.imagefolder import load_imagefolder

DEFAULT = Path("/work/shared/data/cifar10-jpg.tar.gz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        for label in ("cold (decode + write cache)", "cached"):
            t0 = time.perf_counter()
            raw = load_imagefolder(args.root, False, cache)
            t_raw = time.perf_counter() - t0
            print(f"{label:30s} loader {t_raw:6.2f} s  train {tuple(raw.train_x.shape)}  test {tuple(raw.test_x.shape)}")
        size = sum(f.stat().st_size for f in cache.iterdir()) / 2**20
        print(f"cache size {size:.0f} MiB")
        t0 = time.perf_counter()
        splits = load_dataset("imagefolder", root=args.root, cache_dir=cache, device=args.device)
        if splits.train_x.is_cuda:
            torch.cuda.synchronize()
        print(f"{'load_dataset (cached, splits)':30s} {time.perf_counter() - t0:6.2f} s  {splits.describe()}")


if __name__ == "__main__":
    main()

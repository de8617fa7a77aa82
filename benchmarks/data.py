"""Training images per second of a CIFAR-shaped model on streamed versus in-memory data of
the same image folder, and (on a GPU) streamed versus synthetic data already on the device.

    python benchmarks/data.py --root CIFAR10_FOLDER_OR_TARBALL --device cuda      # the figure
    python benchmarks/data.py --root DIR --device cpu --arch small_cnn \
        --limit-train 512 --steps 2 --rounds 1 --workers 0                         # a dry run

The same optimiser steps (standard training, SGD, the study's augmentation) run on each
source in interleaved rounds; each round times ``--steps`` steps after ``--warmup`` steps,
and the medians over rounds are printed with the ratios. The goal (issue 13): streaming
costs at most 10 % of the GPU's compute-bound (synthetic) rate. A tarball is extracted to a
temporary folder first (streaming reads folders).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import median, setup, sync

from workbench.data import Augmentation, iterate_batches, load_dataset
from workbench.models import create_model


def _folder(root: Path, tmp: Path) -> Path:
    if root.is_dir():
        return root
    with tarfile.open(root) as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="../shared/data/cifar10-jpg.tar.gz", help="image folder (or a tarball of one)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--arch", default="preact_resnet18")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers of the streamed source")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per round and source")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    args = ap.parse_args()

    dev = setup(args.device, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = _folder(Path(args.root).expanduser(), Path(tmp))
        kw = dict(root=root, val_fraction=0.0, limit_train=args.limit_train, device=dev, cache_dir=Path(tmp) / "cache")
        t0 = time.perf_counter()
        mem = load_dataset("imagefolder", stream=False, **kw)
        print(f"in memory: {len(mem.train_y)} images of {mem.in_shape} decoded in {time.perf_counter() - t0:.1f} s")
        streamed = load_dataset("imagefolder", stream=True, workers=args.workers, **kw)
        sources = {"in-memory": mem.train_x, "streamed": streamed.train_x}
        labels = {"in-memory": mem.train_y, "streamed": streamed.train_y}
        if dev.type == "cuda":
            g = torch.Generator(device=dev).manual_seed(0)
            sources["synthetic"] = torch.rand((args.batch * 4, *mem.in_shape), device=dev, generator=g)
            labels["synthetic"] = torch.randint(0, mem.num_classes, (args.batch * 4,), device=dev, generator=g)

        torch.manual_seed(0)
        model = create_model(args.arch, num_classes=mem.num_classes, in_shape=mem.in_shape, mean=mem.mean, std=mem.std)
        model = model.to(dev).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        aug = Augmentation(crop_padding=4, flip=True)
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()

        def batches(name: str, epoch: int):
            # endless: epochs of the source one after another, as training reads them
            for e in itertools.count(epoch * 1000):
                yield from iterate_batches(sources[name], labels[name], args.batch, shuffle=True, seed=e, augment=aug,
                                           drop_last=True)

        def rate(name: str, r: int) -> float:
            it = batches(name, r)
            t_start = 0.0
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    sync(dev)
                    t_start = time.perf_counter()
                x, y = next(it)
                with autocast:
                    loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sync(dev)
            return args.steps * args.batch / (time.perf_counter() - t_start)

        rates: dict[str, list[float]] = {k: [] for k in sources}
        for r in range(args.rounds):
            order = list(sources) if r % 2 == 0 else list(reversed(sources))  # ABBA: drift hits both
            for name in order:
                rates[name].append(rate(name, r))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} img/s" for k, v in rates.items()))
        med = {k: median(v) for k, v in rates.items()}
        print(f"{args.arch}, batch {args.batch}, {args.precision}, {dev}, {args.workers} workers; medians of {args.rounds} rounds:")
        for k, v in med.items():
            print(f"  {k:<10} {v:>10,.0f} images/s")
        print(f"  streamed / in-memory: {med['streamed'] / med['in-memory']:.3f}")
        if "synthetic" in med:
            print(f"  streamed / synthetic: {med['streamed'] / med['synthetic']:.3f} (goal: at least 0.9)")


if __name__ == "__main__":
    main()

"""Training images per second of a CIFAR-shaped model on streamed versus in-memory data of
the same image folder, and (on a GPU) streamed versus synthetic data already on the device,
the streamed images decoded by the DataLoader workers on the CPU (data.decode: cpu) and, on
a GPU whose torchvision decodes JPEGs there, by nvjpeg on the GPU (data.decode: gpu).

    python benchmarks/data.py --device cuda                       # the GPU figure (whole CIFAR-10)
    python benchmarks/data.py --device cpu                        # CPU: a few minutes on 2 cores
    python benchmarks/data.py --root FOLDER_OR_TARBALL ...        # another image folder

``--root`` defaults to the CIFAR-10 JPEG tarball of the shared data folder next to the
repository (``../shared/data/cifar10-jpg.tar.gz``, else ``/work/shared/data/...``). A tarball
is extracted to a temporary folder first (streaming reads folders); ``--per-class N`` extracts
only the first N training (and N/5 test) images of each class, a small prepared folder.

Defaults depend on the device. GPU: PreActResNet-18, batch 512, bf16, 8 workers, the whole
folder. CPU: the small CNN on 32×32×3 inputs, batch 128, fp32, 2 workers, 500 images per
class, 10 timed steps per round (the CPU figure says what streaming costs against decoded
tensors in memory when the model is cheap; on a GPU the question is the goal below).

The same optimiser steps (standard training, SGD, the study's augmentation) run on each
source in interleaved rounds; each round times ``--steps`` steps after ``--warmup`` steps,
and the medians over rounds are printed with the ratios. The goal (issue 13): streaming
costs at most 10 % of the GPU's compute-bound (synthetic) rate.
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
from workbench.data.stream import cuda_jpeg_unavailable
from workbench.models import create_model


REPO = Path(__file__).resolve().parents[1]
TARBALL = "cifar10-jpg.tar.gz"
#: where the CIFAR-10 tarball is looked for when --root is not given
DEFAULT_ROOTS = (REPO.parent / "shared" / "data" / TARBALL, Path("/work/shared/data") / TARBALL)
#: per-device defaults of the options left unset
DEFAULTS = {
    "cuda": dict(arch="preact_resnet18", batch=512, workers=8, precision="bf16", steps=40, warmup=5, per_class=None),
    "cpu": dict(arch="small_cnn", batch=128, workers=2, precision="fp32", steps=10, warmup=2, per_class=500),
}


def _root(given: str | None) -> Path:
    if given:
        root = Path(given).expanduser()
        if not root.exists():
            raise SystemExit(f"error: --root {root} does not exist")
        return root
    for root in DEFAULT_ROOTS:
        if root.exists():
            return root
    raise SystemExit(f"error: no --root given and no {TARBALL} in {', '.join(str(r.parent) for r in DEFAULT_ROOTS)}; "
                     "pass --root with an image folder (train/<class>/...) or a tarball of one")


def _folder(root: Path, tmp: Path, per_class: int | None) -> Path:
    """``root`` itself when it is a folder, else the tarball extracted into ``tmp`` (with
    ``per_class``: only the first that many training and a fifth as many test images of
    each class)."""
    if root.is_dir():
        return root
    with tarfile.open(root) as tar:
        if per_class is None:
            tar.extractall(tmp, filter="data")
            return tmp
        kept: dict[tuple[str, str], int] = {}
        members = []
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            limit = per_class if split != "test" else max(1, per_class // 5)
            if kept.get((split, cls), 0) < limit:
                kept[(split, cls)] = kept.get((split, cls), 0) + 1
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help=f"image folder (or a tarball of one); default: {TARBALL} of the "
                    "shared data folder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--arch", default=None, help="model (default: preact_resnet18 on a GPU, small_cnn on the CPU)")
    ap.add_argument("--batch", type=int, default=None, help="default: 512 on a GPU, 128 on the CPU")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers of the streamed source (8 / 2)")
    ap.add_argument("--per-class", type=int, default=None,
                    help="from a tarball, extract only this many training images per class (default: all on a GPU, "
                    "500 on the CPU); 0: all")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round and source (40 / 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (5 / 2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="bf16 on a GPU, fp32 on the CPU")
    args = ap.parse_args()

    dev = setup(args.device, args.threads)
    for k, v in DEFAULTS["cuda" if dev.type == "cuda" else "cpu"].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    with tempfile.TemporaryDirectory() as tmp:
        root = _folder(_root(args.root), Path(tmp) / "folder", args.per_class or None)
        kw = dict(root=root, val_fraction=0.0, limit_train=args.limit_train, device=dev, cache_dir=Path(tmp) / "cache")
        t0 = time.perf_counter()
        mem = load_dataset("imagefolder", stream=False, **kw)
        print(f"in memory: {len(mem.train_y)} images of {mem.in_shape} decoded in {time.perf_counter() - t0:.1f} s")
        streamed = load_dataset("imagefolder", stream=True, workers=args.workers, decode="cpu", **kw)
        sources = {"in-memory": mem.train_x, "streamed": streamed.train_x}
        labels = {"in-memory": mem.train_y, "streamed": streamed.train_y}
        why = cuda_jpeg_unavailable(str(dev)) if dev.type == "cuda" else "needs --device cuda (nvjpeg decodes on a CUDA GPU)"
        if why is None:  # the workers read the bytes, the GPU decodes each batch's JPEGs
            gpu = load_dataset("imagefolder", stream=True, workers=args.workers, decode="gpu", **kw)
            sources["streamed-gpu"], labels["streamed-gpu"] = gpu.train_x, gpu.train_y
        else:
            print(f"streamed with GPU decoding (data.decode: gpu): skipped; {why}")
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
            print(f"  {k:<12} {v:>10,.0f} images/s")
        print("  (streamed: decoded by the DataLoader workers on the CPU; streamed-gpu: decoded on the GPU)")
        for name in ("streamed", "streamed-gpu"):
            if name not in med:
                continue
            print(f"  {name} / in-memory: {med[name] / med['in-memory']:.3f}")
            if "synthetic" in med:
                print(f"  {name} / synthetic: {med[name] / med['synthetic']:.3f} (goal: at least 0.9)")
        if "streamed-gpu" in med:
            print(f"  streamed-gpu / streamed: {med['streamed-gpu'] / med['streamed']:.3f}")


if __name__ == "__main__":
    main()

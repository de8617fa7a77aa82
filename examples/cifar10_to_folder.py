"""Write CIFAR-10 as a folder-per-class image tree, the layout studies/cifar10_laptop.yaml
(and any study with ``data.name: imagefolder``) reads:

    OUT/train/<class>/00000.png ... (50,000 images)
    OUT/test/<class>/00000.png  ... (10,000 images)

    python examples/cifar10_to_folder.py data/cifar10

torchvision downloads CIFAR-10 (170 MB) into ``--download-root`` (default: OUT/download)
once; ``--no-download`` reads an existing copy there instead. PNG keeps the pixels exact.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def convert(out: Path, download_root: Path, *, download: bool = True) -> dict[str, int]:
    from torchvision.datasets import CIFAR10

    counts = {}
    for split, train in (("train", True), ("test", False)):
        ds = CIFAR10(str(download_root), train=train, download=download)
        made: set[int] = set()
        for i, (img, label) in enumerate(ds):
            folder = out / split / ds.classes[label]
            if label not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(label)
            img.save(folder / f"{i:05d}.png")
        counts[split] = len(ds)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the folder to write (train/ and test/ inside)")
    p.add_argument("--download-root", type=Path, default=None, help="where torchvision keeps CIFAR-10 (default OUT/download)")
    p.add_argument("--no-download", action="store_true", help="read an existing torchvision copy, download nothing")
    args = p.parse_args(argv)
    counts = convert(args.out, args.download_root or args.out / "download", download=not args.no_download)
    print(f"{args.out}: {counts['train']} training and {counts['test']} test images in train/<class>/ and test/<class>/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

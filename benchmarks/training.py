"""Images per second of one training epoch of `standard`, `fgsm_rs` and `pgd_at` (10 steps)
for the same model, data, batch size and precision, and the cost of each relative to
standard.

    python benchmarks/training.py                                  # quickstart: digits, small_cnn
    python benchmarks/training.py --study studies/cifar10_fast.yaml --set data.root=DATA \
        --set data.limit_train=10000 --device cuda

An attack step costs a forward and an input-gradient pass, about 2/3 of a training step,
so the floors are about 1 + 2/3 ≈ 1.7× for fgsm_rs and 1 + 10·2/3 ≈ 7.7× for pgd_at.
Epochs of the three recipes are interleaved over several rounds; medians are reported.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from common import describe, median, setup, sync

import time

from workbench.data import Augmentation, iterate_batches
from workbench.runner import load_study_data
from workbench.study import load_study
from workbench.training.fgsm_rs import FGSMRSRecipe
from workbench.training.pgd_at import PGDATRecipe
from workbench.training.standard import StandardRecipe
from workbench.training import RECIPES, build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="studies/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="epochs timed per recipe (interleaved)")
    ap.add_argument("--pgd-steps", type=int, default=10)
    args = ap.parse_args()

    dev = setup(args.device, args.threads)
    study = load_study(args.study, args.set)
    data = load_study_data(study, dev)
    spec = study.models()[0]
    t = study.train
    eps = study.main_eps()
    recipes = {
        "standard": StandardRecipe(name="standard"),
        "fgsm_rs": FGSMRSRecipe(name="fgsm_rs", eps=eps, co_check=False),
        f"pgd_at ({args.pgd_steps} steps)": PGDATRecipe(name="pgd_at", eps=eps, steps=args.pgd_steps),
    }
    aug = Augmentation(crop_padding=study.data.augment.crop_padding, flip=study.data.augment.flip)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if t.precision == "bf16" and dev.type == "cuda"
                else contextlib.nullcontext())
    state = {}
    for name, cfg in recipes.items():
        model = build_model(spec, data, dev)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=t.lr * 0.1, momentum=t.momentum, weight_decay=t.weight_decay)
        state[name] = (model, opt, RECIPES.get(cfg.name)(cfg, t))

    def epoch(name: str, seed: int, limit: int | None = None) -> int:
        model, opt, recipe = state[name]
        model.train()
        seen = 0
        for i, (xb, yb) in enumerate(iterate_batches(data.train_x, data.train_y, t.batch_size, shuffle=True, seed=seed,
                                                     augment=aug, drop_last=True)):
            if limit is not None and i >= limit:
                break
            if t.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss, _ = recipe.loss(model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(yb)
        return seen

    for name in recipes:  # warm-up: allocator, cuDNN autotuning, graph capture
        epoch(name, 0, limit=3)
    times: dict[str, list[float]] = {n: [] for n in recipes}
    seen = {}
    for r in range(args.rounds):
        for name in recipes:
            sync(dev)
            t0 = time.perf_counter()
            seen[name] = epoch(name, r + 1)
            sync(dev)
            times[name].append(time.perf_counter() - t0)
    print(f"device: {describe(dev)}")
    print(f"model {spec.arch.name} on {study.data.name}: {seen['standard']} images per epoch, batch {t.batch_size}, "
          f"precision {t.precision}, channels_last {t.channels_last}, eps {eps:.4f}, median of {args.rounds} epochs")
    base = median(times["standard"])
    floors = {"standard": 1.0, "fgsm_rs": 1 + 2 / 3, f"pgd_at ({args.pgd_steps} steps)": 1 + args.pgd_steps * 2 / 3}
    for name in recipes:
        m = median(times[name])
        print(f"{name:18s} {seen[name] / m:10.0f} images/s  epoch {m:8.3f} s  cost {m / base:5.2f}x standard "
              f"(floor ~{floors[name]:.1f}x)")


if __name__ == "__main__":
    main()

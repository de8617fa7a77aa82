"""Workbench PGD (L∞) and FGSM against torchattacks on the same model, batch, ε, α, steps
and random start. Prints the median time ratio and both robust accuracies (an attack may
not get faster by getting weaker).

    pip install -e '.[bench]'          # torchattacks
    python benchmarks/attacks.py                        # quickstart's PGD-AT model, CPU
    python benchmarks/attacks.py --device cuda --study studies/cifar10_fast.yaml \
        --model preact_resnet18/fgsm_rs --set data.root=DATA --precision bf16

The model is a trained one from the study (trained on first use, then reused from the
model store), so robust accuracy is neither 0 nor 100% and the comparison means something.
Repetitions are interleaved in ABBA order (which side goes first alternates); the ratio is
the median of the per-repetition ratios, with a 95% bootstrap interval.
"""

from __future__ import annotations

import argparse

import torch

from common import describe, median, paired_ratio, setup, timed, trained, verdict

from workbench.attacks import fgsm, pgd
from workbench.attacks import compile_for_attacks
from workbench.evaluation import evaluation_subset


def accuracy(model, x, y, batch):
    with torch.no_grad():
        return sum((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item() for i in range(0, len(y), batch)) / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="studies/quickstart.yaml")
    ap.add_argument("--model", default=None, help="model id (default: the study's last model)")
    ap.add_argument("--set", action="append", default=[], help="study override key=value")
    ap.add_argument("--store", default=None, help="model store (default: $WORKBENCH_STORE or ~/.cache/workbench)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--examples", type=int, default=None, help="test examples (default: one batch)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 256 on CPU, 1024 on CUDA)")
    ap.add_argument("--eps", type=float, default=None, help="L∞ ε (default: the study's main ε)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default: 15 on CPU, 7 on CUDA)")
    ap.add_argument("--compile", action="store_true", help="workbench attacks a torch.compile'd model (as evaluation.compile)")
    ap.add_argument("--limit", type=float, default=None, help="target ratio to judge against (default: 1.0 on CPU, 0.5 on CUDA)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="workbench forward precision")
    args = ap.parse_args()

    import torchattacks

    dev = setup(args.device, args.threads)
    study, data, models = trained(args.study, args.set, dev, args.store)
    mid = args.model or list(models)[-1]
    model = models[mid]
    batch = args.batch or (1024 if dev.type == "cuda" else 256)
    reps = args.reps or (7 if dev.type == "cuda" else 15)
    limit = args.limit or (0.5 if dev.type == "cuda" else 1.0)
    attacked = compile_for_attacks(model) if args.compile else model
    n = args.examples or batch
    idx = evaluation_subset(len(data.test_y), n, study.seed).to(data.test_x.device)
    x, y = data.test_x[idx], data.test_y[idx]
    eps = args.eps if args.eps is not None else study.main_eps()
    alpha = 2.5 * eps / args.steps

    def ours_pgd():
        return torch.cat([pgd(attacked, x[i : i + batch], y[i : i + batch], eps, alpha, args.steps, random_start=True,
                              precision=args.precision) for i in range(0, n, batch)])

    def ours_fgsm():
        return torch.cat([fgsm(attacked, x[i : i + batch], y[i : i + batch], eps, precision=args.precision) for i in range(0, n, batch)])

    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
    ta_fgsm = torchattacks.FGSM(model, eps=eps)

    def theirs(atk):
        return lambda: torch.cat([atk(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)])

    print(f"device: {describe(dev)}")
    print(f"model: {mid} ({study.name}), {n} test examples, batch {batch}, eps {eps:.4f}, alpha {alpha:.4f}, "
          f"{args.steps} steps, random start; workbench precision {args.precision}"
          f"{', torch.compile' if args.compile else ''}; torchattacks fp32; {reps} interleaved repetitions")
    print(f"clean accuracy: {accuracy(model, x, y, batch):.4f}")
    for name, mine, other in (("PGD-linf", ours_pgd, theirs(ta_pgd)), ("FGSM", ours_fgsm, theirs(ta_fgsm))):
        mine(), other()  # warm-up (cuDNN autotuning, graph capture, allocator)
        t_mine, t_other, a_mine, a_other = [], [], [], []
        for rep in range(reps):
            # ABBA order: which side runs first alternates, so neither gains from going second
            for side in ((0, 1) if rep % 2 == 0 else (1, 0)):
                t, adv = timed((mine, other)[side], dev)
                (t_mine, t_other)[side].append(t)
                (a_mine, a_other)[side].append(accuracy(model, adv, y, batch))
        ratio, lo, hi = paired_ratio(t_mine, t_other)
        print(
            f"{name:9s} workbench {median(t_mine) * 1e3:9.1f} ms  torchattacks {median(t_other) * 1e3:9.1f} ms  "
            f"ratio {ratio:.3f}x (95% CI {lo:.3f}-{hi:.3f}: {verdict(ratio, lo, hi, limit)})  | robust acc workbench {sum(a_mine) / len(a_mine):.4f} "
            f"(range {min(a_mine):.4f}-{max(a_mine):.4f})  torchattacks {sum(a_other) / len(a_other):.4f} "
            f"(range {min(a_other):.4f}-{max(a_other):.4f})"
        )
    if args.precision == "bf16":
        torch.manual_seed(0)
        a32 = accuracy(model, torch.cat([pgd(model, x[i : i + batch], y[i : i + batch], eps, alpha, args.steps)
                                         for i in range(0, n, batch)]), y, batch)
        torch.manual_seed(0)
        a16 = accuracy(model, ours_pgd(), y, batch)
        print(f"bf16 vs fp32 workbench PGD, same examples and random start: {a16:.4f} vs {a32:.4f} "
              f"(difference {100 * (a16 - a32):+.2f} points)")


if __name__ == "__main__":
    main()

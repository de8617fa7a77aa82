"""How much of γ does the linearity probe's default search find? (issue 19, item 4)

    python benchmarks/gamma_budget.py RUN_FOLDER [--store PATH] [--budgets 10x1 20x1 10x3 ...]
        [--reference 50x5] [--threads 1]

γ(ε, x) = max_{‖δ‖∞≤ε} |ℓ(x+δ) − ℓ(x) − δᵀ∇ℓ(x)| is searched by PGD on |g| (keep-best), so
every budget gives a lower bound. For every model of the run (trained models from the model
store by the key the run recorded), on the run's probe examples and at every ε of the
linearity probe's grid, this compares each budget (steps × random starts) with a much larger
reference search (default 50 steps × 5 starts, on its own random starts): per example the
ratio γ_budget / γ_reference (the reference's value is the best of both searches, so the
ratio is at most 1), and prints per (model, ε) the share of examples whose ratio is ≥ 0.9,
the median ratio and the mean-γ ratio, then per budget the worst share over all settings.

The issue's target: a default that reaches ≥ 90 % of the reference on ≥ 90 % of the
examples; else the column is a lower bound with the measured shortfall.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench import results  # noqa: E402
from workbench.probes.base import probe_examples  # noqa: E402
from workbench.probes.linearity import local_linearity  # noqa: E402
from workbench.runner import load_study_data, resolve_device  # noqa: E402
from workbench.seeds import derive_seed  # noqa: E402


def budget(text: str) -> tuple[int, int]:
    steps, restarts = text.lower().split("x")
    return int(steps), int(restarts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (workbench run --out)")
    p.add_argument("--store", default=None, help="model store (default $WORKBENCH_STORE)")
    p.add_argument("--budgets", nargs="+", default=["10x1", "20x1", "10x3", "20x3", "50x1"])
    p.add_argument("--reference", default="50x5")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    res = results.load(args.run)
    study = res.study
    cfg = study.probes.linearity
    if cfg is None:
        print("this run has no linearity probe")
        return 2
    data = load_study_data(study, device)
    x, y, _ = probe_examples(data, study.probes.examples, study.seed)
    x, y = x.to(device).float(), y.to(device)
    grid = sorted({float(e) for e in (cfg.eps if cfg.eps is not None else study.evaluation.eps) if e > 0})
    ref_steps, ref_restarts = budget(args.reference)
    budgets = [budget(b) for b in args.budgets]
    worst = {b: 1.0 for b in budgets}
    print(f"{study.name}: {len(y)} probe examples, ε grid {grid}, reference {ref_steps} steps × {ref_restarts} starts")
    print(f"{'model':<24} {'ε':>6} {'budget':>7} {'share ≥ 0.9':>12} {'median':>7} {'mean γ':>8} {'ref mean':>9} {'s':>6}")
    for mid in res.model_ids:
        model = res.model(mid, store=args.store, device=device)
        for e in grid:
            ref = local_linearity(model, x, y, e, ref_steps, restarts=ref_restarts, batch_size=256,
                                  seed=derive_seed("gamma-budget-reference", e)).double().numpy()
            for steps, restarts in budgets:
                t0 = time.perf_counter()
                # the study's own seed for this probe: the values the linearity table reports
                got = local_linearity(model, x, y, e, steps, restarts=restarts, batch_size=256,
                                      seed=derive_seed(study.seed, "probe", "local-linearity")).double().numpy()
                seconds = time.perf_counter() - t0
                best = np.maximum(ref, got)
                ok = best > 0
                ratio = np.where(ok, got / np.where(ok, best, 1.0), 1.0)
                share = float((ratio >= 0.9).mean())
                worst[(steps, restarts)] = min(worst[(steps, restarts)], share)
                print(f"{mid:<24} {e:>6.3g} {steps:>4}x{restarts:<2} {share:>12.1%} {np.median(ratio):>7.3f} "
                      f"{got.mean():>8.3f} {best.mean():>9.3f} {seconds:>6.2f}")
    print("\nworst share of examples at ≥ 90 % of the reference, over every model and ε:")
    for (steps, restarts), share in worst.items():
        print(f"  {steps:>3} steps × {restarts} starts: {share:.1%} {'(meets the 90 % target)' if share >= 0.9 else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

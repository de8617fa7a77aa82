"""The compute floor of a run's worst-case cascade: the time its model passes alone must take.

Issue 19 asked for AutoAttack's strength in every worst case and for the quickstart's cold time
to grow by at most 30 %. This script says whether any batching or scheduling of the cascade
could meet such a budget. From the run's ``worst_case_cascade`` table (what each attack ran on
and broke at each setting) it counts the model passes the attacks cannot avoid, using the
search lengths of AutoAttack's standard version:

- APGD-CE: 100 iterations (a forward and backward pass each) for every candidate;
- APGD-T: 100 iterations per target class; an example leaves after the target that breaks it,
  so a broken one is counted for one target only and a robust one for all of them;
- Square: 5,000 queries (a forward pass each) for every candidate it does not break (one it
  breaks is counted for none);
- FAB-T: not counted (so the floor is lower still than what runs).

Each pass is priced at the model's per-example cost measured here at the study's attack batch
size (the largest batch the cascade uses, so the cheapest per example), on the current torch
thread count. The floor is a lower bound: the real cascade adds per-iteration overhead, smaller
batches and FAB-T.

    python benchmarks/cascade_floor.py RUN [--store DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench import results  # noqa: E402
from workbench.runner import load_study_data  # noqa: E402

APGD_ITERATIONS = 100  # AutoAttack standard (pyautoattack's n_iter for APGD-CE and APGD-T)
SQUARE_QUERIES = 5000  # AutoAttack standard (Square's n_queries)


def per_example_seconds(model, example: torch.Tensor, batch: int, reps: int) -> tuple[float, float]:
    """(forward + input-gradient, forward alone) seconds per example at this batch size, on
    random inputs shaped as ``example`` (one test input, 1 × C × H × W)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        classes = int(model(example).shape[1])
    x = torch.rand((batch, *example.shape[1:]), generator=gen)
    y = torch.randint(0, classes, (batch,), generator=gen)
    for p in model.parameters():
        p.requires_grad_(False)  # as the cascade's frozen model: no weight gradients

    def both():
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xx), y), xx)

    def forward():
        with torch.no_grad():
            model(x)

    out = []
    for fn in (both, forward):
        for _ in range(10):
            fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - t0) / reps / batch)
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder whose study ran the worst-case cascade")
    ap.add_argument("--store", default=None, help="the model store the run used (default: WORKBENCH_STORE)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the timing (default 1)")
    ap.add_argument("--reps", type=int, default=200, help="timed passes per measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    res = results.load(args.run)
    cascade = res.get("worst_case_cascade")
    if cascade is None or not len(cascade):
        print(f"{args.run}: no worst_case_cascade table (the study ran no cascade)", file=sys.stderr)
        return 2
    cascade = cascade[cascade["status"] == "ran"]  # a skipped setting's candidates cost nothing
    batch = int(res.study.evaluation.batch_size)
    example = load_study_data(res.study, torch.device("cpu")).test_x[:1].float()
    print(f"{args.run}: {res.study.name}, attack batch {batch}, {args.threads} thread(s)")
    total_floor = total_measured = 0.0
    for mid, rows in cascade.groupby("model", sort=False):
        model = res.model(mid, store=args.store, device=torch.device("cpu")).eval()
        both, fwd = per_example_seconds(model, example, batch, args.reps)
        print(f"\n{mid}: {both * 1e6:.1f} µs per example forward+backward, {fwd * 1e6:.1f} µs forward "
              f"(batch {batch})")
        print(f"  {'attack':<8} {'candidates':>10} {'broken':>7} {'passes':>12} {'floor s':>8} {'measured s':>10}")
        for attack, a in rows.groupby("attack", sort=False):
            cand, broken = int(a["candidates"].sum()), int(a["broken"].sum())
            targets = int(a["targets"].max()) if a["targets"].notna().any() else 1
            if attack == "apgd-ce":
                passes, price = cand * APGD_ITERATIONS, both
            elif attack == "apgd-t":
                passes, price = ((cand - broken) * targets + broken) * APGD_ITERATIONS, both
            elif attack == "square":
                passes, price = (cand - broken) * SQUARE_QUERIES, fwd
            else:  # fab-t and anything else: not counted
                passes, price = 0, 0.0
            floor, measured = passes * price, float(a["seconds"].sum())
            total_floor += floor
            total_measured += measured
            print(f"  {attack:<8} {cand:>10d} {broken:>7d} {passes:>12,d} {floor:>8.1f} {measured:>10.1f}")
    print(f"\ncascade: floor {total_floor:.1f} s of model passes; the run measured {total_measured:.1f} s")
    return 0


if __name__ == "__main__":
    from workbench.errors import WorkbenchError

    try:
        sys.exit(main())
    except WorkbenchError as err:  # a missing run folder or store entry: one line, as the CLI says it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

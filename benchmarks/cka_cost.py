"""The cost of the CKA probe's bootstrap intervals: the quickstart's CKA probe timed with
``probes.cka.bootstrap: 0`` and with the default 1,000 resamples, side by side, three times.

    python benchmarks/cka_cost.py [--store STORE] [--threads N] [--study studies/quickstart.yaml]

The models come from the store (trained first if they are not there, ~3 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="studies/quickstart.yaml")
    ap.add_argument("--store", default=None, help="model store (default: $WORKBENCH_STORE or ~/.cache/workbench)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--samples", type=int, default=1000, help="bootstrap resamples to time against none")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from workbench.probes.base import probe_context, run_probe
    from workbench.progress import Progress
    from workbench.runner import load_study_data, train_models
    from workbench.store import ModelStore
    from workbench.study import load_study

    torch.set_num_threads(args.threads)
    study = load_study(args.study)
    if study.probes.cka is None:
        raise SystemExit(f"{args.study} runs no CKA probe")
    device = torch.device("cpu")
    data = load_study_data(study, device)
    store = ModelStore(args.store)
    trained = train_models(study, data, store, device, progress=Progress(False))
    base = probe_context(study, {k: v.model for k, v in trained.items()}, data, device=device, seed=study.seed,
                         probe="cka")

    def timed(samples: int) -> float:
        cka = study.probes.cka.model_copy(update={"bootstrap": samples})
        t0 = time.perf_counter()
        run_probe(base, "cka", cka)
        return time.perf_counter() - t0

    print(f"{study.name}: {len(base.x)} probe examples, {len(trained)} models, {args.threads} thread(s)")
    for rep in range(args.repeats):
        off, on = timed(0), timed(args.samples)
        print(f"round {rep + 1}: without intervals {off:.2f} s, with {args.samples} resamples {on:.2f} s, "
              f"extra {on - off:.2f} s (×{on / off:.1f})")


if __name__ == "__main__":
    main()

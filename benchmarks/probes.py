"""Time of the probe battery for N and 2N examples, and for one layer versus all layers,
next to one PGD-10 evaluation pass on the same examples (the cost unit of a robustness
evaluation).

    python benchmarks/probes.py                         # quickstart models, CPU
    python benchmarks/probes.py --study studies/cifar10_fast.yaml --set data.root=DATA \
        --device cuda --examples 1000 --probes-from studies/cifar10.yaml

Every probe is run with the settings of the study's `probes:` section (or of
--probes-from), for every model of the study. Cost should grow linearly with the number of
examples (the 2N/N ratio near 2).
"""

from __future__ import annotations

import argparse

import torch

from common import describe, setup, timed, trained

from workbench.attacks import pgd
from workbench.probes import PROBES, ProbeContext, probe_examples
from workbench.study import load_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="studies/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--probes-from", default=None, help="take the probes section from this study")
    ap.add_argument("--store", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--examples", type=int, default=128, help="N")
    ap.add_argument("--single-layer", default="penultimate")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--quick", action="store_true", help="only N examples, all layers (no 2N, no one-layer run)")
    args = ap.parse_args()

    dev = setup(args.device, args.threads)
    study, data, models = trained(args.study, args.set, dev, args.store)
    probes_cfg = load_study(args.probes_from).probes if args.probes_from else study.probes
    names = probes_cfg.enabled() or ["lipschitz", "linearity", "saliency", "cka", "linear_probe"]
    print(f"device: {describe(dev)}")
    print(f"study {study.name}: models {', '.join(models)}; probes {', '.join(names)}")

    def battery(n: int, layers: str | None) -> dict[str, float]:
        x, y, idx = probe_examples(data, n, study.seed)
        out = {}
        x_b = x
        eps = study.main_eps()
        out["pgd10_eval_pass"] = sum(
            timed(lambda m=m: [pgd(m, x_b[i : i + 500], y[i : i + 500], eps, 2.5 * eps / 10, 10) for i in range(0, len(y), 500)], dev)[0]
            for m in models.values()
        )
        print(f"  N={n}: one PGD-10 pass of every model {out['pgd10_eval_pass']:.2f}s", flush=True)
        for name in names:
            cfg = getattr(probes_cfg, name) or PROBES_DEFAULTS[name]
            if layers is not None and hasattr(cfg, "layers"):
                cfg = cfg.model_copy(update={"layers": layers})
            ctx = ProbeContext.of(cfg, x=x, y=y, index=idx, batch_size=probes_cfg.batch_size, models=models,
                                  pairs=study.pairs(), data=data, device=dev, seed=study.seed, main_eps=study.main_eps(),
                                  eval_eps=tuple(study.evaluation.eps), eval_eps_l2=tuple(study.evaluation.eps_l2))
            out[name] = timed(lambda: PROBES.get(name)(ctx), dev)[0]
            print(f"  N={n} layers={layers or 'study'}: {name} {out[name]:.2f}s", flush=True)
        return out

    if not args.no_warmup:
        battery(min(16, args.examples), None)  # warm-up
    n = args.examples
    runs = {f"N={n}, all layers": battery(n, None)}
    if not args.quick:
        runs[f"2N={2 * n}, all layers"] = battery(2 * n, None)
        runs[f"N={n}, layer {args.single_layer}"] = battery(n, args.single_layer)
    keys = list(next(iter(runs.values())))
    print(f"{'':28s}" + "".join(f"{k:>14s}" for k in keys) + f"{'probes total':>14s}")
    for label, r in runs.items():
        total = sum(v for k, v in r.items() if k != "pgd10_eval_pass")
        print(f"{label:28s}" + "".join(f"{r[k]:13.2f}s" for k in keys) + f"{total:13.2f}s")
    a = runs[f"N={n}, all layers"]
    if not args.quick:
        b = runs[f"2N={2 * n}, all layers"]
        print("2N / N time ratio per probe (linear cost ⇒ about 2): "
              + ", ".join(f"{k} {b[k] / a[k]:.2f}" for k in keys))
        one = runs[f"N={n}, layer {args.single_layer}"]
        print("all layers / one layer: " + ", ".join(f"{k} {a[k] / one[k]:.2f}" for k in keys if k != "pgd10_eval_pass"))
    print(f"probe battery (N={n}) / one PGD-10 evaluation pass of every model: "
          f"{sum(v for k, v in a.items() if k != 'pgd10_eval_pass') / a['pgd10_eval_pass']:.1f}x")


def _defaults():
    from workbench.probes.cka import CKAProbe
    from workbench.probes.linear_probe import LinearProbe
    from workbench.probes.linearity import LinearityProbe
    from workbench.probes.lipschitz import LipschitzProbe
    from workbench.probes.saliency import SaliencyProbe

    return {"lipschitz": LipschitzProbe(), "linearity": LinearityProbe(), "saliency": SaliencyProbe(),
            "cka": CKAProbe(), "linear_probe": LinearProbe()}


PROBES_DEFAULTS = _defaults()

if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()

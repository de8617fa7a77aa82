"""AutoAttack evidence on a run's trained models (issue 12): the workbench's ``autoattack``
attack against ``pyautoattack`` run directly, and the worst case against every attack.

    python benchmarks/autoattack_check.py RUN_FOLDER [RUN_FOLDER ...] [--examples N]
        [--norm linf|l2] [--eps E ...] [--version standard] [--seed S] [--store PATH]
    python benchmarks/autoattack_check.py RUN_FOLDER ... --containment [--allow 1] [--model M ...]
        [--norm linf|l2] [--eps E ...]

For every model of each run (trained models come from the model store by the key the run
recorded, ``--store`` or ``$WORKBENCH_STORE``), on the first N examples the run evaluated
(test-split order) and at each ε (default: the run's main ε for L∞, the middle of its L2
grid for L2):

- the workbench's attack ``autoattack`` (``workbench.attacks``) and
  ``pyautoattack.AutoAttack(...).run_standard_evaluation`` built here independently, with the
  same examples, version and seed; prints both accuracies, the number of examples whose
  outcome (correct or not) differs — it must be 0 — and the largest pixel difference of the
  adversarial examples;
- the seconds per example of the workbench's AutoAttack (the cost docs/statistics.md states).

Then, from the run's ``robustness`` table: for every model, norm and ε with a ``worst_case``
row, whether it is at or below the clean accuracy and every single attack's accuracy.

With ``--containment`` (issue 19) it checks instead that the worst case is no weaker than
AutoAttack: for every model, norm (L∞ and L2) and ε of the run's grids, AutoAttack's standard
version (APGD-CE, APGD-T, FAB-T, Square), run directly through ``pyautoattack`` on the
evaluated examples the run's worst case counts robust (all of them, not the first N; it only
attacks examples classified correctly, and the others are already counted broken), must break
at most one of them (``--allow``): the worst case then leaves nothing AutoAttack finds, up to
the randomness of two searches. ``--model``, ``--norm`` and ``--eps`` restrict it to some
settings (to share the work out over processes); ``--with-cascade`` takes a run made
without the worst case's cascade and runs the study's cascade (the workbench's own function,
same seeds) at those settings first; ``--save FILE`` records AutoAttack's
per-example outcomes and ``--outcomes FILE ...`` reads them instead of attacking again (so
AutoAttack can run on a run without the cascade, a superset of the final worst case's robust
examples, while the cascade still runs, and the final run be checked against it).

Exit status 1 when an outcome differs, the worst case is above an attack, or (containment)
AutoAttack breaks more than ``--allow`` examples the worst case counts robust; 0 otherwise.
AutoAttack is slow on CPU (Square's 5,000 queries on the examples still robust): time it on
a quiet machine.
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
from workbench.attacks import ATTACKS  # noqa: E402
from workbench.runner import load_study_data, resolve_device  # noqa: E402

_NORMS = {"linf": "Linf", "l2": "L2"}


def direct(model, x, y, eps: float, norm: str, version: str, seed: int, device) -> torch.Tensor:
    """pyautoattack as its README runs it, with the target count capped for < 10 classes (its
    targeted attacks need that many other classes)."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, norm=_NORMS[norm], eps=eps, version=version, seed=seed, device=device)
    with torch.no_grad():
        k = int(model(x[:1]).shape[1])
    if k - 1 < aa.apgd_targeted.n_target_classes:
        aa.apgd_targeted.n_target_classes = k - 1
        aa.fab.n_target_classes = k - 1
    aa.verbose = False
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
    return x_adv


@torch.no_grad()
def correct(model, x, y) -> np.ndarray:
    return (model(x).argmax(1) == y).cpu().numpy()


def worst_case_rows(rob) -> list[tuple[str, str, float, float, float, str, bool]]:
    """(model, norm, ε, worst case, lowest other accuracy, that attack, worst ≤ all)."""
    out = []
    clean = rob[rob["attack"] == "clean"].set_index("model")["accuracy"]
    worst = rob[rob["attack"] == "worst_case"]
    for _, w in worst.iterrows():
        same = rob[(rob["model"] == w["model"]) & (rob["norm"] == w["norm"]) & np.isclose(rob["eps"], w["eps"])
                   & ~rob["attack"].isin(["clean", "worst_case"])]
        accs = dict(zip(same["attack"], same["accuracy"]))
        accs["clean"] = float(clean.get(w["model"], np.nan))
        low = min(accs, key=accs.get)
        # as counts of examples: the attacks' accuracies are stored in float32, the worst case's in float64
        n = int(w["n"])
        ok = all(round(float(w["accuracy"]) * n) <= round(a * n) for a in accs.values())
        out.append((str(w["model"]), str(w["norm"]), float(w["eps"]), float(w["accuracy"]), accs[low], low, ok))
    return out


def check_run(run: str, args, device) -> bool:
    res = results.load(run)
    study = res.study
    data = load_study_data(study, device)
    pe = res["per_example"]
    index = np.sort(pe[pe["attack"] == "clean"]["index"].unique())[: args.examples]
    idx = torch.as_tensor(index, device=data.test_x.device)
    x, y = data.test_x[idx].to(device).float(), data.test_y[idx].to(device)
    if args.eps:
        grid = [float(e) for e in args.eps]
    elif args.norm == "linf":
        grid = [study.main_eps()]
    else:
        l2 = sorted(study.evaluation.eps_l2)
        grid = [float(l2[len(l2) // 2])] if l2 else []
    print(f"\n== {run}: {study.name}, {len(y)} examples (test indices {index[0]}..{index[-1]}), AutoAttack "
          f"{args.version} {args.norm}, seed {args.seed}, device {device}")
    ok = True
    print(f"{'model':<28} {'ε':>7} {'clean':>7} {'workbench':>10} {'pyautoattack':>13} {'differ':>7} "
          f"{'max |Δx|':>9} {'s/example':>10}")
    for mid in res.model_ids:
        model = res.model(mid, store=args.store, device=device)
        c = correct(model, x, y)
        for e in grid:
            t0 = time.perf_counter()
            ours = ATTACKS.get("autoattack")(model, x, y, e, norm=args.norm, version=args.version, seed=args.seed)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            theirs = direct(model, x, y, e, args.norm, args.version, args.seed, device)
            a, b = correct(model, ours, y), correct(model, theirs, y)
            differ = int((a != b).sum())
            ok &= differ == 0
            print(f"{mid:<28} {e:>7.4g} {c.mean():>7.1%} {a.mean():>10.1%} {b.mean():>13.1%} {differ:>7d} "
                  f"{float((ours - theirs).abs().max()):>9.2g} {seconds / len(y):>10.3f}")
    print("\nworst case at or below clean and every single attack (robustness table, all evaluated examples):")
    rows = worst_case_rows(res["robustness"])
    for mid, norm, eps, w, low, attack, good in rows:
        ok &= good
        print(f"  {mid:<28} {norm:<4} ε={eps:<7.4g} worst case {w:6.1%} ≤ lowest single {low:6.1%} ({attack}): "
              f"{'yes' if good else 'NO'}")
    if not rows:
        print("  (no worst_case rows in this run)")
    return ok


def _load_outcomes(paths) -> dict[tuple[str, str, float], dict[int, bool]]:
    """(model, norm, ε) -> {test index: AutoAttack's outcome (correct)} from --outcomes files."""
    import pandas as pd

    got: dict[tuple[str, str, float], dict[int, bool]] = {}
    for path in paths or []:
        if Path(path).exists():
            for (mid, norm, eps), d in pd.read_csv(path).groupby(["model", "norm", "eps"]):
                got.setdefault((str(mid), str(norm), round(float(eps), 12)), {}).update(
                    zip(d["index"].astype(int), d["correct"].astype(bool)))
    return got


def _selected(args, mid: str, norm: str, eps: float) -> bool:
    return (norm in _NORMS and (not args.model or mid in args.model) and (not args.norm or norm == args.norm)
            and (not args.eps or bool(np.isclose(eps, args.eps).any())))


def with_cascade(res, data, args, device):
    """(robustness, per_example) of a run made without the worst case's cascade, with the
    cascade of the study's ``evaluation.worst_case`` (default: AutoAttack standard) run here
    by the workbench's own function at the selected settings, and the worst case recomputed
    from the evaluation, the soundness checks and it: the same outcomes the run's stage
    computes (same models, tables, seeds and candidates), for some settings only."""
    import pandas as pd

    from workbench.evaluation.worst_case import WORST, apgd_cascade, with_worst_case

    cfg = res.study.evaluation.worst_case
    rob, pe = res["robustness"], res["per_example"]
    rob, pe = rob[rob["attack"] != WORST], pe[pe["attack"] != WORST]
    norms = dict(zip(zip(rob["model"], rob["attack"]), rob["norm"]))
    keep = pe.apply(lambda r: r["attack"] == "clean" or _selected(args, r["model"], norms.get((r["model"], r["attack"]), ""),
                                                                  float(r["eps"])), axis=1)
    pe = pe[keep]
    models = {mid: res.model(mid, store=args.store, device=device) for mid in res.model_ids
              if not args.model or mid in args.model}
    clean = pe[pe["attack"] == "clean"]
    index = clean[clean["model"] == next(iter(models))]["index"].to_numpy()
    idx = torch.as_tensor(index.copy(), device=data.test_x.device)
    x, y = data.test_x[idx].to(device).float(), data.test_y[idx].to(device)
    t0 = time.process_time()
    cascade, per = apgd_cascade(models, x, y, rob, pe, batch_size=res.study.evaluation.batch_size,
                                seed=res.study.seed, targets=cfg.targets, attacks=tuple(cfg.attacks))
    print(f"cascade ({', '.join(cfg.attacks)}) run here on the selected settings, {time.process_time() - t0:.0f} s "
          "of CPU time:")
    print(cascade.to_string(index=False))
    extra = [res.get("soundness_per_example"), per]
    return with_worst_case(rob, pe, pd.concat([e for e in extra if e is not None and len(e)], ignore_index=True))


def containment(run: str, args, device) -> bool:
    """AutoAttack standard, run directly, on the examples the run's worst case counts robust.

    With ``--outcomes``, AutoAttack's per-example outcomes recorded by an earlier invocation
    (``--save``; it may have attacked a superset, e.g. the examples a run without the cascade
    counts robust) are read instead of attacking again: AutoAttack, run directly on those
    examples, broke the ones recorded incorrect. Examples without a recorded outcome are
    attacked here."""
    import pandas as pd

    res = results.load(run)
    study = res.study
    data = load_study_data(study, device)
    pe = res["per_example"]
    rob = res["robustness"]
    if args.with_cascade:
        rob, pe = with_cascade(res, data, args, device)
    worst = rob[rob["attack"] == "worst_case"]
    known = _load_outcomes(args.outcomes)
    saved = []
    print(f"\n== {run}: {study.name}; AutoAttack {args.version} (pyautoattack, run directly, seed {args.seed}) on the "
          f"examples the worst case counts robust; allowed: {args.allow}")
    print(f"{'model':<28} {'norm':<5} {'ε':>7} {'worst case':>11} {'robust':>7} {'AA breaks':>10} {'s':>7} {'recorded':>9}")
    ok = True
    for mid in res.model_ids:
        if args.model and mid not in args.model:
            continue
        model = res.model(mid, store=args.store, device=device)
        for _, w in worst[worst["model"] == mid].sort_values(["norm", "eps"]).iterrows():
            norm, eps = str(w["norm"]), float(w["eps"])
            if norm not in _NORMS or (args.norm and norm != args.norm) or (
                    args.eps and not np.isclose(eps, args.eps).any()):
                continue
            d = pe[(pe["model"] == mid) & (pe["attack"] == "worst_case") & (pe["norm"] == norm)
                   & np.isclose(pe["eps"], eps)]
            index = d.loc[d["correct"].astype(bool), "index"].to_numpy()
            have = known.get((mid, norm, round(eps, 12)), {})
            old = np.array([i for i in index if int(i) in have], dtype=int)
            new = np.array([i for i in index if int(i) not in have], dtype=int)
            broken, seconds = sum(not have[int(i)] for i in old), 0.0
            if len(new):
                idx = torch.as_tensor(new.copy(), device=data.test_x.device)
                x, y = data.test_x[idx].to(device).float(), data.test_y[idx].to(device)
                t0 = time.perf_counter()
                adv = direct(model, x, y, eps, norm, args.version, args.seed, device)
                seconds = time.perf_counter() - t0
                c = correct(model, adv, y)
                broken += int((~c).sum())
                saved.append(pd.DataFrame({"model": mid, "norm": norm, "eps": eps, "index": new, "correct": c}))
            ok &= broken <= args.allow
            print(f"{mid:<28} {norm:<5} {eps:>7.4g} {float(w['accuracy']):>11.1%} {len(index):>7d} {broken:>10d} "
                  f"{seconds:>7.1f} {len(old):>9d}{'' if broken <= args.allow else '  <-- more than allowed'}",
                  flush=True)
            if args.save and saved:
                pd.concat(saved, ignore_index=True).to_csv(args.save, index=False)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (workbench run --out)")
    p.add_argument("--examples", type=int, default=100, help="first N evaluated examples (default 100)")
    p.add_argument("--norm", choices=["linf", "l2"], default=None,
                   help="default linf (containment: every norm)")
    p.add_argument("--eps", type=float, nargs="*", help="ε grid (default: the run's main ε; L2: its middle ε)")
    p.add_argument("--version", choices=["standard", "plus", "rand"], default="standard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", default=None, help="model store (default $WORKBENCH_STORE)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default torch's)")
    p.add_argument("--containment", action="store_true",
                   help="instead: AutoAttack run directly on the examples the worst case counts robust, every norm and ε")
    p.add_argument("--allow", type=int, default=1, help="containment: examples AutoAttack may break (default 1)")
    p.add_argument("--model", nargs="*", help="containment: only these model ids (default all)")
    p.add_argument("--save", help="containment: write AutoAttack's per-example outcomes (CSV) of what it attacked")
    p.add_argument("--with-cascade", action="store_true",
                   help="containment on a run made without the cascade (evaluation.worst_case.apgd: false): run "
                   "the study's cascade here first, at the selected settings")
    p.add_argument("--outcomes", nargs="*", help="containment: read outcomes --save wrote instead of attacking again")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if not args.containment:
        args.norm = args.norm or "linf"
    if args.containment:
        ok = all([containment(r, args, device) for r in args.runs])
        print("\nresult:", f"AutoAttack breaks at most {args.allow} example(s) the worst case counts robust everywhere"
              if ok else "AutoAttack breaks more examples the worst case counts robust (see above)")
        return 0 if ok else 1
    ok = all([check_run(r, args, device) for r in args.runs])
    print("\nresult:", "every outcome identical and the worst case below every attack" if ok else "MISMATCH (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

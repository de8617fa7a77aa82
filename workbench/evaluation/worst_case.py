"""The per-example worst case: the headline robust accuracy, and the AutoAttack cascade behind it.

For every model, norm and ε that the evaluation attacked, an example counts as robust only
if it is classified correctly clean and under **every** white-box attack run on it at that
norm and ε: the evaluation's attacks on all examples, the soundness checks' extra attacks
(the reference rerun, more steps, more restarts, the margin loss, FGSM) on their subset, and
the **AutoAttack cascade** (:class:`WorstCaseStage`). Random noise and transferred examples
are not white-box attacks and do not count. The worst case is therefore at or below the
accuracy of every single attack (tested), and its loss per example is the highest any of
those attacks reached.

The cascade (Croce & Hein 2020, through ``pyautoattack``, the authors' code): at every
(model, norm, ε) the evaluation attacked, the attacks of ``evaluation.worst_case.attacks``
(default AutoAttack's standard version: APGD-CE, APGD-T, FAB-T, Square) run in order, the
first on the examples that are correct clean and under every evaluation attack, each next
one on those the earlier ones left robust, as AutoAttack itself cascades them, each with
AutoAttack's standard settings (APGD 100 iterations; APGD-T and FAB-T against the 9 most
likely other classes, fewer when the data has fewer; Square 5,000 queries). The cheaper
attacks have removed most examples by then, so the cost follows the examples still robust.
FAB-T runs once per model and norm for all ε together: with one restart its search starts at
the clean input and never reads ε, which enters only its per-target test of whether what it
found lies within ε, so one search on the union of every ε's candidates, tested against each
ε, gives each ε the outcome of FAB-T run at that ε alone (tested), at the cost of one ε.
With the default list, every example AutoAttack standard would break at a seed has been
attacked by each of its attacks, so the worst case contains AutoAttack up to the randomness
of its searches. Why: a fixed-step PGD can stop short of what APGD's step-size schedule and
targeted DLR loss find, most of all at L2 (issue 19: PGD-20 at L2 ε = 1 left 23.4 % of the
quickstart's PGD-AT model robust, APGD-CE + APGD-T 4.5 %), and there the gradient attacks
stall where FAB-T's and Square's searches do not (AutoAttack run directly broke 7 of those
16 examples: FAB-T 4, Square 6). The norm reaches AutoAttack by its name there
(:data:`workbench.attacks.autoattack.AA_NORMS`); a norm it lacks is recorded, not attacked.
Without the package the worst case holds the other attacks only, and says so in the
``worst_case_cascade`` table, the report and the terminal.

Rows carry ``attack == method == "worst_case"``, ``loss == "any"``, steps and restarts 0.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator

from ..config import Strict
from ..progress import QUIET
from ..registry import TableSchema
from ..seeds import derive_seed
from ..stages import Stage, StageContext, StageOutput, TableStep, register_stage, register_table_step
from ..state import eval_mode
from ..views import Measure, Note, register_measure, register_note
from .robustness import accuracy_interval, score
from ..attacks import autoattack as aa
from .. import distributed

WORST = "worst_case"
log = logging.getLogger("workbench")

#: AutoAttack's standard version, in its order: the cascade's default attacks
CASCADE = ("apgd-ce", "apgd-t", "fab-t", "square")
#: attacks that take ``targets`` (the most likely other classes)
TARGETED = ("apgd-t", "fab-t")


class WorstCaseConfig(Strict):
    """The AutoAttack cascade of the worst case (workbench/evaluation/worst_case.py)."""

    apgd: bool = Field(
        True, description="run the cascade of `attacks` (AutoAttack's code and standard settings) on the examples every "
        "evaluation attack left robust; false: the worst case holds no AutoAttack attack; needs pyautoattack",
    )
    attacks: tuple[Literal["apgd-ce", "apgd-t", "fab-t", "square"], ...] = Field(
        CASCADE, description="AutoAttack's attacks, run in this order, each on the examples the earlier ones left "
        "robust (default: the standard version, so the worst case contains AutoAttack; APGD 100 iterations, "
        "FAB-T 100 per target, Square 5,000 queries)",
    )
    targets: int | None = Field(
        None, ge=1, description="target classes of APGD-T and FAB-T, the most likely other ones (null: AutoAttack's 9, "
        "fewer when the data has fewer classes); each costs 100 iterations on every example still robust",
    )
    eps: Literal["all", "main"] = Field(
        "all", description="where the cascade runs: `all` (every norm and ε evaluated) or `main` (the main ε at L∞ "
        "only, for a quick study: elsewhere the worst case then holds the evaluation's and the checks' attacks, and "
        "worst_case_cascade says `not the main ε`)",
    )

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, v):
        if not v:
            raise ValueError("name at least one attack (apgd: false turns the cascade off)")
        twice = sorted({a for a in v if v.count(a) > 1})
        if twice:
            raise ValueError(f"{twice[0]!r} is listed twice")
        return v


TABLES_WORST_CASE: dict[str, TableSchema] = {
    "worst_case_cascade": (
        "the AutoAttack cascade of the worst case: model × norm × ε × attack, each run on the examples the earlier "
        "ones left robust (which attack broke how many)",
        {
            "model": "model id",
            "norm": "`linf`, `l2`, …",
            "eps": "ε",
            "attack": "`apgd-ce`, `apgd-t`, `fab-t` or `square` (AutoAttack's standard settings), in the cascade's order",
            "targets": "target classes of APGD-T and FAB-T (empty for the others)",
            "status": "`ran`, `pyautoattack missing` (nothing run: the worst case lacks APGD), `norm not in AutoAttack` or "
            "`fewer than 4 classes` (APGD-T's targeted DLR loss needs 4)",
            "candidates": "examples attacked: correct clean and under every earlier attack at this norm and ε (the "
            "evaluation's and the cascade's earlier ones)",
            "broken": "of those, examples the attack misclassified (empty when it did not run); the next attack's "
            "candidates are candidates − broken",
            "seconds": "time to craft and score (FAB-T searches once per model and norm for every ε, its search "
            "not reading ε: its time is shared out over the ε rows by their candidates)",
        },
    ),
    "worst_case_per_example": (
        "per-example outcome of the AutoAttack cascade on the examples it attacked (they enter the worst case)",
        {
            "model": "model id",
            "attack": "`apgd-ce`, `apgd-t`, `fab-t` or `square`",
            "norm": "norm",
            "eps": "ε",
            "index": "position of the example in the test split",
            "correct": "classified correctly at the attack's adversarial example",
            "loss": "cross-entropy there",
        },
    ),
}
MISSING = "pyautoattack missing"
NO_NORM = "norm not in AutoAttack"
FEW_CLASSES = "fewer than 4 classes"
NOT_MAIN = "not the main ε"


def _key(eps: float) -> float:
    return round(float(eps), 12)


def worst_case(
    robustness: pd.DataFrame, per_example: pd.DataFrame, extra: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(robustness rows, per_example rows) of the worst case.

    ``robustness``/``per_example`` are the evaluation's tables; ``extra`` holds more
    per-example outcomes (columns model, norm, eps, index, correct, loss), such as the
    soundness checks' attacks; only (model, norm, ε) settings the evaluation attacked get a
    row, and an extra outcome counts only on the examples it was run on."""
    rob = robustness[(robustness["attack"] != "clean") & (robustness["method"] != WORST)]
    if rob.empty or per_example is None or per_example.empty:
        return robustness.iloc[0:0].copy(), per_example.iloc[0:0].copy() if per_example is not None else pd.DataFrame()
    norms = dict(zip(zip(rob["model"], rob["attack"]), rob["norm"]))
    pe = per_example[per_example["attack"] != WORST]
    rows, pe_rows = [], []
    for mid, dm in pe.groupby("model", sort=False):
        clean = dm[dm["attack"] == "clean"]
        if clean.empty:
            continue
        index = clean["index"].to_numpy()
        pos = pd.Index(index)
        base_ok = clean["correct"].to_numpy(dtype=bool)
        base_loss = clean["loss"].to_numpy(dtype=float)
        labelled = "label" in clean.columns and "prediction" in clean.columns
        settings: dict[tuple[str, float], list[pd.DataFrame]] = {}
        for (attack, eps), d in dm[dm["attack"] != "clean"].groupby(["attack", "eps"], sort=False):
            norm = norms.get((mid, attack))
            if norm is not None:
                settings.setdefault((str(norm), _key(eps)), []).append(d)
        if extra is not None and len(extra):
            ex = extra[extra["model"] == mid]
            for (norm, eps), d in ex.groupby(["norm", "eps"], sort=False):
                if (str(norm), _key(eps)) in settings:
                    settings[(str(norm), _key(eps))].append(d)
        for (norm, eps), parts in settings.items():
            ok, loss = base_ok.copy(), base_loss.copy()
            for d in parts:
                at = pos.get_indexer(d["index"].to_numpy())
                if (at < 0).any():
                    raise KeyError(f"{mid}: examples {d['index'].to_numpy()[at < 0][:5].tolist()} have no clean outcome")
                # unbuffered: one part may hold several attacks on the same example
                np.logical_and.at(ok, at, d["correct"].to_numpy(dtype=bool))
                np.maximum.at(loss, at, d["loss"].to_numpy(dtype=float))
            n = len(ok)
            labels = {}
            if labelled:
                labels = {"label": clean["label"].to_numpy(dtype=np.int64),
                          "prediction": _worst_prediction(clean, parts, pos, ok)}
            rows.append({
                "model": mid, "attack": WORST, "method": WORST, "norm": norm, "loss": "any", "steps": 0,
                "restarts": 0, "eps": float(eps), "n": n, "accuracy": float(ok.mean()) if n else float("nan"),
                **accuracy_interval(int(ok.sum()), n), "adv_risk": float(loss.mean()) if n else float("nan"),
                "seconds": 0.0,
            })
            pe_rows.append(pd.DataFrame({"model": mid, "attack": WORST, "norm": norm, "eps": float(eps),
                                         "index": index, **labels, "correct": ok, "loss": loss}))
    rob_out = pd.DataFrame(rows, columns=list(robustness.columns)) if rows else robustness.iloc[0:0].copy()
    pe_out = pd.concat(pe_rows, ignore_index=True) if pe_rows else per_example.iloc[0:0].copy()
    return rob_out, pe_out


def _worst_prediction(clean: pd.DataFrame, parts: list[pd.DataFrame], pos: pd.Index, ok: np.ndarray) -> np.ndarray:
    """Per example, the prediction that goes with the worst case: the clean prediction when
    the clean input is misclassified, else that of the first attack (in the order of
    ``parts``) that broke it, the label when none did, and -1 when only attacks that record
    no prediction broke it."""
    pred = clean["prediction"].to_numpy(dtype=np.int64).copy()
    done = ~clean["correct"].to_numpy(dtype=bool)
    for d in parts:
        if "prediction" not in d.columns:
            continue
        d = d[~d["correct"].to_numpy(dtype=bool) & d["prediction"].notna().to_numpy()]
        at = pos.get_indexer(d["index"].to_numpy())
        first = ~done[at]
        # the first broken row of an example within this part wins too
        at_first, keep = np.unique(at[first], return_index=True)
        pred[at_first] = d["prediction"].to_numpy()[first][keep].astype(np.int64)
        done[at_first] = True
    pred[~ok & ~done] = -1
    return pred


def with_worst_case(
    robustness: pd.DataFrame, per_example: pd.DataFrame, extra: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tables with the worst-case rows appended (any earlier ones replaced)."""
    rob = robustness[robustness["attack"] != WORST]
    pe = per_example[per_example["attack"] != WORST] if len(per_example) else per_example
    w_rob, w_pe = worst_case(rob, pe, extra)
    if len(w_rob):
        rob = pd.concat([rob, w_rob], ignore_index=True)
        pe = pd.concat([pe, w_pe], ignore_index=True)
    return rob, pe


class WorstCaseStep(TableStep):
    """Appends the worst-case rows to ``robustness`` and ``per_example`` (the soundness
    checks' and the AutoAttack cascade's per-example outcomes count when they ran)."""

    name = "worst_case"
    order = 0.0  # first: the paired tests and the replicates read the worst case

    def run(self, tables, ctx):
        if "robustness" not in tables:
            return {}
        extra = [tables[t] for t in ("soundness_per_example", "worst_case_per_example") if tables.get(t) is not None]
        rob, pe = with_worst_case(tables["robustness"], tables["per_example"],
                                  pd.concat(extra, ignore_index=True) if extra else None)
        return {"robustness": rob, "per_example": pe}


register_table_step(WorstCaseStep())


# --------------------------------------------------------------------------- AutoAttack cascade


def robust_after(robustness: pd.DataFrame, per_example: pd.DataFrame, model: str) -> dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]:
    """(norm, ε) -> (test indices, positions in the clean order) of ``model``'s examples that
    are correct clean and under every attack the evaluation ran at that norm and ε."""
    rob = robustness[(robustness["model"] == model) & ~robustness["attack"].isin(["clean", WORST])]
    norms = dict(zip(rob["attack"], rob["norm"]))
    pe = per_example[per_example["model"] == model]
    clean = pe[pe["attack"] == "clean"]
    index = clean["index"].to_numpy()
    pos = pd.Index(index)
    ok0 = clean["correct"].to_numpy(dtype=bool)
    out: dict[tuple[str, float], np.ndarray] = {}
    for (attack, eps), d in pe[pe["attack"].isin(list(norms))].groupby(["attack", "eps"], sort=False):
        key = (str(norms[attack]), _key(eps))
        ok = out.setdefault(key, ok0.copy())
        ok[pos.get_indexer(d["index"].to_numpy())] &= d["correct"].to_numpy(dtype=bool)
    return {k: (index[ok], np.flatnonzero(ok)) for k, ok in sorted(out.items())}


def apgd_cascade(
    models: dict[str, torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    robustness: pd.DataFrame,
    per_example: pd.DataFrame,
    *,
    batch_size: int,
    seed: int = 0,
    targets: int | None = None,
    attacks: tuple[str, ...] = CASCADE,
    progress=None,
    main_eps: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(worst_case_cascade, worst_case_per_example): ``attacks`` (default AutoAttack's
    standard version: APGD-CE, APGD-T, FAB-T, Square) in order, each on the examples the
    evaluation and the earlier attacks left robust, for each model at every norm and ε it
    was attacked at. ``x``, ``y`` are the evaluated examples in the evaluation's order.
    Batches of ``batch_size`` are seeded by (seed, model, norm, ε, attack, batch) and shared
    out under torchrun like the evaluation's. FAB-T runs once per model and norm on the union
    of its ε's candidates (:func:`_fab_t_batches`; its search draws nothing and does not read
    ε), seeded by (seed, model, norm, attack, batch), each ε getting the outcomes FAB-T run at
    that ε alone gives. ``targets``: APGD-T's and FAB-T's target
    classes (None: AutoAttack's). ``main_eps``: run only at (L∞, ``main_eps``); other
    settings get a ``not the main ε`` row."""
    rows, outcomes = [], []
    have = aa.available()
    settings = {mid: robust_after(robustness, per_example, mid) for mid in models}
    total = sum(len(s) for s in settings.values()) * len(attacks)
    with (progress or QUIET).task("autoattack cascade", total) as advance:
        for mid, model in models.items():
            n_classes = _n_classes(model, x)
            norms = dict.fromkeys(norm for norm, _ in settings[mid])
            for norm in norms:
                # ε → (test indices, positions) still robust: each attack runs on what the earlier left
                left = {eps: v for (n, eps), v in settings[mid].items() if n == norm}
                for attack in attacks:
                    todo = {}
                    for eps, (index, at) in left.items():
                        status = "ran" if have and norm in aa.AA_NORMS else (MISSING if not have else NO_NORM)
                        if main_eps is not None and (norm != "linf" or _key(eps) != _key(main_eps)):
                            status = NOT_MAIN
                        if status == "ran" and attack == "apgd-t" and n_classes < 4:
                            status = FEW_CLASSES  # the targeted DLR loss reads the 4 largest logits
                        rows.append({"model": mid, "norm": norm, "eps": float(eps), "attack": attack,
                                     "targets": _n_targets(attack, norm, n_classes, targets) if attack in TARGETED
                                     else np.nan, "status": status, "candidates": int(len(index)), "broken": np.nan,
                                     "seconds": 0.0})
                        advance(1)
                        if status == "ran":
                            todo[eps] = rows[-1]
                    if not todo:
                        continue
                    if attack == "fab-t":
                        # one search for every ε (FAB-T's does not read ε): the cost of one ε, same outcomes
                        t0 = time.perf_counter()
                        got = _fab_t_batches(model, x, y, {e: left[e][1] for e in todo}, norm, batch_size,
                                             targets, lambda b: derive_seed(seed, "worst-case", mid, norm, attack, b),
                                             f"{attack} on {mid} ({norm})")
                        share = time.perf_counter() - t0
                        n_all = sum(len(left[e][1]) for e in todo) or 1
                        seconds = {e: share * len(left[e][1]) / n_all for e in todo}
                    else:
                        got, seconds = {}, {}
                        for eps in todo:
                            t0 = time.perf_counter()
                            got[eps] = _attack_batches(
                                model, x, y, left[eps][1], attack, norm, eps, batch_size, targets,
                                lambda b, eps=eps: derive_seed(seed, "worst-case", mid, norm, float(eps), attack, b),
                                f"{attack} on {mid} ({norm} ε={eps:g})")
                            seconds[eps] = time.perf_counter() - t0
                    for eps, row in todo.items():
                        (correct, loss), (index, at) = got[eps], left[eps]
                        row["broken"], row["seconds"] = int((~correct).sum()), seconds[eps]
                        outcomes.append(((mid, norm, eps, attack), pd.DataFrame({
                            "model": mid, "attack": attack, "norm": norm, "eps": float(eps), "index": index,
                            "correct": correct, "loss": loss})))
                        # the cascade: the next attack runs only where this one failed
                        left[eps] = (index[correct], at[correct])
    # the tables read setting by setting, each setting's attacks in the cascade's order
    order, ranks = {a: i for i, a in enumerate(attacks)}, {m: i for i, m in enumerate(models)}

    def place(mid, norm, eps, attack):
        return ranks[mid], norm, eps, order[attack]

    rows.sort(key=lambda r: place(r["model"], r["norm"], r["eps"], r["attack"]))
    outcomes = [d for _, d in sorted(outcomes, key=lambda o: place(*o[0]))]
    missing = [r for r in rows if r["status"] == MISSING]
    if missing:
        log.warning("the worst case has no AutoAttack cascade (APGD, FAB-T, Square): the pyautoattack package is "
                    "missing (a dependency of the workbench: pip install pyautoattack); it holds the evaluation's and "
                    "the checks' attacks only")
    cascade = pd.DataFrame(rows, columns=list(TABLES_WORST_CASE["worst_case_cascade"][1]))
    pe_cols = list(TABLES_WORST_CASE["worst_case_per_example"][1])
    per = pd.concat(outcomes, ignore_index=True)[pe_cols] if outcomes else pd.DataFrame(columns=pe_cols)
    return cascade, per


def _n_classes(model, x: torch.Tensor) -> int:
    if not len(x):
        return 10
    with eval_mode(model), torch.no_grad():
        return int(model(x[:1].float()).shape[1])


def _n_targets(attack: str, norm: str, n_classes: int, targets: int | None) -> int:
    """The target classes ``attack`` runs against, as AutoAttack will run it: ``targets``,
    else its standard version's (9; APGD-T at L1 5), at most the classes − 1."""
    default = 5 if (attack == "apgd-t" and norm == "l1") else 9
    return min(int(targets or default), n_classes - 1)


def _attack_batches(model, x, y, at: np.ndarray, attack: str, norm: str, eps: float, batch_size: int,
                    targets: int | None, seed_of, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (correct, cross-entropy) of one AutoAttack attack on ``x[at]``, batch by
    batch (each seeded by ``seed_of(batch)``; under torchrun each rank crafts its share)."""
    if len(at) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    sel = torch.as_tensor(at, device=x.device)
    xs, ys = x[sel], y[sel]

    def crafted(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = slice(b * batch_size, (b + 1) * batch_size)
        adv = aa.autoattack(model, xs[sl], ys[sl], float(eps), norm=norm, attacks=[attack], seed=seed_of(b),
                            targets=targets)
        return tuple(t.cpu() for t in score(model, adv, ys[sl], batch_size))

    got = distributed.run_sharded(-(-len(ys) // batch_size), crafted, what)
    return torch.cat([g[0] for g in got]).numpy(), torch.cat([g[1] for g in got]).numpy()


def _fab_t_batches(model, x, y, at_of: dict[float, np.ndarray], norm: str, batch_size: int, targets: int | None,
                   seed_of, what: str) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """ε → per-example (correct, cross-entropy) of FAB-T at ε on ``x[at_of[ε]]``, from one search
    on the union of those examples (:func:`workbench.attacks.autoattack.fab_t_every_eps`), batch
    by batch as :func:`_attack_batches` does."""
    eps = tuple(at_of)
    radii = tuple(float(e) for e in eps)
    union = np.unique(np.concatenate([at_of[e] for e in eps]))
    if not len(union):
        return {e: (np.zeros(0, dtype=bool), np.zeros(0)) for e in eps}
    member = np.stack([np.isin(union, at_of[e]) for e in eps], axis=1)
    sel = torch.as_tensor(union, device=x.device)
    xs, ys = x[sel], y[sel]

    def crafted(b: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sl = slice(b * batch_size, (b + 1) * batch_size)
        attacked = torch.as_tensor(member[sl], device=x.device)
        advs = aa.fab_t_every_eps(model, xs[sl], ys[sl], radii, attacked, norm=norm,
                                  seed=seed_of(b), targets=targets)
        return [tuple(t.cpu() for t in score(model, adv[attacked[:, e]], ys[sl][attacked[:, e]], batch_size))
                for e, adv in enumerate(advs)]

    got = distributed.run_sharded(-(-len(union) // batch_size), crafted, what)
    out = {}
    for e, radius in enumerate(eps):
        correct = torch.cat([g[e][0] for g in got]).numpy()
        loss = torch.cat([g[e][1] for g in got]).numpy()
        # back to at_of[ε]'s order (union and the batches are sorted by position)
        order = np.argsort(np.argsort(at_of[radius]))
        out[radius] = (correct[order], loss[order])
    return out


class WorstCaseStage(Stage):
    """The AutoAttack cascade on every model's still-robust examples (its outcomes enter the
    worst case, which the runner computes from every white-box outcome once all stages ran)."""

    name = "apgd_cascade"
    section = ("evaluation", "worst_case")
    config = WorstCaseConfig
    # data: whether the examples are streamed (they are decoded here); packages: pyautoattack's
    # version, whose code crafts the examples (a cached "pyautoattack missing" must not outlive
    # an install)
    facts = ("models", "data", "seed", "eval_examples", "packages", "main_eps")
    needs = ("evaluate",)
    order = 0.5
    tables = TABLES_WORST_CASE

    def reads(self, cfg: WorstCaseConfig) -> tuple[str, ...]:
        # the main ε matters only when the cascade is restricted to it
        return self.facts if cfg.eps == "main" else tuple(f for f in self.facts if f != "main_eps")

    def enabled(self, cfg: WorstCaseConfig | None) -> bool:
        return cfg is not None and cfg.apgd

    def code_modules(self, cfg: WorstCaseConfig) -> list[str]:
        return [__name__, "workbench.attacks.autoattack"]

    def run(self, cfg: WorstCaseConfig, ctx: StageContext) -> StageOutput:
        ev = ctx.needs["evaluate"]
        ex = ctx.eval_examples
        x = ex.x.load() if getattr(ctx.data, "streamed", False) else ex.x
        cascade, per = apgd_cascade(ctx.models, x, ex.y, ev.tables["robustness"], ev.tables["per_example"],
                                    batch_size=ev.section.batch_size, seed=ctx.seed, targets=cfg.targets,
                                    attacks=tuple(cfg.attacks), progress=ctx.progress,
                                    main_eps=ctx.main_eps if cfg.eps == "main" else None)
        return StageOutput({"worst_case_cascade": cascade, "worst_case_per_example": per})


register_stage(WorstCaseStage())

# the report's headline columns (the worst case per norm, with its interval) and what the worst case means
register_measure(Measure("worst_case", "worst case", "workbench.evaluation.views:worst_case_columns", summary=True,
                         many=True, order=2))
register_note(Note("worst_case", "workbench.evaluation.views:worst_case_note", order=20))
register_note(Note("apgd_cascade", "workbench.evaluation.views:cascade_note", order=40))
# the other threat models workbench compare ranks against the L∞ worst case (the norm's summary ε)
for _norm, _label in (("l2", "L2"), ("l1", "L1"), ("spatial", "spatial")):
    register_measure(Measure(f"worst {_norm}", f"worst case {_label}", f"workbench.evaluation.views:worst_{_norm}",
                             threat=True, many=True, format="pct", order=10))

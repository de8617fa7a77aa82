"""White-box robustness of every model, and transfer within each pair.

Tables (tidy, one row per setting):

- ``robustness``: model × attack × ε → accuracy and adversarial risk (mean cross-entropy at
  the adversarial input: the mean over examples of the worst case the attack found);
  clean accuracy is the row ``attack == "clean"``, ``eps == 0``.
- ``per_example``: model × attack × ε × example → label, prediction, correct, loss (for the
  soundness checks such as "PGD-correct ⊆ FGSM-correct", per-class accuracy and confusion).
- ``attack_curves``: model × attack × ε × restart × step → mean loss and accuracy at each
  iterate of the attacks that report their steps (PGD, through the ascent engine's trace).
- ``transfer``: examples crafted on ``source``, scored on ``target`` (the other model of
  the pair), both directions.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pydantic import Field, PositiveInt, field_validator, model_validator

from ..attacks import ATTACKS, compile_for_attacks
from ..attacks.fgsm import FGSMAttack
from ..attacks.pgd import PGDAttack
from ..config import Eps, Precision, Strict, name_shorthand
from ..progress import QUIET, Progress
from ..registry import TableSchema, tagged_union
from ..seeds import derive_seed, seeded_generator, seeded_subset
from ..stages import Stage, StageContext, StageOutput, register_section, register_stage
from ..state import eval_mode, seeded_rng
from ..stats import wilson_interval
from ..views import (
    Detail, FigureSpec, Measure, Note, ReportSection, register_detail, register_figure, register_measure, register_note,
    register_report_section,
)
from .. import distributed

if TYPE_CHECKING:  # pragma: no cover
    from ..config import AttackBase

#: one study attack: the union of the configs the attacks register (tagged by ``name``)
AttackConfig = tagged_union(ATTACKS)


class EvaluationConfig(Strict):
    """The evaluation stage's section: ``evaluation:`` (the soundness checks, and any stage
    registered under ``evaluation``, add their sections beside these fields)."""

    examples: PositiveInt | None = Field(1000, description="test examples evaluated (null: the whole test split)")
    batch_size: PositiveInt = 500
    eps: tuple[Eps, ...] = Field((2 / 255, 4 / 255, 8 / 255), description="L∞ ε grid")
    eps_l2: tuple[Eps, ...] = Field((), description="L2 ε grid (for L2 attacks)")
    eps_l1: tuple[Eps, ...] = Field((), description="L1 ε grid (for L1 attacks; L1 norm of the whole image in pixel units)")
    eps_spatial: tuple[Eps, ...] = Field(
        (1.0,), description="spatial ε grid: fractions of each spatial attack's (angle, shift) box (1: the whole box)"
    )
    main_eps: Eps | None = Field(None, description="ε of the summary (default: the training ε of the first adversarial recipe)")
    attacks: tuple[AttackConfig, ...] = Field(  # type: ignore[valid-type]
        default_factory=lambda: (FGSMAttack(name="fgsm"), PGDAttack(name="pgd")),
        description="attacks evaluated on every model",
    )
    transfer: bool = Field(True, description="examples crafted on one model of a pair, tested on the other")
    precision: Precision = Field("fp32", description="bf16 autocast for crafting attacks (CUDA only); scoring stays fp32")
    curves: bool = Field(
        True, description="record the mean loss and accuracy at every step of the attacks that can report them (PGD): "
        "table attack_curves; on CUDA the traced steps run without CUDA-graph replay",
    )
    compile: bool = Field(
        False, description="torch.compile each model for crafting attacks (CUDA; compile time once per model; slower on CPU)"
    )

    @field_validator("attacks", mode="before")
    @classmethod
    def _attack_shorthand(cls, v):
        return name_shorthand(v)

    @model_validator(mode="after")
    def _grids(self) -> EvaluationConfig:
        seen: set[str] = set()
        for i, a in enumerate(self.attacks):
            if a.id in seen:
                raise ValueError(f"attacks[{i}]: two attacks are named {a.id!r}; give one a label")
            seen.add(a.id)
            if a.norm == "linf" and any(e > 1 for e in (a.eps or ())):
                raise ValueError(f"attacks[{i}].eps: an L∞ ε is at most 1 (pixel units)")
            if a.norm == "l2" and not (a.eps or self.eps_l2):
                raise ValueError(f"attacks[{i}]: an L2 attack needs eps_l2 (or its own eps list); the study's eps grid is L∞")
            if a.norm == "l1" and not (a.eps or self.eps_l1):
                raise ValueError(f"attacks[{i}]: an L1 attack needs eps_l1 (or its own eps list); the study's eps grid is L∞")
        if any(e > 1 for e in self.eps):
            raise ValueError("eps: an L∞ ε is at most 1 (pixel units)")
        if any(e > 1 for e in self.eps_spatial):
            raise ValueError("eps_spatial: a spatial ε is a fraction of the (angle, shift) box, at most 1")
        # one threat model per norm: the worst case combines the spatial attacks, so they
        # must search the same box
        boxes = {a.box for a in self.attacks if a.norm == "spatial"}
        if len(boxes) > 1:
            raise ValueError(f"attacks: the spatial attacks declare different boxes {sorted(boxes)} (max_angle, max_shift); "
                             "give them one")
        return self

    def norm_grid(self, norm: str) -> tuple[float, ...]:
        """The study's ε grid of ``norm`` (an attack's own ``eps`` replaces it)."""
        return {"linf": self.eps, "l2": self.eps_l2, "l1": self.eps_l1, "spatial": self.eps_spatial}.get(norm, ())

    def grid(self, attack: AttackBase) -> tuple[float, ...]:
        """The nonzero ε values at which ``attack`` is evaluated (clean accuracy is scored once)."""
        eps = attack.eps if attack.eps is not None else self.norm_grid(attack.norm)
        return tuple(sorted({float(e) for e in eps if e > 0}))


register_section("evaluation", EvaluationConfig)


#: the tables this component writes (collected by workbench.tables)
TABLES_EVALUATION: dict[str, TableSchema] = {
    "robustness": (
        "white-box accuracy and adversarial risk: model × attack × ε (clean: attack `clean`, ε 0; per-example "
        "worst case over every white-box attack at a norm and ε: attack `worst_case`)",
        {
            "model": "model id",
            "attack": "attack label (e.g. `fgsm`, `pgd20-linf`, `aa-standard-linf`), `clean` or `worst_case`",
            "method": "attack registry name (`fgsm`, `pgd`, `autoattack`), `clean` or `worst_case`",
            "norm": "`linf`, `l2`, `l1`, `spatial` (rotations and translations) or `none`",
            "loss": "loss the attack ascends (`ce`, `margin`, `dlr`; `mixed` for an AutoAttack ensemble; `any` for the worst case)",
            "steps": "attack steps",
            "restarts": "random restarts (per-example worst case kept)",
            "eps": "ε in pixel units (spatial: the fraction of the attack's (angle, shift) box)",
            "n": "examples",
            "accuracy": "accuracy on the adversarial examples",
            "ci_low": "lower end of the 95% Wilson interval of the accuracy",
            "ci_high": "upper end of the 95% Wilson interval of the accuracy",
            "adv_risk": "adversarial risk: mean cross-entropy at the adversarial examples (worst case: of the highest loss found)",
            "seconds": "time to craft and score",
        },
    ),
    "per_example": (
        "per-example outcome of every evaluation: model × attack × ε × example (and the worst case)",
        {
            "model": "model id",
            "attack": "attack label, `clean` or `worst_case`",
            "norm": "`linf`, `l2` or `none`",
            "eps": "ε",
            "index": "position of the example in the test split",
            "label": "true class (index into the data set's classes)",
            "prediction": "predicted class at the (adversarial) input: the clean prediction on `clean` rows; on "
            "`worst_case` rows the prediction of the first attack that broke the example (the label when none did; "
            "-1 when only an attack that records no prediction broke it)",
            "correct": "classified correctly",
            "loss": "cross-entropy at the (adversarial) input",
        },
    ),
    "attack_curves": (
        "the attack's progress: model × attack × ε × restart × step → mean loss and accuracy at the iterate (PGD; "
        "evaluation.curves)",
        {
            "model": "model id",
            "attack": "attack label",
            "method": "attack registry name",
            "norm": "norm",
            "loss": "the loss the attack ascends (`ce`, `margin`, …)",
            "eps": "ε",
            "restart": "restart (0-based; each has its own start)",
            "step": "iterate: 0 is the start, `steps` the final iterate of the restart",
            "n": "examples",
            "mean_loss": "mean over the examples of the attack's loss at the iterate",
            "accuracy": "accuracy at the iterate (with one restart, the final step's is the attack's accuracy in "
            "`robustness`; with several, the attack keeps per example the restart that fools the model)",
        },
    ),
    "transfer": (
        "examples crafted on one model of a pair, scored on the other (both directions)",
        {
            "architecture": "the pair's architecture label (as in `pairs`)",
            "source": "model the examples were crafted on",
            "target": "model that scored them",
            "attack": "attack label",
            "method": "attack registry name",
            "norm": "norm",
            "loss": "attack loss",
            "steps": "attack steps",
            "restarts": "restarts",
            "eps": "ε",
            "n": "examples",
            "accuracy": "target's accuracy on the transferred examples",
            "ci_low": "lower end of the 95% Wilson interval of the accuracy",
            "ci_high": "upper end of the 95% Wilson interval of the accuracy",
            "adv_risk": "target's mean cross-entropy on them",
        },
    ),
}


@dataclass
class EvalResult:
    robustness: pd.DataFrame
    per_example: pd.DataFrame
    transfer: pd.DataFrame
    #: (model id, attack id, ε) -> adversarial examples (with ``keep_adversarial=True``)
    adversarial: dict[tuple[str, str, float], torch.Tensor] = field(default_factory=dict, repr=False)
    #: the attacks' per-step mean loss and accuracy (``attack_curves``)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)


def evaluation_subset(n_total: int, examples: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of the test split (all when ``examples`` is None)."""
    return seeded_subset(n_total, examples, seeded_generator("cpu", seed, "evaluation-subset"))


@torch.no_grad()
def predict_score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example (correct, cross-entropy, predicted class) in eval mode and float32."""
    preds, losses = [], []
    with eval_mode(model):
        for i in range(0, len(y), batch_size):
            logits = model(x[i : i + batch_size]).float()
            preds.append(logits.argmax(1))
            losses.append(F.cross_entropy(logits, y[i : i + batch_size], reduction="none"))
    if not preds:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    pred = torch.cat(preds)
    return pred == y.to(pred.device), torch.cat(losses), pred


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (correct, cross-entropy) in eval mode and float32."""
    correct, loss, _ = predict_score(model, x, y, batch_size)
    return correct, loss


def attack_batched(
    model: nn.Module,
    attack: AttackBase,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    batch_size: int,
    precision: str = "fp32",
    advance=lambda n=1, **kw: None,
) -> torch.Tensor:
    fn = ATTACKS.get(attack.name)
    out = []
    for i in range(0, len(y), batch_size):
        out.append(fn(model, x[i : i + batch_size], y[i : i + batch_size], eps, precision=precision, **attack.options()))
        advance(1)
    return torch.cat(out)


def accuracy_interval(k: int, n: int) -> dict[str, float]:
    """The 95% Wilson interval of an accuracy k/n as the tables' ``ci_low``/``ci_high``."""
    lo, hi = wilson_interval(k, n)
    return {"ci_low": float(lo), "ci_high": float(hi)}


def _row(model_id: str, attack, eps: float, correct: torch.Tensor, loss: torch.Tensor, seconds: float) -> dict:
    return {
        "model": model_id,
        "attack": attack.id if attack is not None else "clean",
        "method": attack.name if attack is not None else "clean",
        "norm": attack.norm if attack is not None else "none",
        "loss": attack.loss if attack is not None else "ce",
        "steps": getattr(attack, "steps", 1) if attack is not None else 0,
        "restarts": getattr(attack, "restarts", 1) if attack is not None else 0,
        "eps": float(eps),
        "n": int(len(correct)),
        "accuracy": correct.float().mean().item() if len(correct) else float("nan"),
        **accuracy_interval(int(correct.sum()), len(correct)),
        "adv_risk": loss.mean().item() if len(loss) else float("nan"),
        "seconds": seconds,
    }


def _curve_rows(mid: str, attack, eps: float, sums: torch.Tensor, n: int) -> list[dict]:
    """``attack_curves`` rows from the summed (restart, step, [loss, correct]) of every batch."""
    return [{"model": mid, "attack": attack.id, "method": attack.name, "norm": attack.norm, "loss": attack.loss,
             "eps": float(eps), "restart": i, "step": t, "n": n, "mean_loss": float(sums[i, t, 0]) / n,
             "accuracy": float(sums[i, t, 1]) / n}
            for i in range(sums.shape[0]) for t in range(sums.shape[1])]


def batch_seed(seed: int, model_id: str, attack_id: str, eps: float, batch: int) -> int:
    """The random stream of one batch of one setting (model, attack, ε). Seeded by the
    batch's position, so a batch gives the same examples whichever rank crafts it; the
    first batch keeps the setting's own seed (an evaluation of one batch is unchanged)."""
    parts = (seed, "attack", model_id, attack_id, eps) + ((batch,) if batch else ())
    return derive_seed(*parts)


def evaluate(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: EvaluationConfig,
    pairs: Sequence[tuple[str, str, str]] = (),
    *,
    seed: int = 0,
    progress: Progress = QUIET,
    index: torch.Tensor | None = None,
    keep_adversarial: bool = False,
) -> EvalResult:
    """Clean accuracy and every attack over its grid for every model; then transfer.

    Work goes by batches of ``cfg.batch_size`` examples. Under ``torchrun`` each rank
    crafts and scores its share of the batches (:func:`~workbench.distributed.my_batches`),
    including the transfer scores of its batches, and the per-example outcomes are
    gathered on every rank: the tables are those of one process.

    ``keep_adversarial`` keeps every setting's adversarial examples in the result, on the
    examples' device (one process only: each rank holds only its batches). Off by default:
    at ImageNet scale they take gigabytes per setting, and no stage reads them."""
    index = torch.arange(len(y)) if index is None else index
    rows, per_example = [], []
    adversarial: dict[tuple[str, str, float], torch.Tensor] = {}
    bs = cfg.batch_size
    n_batches = -(-len(y) // bs)
    sharded = distributed.world().active
    total = len(models) * sum(len(cfg.grid(a)) for a in cfg.attacks) * len(distributed.my_batches(n_batches))
    keep_adversarial = keep_adversarial and not sharded
    # transfer: the examples crafted on a source are scored on its pair partners, batch by batch
    targets: dict[str, list[str]] = {}
    if cfg.transfer:
        for _arch, ref, other in pairs:
            for source, target in ((ref, other), (other, ref)):
                targets.setdefault(source, []).append(target)
    transfer: dict[tuple[str, str, str, float], tuple[torch.Tensor, torch.Tensor]] = {}
    curve_rows: list[dict] = []

    labels = y.cpu().numpy()

    def keep(mid, attack, eps, correct, loss, pred):
        per_example.append(
            pd.DataFrame(
                {
                    "model": mid,
                    "attack": attack.id if attack is not None else "clean",
                    "norm": attack.norm if attack is not None else "none",
                    "eps": float(eps),
                    "index": index.cpu().numpy(),
                    "label": labels,
                    "prediction": pred.cpu().numpy(),
                    "correct": correct.cpu().numpy(),
                    "loss": loss.cpu().numpy(),
                }
            )
        )

    with progress.task("attack", total) as advance:
        for mid, model in models.items():
            crafter = compile_for_attacks(model) if cfg.compile else model  # scoring stays eager
            t0 = time.perf_counter()
            correct, loss, pred = predict_score(model, x, y, bs)
            rows.append(_row(mid, None, 0.0, correct, loss, time.perf_counter() - t0))
            keep(mid, None, 0.0, correct, loss, pred)
            fn_targets = targets.get(mid, [])
            for attack in cfg.attacks:
                fn = ATTACKS.get(attack.name)
                traced = cfg.curves and "trace" in inspect.signature(fn).parameters
                for eps in cfg.grid(attack):
                    t0 = time.perf_counter()
                    advs: list[torch.Tensor] = []

                    def crafted(b: int) -> tuple[torch.Tensor, ...]:
                        """Batch b's outcomes on the model and on its transfer targets."""
                        sl = slice(b * bs, (b + 1) * bs)
                        xb, yb = x[sl], y[sl]
                        # each batch has its own random stream: results depend on neither
                        # the order of the settings nor the rank that crafts the batch
                        sums: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

                        def on_step(start: int, t: int, loss: torch.Tensor, correct: torch.Tensor) -> None:
                            # sums on the device (no host synchronisation per step)
                            sums[(start, t)] = (loss.double().sum(), correct.sum().double())

                        with seeded_rng(batch_seed(seed, mid, attack.id, eps, b), x.device):
                            adv = fn(crafter, xb, yb, eps, precision=cfg.precision, **attack.options(),
                                     **({"trace": on_step} if traced else {}))
                        scored = [t_.cpu() for t_ in predict_score(model, adv, yb, bs)]
                        for t in fn_targets:
                            scored.extend(t_.cpu() for t_ in score(models[t], adv, yb, bs))
                        if traced:  # (restart, step, [loss sum, correct count]) of this batch
                            n_s, n_t = (max(k[i] for k in sums) + 1 for i in (0, 1)) if sums else (0, 0)
                            scored.append(torch.stack([torch.stack([torch.stack(sums[(i, t)]) for t in range(n_t)])
                                                       for i in range(n_s)]).cpu() if sums else torch.zeros(0, 0, 2))
                        if keep_adversarial:
                            advs.append(adv)
                        advance(1)
                        return tuple(scored)

                    got = distributed.run_sharded(n_batches, crafted, f"the evaluation of {mid} ({attack.id}, ε={eps:g})")
                    if x.is_cuda:
                        torch.cuda.synchronize()
                    cols = [torch.cat([g[k] for g in got]) if got else torch.zeros(0) for k in range(3 + 2 * len(fn_targets))]
                    correct, loss, pred = cols[0], cols[1], cols[2].long()
                    for k, t in enumerate(fn_targets):
                        transfer[(mid, t, attack.id, eps)] = (cols[3 + 2 * k], cols[4 + 2 * k])
                    rows.append(_row(mid, attack, eps, correct, loss, time.perf_counter() - t0))
                    keep(mid, attack, eps, correct, loss, pred)
                    if traced and got and len(correct):
                        curve_rows.extend(_curve_rows(mid, attack, eps, sum(g[-1] for g in got), len(correct)))
                    if keep_adversarial:
                        adversarial[(mid, attack.id, eps)] = torch.cat(advs) if advs else x[:0]

    transfer_rows = []
    if cfg.transfer:
        for arch, ref, other in pairs:
            for source, target in ((ref, other), (other, ref)):
                for attack in cfg.attacks:
                    for eps in cfg.grid(attack):
                        correct, loss = transfer[(source, target, attack.id, eps)]
                        r = _row(target, attack, eps, correct, loss, 0.0)
                        r.pop("model")
                        r.pop("seconds")
                        transfer_rows.append({"architecture": arch, "source": source, "target": target, **r})
    return EvalResult(
        curves=pd.DataFrame(curve_rows, columns=list(TABLES_EVALUATION["attack_curves"][1])),
        robustness=pd.DataFrame(rows),
        per_example=pd.concat(per_example, ignore_index=True) if per_example else pd.DataFrame(),
        transfer=pd.DataFrame(transfer_rows),
        adversarial=adversarial,
    )


# --------------------------------------------------------------------------- stage


class EvaluationStage(Stage):
    """Clean accuracy and every declared attack over its ε grid for every model; transfer."""

    name = "evaluate"
    section = ("evaluation",)
    config = EvaluationConfig
    facts = ("models", "pairs", "device", "seed", "eval_examples")
    order = 0.0
    tables = TABLES_EVALUATION

    def reads(self, cfg: EvaluationConfig) -> tuple[str, ...]:
        # the pairs matter only to the transfer rows
        return self.facts if cfg.transfer else tuple(f for f in self.facts if f != "pairs")

    def code_modules(self, cfg: EvaluationConfig) -> list[str]:
        # the attacks are looked up by name: their modules are what crafts the examples
        return [__name__, *sorted({ATTACKS.get(a.name).__module__ for a in cfg.attacks})]

    def run(self, cfg: EvaluationConfig, ctx: StageContext) -> StageOutput:
        ex = ctx.eval_examples
        r = evaluate(ctx.models, ex.x, ex.y, cfg, ctx.pairs if cfg.transfer else (), seed=ctx.seed, progress=ctx.progress, index=ex.index)
        return StageOutput({"robustness": r.robustness, "per_example": r.per_example, "transfer": r.transfer,
                            "attack_curves": r.curves}, value=r)


register_stage(EvaluationStage())


# --------------------------------------------------------------------------- report figures
# drawn by the report from these tables (workbench/views.py; the drawing code is imported only then)

register_figure(FigureSpec(
    "accuracy_vs_eps",
    "Accuracy against ε",
    "Each panel is one attack; solid lines are white-box accuracy of each model as ε grows (ε = 0 is clean "
        "accuracy), dashed lines are the same model scored on examples crafted on the other model of its pair, "
        "so a robust model keeps its solid curve high, and a dashed curve below the solid one hints at gradient masking.",
    "robustness",
    "workbench.report.figures:accuracy_vs_eps",
    ("robustness",),
    order=0))

register_figure(FigureSpec(
    "attack_curves",
    "Loss and accuracy against the attack's step",
    "One column per model: the mean loss the attack ascends (top) and the accuracy (bottom) at each PGD iterate, at the "
        "main ε (thin lines: later restarts). A sound attack's accuracy falls and levels off within its steps; a loss "
        "that stalls or jumps about from the first steps while accuracy stays high is the classic sign of gradient "
        "masking, and a curve still falling at the last step says more steps would find more.",
    "robustness",
    "workbench.report.class_figures:attack_curves",
    ("attack_curves",),
    order=2))

# its section of the report, its columns of the summary (clean accuracy, each attack at the summary's ε),
# their notes, and its tables in full (workbench/evaluation/views.py; imported only by the report)
register_report_section(ReportSection("robustness", "Robustness", order=10))
register_measure(Measure("clean", "clean accuracy", "workbench.evaluation.views:clean_columns", summary=True, many=True,
                         order=1))
register_measure(Measure("attacks", "robust accuracy per attack", "workbench.evaluation.views:attack_columns",
                         summary=True, many=True, order=3))
register_note(Note("accuracies", "workbench.evaluation.views:accuracy_note", order=10))
register_note(Note("main_eps", "workbench.evaluation.views:main_eps_note", order=30))
register_detail(Detail(
    "robustness", "robustness", "All white-box numbers (robustness table; ci: 95% Wilson interval)", "robustness",
    columns=("model", "attack", "norm", "loss", "steps", "restarts", "eps", "n", "accuracy", "ci_low", "ci_high",
             "adv_risk", "seconds"),
    formats=(("accuracy", "num"), ("ci_low", "num"), ("ci_high", "num"), ("adv_risk", "num"), ("eps", "num"),
             ("seconds", "sec")), order=10))
register_detail(Detail(
    "transfer", "robustness", "Transfer between the models of each pair (transfer table)", "transfer",
    columns=("source", "target", "attack", "eps", "n", "accuracy", "adv_risk"),
    formats=(("accuracy", "num"), ("adv_risk", "num"), ("eps", "num")), order=30))

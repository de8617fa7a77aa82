"""Evaluation soundness checks: is a robust-accuracy number an overestimate?

Carlini et al. 2019 ("On Evaluating Adversarial Robustness", arXiv:1902.06705) and
Athalye, Carlini & Wagner 2018 ("Obfuscated Gradients Give a False Sense of Security",
arXiv:1802.00420) list symptoms of a broken evaluation, most often of gradient masking:
an attack that stops working because the model's gradients are useless, not because the
model is robust (defensive distillation, Papernot et al. 2016, is the textbook case; Carlini
& Wagner 2016, arXiv:1607.04311, break it with a logit-margin loss). Every check runs on
every evaluated model and yields one row of the ``soundness`` table (model, check, status,
value, threshold, detail); a model with any ``warn`` gets the verdict "robustness may be
overestimated" (:func:`workbench.evaluation.views.verdicts`).

Terms. The *reference PGD* of a norm is the study's strongest cross-entropy PGD at that norm
(most steps × restarts; at L∞ the default 20-step PGD if the study has none); the *main ε*
is ``study.main_eps()``. The checks that compare attacks (``more_steps``, ``more_restarts``,
``margin_vs_ce``) run at every *setting*: the L∞ main ε and every ε of each norm's reference
PGD grid (issue 19: the L2 worst case had gone unchecked); their row is the setting that
warns with the smallest p, else the one closest to warning, with p Bonferroni-adjusted for
the number of settings. Accuracies are fractions. ``tol = max(soundness.tolerance, 1/n)``:
0.5 points (Carlini et al.'s "< 0.5%"), but never finer than one of the n examples, the
resolution of an accuracy measured on n examples. Extra attacks run on
``soundness.examples`` examples (a seeded subset of the evaluated ones); what the
evaluation already measured is read from ``EvalResult.per_example`` on those examples, so
a check compares against the numbers the robustness table reports.

The checks (:data:`CHECKS`; the names are stable). "max" checks warn when
``value > threshold``, "min" checks when ``value < threshold``.

========================  ====  =================================================================
check                     rule  value (threshold)
========================  ====  =================================================================
``monotonic_eps``         max   largest rise of accuracy from a smaller to a larger ε of one
                                attack, clean accuracy counting as ε = 0 (tol); an L1 radius
                                and a spatial box fraction are an ε too
``large_eps``             max   reference PGD (one restart, α = 2.5ε/steps) at L∞ ε = ``large_eps``
                                (majority-class rate of the examples + 1%: at ε = 0.5 every image
                                can be moved to the all-grey image, so a perfect attack leaves at
                                most the examples of the class predicted there)
``pgd_subset_fgsm``       max   share of examples that L∞ PGD classifies correctly and FGSM (same
                                loss, same ε) does not; the worst (PGD attack, ε)
                                (``violation_rate``, 1%: a random start can miss what FGSM's
                                single full step finds on a handful of examples)
``more_steps``            min   reference PGD with ``steps_factor``× the steps and the same α, every
                                setting (reference rerun from the same random starts − tol)
``more_restarts``         min   reference plus ``restarts`` fresh restarts, per example robust only
                                if it survives all, every setting (reported reference − tol)
``noise_vs_whitebox``     max   white-box accuracy minus accuracy under random noise of the same
                                norm and ε (L∞ ε·sign(u), L2 ε·u/‖u‖, L1 ε·u/‖u‖₁; spatial: a
                                random transformation of the box), every attack and ε (tol)
``transfer_vs_whitebox``  max   strongest white-box accuracy at a norm and ε minus the accuracy on
                                examples transferred from the paired model (tol)
``zero_gradients``        max   share of examples whose CE input gradient is exactly zero
                                (``zero_gradient_rate``, 1%)
``probability_outputs``   max   share of output rows that are probability vectors (≥ 0, sum 1)
                                rather than logits (1%)
``nondeterministic``      max   max |z₁ − z₂| / max |z₁| between two eval-mode passes (1e-4)
``margin_vs_ce``          min   accuracy under logit-margin (C&W) PGD with the reference's settings,
                                every setting (reference CE accuracy − tol)
``monotonic_severity``    max   largest rise of accuracy from a lower to a higher severity of one common
                                corruption, clean as severity 0 (tol); p one-sided exact (McNemar)
                                on the same examples, Bonferroni-adjusted for the corruptions
                                (glass blur, elastic, frost left out: severity is no order of
                                strength there). Only with the corruptions probe: a table step
                                after the probes adds it (:mod:`workbench.probes.corruptions`)
========================  ====  =================================================================

Transfer is compared with the *strongest* white-box attack, noise with *each* one: noise is
the weakest possible attack, so any gradient attack that it beats is broken, whereas a
transferred PGD may legitimately beat a weak white-box attack such as FGSM beyond the
training ε (measured on the quickstart's PGD-AT model: FGSM at ε = 0.3 transferred from the
standard model 43.5%, white-box FGSM 44.8%, white-box PGD 13.6%). A check that cannot
apply (no transfer rows, a zero main ε) is left out rather than reported as passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, PositiveInt
from torch import nn

from ..attacks import ATTACKS, LOSSES, default_alpha, random_perturbation
from ..attacks.base import attack_mode, crafting, input_gradient, loss_objective
from ..attacks.fgsm import FGSMAttack
from ..attacks.pgd import PGDAttack
from ..config import AttackBase, Eps, Strict
from ..progress import QUIET, Progress
from ..registry import TableSchema
from ..seeds import derive_seed, seeded_generator, seeded_subset
from ..stages import Stage, StageContext, StageOutput, TableStep, register_stage, register_table_step
from ..state import seeded_rng
from ..stats import binomial_excess, discordant
from .robustness import EvalResult, EvaluationConfig, score
from .worst_case import WORST, _key
from ..views import (
    Detail, FigureSpec, Measure, Note, ReportSection, register_detail, register_figure, register_measure, register_note,
    register_report_section,
)
from .. import distributed
from ..attacks.spatial import SPATIAL, random_transform


class SoundnessConfig(Strict):
    """Evaluation soundness checks (Carlini et al. 2019); see docs/methods.md."""

    enabled: bool = True
    examples: PositiveInt = Field(500, description="test examples used by the extra attacks of the checks")
    large_eps: Eps = Field(0.5, description="L∞ ε at which accuracy must be near chance")
    tolerance: float = Field(
        0.005, ge=0, lt=1,
        description="accuracy change the checks tolerate (fraction; 0.005 = 0.5 points, Carlini et al. 2019); "
        "never below one example (1/n), the resolution of an accuracy on n examples",
    )
    steps_factor: int = Field(2, ge=2, description="more_steps: the reference PGD rerun with this many times its steps")
    restarts: PositiveInt = Field(5, description="more_restarts: fresh random restarts added to the reference PGD's own")
    noise_draws: PositiveInt = Field(
        1, description="noise_vs_whitebox: random perturbations per example (correct only if it survives all); "
        "1 gives FGSM a baseline of equal cost, more makes the noise a random search",
    )
    violation_rate: float = Field(
        0.01, ge=0, le=1, description="pgd_subset_fgsm: tolerated share of examples PGD gets right but FGSM gets wrong"
    )
    zero_gradient_rate: float = Field(
        0.01, ge=0, le=1, description="zero_gradients: tolerated share of examples whose CE input gradient is exactly zero"
    )
    level: float = Field(
        0.01, gt=0, lt=1,
        description="significance level: a check comparing attacks warns only when its one-sided exact test "
        "(binomial on the discordant examples, or on a count against its tolerated rate) gives p below it, "
        "and the difference is past the tolerance",
    )


#: the tables this component writes (collected by workbench.tables)
TABLES_SOUNDNESS: dict[str, TableSchema] = {
    "soundness": (
        "evaluation soundness checks (docs/methods.md): model × check",
        {
            "model": "model id",
            "check": "check name",
            "status": "`pass` or `warn`",
            "value": "the measured number",
            "threshold": "the limit it is compared with",
            "p_value": "one-sided p-value of the check's test (empty for checks of exact properties); it warns only below "
            "`soundness.level`",
            "detail": "one sentence with the counts and the p-value",
            "worst_case_drop": "the attack comparisons (`more_steps`, `more_restarts`, `margin_vs_ce`): the largest fall of "
            "the worst case's accuracy, over the check's settings, that the check's own attacks make, i.e. the share "
            "of its examples that only they break (empty for the other checks, or when the margin attack is one the "
            "evaluation ran)",
            "affects_worst_case": "whether a warning applies to the worst case, the headline: true for every warning "
            "except an attack comparison whose own attacks move the worst case by at most the tolerance (the "
            "reference attack is weak, but the worst case's other attacks, AutoAttack's included, break what they "
            "break); false for a pass",
        },
    ),
    "soundness_per_example": (
        "per-example outcome of the soundness checks' white-box attacks (they enter the worst case): model × job × example",
        {
            "model": "model id",
            "job": "the check's attack (`reference`, `more_steps`, `extra_restarts`, `margin` at each norm and ε; `large_eps`, "
            "`fgsm-<loss>@<ε>`)",
            "attack": "attack label of its settings",
            "norm": "`linf`, `l2`, `l1` or `spatial`",
            "eps": "ε",
            "index": "position of the example in the test split",
            "correct": "classified correctly",
            "loss": "cross-entropy at the adversarial input",
        },
    ),
}

VERDICT_OK = "sound"
VERDICT_WARN = "robustness may be overestimated"
#: every warning is an attack comparison whose stronger attack the worst case already holds
VERDICT_HELD = "sound worst case; single attacks overestimate"
#: the checks that compare a stronger attack with the reference -> the soundness jobs that are that attack
COMPARISONS: dict[str, tuple[str, ...]] = {"more_steps": ("more_steps",), "more_restarts": ("extra_restarts",),
                                           "margin_vs_ce": ("margin",)}

#: Outputs count as probabilities when every entry is ≥ 0 and the row sums to 1 within this.
PROBABILITY_ATOL = 1e-4
#: nondeterministic: tolerated max |z₁ − z₂| / max |z₁|. float32 reordering (e.g. a different
#: GPU kernel) moves logits by ~1e-6 relative; dropout or injected noise by far more than 1e-4.
NONDETERMINISM_RTOL = 1e-4
#: probability_outputs: tolerated share of probability-like rows. Logits of a real network
#: are almost never all ≥ 0 with a sum within 1e-4 of 1; a softmax output always is.
PROBABILITY_RATE = 0.01
#: large_eps: accuracy allowed above the majority-class rate (docs/methods.md: chance + 1%).
LARGE_EPS_MARGIN = 0.01
#: Accuracies are float32 means: a value within this of its threshold is on it, not past it.
ROUNDING = 1e-6


@dataclass(frozen=True)
class Check:
    """One soundness check: its stable name, which side of the threshold is bad, what it is."""

    name: str
    rule: Literal["max", "min"]  # max: warn when value > threshold; min: warn when value < threshold
    what: str


CHECKS: dict[str, Check] = {
    c.name: c
    for c in (
        Check("monotonic_eps", "max", "largest rise of accuracy between a smaller and a larger ε of one attack (clean is ε 0)"),
        Check("large_eps", "max", "reference PGD accuracy at L∞ ε = large_eps; the bound is the majority-class rate + 1%"),
        Check("pgd_subset_fgsm", "max", "share of examples PGD classifies correctly but FGSM (same loss and ε) does not"),
        Check("more_steps", "min", "reference PGD accuracy with steps_factor× the steps (same α), at every norm and ε of its reference"),
        Check("more_restarts", "min", "reference PGD accuracy with more random restarts, at every norm and ε of its reference"),
        Check("noise_vs_whitebox", "max", "white-box accuracy minus accuracy under random noise of the same norm and ε"),
        Check("transfer_vs_whitebox", "max", "strongest white-box accuracy minus accuracy on examples transferred from the paired model"),
        Check("zero_gradients", "max", "share of examples whose cross-entropy input gradient is exactly zero"),
        Check("probability_outputs", "max", "share of output rows that are probability vectors (≥ 0, sum 1) rather than logits"),
        Check("nondeterministic", "max", "max |z₁ − z₂| / max |z₁| over two eval-mode forward passes on the same inputs"),
        Check("margin_vs_ce", "min", "accuracy under logit-margin (C&W) PGD at every norm and ε of its reference; must not fall below CE-PGD accuracy"),
        # run after the probes by the corruptions probe's table step (workbench/probes/corruptions.py)
        Check("monotonic_severity", "max", "largest rise of accuracy from a lower to a higher corruption severity (clean is severity 0), "
              "with a one-sided exact paired test"),
    )
}

COLUMNS = list(TABLES_SOUNDNESS["soundness"][1])


def tolerance(cfg: SoundnessConfig, n: int) -> float:
    """Accuracy change ignored by the comparisons: ``cfg.tolerance``, but at least one example."""
    return max(cfg.tolerance, 1.0 / max(n, 1))


def _pts(v: float) -> str:
    return f"{100 * v:.1f}%"


def _p_text(p: float | None, level: float) -> str:
    if p is None or not math.isfinite(p):
        return ""
    return f" One-sided exact test: p = {p:.2g} ({'below' if p < level else 'not below'} the level {level:g})."


def _row(model: str, check: str, value: float, threshold: float, detail: str, p: float | None = None,
         level: float = 0.01) -> dict:
    """A table row. With a p-value the check warns only when the value is past the threshold
    *and* the evidence is significant (p < level): a difference restart noise explains is none."""
    bad = value > threshold + ROUNDING if CHECKS[check].rule == "max" else value < threshold - ROUNDING
    if p is not None and math.isfinite(p):
        bad = bad and p < level
    return {
        "model": model,
        "check": check,
        "status": "warn" if bad else "pass",
        "value": float(value),
        "threshold": float(threshold),
        "p_value": float(p) if p is not None else math.nan,
        "detail": detail + _p_text(p, level),
        # until the worst case is known (table step WorstCaseReach) every warning applies to it
        "worst_case_drop": math.nan,
        "affects_worst_case": bool(bad),
    }


def _paired(weaker: np.ndarray, stronger: np.ndarray) -> tuple[int, int, float]:
    """(b, c, p): b examples only the stronger attack breaks, c only the weaker one, and the
    one-sided exact binomial (McNemar) p-value that the stronger breaks more than chance."""
    b, c = discordant(weaker, stronger)
    return b, c, binomial_excess(b, b + c, 0.5)


def _counts(b: int, c: int) -> str:
    return f" {b} examples broken only by the second attack, {c} only by the first."


def reference_attack(attacks: Sequence[AttackBase], norm: str = "linf") -> PGDAttack | None:
    """The strongest cross-entropy PGD at ``norm`` of the study's ``attacks`` (most steps ×
    restarts, first on ties); at L∞ the default PGD (20 steps) when there is none, at another
    norm None."""
    best: PGDAttack | None = None
    for a in attacks:
        if isinstance(a, PGDAttack) and a.norm == norm and a.loss == "ce":
            if best is None or a.steps * a.restarts > best.steps * best.restarts:
                best = a
    if best is None and norm == "linf":
        return PGDAttack(name="pgd")
    return best


def _bonferroni(p: float | None, k: int) -> float | None:
    return None if p is None or not math.isfinite(p) else min(1.0, p * k)


@dataclass(frozen=True)
class _Job:
    """An extra attack of the checks; jobs on one random ``stream`` share their random starts."""

    name: str
    attack: FGSMAttack | PGDAttack
    eps: float
    stream: str

    @property
    def key(self) -> tuple[str, str, float]:
        """(name, norm, ε): a check's attack at one of its settings."""
        return (self.name, self.attack.norm, _eps_key(self.eps))


def _eps_key(eps: float) -> float:
    return round(float(eps), 12)


def _variant(base: PGDAttack, **update) -> PGDAttack:
    # label cleared so the id describes the variant (pgd40-linf, pgd20-linf-r5, ...)
    return base.model_copy(update={"label": None, **update})


class _Checker:
    """Everything the checks of one run share: the subset, the per-example lookup, the plan."""

    def __init__(self, ev: EvaluationConfig, cfg: SoundnessConfig, main_eps: float, x: torch.Tensor, y: torch.Tensor,
                 result: EvalResult, num_classes: int, seed: int):
        self.result = result
        self.cfg = cfg
        self.ev = ev
        self.num_classes, self.seed = num_classes, seed
        self.x, self.y = x, y
        n = len(y)
        self.pos = seeded_subset(n, self.cfg.examples, seeded_generator("cpu", seed, "soundness-subset")).numpy()
        idx = torch.as_tensor(self.pos, device=x.device)
        self.xs, self.ys = x[idx], y[idx]
        self.n = len(self.pos)
        self.main_eps = float(main_eps)
        self.ref = reference_attack(ev.attacks)
        #: norm -> the reference PGD of the checks that compare attacks at that norm
        self.refs: dict[str, PGDAttack] = {"linf": self.ref}
        for a in self.ev.attacks:
            ref = reference_attack(ev.attacks, a.norm) if a.norm != "linf" else None
            if ref is not None:
                self.refs.setdefault(a.norm, ref)
        #: (norm, ε) of the checks that compare attacks: every ε of each norm's reference PGD
        #: (the L∞ main ε first, as before issue 19, so its streams and rows keep their seeds)
        self.settings: list[tuple[str, float]] = []
        if self.main_eps > 0:
            self.settings.append(("linf", _eps_key(self.main_eps)))
        for norm, ref in self.refs.items():
            grid = self.ev.grid(ref) if any(a is ref for a in self.ev.attacks) else ()
            for e in grid:
                if (norm, _eps_key(e)) not in self.settings:
                    self.settings.append((norm, _eps_key(e)))
        self.jobs: dict[tuple[str, str, float], _Job] = {}
        self.level = float(self.cfg.level)
        #: model -> job -> per-example cross-entropy at the job's adversarial examples
        self.losses: dict[str, dict[str, np.ndarray]] = {}
        # (model, attack id, ε) -> per-example correctness on all evaluated examples, in x's order
        self.pe: dict[tuple[str, str, float], np.ndarray] = {}
        pe = result.per_example
        if len(pe):
            for (m, a, e), d in pe.groupby(["model", "attack", "eps"], sort=False):
                self.pe[(str(m), str(a), float(e))] = d["correct"].to_numpy(dtype=bool)

    # ------------------------------------------------------------------ lookups and attacks
    def measured(self, mid: str, attack_id: str, eps: float) -> np.ndarray | None:
        """Per-example correctness the evaluation measured, on the check subset (None if not run)."""
        for (m, a, e), c in self.pe.items():
            if m == mid and a == attack_id and math.isclose(e, eps, rel_tol=1e-9, abs_tol=1e-12):
                return c[self.pos] if len(c) == len(self.y) else None
        return None

    def plan(self) -> list[_Job]:
        """The extra attacks run on every model."""
        ref, cfg = self.ref, self.cfg
        jobs: list[_Job] = []
        for norm, eps in self.settings:
            ref = self.refs[norm]
            tag = "" if norm == "linf" else f"-{norm}"  # the L∞ streams keep their pre-issue-19 seeds
            # The reference is rerun on the check subset on the same random stream as its
            # longer variant (common random numbers): with the same α, the variant's first
            # `steps` iterations are the reference's, so the difference is the extra steps.
            alpha = ref.alpha if ref.alpha is not None else default_alpha(eps, ref.steps)
            jobs.append(_Job("reference", ref, eps, "main" + tag))
            jobs.append(_Job("more_steps", _variant(ref, steps=ref.steps * cfg.steps_factor, alpha=alpha), eps,
                             "main" + tag))
            # fresh restarts, combined per example with the reference's own (see more_restarts)
            jobs.append(_Job("extra_restarts", _variant(ref, restarts=cfg.restarts, random_start=True), eps,
                             "restarts" + tag))
            margin = _variant(ref, loss="margin")
            if self._evaluated_id(margin, eps) is None:
                jobs.append(_Job("margin", margin, eps, "margin" + tag))
        ref = self.ref
        # α by the default rule (2.5ε/steps): an explicit α of the reference is tuned to its
        # grid. One restart: restarts escape local optima near the decision boundary, while at
        # ε = 0.5 any gradient that leads anywhere reaches the bound; what is tested is that.
        jobs.append(_Job("large_eps", _variant(ref, alpha=None, restarts=1), float(cfg.large_eps), "large_eps"))
        for a, e in self._fgsm_needed():
            jobs.append(_Job(f"fgsm-{a.loss}@{e:g}", a, e, "fgsm"))
        return jobs

    def known(self, mid: str, attack, eps: float) -> np.ndarray | None:
        """What the evaluation measured for an attack with these exact settings at ε, on the subset."""
        aid = self._evaluated_id(attack, eps)
        return self.measured(mid, aid, eps) if aid is not None else None

    def _evaluated_id(self, attack, eps: float) -> str | None:
        """Id of the study attack with exactly these settings evaluated at ε (None if none)."""
        for a in self.ev.attacks:
            if a.name == attack.name and a.options() == attack.options() and any(
                math.isclose(e, eps, rel_tol=1e-9) for e in self.ev.grid(a)
            ):
                return a.id
        return None

    def _pgd_settings(self) -> list[tuple[PGDAttack, float]]:
        """L∞ PGD results compared with FGSM: every evaluated (attack, ε); the reference at
        the main ε if the study evaluated no L∞ PGD."""
        out = [(a, e) for a in self.ev.attacks if isinstance(a, PGDAttack) and a.norm == "linf" for e in self.ev.grid(a)]
        if not out and self.main_eps > 0:
            out = [(self.ref, self.main_eps)]
        return out

    def _fgsm_for(self, loss: str, eps: float) -> str | None:
        for a in self.ev.attacks:
            if isinstance(a, FGSMAttack) and a.loss == loss and any(math.isclose(e, eps, rel_tol=1e-9) for e in self.ev.grid(a)):
                return a.id
        return None

    def _fgsm_needed(self) -> list[tuple[FGSMAttack, float]]:
        need: list[tuple[FGSMAttack, float]] = []
        for a, e in self._pgd_settings():
            if self._fgsm_for(a.loss, e) is None and (a.loss, e) not in [(f.loss, g) for f, g in need]:
                need.append((FGSMAttack(name="fgsm", loss=a.loss), e))
        return need

    def run_plan(self, mid: str, model: nn.Module, jobs: list[_Job], advance) -> dict[tuple, np.ndarray]:
        """Per job (by :attr:`_Job.key`), per-example correctness on the subset. Every batch of a job reseeds from
        (seed, model, stream, ε, batch), so jobs on one stream share their random starts."""
        out = {}
        bs = self.ev.batch_size
        # under torchrun each rank attacks its share of the batches; the outcomes are gathered
        n_batches = -(-self.n // bs)
        for job in jobs:
            fn = ATTACKS.get(job.attack.name)

            def attacked(b: int) -> tuple[torch.Tensor, torch.Tensor]:
                i = b * bs
                with seeded_rng(derive_seed(self.seed, "soundness", mid, job.stream, job.eps, b), self.xs.device):
                    adv = fn(model, self.xs[i : i + bs], self.ys[i : i + bs], job.eps, precision=self.ev.precision,
                             **job.attack.options())
                advance(1)
                return tuple(t.cpu() for t in score(model, adv, self.ys[i : i + bs], bs))

            got = distributed.run_sharded(n_batches, attacked, f"the soundness check {job.name} of {mid}")
            correct = torch.cat([g[0] for g in got]) if got else torch.zeros(0, dtype=torch.bool)
            loss = torch.cat([g[1] for g in got]) if got else torch.zeros(0)
            out[job.key] = correct.numpy()
            self.losses.setdefault(mid, {})[job.key] = loss.numpy()
        return out

    def row(self, *args, **kw) -> dict:
        return _row(*args, level=self.level, **kw)

    def measured_full(self, mid: str, attack_id: str, eps: float) -> np.ndarray | None:
        """Per-example correctness the evaluation measured on all its examples (None if not run)."""
        for (m, a, e), c in self.pe.items():
            if m == mid and a == attack_id and math.isclose(e, eps, rel_tol=1e-9, abs_tol=1e-12):
                return c if len(c) == len(self.y) else None
        return None

    # ------------------------------------------------------------------ the checks
    def monotonic_eps(self, mid: str) -> dict | None:
        rob = self.result.robustness
        rob = rob[rob["model"] == mid]
        clean = rob[rob["attack"] == "clean"]
        if clean.empty or len(rob) == len(clean):
            return None
        n = int(clean["n"].iloc[0])
        worst = (0.0, "", 0.0, 0.0, 0.0, 0.0)
        for attack, d in rob[rob["attack"] != "clean"].groupby("attack", sort=False):
            seq = [(0.0, float(clean["accuracy"].iloc[0]))] + sorted(zip(d["eps"].astype(float), d["accuracy"].astype(float)))
            lowest = seq[0]
            for e, acc in seq[1:]:
                if acc - lowest[1] > worst[0]:
                    worst = (acc - lowest[1], str(attack), lowest[0], lowest[1], e, acc)
                if acc < lowest[1]:
                    lowest = (e, acc)
        rise, attack, e0, a0, e1, a1 = worst
        tol = tolerance(self.cfg, n)
        p, counts = None, ""
        if rise > 0:
            low_c = self.measured_full(mid, "clean" if e0 == 0 else attack, e0)
            high_c = self.measured_full(mid, attack, e1)
            if low_c is not None and high_c is not None:
                # "stronger" = the larger ε: it should break every example the smaller one does
                b, c, p = _paired(high_c, low_c)
                counts = f" {b} examples are correct at the larger ε but not at the smaller one, {c} the reverse."
        if rise == 0:
            detail = f"accuracy never rises with ε for any attack ({len(set(rob['attack'])) - 1} attacks, n={n}; tolerance {100 * tol:.1f} points)."
        else:
            detail = (
                f"{attack}: accuracy rises from {_pts(a0)} at ε={e0:g} to {_pts(a1)} at ε={e1:g} "
                f"(+{100 * rise:.1f} points, n={n}; tolerance {100 * tol:.1f} points)." + counts
            )
        return self.row(mid, "monotonic_eps", rise, tol, detail, p=p)

    def large_eps(self, mid: str, got: dict[str, np.ndarray]) -> dict:
        got_l = got[("large_eps", "linf", _eps_key(self.cfg.large_eps))]
        acc = float(got_l.mean())
        counts = torch.bincount(self.ys.cpu(), minlength=self.num_classes).numpy()
        majority = float(counts.max() / max(self.n, 1))
        # at L∞ ε=0.5 every image can be moved to the all-0.5 image, so a perfect attack leaves
        # at most the examples of the one class predicted there: the majority-class rate.
        threshold = majority + LARGE_EPS_MARGIN
        eps = float(self.cfg.large_eps)
        attack = self.jobs[("large_eps", "linf", _eps_key(eps))].attack
        k = int(got_l.sum())
        return self.row(
            mid, "large_eps", acc, threshold,
            f"{attack.id} at ε={eps:g} leaves {k} of {self.n} examples ({_pts(acc)}) correct; a perfect attack leaves at "
            f"most the majority-class rate {_pts(majority)} (1/K = {_pts(1 / self.num_classes)}), bound {_pts(threshold)}.",
            p=binomial_excess(k, self.n, majority),
        )

    def pgd_subset_fgsm(self, mid: str, got: dict[str, np.ndarray]) -> dict | None:
        worst = None
        for a, e in self._pgd_settings():
            pgd_c = self.measured(mid, a.id, e)
            if pgd_c is None and a is self.ref:
                pgd_c = got.get(("reference", "linf", _eps_key(e)))
            fid = self._fgsm_for(a.loss, e)
            if fid is not None:
                fgsm_c = self.measured(mid, fid, e)
            else:
                fgsm_c, fid = got.get((f"fgsm-{a.loss}@{e:g}", "linf", _eps_key(e))), FGSMAttack(name="fgsm", loss=a.loss).id
            if pgd_c is None or fgsm_c is None:
                continue
            viol = int((pgd_c & ~fgsm_c).sum())
            rate = viol / max(len(pgd_c), 1)
            if worst is None or rate > worst[0]:
                worst = (rate, viol, len(pgd_c), a.id, fid, e)
        if worst is None:
            return None
        rate, viol, n, aid, fid, e = worst
        return self.row(
            mid, "pgd_subset_fgsm", rate, self.cfg.violation_rate,
            f"worst at {aid} vs {fid}, ε={e:g}: {viol} of {n} examples ({_pts(rate)}) are correct under PGD but not "
            f"under FGSM (tolerated {_pts(self.cfg.violation_rate)}; the test asks whether the rate exceeds it).",
            p=binomial_excess(viol, n, self.cfg.violation_rate),
        )

    def _reported_reference(self, mid: str, got: dict, norm: str = "linf", eps: float | None = None
                            ) -> tuple[np.ndarray, str]:
        """Reference correctness at (norm, ε) as the evaluation reported it (rerun if it was
        not evaluated there); default the L∞ main ε."""
        eps = self.main_eps if eps is None else eps
        c = self.known(mid, self.refs[norm], eps)
        return (c, "reported") if c is not None else (got[("reference", norm, _eps_key(eps))], "rerun on the check examples")

    def _over_settings(self, mid: str, check: str, one) -> dict | None:
        """The check at every (norm, ε) of :attr:`settings`; ``one(norm, ε)`` gives (value,
        threshold, detail, p). One row: the setting that warns with the smallest p, else the
        one closest to warning. p is Bonferroni-adjusted for the k settings (k·p, at most 1),
        so the check's false-warning rate stays at the level however many settings it tests."""
        cands = [(norm, eps, *one(norm, eps)) for norm, eps in self.settings]
        if not cands:
            return None
        k = len(cands)
        rows = [(norm, eps, self.row(mid, check, v, t, d, p=_bonferroni(p, k))) for norm, eps, v, t, d, p in cands]
        warned = [r for r in rows if r[2]["status"] == "warn"]
        if warned:
            norm, eps, row = min(warned, key=lambda r: r[2]["p_value"])
        else:  # "min" checks: the largest shortfall below the reference
            norm, eps, row = max(rows, key=lambda r: r[2]["threshold"] - r[2]["value"])
        if k > 1:
            row["detail"] = (f"Worst of {k} settings ({', '.join(sorted({n for n, _ in self.settings}))}, every ε of "
                             f"each norm's reference PGD; p Bonferroni-adjusted ×{k}): {norm} " + row["detail"])
        return row

    def more_steps(self, mid: str, got: dict) -> dict | None:
        def one(norm: str, eps: float):
            ref_c, more = got[("reference", norm, eps)], got[("more_steps", norm, eps)]
            base, acc = float(ref_c.mean()), float(more.mean())
            tol = tolerance(self.cfg, self.n)
            attack = self.jobs[("more_steps", norm, eps)].attack
            b, c, p = _paired(ref_c, more)
            return (acc, base - tol,
                    f"at ε={eps:g} {attack.id} (α={attack.alpha:.3g}) leaves {_pts(acc)} against {_pts(base)} for "
                    f"{self.refs[norm].id} from the same random starts ({100 * (acc - base):+.1f} points, n={self.n}; "
                    f"tolerance {100 * tol:.1f} points)." + _counts(b, c), p)

        return self._over_settings(mid, "more_steps", one)

    def more_restarts(self, mid: str, got: dict) -> dict | None:
        def one(norm: str, eps: float):
            # Restarts keep, per example, a perturbation that fools the model if any does, so
            # the reference plus k fresh restarts is robust exactly where both are: ref ∧ extra.
            ref = self.refs[norm]
            ref_c, how = self._reported_reference(mid, got, norm, eps)
            extra = got[("extra_restarts", norm, eps)]
            base, acc = float(ref_c.mean()), float((ref_c & extra).mean())
            tol = tolerance(self.cfg, self.n)
            total = ref.restarts + self.cfg.restarts
            # the test: do the fresh restarts alone break significantly more examples than the
            # reference's own? If restart noise were all, each discordant example goes either way
            b, c, p = _paired(ref_c, extra)
            return (acc, base - tol,
                    f"at ε={eps:g} {ref.id} with {total} restarts instead of {ref.restarts} leaves "
                    f"{_pts(acc)} against {_pts(base)} ({how}; {100 * (acc - base):+.1f} points, n={self.n}; "
                    f"tolerance {100 * tol:.1f} points). {b} examples fall only to the {self.cfg.restarts} fresh "
                    f"restarts, {c} only to the reference's {ref.restarts}.", p)

        return self._over_settings(mid, "more_restarts", one)

    def margin_vs_ce(self, mid: str, got: dict) -> dict | None:
        def one(norm: str, eps: float):
            ref = self.refs[norm]
            margin = _variant(ref, loss="margin")
            margin_id = self._evaluated_id(margin, eps)
            c = self.known(mid, margin, eps)
            m_c = c if c is not None else got[("margin", norm, eps)]
            m_acc = float(m_c.mean())
            ce_c, _ = self._reported_reference(mid, got, norm, eps)
            ce = float(ce_c.mean())
            tol = tolerance(self.cfg, self.n)
            b, cc, p = _paired(ce_c, m_c)
            return (m_acc, ce - tol,
                    f"at ε={eps:g} logit-margin PGD ({margin_id or margin.id}) leaves {_pts(m_acc)} against "
                    f"{_pts(ce)} under CE PGD ({ref.id}) ({100 * (m_acc - ce):+.1f} points, n={self.n}; tolerance "
                    f"{100 * tol:.1f} points)." + _counts(b, cc), p)

        return self._over_settings(mid, "margin_vs_ce", one)

    def noise_vs_whitebox(self, mid: str, model: nn.Module, got: dict[str, np.ndarray]) -> dict | None:
        settings = [(a, e) for a in self.ev.attacks for e in self.ev.grid(a)]
        if not settings and self.main_eps > 0:
            settings = [(self.ref, self.main_eps)]
        survived: dict[tuple[str, float], np.ndarray] = {}
        worst = None
        for a, e in settings:
            wb = self.measured(mid, a.id, e)
            if wb is None and a is self.ref:
                wb = got.get(("reference", "linf", _eps_key(e)))
            if wb is None:
                continue
            key = (a.norm, e)
            if key not in survived:
                survived[key] = self._noise(model, a.norm, e, mid, getattr(a, "box", None))
            gap = float(wb.mean() - survived[key].mean())
            if worst is None or gap > worst[0]:
                worst = (gap, a.id, a.norm, e, float(wb.mean()), float(survived[key].mean()), wb, survived[key])
        if worst is None:
            return None
        gap, aid, norm, e, wb_acc, noise_acc, wb_c, noise_c = worst
        b, c, p = _paired(wb_c, noise_c)
        tol = tolerance(self.cfg, self.n)
        k = self.cfg.noise_draws
        draws = "one draw per example" if k == 1 else f"worst of {k} draws per example"
        return self.row(
            mid, "noise_vs_whitebox", gap, tol,
            f"closest at {aid}, ε={e:g}: white-box {_pts(wb_acc)} against {_pts(noise_acc)} under random {norm} noise "
            f"({draws}, n={self.n}; tolerance {100 * tol:.1f} points). {b} examples fall only to the noise, {c} only "
            "to the white-box attack.",
            p=p,
        )

    def _noise(self, model: nn.Module, norm: str, eps: float, mid: str, box=None) -> np.ndarray:
        """Per example: correct under every one of ``noise_draws`` random perturbations
        (L∞: ε·sign(u), a vertex of the box; L2: ε·u/‖u‖₂; L1: ε·u/‖u‖₁; spatial: a
        transformation drawn uniformly from ε × the (angle, shift) box, so the check also
        holds the grid's worst case at or below every sampled transformation)."""
        g = seeded_generator("cpu", self.seed, "soundness-noise", mid, norm, eps)
        ok = torch.ones(self.n, dtype=torch.bool)
        for _ in range(self.cfg.noise_draws):
            if norm == SPATIAL:
                x_r = random_transform(self.xs, eps, *box, generator=g)
            else:
                x_r = random_perturbation(self.xs, eps, norm, generator=g)
            ok &= score(model, x_r, self.ys, self.ev.batch_size)[0].cpu()
        return ok.numpy()

    def _worst_white_box(self, mid: str, norm: str, eps: float) -> tuple[np.ndarray, list[str]] | None:
        """Per-example worst case of the evaluation's white-box attacks at (norm, ε) on all its examples."""
        ok, names = None, []
        for a in self.ev.attacks:
            if a.norm != norm or not any(math.isclose(e, eps, rel_tol=1e-9) for e in self.ev.grid(a)):
                continue
            c = self.measured_full(mid, a.id, eps)
            if c is not None:
                ok = c.copy() if ok is None else ok & c
                names.append(a.id)
        return (ok, names) if ok is not None else None

    def transfer_vs_whitebox(self, mid: str) -> dict | None:
        tr = self.result.transfer
        if tr is None or tr.empty:
            return None
        tr = tr[tr["target"] == mid]
        worst = None
        for _, r in tr.iterrows():
            wb = self._worst_white_box(mid, str(r["norm"]), float(r["eps"]))
            if wb is None:
                continue
            # the strongest white-box evidence is the per-example worst case of every attack
            wb_acc = float(wb[0].mean())
            gap = wb_acc - float(r["accuracy"])
            if worst is None or gap > worst[0]:
                worst = (gap, r, wb_acc, wb[1], int(wb[0].sum()))
        if worst is None:
            return None
        gap, r, wb_acc, names, k_wb = worst
        n = int(r["n"])
        k_tr = int(round(float(r["accuracy"]) * n))
        tol = tolerance(self.cfg, n)
        # the transferred examples' per-example outcomes are not kept, so the two accuracies
        # are compared as independent proportions (Fisher's exact test; conservative when paired)
        from scipy.stats import fisher_exact

        p = float(fisher_exact([[k_wb, n - k_wb], [k_tr, n - k_tr]], alternative="greater").pvalue) if gap > 0 else 1.0
        return self.row(
            mid, "transfer_vs_whitebox", gap, tol,
            f"closest at ε={float(r['eps']):g} ({r['norm']}): {r['attack']} crafted on {r['source']} leaves "
            f"{k_tr} of {n} ({_pts(float(r['accuracy']))}), the per-example worst case of the white-box attacks "
            f"({', '.join(names)}) {k_wb} ({_pts(wb_acc)}) (tolerance {100 * tol:.1f} points).",
            p=p,
        )

    def gradients_and_outputs(self, mid: str, model: nn.Module) -> list[dict]:
        bs = self.ev.batch_size
        zero, probs, outs1, outs2 = [], [], [], []
        ce = LOSSES.get("ce")
        with crafting(), attack_mode(model):
            for i in range(0, self.n, bs):
                xb, yb = self.xs[i : i + bs], self.ys[i : i + bs]
                g, _ = input_gradient(loss_objective(model, yb, ce), xb.detach().clone().float())
                zero.append((g.flatten(1).abs().amax(1) == 0).cpu())
            with torch.no_grad():
                for i in range(0, self.n, bs):
                    outs1.append(model(self.xs[i : i + bs]).float().cpu())
                for i in range(0, self.n, bs):
                    outs2.append(model(self.xs[i : i + bs]).float().cpu())
        z1, z2 = torch.cat(outs1), torch.cat(outs2)
        zero_t = torch.cat(zero)
        probs = (z1.amin(1) >= 0) & ((z1.sum(1) - 1).abs() <= PROBABILITY_ATOL)
        rows = []
        zf, pf = zero_t.float().mean().item(), probs.float().mean().item()
        rows.append(self.row(
            mid, "zero_gradients", zf, self.cfg.zero_gradient_rate,
            f"{int(zero_t.sum())} of {self.n} examples ({_pts(zf)}) have an exactly zero cross-entropy input gradient "
            f"(tolerated {_pts(self.cfg.zero_gradient_rate)}).",
        ))
        rows.append(self.row(
            mid, "probability_outputs", pf, PROBABILITY_RATE,
            f"{int(probs.sum())} of {self.n} output rows ({_pts(pf)}) are non-negative and sum to 1 "
            f"(probabilities, not logits; tolerated {_pts(PROBABILITY_RATE)}).",
        ))
        # NaN in the same place in both passes is no difference; any other non-finite one is
        diff = torch.where(torch.isnan(z1) & torch.isnan(z2), torch.zeros_like(z1), (z1 - z2).abs())
        diff = torch.where(z1 == z2, torch.zeros_like(diff), diff)  # equal infinities
        finite_z = z1[torch.isfinite(z1)]
        scale = finite_z.abs().max().item() if finite_z.numel() else 1.0
        top = diff.max().item() if diff.numel() else 0.0
        rel = math.inf if not math.isfinite(top) else top / max(scale, 1e-12)
        flips = int((z1.argmax(1) != z2.argmax(1)).sum())
        rows.append(self.row(
            mid, "nondeterministic", rel, NONDETERMINISM_RTOL,
            f"two eval-mode passes differ by at most {rel:.2g} of the largest output ({flips} of {self.n} predictions "
            f"change; tolerated {NONDETERMINISM_RTOL:g}).",
        ))
        return rows


def run_checks(
    study: Any,
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    result: EvalResult,
    *,
    num_classes: int,
    progress: Progress = QUIET,
    seed: int = 0,
) -> pd.DataFrame:
    """The soundness table: one row per model × check (see the module docstring).

    ``x``, ``y`` are the evaluated examples, in the order ``evaluate`` scored them (inputs
    in [0, 1], labels (N,)); ``result`` is what ``evaluate`` returned for them. A check
    that does not apply (no transfer rows, no attack) is left out rather than reported as
    passed. ``study`` is a :class:`~workbench.study.Study` (its evaluation section, checks
    and main ε are read).
    """
    ev = study.evaluation
    return run_checks_full(ev, ev.soundness, study.main_eps(), models, x, y, result, num_classes=num_classes,
                           progress=progress, seed=seed)[0]


def run_checks_full(
    ev: EvaluationConfig,
    cfg: SoundnessConfig,
    main_eps: float,
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    result: EvalResult,
    *,
    num_classes: int,
    progress: Progress = QUIET,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(soundness table, per-example outcomes of the checks' white-box attacks): the second
    is the ``soundness_per_example`` table, which enters the worst case."""
    ck = _Checker(ev, cfg, main_eps, x, y, result, num_classes, seed)
    jobs = ck.plan()
    ck.jobs = {j.key: j for j in jobs}
    n_batches = len(distributed.my_batches(-(-ck.n // ev.batch_size)))
    rows: list[dict] = []
    outcomes: list[pd.DataFrame] = []
    index = _test_index(result, len(y))
    with progress.task("soundness", len(models) * len(jobs) * n_batches) as advance:
        for mid, model in models.items():
            got = ck.run_plan(mid, model, jobs, advance)
            for job in jobs:
                outcomes.append(pd.DataFrame({
                    "model": mid, "job": job.name, "attack": job.attack.id, "norm": job.attack.norm,
                    "eps": float(job.eps), "index": index[ck.pos], "correct": got[job.key],
                    "loss": ck.losses[mid][job.key],
                }))
            rows.append(ck.monotonic_eps(mid))
            rows.append(ck.large_eps(mid, got))
            rows.append(ck.pgd_subset_fgsm(mid, got))
            rows.append(ck.more_steps(mid, got))
            rows.append(ck.more_restarts(mid, got))
            rows.append(ck.noise_vs_whitebox(mid, model, got))
            rows.append(ck.transfer_vs_whitebox(mid))
            rows.extend(ck.gradients_and_outputs(mid, model))
            rows.append(ck.margin_vs_ce(mid, got))
    per_example = (pd.concat(outcomes, ignore_index=True) if outcomes
                   else pd.DataFrame(columns=list(TABLES_SOUNDNESS["soundness_per_example"][1])))
    return pd.DataFrame([r for r in rows if r is not None], columns=COLUMNS), per_example


def _test_index(result: EvalResult, n: int) -> np.ndarray:
    """Test-split positions of the evaluated examples, in x's order (positions if unknown)."""
    pe = result.per_example
    if len(pe):
        first = pe[(pe["attack"] == "clean") & (pe["model"] == pe["model"].iloc[0])]
        if len(first) == n:
            return first["index"].to_numpy()
    return np.arange(n)


# --------------------------------------------------------------------------- the worst case's reach
# An attack comparison asks whether the reference attack has converged; the verdict asks whether
# the headline, the worst case, is an overestimate. The worst case holds the stronger attack too,
# with AutoAttack's cascade: if the others break what it breaks, a weak reference overstates its
# own rows but not the worst case. This needs the worst case, so it is a table step after it.


def worst_case_reach(robustness: pd.DataFrame, per_example: pd.DataFrame, checks: pd.DataFrame,
                     cascade: pd.DataFrame | None) -> dict[tuple[str, str], tuple[float, str, int]]:
    """(model, comparison check) -> (drop, where, n): the largest share of the check's n
    examples, over its settings, that only its own attacks break, among every white-box
    outcome of the worst case (the evaluation's attacks, the checks', the cascade's): the fall
    of the worst case's accuracy there that they make."""
    rob = robustness[~robustness["attack"].isin(["clean", WORST])]
    norms = dict(zip(zip(rob["model"], rob["attack"]), rob["norm"]))
    pe = per_example[~per_example["attack"].isin(["clean", WORST])]
    clean = per_example[per_example["attack"] == "clean"]
    ev = pe.assign(norm=[norms.get(k) for k in zip(pe["model"], pe["attack"])], job="")
    cols = ["model", "norm", "eps", "index", "job"]
    broken = pd.concat([d.loc[~d["correct"].astype(bool), cols] if "job" in d.columns else
                        d.loc[~d["correct"].astype(bool)].assign(job="")[cols]
                        for d in (ev, checks, cascade) if d is not None and len(d)], ignore_index=True)
    broken["eps"] = broken["eps"].map(_key)
    # an example wrong clean is robust in neither worst case
    wrong = clean.loc[~clean["correct"].astype(bool), ["model", "index"]].assign(wrong=True)
    broken = broken.merge(wrong, on=["model", "index"], how="left")
    broken = broken[broken["wrong"].isna()].drop(columns="wrong")
    evaluated = set(zip(ev["model"], ev["norm"], ev["eps"].map(_key)))
    out: dict[tuple[str, str], tuple[float, str, int]] = {}
    for check, jobs in COMPARISONS.items():
        own = checks[checks["job"].isin(jobs)]
        if own.empty:
            continue
        # per example, whether every attack that breaks it is the check's own
        only = broken.assign(own=broken["job"].isin(jobs)).groupby(["model", "norm", "eps", "index"])["own"].all()
        count = only[only].groupby(level=[0, 1, 2]).size()
        sizes = own.assign(eps=own["eps"].map(_key)).groupby(["model", "norm", "eps"])["index"].nunique()
        for (mid, norm, eps), n in sizes.items():
            if (mid, norm, eps) not in evaluated:
                continue  # the worst case has no row there
            drop = float(count.get((mid, norm, eps), 0)) / n
            if drop > out.get((str(mid), check), (-1.0,))[0]:
                out[(str(mid), check)] = (drop, f"{norm} ε={float(eps):g}", int(n))
    return out


class WorstCaseReach(TableStep):
    """Adds ``worst_case_drop`` and ``affects_worst_case`` to the soundness table: whether each
    warning applies to the worst case, which holds the stronger attack the check ran."""

    name = "soundness_reach"
    facts = ("soundness",)
    order = 6.0  # after the worst case (0) and the corruptions' monotonic_severity row (5)

    def run(self, tables, ctx):
        snd = tables.get("soundness")
        if snd is None or not len(snd):
            return {}
        checks, rob, pe = tables.get("soundness_per_example"), tables.get("robustness"), tables.get("per_example")
        reach = {}
        if checks is not None and len(checks) and rob is not None and pe is not None:
            reach = worst_case_reach(rob, pe, checks, tables.get("worst_case_per_example"))
        drops, affects, details = [], [], []
        for r in snd.itertuples(index=False):
            got = reach.get((str(r.model), str(r.check))) if r.check in COMPARISONS else None
            drops.append(got[0] if got else np.nan)
            warn = r.status == "warn"
            details.append(str(r.detail))
            if warn and got is not None:
                drop, where, n = got
                tol = tolerance(ctx.soundness, n)
                held = drop <= tol + ROUNDING
                affects.append(not held)
                k = round(drop * n)
                alone = (f"none of its {n} examples falls to it alone at any setting" if k == 0 else
                         f"only {k} of its {n} examples fall to it and to no other attack of the worst case (the most, "
                         f"at {where})")
                details[-1] += (
                    f" The worst case holds this attack too: {alone} (tolerance {100 * tol:.1f} points), so its warning "
                    "is about the reference attack's rows, not the worst case."
                    if held else
                    f" The worst case rests on this attack: {k} of its {n} examples fall to it and to no "
                    f"other attack of the worst case (at {where}; tolerance {100 * tol:.1f} points), so a still stronger "
                    "attack may break more.")
            else:
                affects.append(warn)
        return {"soundness": snd.assign(detail=details, worst_case_drop=drops, affects_worst_case=affects)}


register_table_step(WorstCaseReach())


# --------------------------------------------------------------------------- stage


class SoundnessStage(Stage):
    """The soundness checks (evaluation.soundness) on every model; they read the evaluation's tables (so a cached
    evaluation serves them as well) and craft their extra attacks on its examples."""

    name = "soundness"
    section = ("evaluation", "soundness")
    config = SoundnessConfig
    # data: the number of classes (the large-ε bound); main_eps: the ε of the attack comparisons
    facts = ("models", "data", "device", "seed", "main_eps", "eval_examples")
    needs = ("evaluate",)
    order = 1.0
    tables = TABLES_SOUNDNESS

    def enabled(self, cfg: SoundnessConfig | None) -> bool:
        return cfg is not None and cfg.enabled

    def run(self, cfg: SoundnessConfig, ctx: StageContext) -> StageOutput:
        ev = ctx.needs["evaluate"]
        result = EvalResult(ev.tables["robustness"], ev.tables["per_example"], ev.tables["transfer"])
        ex = ctx.eval_examples
        x = ex.x.load() if getattr(ctx.data, "streamed", False) else ex.x  # the checks get them decoded
        table, outcomes = run_checks_full(ev.section, cfg, ctx.main_eps, ctx.models, x, ex.y, result,
                                          num_classes=ctx.data.num_classes, progress=ctx.progress, seed=ctx.seed)
        return StageOutput({"soundness": table, "soundness_per_example": outcomes})


register_stage(SoundnessStage())


# --------------------------------------------------------------------------- report figures
# drawn by the report from these tables (workbench/views.py; the drawing code is imported only then)

register_figure(FigureSpec(
    "soundness",
    "Soundness checks",
    "One cell per model and check: green passes, red warns, with the measured value; any red cell means that "
        "model's robust accuracy may be overestimated (the table below gives thresholds and details). Amber: an attack "
        "comparison warns (the reference attack is weak), but the worst case holds the stronger attack and its other "
        "attacks break what that one breaks, so the warning is about the single attack's rows, not the worst case.",
    "soundness",
    "workbench.report.figures:soundness",
    ("soundness",),
    order=120))

# its column in the report's summary: each model's verdict (in colour), its banner and note, and its section
register_measure(Measure("soundness_verdict", "soundness", "workbench.evaluation.views:soundness_summary", summary=True,
                         format="text", order=90, classes=((VERDICT_WARN, "verdict-warn"), (VERDICT_OK, "verdict-ok"), (VERDICT_HELD, "verdict-ok"))))
register_note(Note("soundness_banner", "workbench.evaluation.views:soundness_banner", place="banner"))
register_note(Note("soundness", "workbench.evaluation.views:soundness_note", order=70))
register_report_section(ReportSection(
    "soundness", "Soundness of the evaluation", order=40, nav="Soundness", tables=("soundness",),
    absent="The soundness checks were not run for this study (evaluation.soundness.enabled is false), so nothing here "
           "says whether the robust accuracies can be trusted.",
    text="Checks from Carlini et al. (2019) and Athalye et al. (2018): a warn means the robust accuracy of that model "
         "may be an overestimate (e.g. gradient masking). A warning of an attack comparison (more steps, more "
         "restarts, the margin loss) says the reference attack is weak; it applies to the worst case only when the "
         "stronger attack breaks examples no other attack of the worst case breaks (columns worst_case_drop and "
         "affects_worst_case)."))
register_detail(Detail(
    "soundness", "soundness", "", "soundness", columns=("model", "check", "status", "value", "threshold", "p_value", "detail"),
    formats=(("detail", "text"), ("check", "text")), open=True, rows="workbench.evaluation.views:soundness_rows",
    row_class=("status", (("warn", "warn"),)), id="soundness-table"))

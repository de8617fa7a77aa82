"""AutoAttack (Croce & Hein 2020, arXiv:2003.01690) through ``pyautoattack``, the authors' code.

``autoattack(model, x, y, eps, norm=, version=, attacks=, seed=)`` returns the adversarial
examples AutoAttack finds, exactly as ``pyautoattack.AutoAttack(...).run_standard_evaluation``
does on the same batch and seed (tested). ``version`` is ``standard`` (APGD-CE, APGD-T,
FAB-T, Square), ``plus`` or ``rand``; ``attacks`` runs only some of that version's attacks,
with that version's settings (e.g. ``[apgd-ce]``). The models take inputs in [0, 1] with
normalisation inside, as AutoAttack expects.

It always crafts in float32 (AutoAttack's DLR loss and FAB's projections are written for
it). Its random state is the given seed, or one drawn from torch's generator when none is
given (the evaluation seeds that per model, attack and ε); AutoAttack's own reseeding of
torch's global generators is undone afterwards.
"""

from __future__ import annotations

import importlib.util
import logging
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Iterator, Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..config import AttackNorm, Eps, Strict, check_label
from ..errors import DISTRIBUTION, WorkbenchError
from .base import ATTACKS, attack_mode, check_batch, check_eps, check_norm

VERSIONS = ("standard", "plus", "rand")
#: AutoAttack's single attacks (pyautoattack names)
SINGLE_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
#: the workbench's norm names -> AutoAttack's (the worst case's APGD cascade follows this
#: mapping: a norm the workbench adds that AutoAttack also has is one entry here)
AA_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
_NORMS = AA_NORMS
# a core dependency since 0.2; only a broken or hand-trimmed environment lacks it
MISSING = f"attack 'autoattack' needs the pyautoattack package, a dependency of {DISTRIBUTION}: pip install pyautoattack"


def available() -> bool:
    return importlib.util.find_spec("pyautoattack") is not None


def package_version() -> str | None:
    """The installed pyautoattack's version (None when it is missing)."""
    try:
        return metadata.version("pyautoattack")
    except metadata.PackageNotFoundError:
        return None


def build(model: torch.nn.Module, eps: float, *, norm: str = "linf", version: str = "standard",
          attacks=None, seed: int = 0, device=None, num_classes: int | None = None, targets: int | None = None):
    """The ``pyautoattack.AutoAttack`` object the workbench runs (for running it directly).
    ``targets``: target classes of the targeted attacks (default the version's, 9)."""
    try:
        # optional extra (pyautoattack): imported when used, with an install hint when missing
        from pyautoattack import AutoAttack
    except ImportError:
        raise WorkbenchError(MISSING, field="evaluation.attacks") from None
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; valid: {', '.join(VERSIONS)}")
    aa = AutoAttack(model, norm=_NORMS[check_norm(norm)], eps=float(eps), version=version, seed=int(seed),
                    device=device if device is not None else "cpu")
    if attacks:
        unknown = [a for a in attacks if a not in SINGLE_ATTACKS]
        if unknown:
            raise ValueError(f"unknown AutoAttack attack {unknown[0]!r}; valid: {', '.join(SINGLE_ATTACKS)}")
        aa.attacks_to_run = list(attacks)  # the single attacks keep this version's settings
    if targets is not None:
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = int(targets)
    if num_classes is not None and num_classes - 1 < aa.apgd_targeted.n_target_classes:
        # the targeted attacks take the top-k other classes; fewer than 10 classes have fewer
        aa.apgd_targeted.n_target_classes = num_classes - 1
        aa.fab.n_target_classes = num_classes - 1
    aa.verbose = False
    return aa


class AutoAttackAttack(Strict):
    """Croce & Hein 2020 through pyautoattack (the authors' code): a version's ensemble, or
    some of its attacks alone with that version's settings (workbench/attacks/autoattack.py)."""

    name: Literal["autoattack"]
    label: str | None = Field(None, description="name in tables (default aa-<version or attacks>-<norm>)")
    eps: tuple[Eps, ...] | None = Field(None, description="ε grid for this attack (default: the study's grid for its norm)")
    norm: AttackNorm = "linf"
    version: Literal["standard", "plus", "rand"] = Field("standard", description="AutoAttack version")
    attacks: tuple[Literal["apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab"], ...] | None = Field(
        None, description="run only these of the version's attacks (e.g. [apgd-ce]); null: all of them"
    )

    @field_validator("label")
    @classmethod
    def _label(cls, v):
        return check_label(v)

    @model_validator(mode="after")
    def _installed(self) -> AutoAttackAttack:
        if not available():
            raise ValueError(MISSING)
        if self.attacks is not None and not self.attacks:
            raise ValueError("attacks: name at least one attack, or leave it out for the whole version")
        return self

    @property
    def loss(self) -> str:
        # APGD-CE ascends cross-entropy; APGD-T, APGD-DLR the DLR loss; FAB and Square the margin
        names = self.attacks or {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
                                 "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
                                 "rand": ("apgd-ce", "apgd-dlr")}[self.version]
        return "ce" if tuple(names) == ("apgd-ce",) else "mixed"

    @property
    def steps(self) -> int:
        return 100  # APGD's and FAB's iterations in every version

    @property
    def restarts(self) -> int:
        # the package's standard version at L1 runs APGD with 5 restarts (use_largereps)
        return 5 if self.version == "plus" or (self.version == "standard" and self.norm == "l1") else 1

    @property
    def id(self) -> str:
        if self.label:
            return self.label
        what = "+".join(self.attacks) if self.attacks else self.version
        return f"aa-{what}-{self.norm}"

    def options(self) -> dict[str, Any]:
        return {"norm": self.norm, "version": self.version, "attacks": list(self.attacks) if self.attacks else None}


@ATTACKS.register("autoattack", config=AutoAttackAttack)
def autoattack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    version: str = "standard",
    attacks=None,
    seed: int | None = None,
    precision: str = "fp32",
    targets: int | None = None,
) -> torch.Tensor:
    """AutoAttack's adversarial examples for ``x`` (N, ...) in [0, 1], labels ``y`` (N,).
    ``precision`` is accepted for the uniform attack call and ignored (always float32);
    ``targets`` sets the targeted attacks' number of target classes (default the version's)."""
    check_batch(x, y)
    eps = check_eps(eps)
    if len(y) == 0 or eps == 0:
        return x.detach().clone()
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    with _session(model, x) as num_classes:
        aa = build(model, eps, norm=norm, version=version, attacks=attacks, seed=seed, device=x.device,
                   num_classes=num_classes, targets=targets)
        x_adv, _ = aa.run_standard_evaluation(x.detach().float(), y, batch_size=len(y))
    return x_adv.to(x.dtype)


@contextmanager
def _session(model: torch.nn.Module, x: torch.Tensor) -> Iterator[int]:
    """Where AutoAttack's code runs: the model frozen in eval mode, torch's generators forked
    (AutoAttack reseeds them globally) and its DEBUG progress kept out of the run log. Yields
    the model's number of classes (the targeted attacks take at most that − 1 targets)."""
    devices = [x.device] if x.device.type == "cuda" else []
    quiet = logging.getLogger("auto-attack")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=devices), attack_mode(model):
            with torch.no_grad():
                num_classes = int(model(x[:1].float()).shape[1])
            yield num_classes
    finally:
        quiet.setLevel(level)


def _distance(x: torch.Tensor, adv: torch.Tensor, norm: str) -> torch.Tensor:
    """The perturbation's size per example, computed as FAB's own success test does."""
    d = (x - adv).reshape(len(x), -1)
    if norm == "linf":
        return d.abs().max(1)[0]
    if norm == "l2":
        return (d ** 2).sum(dim=-1).sqrt()
    return d.abs().sum(-1)


def fab_t_every_eps(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: tuple[float, ...],
    attacked: torch.Tensor,
    *,
    norm: str = "linf",
    seed: int = 0,
    targets: int | None = None,
) -> list[torch.Tensor]:
    """FAB-T of AutoAttack's standard version at several ε in one search: ``[adv_e for e in eps]``,
    where ``adv_e[i]`` is the adversarial example ``autoattack(model, x[i:i+1], y[i:i+1], eps[e],
    norm=norm, attacks=["fab-t"])`` returns (``x[i]`` when it finds none within ε), for every
    example ``i`` with ``attacked[i, e]`` (N × len(eps), bool; other rows are ``x``).

    Why one search serves every ε: with one restart, FAB-T's search starts at x (no random start)
    and never reads ε; ε enters only its test, after each target class, of whether the
    example it found is misclassified within ε (``fab_base.FABAttack.perturb``), and an example
    leaves the search at the first target that passes it. So each target runs here on the
    examples not yet broken at the smallest ε they are attacked at, and at each ε an example
    takes the first target's example that passes that ε's test, as FAB-T run at that ε does
    (tested against the package). The cost is that of one ε instead of one per ε."""
    check_batch(x, y)
    eps = tuple(check_eps(e) for e in eps)
    attacked = torch.as_tensor(attacked, dtype=torch.bool, device=x.device)
    if attacked.shape != (len(y), len(eps)):
        raise ValueError(f"attacked must be N × len(eps) = {len(y)} × {len(eps)}, got {tuple(attacked.shape)}")
    xf = x.detach().float()
    out = [xf.clone() for _ in eps]
    if not attacked.any():
        return [o.to(x.dtype) for o in out]
    eps_t = torch.tensor(eps, dtype=torch.float64, device=x.device)
    # an example is done once broken at the smallest ε it is attacked at (then at every one)
    smallest = torch.where(attacked, eps_t, torch.full_like(eps_t, float("inf"))).argmin(1)
    rows_all = torch.arange(len(y), device=x.device)
    broken = torch.zeros_like(attacked)
    with _session(model, x) as num_classes, torch.no_grad():
        aa = build(model, max(eps), norm=norm, attacks=["fab-t"], seed=seed, device=x.device,
                   num_classes=num_classes, targets=targets)
        fab = aa.fab
        fab.targeted, fab.n_restarts = True, 1  # as run_standard_evaluation sets it up for "fab-t"
        # FAB attacks only what the model classifies correctly (the rest stay x)
        todo = attacked.any(1) & (model(xf).argmax(1) == y)
        for target in range(2, fab.n_target_classes + 2):
            active = (todo & ~broken[rows_all, smallest]).nonzero().flatten()
            if not len(active):
                break
            fab.target_class = target
            adv = fab.attack_single_run(xf[active], y[active], use_rand_start=False, is_targeted=True)
            fooled = model(adv).argmax(1) != y[active]
            dist = _distance(xf[active], adv, norm)
            for e, radius in enumerate(eps):
                # FAB's own test at this ε (float32 distance against ε), first target wins
                hit = fooled & ~(dist > radius) & attacked[active, e] & ~broken[active, e]
                rows = active[hit]
                out[e][rows] = adv[hit]
                broken[rows, e] = True
    return [o.to(x.dtype) for o in out]


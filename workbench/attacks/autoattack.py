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

import logging

import torch

from ..errors import WorkbenchError
from .base import ATTACKS, attack_mode, check_batch, check_eps, check_norm

VERSIONS = ("standard", "plus", "rand")
#: AutoAttack's single attacks (pyautoattack names)
SINGLE_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
_NORMS = {"linf": "Linf", "l2": "L2"}
MISSING = "attack 'autoattack' needs the pyautoattack package: pip install 'workbench[autoattack]' (or pyautoattack)"


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyautoattack") is not None


def build(model: torch.nn.Module, eps: float, *, norm: str = "linf", version: str = "standard",
          attacks=None, seed: int = 0, device=None, num_classes: int | None = None):
    """The ``pyautoattack.AutoAttack`` object the workbench runs (for running it directly)."""
    try:
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
    if num_classes is not None and num_classes - 1 < aa.apgd_targeted.n_target_classes:
        # the targeted attacks take the top-k other classes; fewer than 10 classes have fewer
        aa.apgd_targeted.n_target_classes = num_classes - 1
        aa.fab.n_target_classes = num_classes - 1
    aa.verbose = False
    return aa


@ATTACKS.register("autoattack")
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
) -> torch.Tensor:
    """AutoAttack's adversarial examples for ``x`` (N, ...) in [0, 1], labels ``y`` (N,).
    ``precision`` is accepted for the uniform attack call and ignored (always float32)."""
    check_batch(x, y)
    eps = check_eps(eps)
    if len(y) == 0 or eps == 0:
        return x.detach().clone()
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    devices = [x.device] if x.device.type == "cuda" else []
    # AutoAttack logs its progress at DEBUG on 'auto-attack'; keep it out of the run log
    quiet = logging.getLogger("auto-attack")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=devices), attack_mode(model):
            with torch.no_grad():
                num_classes = int(model(x[:1].float()).shape[1])
            aa = build(model, eps, norm=norm, version=version, attacks=attacks, seed=seed, device=x.device,
                       num_classes=num_classes)
            x_adv, _ = aa.run_standard_evaluation(x.detach().float(), y, batch_size=len(y))
    finally:
        quiet.setLevel(level)
    return x_adv.to(x.dtype)

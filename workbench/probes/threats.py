"""Representations under each threat model: ``probes.threats``.

For every model and each declared threat model (L∞ PGD, L1 PGD, the spatial grid's worst
transformation, a common corruption), per layer:

- the feature change ratio ‖φ(x′) − φ(x)‖₂ / ‖φ(x)‖₂ (mean over examples, bootstrap interval),
  for the threat's x′ and for a random perturbation of the same size: for an L_p attack a random
  direction with the same per-example L_p norm (:func:`~workbench.attacks.random_perturbation`),
  for the spatial attack a transformation drawn uniformly from the same box, for a corruption
  Gaussian noise with the same per-example L2 distance; ``vs_random`` is their ratio;
- linear CKA between the clean and the perturbed representations (:func:`workbench.probes.cka.cka`);
- a linear probe fitted on clean training features (:func:`workbench.probes.linear_probe.linear_probe`,
  C chosen on validation), scored on the clean, perturbed and random test features.

The functions measured are those of the Lipschitz, CKA and linear-probe probes; only the
perturbations differ.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, PositiveInt

from ..attacks import ATTACKS, random_perturbation
from ..attacks.base import perturbation_norm
from ..attacks.spatial import random_transform
from ..config import Eps, LayerSpec, Strict
from ..evaluation.corruptions import corrupt
from ..models import resolve_layers
from ..registry import TableSchema
from .base import PROBES, ProbeContext
from .cka import cka
from .linear_probe import _splits, layer_shapes, linear_probe, plan_reduction, reduced_features
from .lipschitz import summarize
from .corruptions import CorruptionName


class SpatialThreat(Strict):
    max_angle: float = Field(30.0, ge=0, le=180, description="rotation limit in degrees")
    max_shift: float = Field(3.0, ge=0, description="translation limit in pixels")
    angles: PositiveInt = 31
    shifts: PositiveInt = 5


class ThreatsProbe(Strict):
    """Feature change, CKA and linear probes under L∞, L1, spatial and corruption threat models."""

    layers: LayerSpec = Field("all", description="layers measured: names, fnmatch patterns, 'all' or 'penultimate'")
    linf_eps: Eps | None = Field(None, description="L∞ PGD ε (null: the study's main ε)")
    l1_eps: Eps | None = Field(None, description="L1 PGD ε (null: no L1 threat)")
    steps: PositiveInt = Field(20, description="PGD steps of the L∞ and L1 threats (one restart)")
    spatial: SpatialThreat | None = Field(None, description="the spatial grid's worst transformation in this box (null: none)")
    corruptions: tuple[CorruptionName, ...] = Field((), description="corruptions measured, at `severity`")
    severity: Literal[1, 2, 3, 4, 5] = 3
    train_examples: PositiveInt | None = Field(1000, description="training examples of the linear probes")
    max_features: PositiveInt | None = Field(4096, description="features per layer of the linear probes (pooled beyond)")


TABLES_THREATS: dict[str, TableSchema] = {
    "threat_features": (
        "representations under each threat model: model × threat × layer × kind (the threat's perturbation or a "
        "random one of the same size)",
        {
            "model": "model id",
            "threat": "`linf`, `l1`, `spatial` or `corruption:<name>`",
            "budget": "ε (spatial: 1, the whole box; corruption: the severity)",
            "layer": "layer name",
            "layer_index": "position of the layer",
            "kind": "`threat` (PGD, the grid's worst transformation, the corruption) or `random` (same size)",
            "change": "mean over examples of ‖φ(x′) − φ(x)‖₂ / ‖φ(x)‖₂",
            "ci_low": "lower end of its 95% bootstrap interval over examples",
            "ci_high": "upper end",
            "vs_random": "change of the threat / change of the random perturbation (on both rows)",
            "cka": "linear CKA between the clean and the perturbed representations",
            "probe_accuracy": "accuracy of the layer's clean-trained linear probe on the perturbed test features",
            "probe_clean_accuracy": "the same probe on the clean test features",
        },
    ),
}


def threat_inputs(model, x, y, cfg: ThreatsProbe, main_eps: float | None, seed: int, batch_size: int):
    """threat name -> (budget, perturbed x, random x of the same size) for one model."""
    out = {}
    g = torch.Generator().manual_seed(seed)
    pgd = ATTACKS.get("pgd")
    for norm, eps in (("linf", cfg.linf_eps if cfg.linf_eps is not None else main_eps), ("l1", cfg.l1_eps)):
        if not eps:
            continue
        adv = torch.cat([pgd(model, x[i:i + batch_size], y[i:i + batch_size], eps, steps=cfg.steps, norm=norm,
                             generator=g) for i in range(0, len(y), batch_size)])
        size = perturbation_norm(adv - x, norm)  # after the clip: the random δ gets the same size
        out[norm] = (float(eps), adv, random_perturbation(x, size, norm, generator=g))
    if cfg.spatial is not None:
        s = cfg.spatial
        adv = torch.cat([ATTACKS.get("spatial-grid")(model, x[i:i + batch_size], y[i:i + batch_size], 1.0,
                                                     max_angle=s.max_angle, max_shift=s.max_shift, angles=s.angles,
                                                     shifts=s.shifts) for i in range(0, len(y), batch_size)])
        out["spatial"] = (1.0, adv, random_transform(x, 1.0, s.max_angle, s.max_shift, generator=g))
    for name in cfg.corruptions:
        xc = corrupt(x, name, cfg.severity, seed)
        size = perturbation_norm(xc - x, "l2")
        out[f"corruption:{name}"] = (float(cfg.severity), xc, random_perturbation(x, size, "l2", generator=g))
    return out


def _change(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    num = (other - clean).double().norm(dim=1)
    den = clean.double().norm(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


@PROBES.register("threats", config=ThreatsProbe, tables=TABLES_THREATS, facts=("data", "main_eps"))
def run_threats(ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Every model under every declared threat: feature change vs random, CKA, linear probes."""
    cfg: ThreatsProbe = ctx.cfg
    rows = []
    tx, ty, vx, vy = _splits(ctx)
    for mid, model in ctx.models.items():
        layers = resolve_layers(model, cfg.layers)
        seed = ctx.seed_for("threats", mid)
        threats = threat_inputs(model, ctx.x, ctx.y, cfg, ctx.main_eps, seed, ctx.batch_size)
        shapes = layer_shapes(model, ctx.x[:1], layers)
        reds = {name: plan_reduction(shapes[name], cfg.max_features, seed) for name in layers}
        feats = lambda x: reduced_features(model, x, reds, ctx.batch_size)  # noqa: E731
        clean, train, val = feats(ctx.x), feats(tx), feats(vx)
        perturbed = {t: (b, feats(a), feats(r)) for t, (b, a, r) in threats.items()}
        for li, layer in enumerate(layers):
            tests = {"clean": (clean[layer], ctx.y)}
            for t, (_, fa, fr) in perturbed.items():
                tests[f"{t}/threat"] = (fa[layer], ctx.y)
                tests[f"{t}/random"] = (fr[layer], ctx.y)
            probe = linear_probe(train[layer], ty, val[layer], vy, tests)
            for t, (budget, fa, fr) in perturbed.items():
                changes = {"threat": _change(clean[layer], fa[layer]), "random": _change(clean[layer], fr[layer])}
                means = {k: float(np.nanmean(v.numpy())) for k, v in changes.items()}
                for kind, f in (("threat", fa), ("random", fr)):
                    s = summarize(changes[kind], seed=seed)
                    rows.append({
                        "model": mid, "threat": t, "budget": budget, "layer": layer, "layer_index": li, "kind": kind,
                        "change": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                        "vs_random": means["threat"] / means["random"] if means["random"] > 0 else float("nan"),
                        "cka": cka(clean[layer], f[layer]),
                        "probe_accuracy": probe.test_accuracy[f"{t}/{kind}"],
                        "probe_clean_accuracy": probe.test_accuracy["clean"],
                    })
    return {"threat_features": pd.DataFrame(rows, columns=list(TABLES_THREATS["threat_features"][1]))}

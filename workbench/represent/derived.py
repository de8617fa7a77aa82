"""Robust and non-robust feature data sets (Ilyas et al. 2019, MadryLab/constructed-datasets).

From a source model g (its penultimate layer) and the training split:

- ``d_r`` / ``d_nr``: each training x replaced by x_r minimising ‖g(x_r) − g(x)‖₂ (relative,
  as :func:`~workbench.represent.core.invert`) from a random other training image, label
  kept; D_R when g is robust, D_NR when it is standard (the construction is the same);
- ``d_det``: x_adv, a targeted small-ε L2 attack on g towards t = (y + 1) mod C, labelled t;
- ``d_rand``: the same towards a uniformly drawn t, labelled t.

:func:`build_derived` is the plain function; :func:`derived_set` keeps its result in the
result cache of the store, keyed by the source model's store key, the settings, the data
identity, the seed and this code, so a set is built once and rebuilt when any of them
changes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..seeds import derive_seed
from . import core
from ..cache import ResultCache, cached_stage
from ..codehash import code_hash
from ..stages import StageOutput

log = logging.getLogger("workbench")

SETS = ("d_r", "d_nr", "d_det", "d_rand")


def build_derived(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    *,
    num_classes: int,
    seed: int,
    layer: str = "penultimate",
    steps: int = 200,
    step_size: float | None = None,
    eps: float = 0.5,
    attack_steps: int = 100,
    attack_step_size: float | None = None,
    batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """The derived training set of ``kind`` (one of :data:`SETS`) from source ``model``:
    images, labels and a per-example table (original label, new label, and the
    representation distance reached or whether the model predicts the new label)."""
    if kind not in SETS:
        raise ValueError(f"unknown derived set {kind!r}; valid: {', '.join(SETS)}")
    g = torch.Generator().manual_seed(derive_seed(seed, "derived", kind))
    n = len(y)
    xs, ys, extra = [], [], []
    if kind in ("d_r", "d_nr"):
        # a random other training image as each seed: a permutation shifted off the identity
        perm = torch.randperm(n, generator=g)
        start = perm.roll(1)[torch.argsort(perm)].to(x.device)  # start[i] = the image after i in the permutation
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            got = core.invert(model, x[sl], x[start[sl]], layer=layer, steps=steps, step_size=step_size)
            xs.append(got.x)
            ys.append(y[sl])
            extra.append(got.distance.cpu())
        new_y = torch.cat(ys)
        table = pd.DataFrame({"label": new_y.cpu().numpy(), "original_label": y.cpu().numpy(),
                              "distance": torch.cat(extra).numpy(), "model_agrees": np.nan})
    else:
        t = ((y.cpu() + 1) % num_classes if kind == "d_det"
             else torch.randint(0, num_classes, (n,), generator=g)).to(y.device)
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            adv = core.targeted_l2(model, x[sl], t[sl], eps=eps, steps=attack_steps, step_size=attack_step_size)
            xs.append(adv)
            with torch.no_grad():
                extra.append((model(adv).argmax(1) == t[sl]).cpu())
        new_y = t
        table = pd.DataFrame({"label": t.cpu().numpy(), "original_label": y.cpu().numpy(), "distance": np.nan,
                              "model_agrees": torch.cat(extra).numpy().astype(float)})
    return torch.cat(xs).detach(), new_y.detach().clone(), table


def _npz(x: torch.Tensor, y: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x.detach().float().cpu().numpy(), y=y.cpu().numpy())
    return buf.getvalue()


ARRAY = "arrays/derived.npz"


def derived_set(
    store_root: str | Path,
    source_key: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    settings: Mapping[str, Any],
    *,
    num_classes: int,
    seed: int,
    data_identity: Mapping[str, Any],
    retrain: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """:func:`build_derived`, kept in the store's result cache under a key derived from
    the source model's store key, ``settings``, the data identity, the seed and the code
    of this module (with what it imports). Returns (images, labels, reused)."""
    inputs = {"source": source_key, "kind": kind, "settings": dict(settings), "data": dict(data_identity),
              "seed": int(seed), "num_classes": int(num_classes), "code": code_hash(__name__),
              "torch": torch.__version__, "device": x.device.type}

    def build() -> StageOutput:
        xd, yd, table = build_derived(model, x, y, kind, num_classes=num_classes, seed=seed, **settings)
        return StageOutput({"derived_set": table}, {ARRAY: _npz(xd, yd)})

    got = cached_stage(ResultCache(store_root), f"derived:{kind}", inputs, build, recompute=retrain)
    with np.load(io.BytesIO(got.artifacts[ARRAY]), allow_pickle=False) as z:
        xd = torch.from_numpy(z["x"]).to(x.device)
        yd = torch.from_numpy(z["y"]).to(y.device)
    if got.cached:
        log.info("derived set %s of source %s reused from the store (%s)", kind, source_key, got.key[:12])
    return xd, yd, got.cached

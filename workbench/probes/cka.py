"""Centered kernel alignment (CKA) between two representations of the same examples.

* **Linear CKA** (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited", ICML): with column-centred X (n × d₁) and Y (n × d₂),
  ``CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``. Equivalently, with the centred Gram matrices
  K = XXᵀ and L = YYᵀ (n × n), ``CKA = ⟨K, L⟩_F / (‖K‖_F ‖L‖_F)``; that form costs
  O(n²(d₁ + d₂)) instead of O(n d₁ d₂) and is used when a representation is wider than
  there are examples (a conv layer can have 65k dimensions for a few hundred examples).
* **Debiased minibatch CKA** (Nguyen, Raghu & Kornblith 2021, "Do Wide and Deep Networks
  Learn the Same Things?", ICLR): the unbiased HSIC estimator of Song et al. 2012
  ("Feature Selection via Dependence Maximization", JMLR) is summed over minibatches,
  ``CKA = Σ_b HSIC₁(K_b, L_b) / √(Σ_b HSIC₁(K_b, K_b) · Σ_b HSIC₁(L_b, L_b))``. It removes
  the upward bias of the plug-in estimator when d ≫ n, and the minibatch sum makes it
  usable when the n × n Gram matrix of every example would not fit. Unlike linear CKA it
  may be slightly negative (an unbiased estimate of a quantity near zero).

Everything is computed in float64: the features are float32 and n × n sums of products
of large activations lose digits in float32. A constant representation (e.g. a layer of
dead ReLUs) has no centred variance; its CKA with anything is undefined and returned as NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

import pandas as pd
import torch
from pydantic import Field

from ..config import LayerSpec, Strict
from ..errors import WorkbenchError
from ..models import extract_features, resolve_layers
from ..registry import TableSchema
from .base import PROBES, ProbeContext


class CKAProbe(Strict):
    """Linear (Kornblith et al. 2019) and debiased minibatch (Nguyen et al. 2021) CKA between
    all layers of the models of each pair, and of each model with itself."""

    layers: LayerSpec = Field("all", description="layers compared: names, fnmatch patterns, 'all' or 'penultimate'")
    kinds: tuple[Literal["linear", "debiased"], ...] = Field(("linear", "debiased"), description="CKA estimators")
    # the unbiased HSIC estimator needs n ≥ 4 per minibatch
    batch_size: int = Field(256, ge=4, description="minibatch of the debiased estimator (probe examples per batch)")


#: the tables this component writes (collected by workbench.tables)
TABLES_CKA: dict[str, TableSchema] = {
    "cka": (
        "CKA between every layer of model A and every layer of model B (pairs, and each model with itself)",
        {
            "model_a": "model id (rows)",
            "model_b": "model id (columns)",
            "layer_a": "layer of model A",
            "layer_b": "layer of model B",
            "layer_a_index": "position of layer A",
            "layer_b_index": "position of layer B",
            "kind": "`linear` or `debiased`",
            "value": "CKA (linear: in [0, 1]; debiased: can be slightly negative for unrelated features)",
        },
    ),
}


log = logging.getLogger("workbench")

Kind = Literal["linear", "debiased"]
KINDS: tuple[str, ...] = ("linear", "debiased")

#: columns converted to float64 at a time when forming a Gram matrix (bounds the copy)
_CHUNK = 8192


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise WorkbenchError(f"unknown CKA kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def _as_matrix(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() < 2:
        raise WorkbenchError(f"{what} must be a matrix (n × d), got shape {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], -1)


def centered_gram(x: torch.Tensor) -> torch.Tensor:
    """Gram matrix of the column-centred features: Xc Xcᵀ, (n, n) float64 on x's device.

    ``x`` is (n, d) (or (n, ...), flattened). Columns are centred and cast to float64 a
    chunk at a time, so a 65k-wide float32 layer never needs a float64 copy of itself.
    """
    x = _as_matrix(x, "features")
    n = x.shape[0]
    k = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[1], _CHUNK):
        c = x[:, start:start + _CHUNK].to(torch.float64)
        c = c - c.mean(dim=0, keepdim=True)
        k += c @ c.T
    return k


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator of Song et al. 2012 (eq. 5), a float64 scalar tensor.

    With K̃, L̃ the Gram matrices with zeroed diagonals and n ≥ 4 examples::

        HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))

    It is invariant to centring the features, so centred or raw Gram matrices give the
    same value. O(n²): 1ᵀK̃L̃1 = (K̃1)ᵀ(L̃1) for symmetric K̃.
    """
    n = k.shape[0]
    if n < 4:
        raise WorkbenchError(f"the unbiased HSIC estimator needs at least 4 examples, got {n}")
    k = k.to(torch.float64).clone()
    l = l.to(torch.float64).clone()
    k.fill_diagonal_(0.0)
    l.fill_diagonal_(0.0)
    trace = (k * l).sum()
    cross = k.sum() * l.sum() / ((n - 1) * (n - 2))
    rows = k.sum(dim=0) @ l.sum(dim=1)
    return (trace + cross - 2.0 * rows / (n - 2)) / (n * (n - 3))


def minibatches(n: int, batch_size: int | None) -> list[slice]:
    """Consecutive row blocks of ``batch_size`` (None: one block of all n rows).

    A last block smaller than 4 rows (too small for the unbiased estimator) is merged
    into the previous one.
    """
    if batch_size is None or batch_size >= n:
        return [slice(0, n)]
    if batch_size < 4:
        raise WorkbenchError(f"debiased CKA needs minibatches of at least 4 examples, got batch_size={batch_size}")
    starts = list(range(0, n, batch_size))
    if n - starts[-1] < 4:
        starts.pop()
    return [slice(s, e) for s, e in zip(starts, [*starts[1:], n])]


def _ratio(num: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    denom = a * b
    if not bool(denom > 0):
        return float("nan")  # a constant (or, debiased, a noise-only) representation
    return float(num / denom.sqrt())


def _linear_from_grams(k: torch.Tensor, l: torch.Tensor) -> float:
    """Linear CKA from centred Gram matrices: ⟨K, L⟩_F / (‖K‖_F ‖L‖_F)."""
    return _ratio((k * l).sum(), (k * k).sum(), (l * l).sum())


def _self_hsic(k: torch.Tensor, batches: Sequence[slice]) -> torch.Tensor:
    return sum(hsic_unbiased(k[b, b], k[b, b]) for b in batches)  # type: ignore[return-value]


def _debiased_from_grams(k: torch.Tensor, l: torch.Tensor, batches: Sequence[slice],
                         kk: torch.Tensor | None = None, ll: torch.Tensor | None = None) -> float:
    kl = sum(hsic_unbiased(k[b, b], l[b, b]) for b in batches)
    kk = _self_hsic(k, batches) if kk is None else kk
    ll = _self_hsic(l, batches) if ll is None else ll
    return _ratio(kl, kk, ll)  # type: ignore[arg-type]


def cka(
    X: torch.Tensor,
    Y: torch.Tensor,
    kind: Kind = "linear",
    batch_size: int | None = None,
    *,
    via: Literal["auto", "features", "gram"] = "auto",
) -> float:
    """CKA between two representations of the same n examples (same rows, same order).

    Args:
        X: (n, d₁) features (any trailing shape is flattened).
        Y: (n, d₂) features of the same examples.
        kind: ``"linear"`` (Kornblith et al. 2019) or ``"debiased"`` (minibatch unbiased
            HSIC, Nguyen et al. 2021).
        batch_size: debiased only: rows per minibatch (≥ 4); None means one batch of all
            n rows (the full unbiased estimator). Minibatches are consecutive rows, so
            rows should not be sorted by class.
        via: linear only: ``"features"`` computes ‖YᵀX‖²_F/(‖XᵀX‖_F‖YᵀY‖_F) in feature
            space, ``"gram"`` through the n × n centred Gram matrices, ``"auto"`` picks
            the Gram form when max(d₁, d₂) > n. Both are exact (float64).

    Returns:
        CKA as a float (linear: in [0, 1]); NaN when a representation is constant.
    """
    _check_kind(kind)
    X, Y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    n = X.shape[0]
    if Y.shape[0] != n:
        raise WorkbenchError(f"CKA needs the same examples in X and Y, got {n} and {Y.shape[0]} rows")
    if n < 2:
        raise WorkbenchError(f"CKA needs at least 2 examples, got {n}")
    if kind == "linear":
        if via not in ("auto", "features", "gram"):
            raise WorkbenchError(f"via must be auto, features or gram, got {via!r}")
        if via == "gram" or (via == "auto" and max(X.shape[1], Y.shape[1]) > n):
            return _linear_from_grams(centered_gram(X), centered_gram(Y.to(X.device)))
        x = X.to(torch.float64)
        y = Y.to(device=X.device, dtype=torch.float64)
        x = x - x.mean(dim=0, keepdim=True)
        y = y - y.mean(dim=0, keepdim=True)
        return _ratio((y.T @ x).square().sum(), (x.T @ x).square().sum(), (y.T @ y).square().sum())
    if n < 4:
        raise WorkbenchError(f"debiased CKA needs at least 4 examples, got {n}")
    return _debiased_from_grams(centered_gram(X), centered_gram(Y.to(X.device)), minibatches(n, batch_size))


def _matrix_from_grams(
    grams_a: Mapping[str, torch.Tensor], grams_b: Mapping[str, torch.Tensor], kind: str, batch_size: int | None
) -> pd.DataFrame:
    _check_kind(kind)
    ns = {g.shape[0] for g in [*grams_a.values(), *grams_b.values()]}
    if len(ns) != 1:
        raise WorkbenchError(f"CKA needs the same examples for every layer, got row counts {sorted(ns)}")
    n = ns.pop()
    values = pd.DataFrame(index=pd.Index(list(grams_a), name="layer_a"),
                          columns=pd.Index(list(grams_b), name="layer_b"), dtype=float)
    if kind == "linear":
        for la, k in grams_a.items():
            for lb, l in grams_b.items():
                values.loc[la, lb] = _linear_from_grams(k, l)
        return values
    if n < 4:
        raise WorkbenchError(f"debiased CKA needs at least 4 examples, got {n}")
    batches = minibatches(n, batch_size)
    # each self-HSIC is needed once per row / column, not once per cell
    self_a = {la: _self_hsic(k, batches) for la, k in grams_a.items()}
    self_b = {lb: _self_hsic(l, batches) for lb, l in grams_b.items()}
    for la, k in grams_a.items():
        for lb, l in grams_b.items():
            values.loc[la, lb] = _debiased_from_grams(k, l, batches, self_a[la], self_b[lb])
    return values


def cka_matrix(
    feats_a: Mapping[str, torch.Tensor],
    feats_b: Mapping[str, torch.Tensor],
    kind: Kind = "linear",
    batch_size: int | None = None,
) -> pd.DataFrame:
    """CKA between every layer of A (rows, index ``layer_a``) and every layer of B
    (columns, ``layer_b``). Each dict maps a layer name to its (n, d) features of the same
    n examples in the same order; see :func:`cka` for ``kind`` and ``batch_size``."""
    grams_a = {name: centered_gram(f) for name, f in feats_a.items()}
    grams_b = grams_a if feats_b is feats_a else {name: centered_gram(f) for name, f in feats_b.items()}
    return _matrix_from_grams(grams_a, grams_b, kind, batch_size)


# --------------------------------------------------------------------------- runner

COLUMNS = ["model_a", "model_b", "layer_a", "layer_b", "layer_a_index", "layer_b_index", "kind", "value"]


@PROBES.register("cka", config=CKAProbe, tables=TABLES_CKA)
def run_cka(ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Linear and debiased CKA between all layers of each pair (reference × paired) and of
    each model with itself, on the probe examples.

    Features are extracted once per model and reduced to their n × n centred Gram
    matrices (all CKA needs), so a wide layer is held only while its Gram is formed. The
    rows are put in one seeded random order, the same for every model, before the
    minibatch estimator splits them: consecutive minibatches of a class-sorted split
    would otherwise each see one class.
    """
    cfg = ctx.cfg
    n = len(ctx.x)
    g = torch.Generator().manual_seed(ctx.seed_for("cka", "order"))
    order = torch.randperm(n, generator=g)
    grams: dict[str, dict[str, torch.Tensor]] = {}
    positions: dict[str, dict[str, int]] = {}
    with ctx.progress.task("cka features", len(ctx.models)) as advance:
        for model_id, model in ctx.models.items():
            layers = resolve_layers(model, cfg.layers)
            feats = extract_features(model, ctx.x, layers, batch_size=ctx.batch_size)
            grams[model_id] = {name: centered_gram(feats.pop(name)[order]) for name in layers}
            all_layers = model.layer_names()
            positions[model_id] = {name: all_layers.index(name) for name in layers}
            advance(1)

    combos: list[tuple[str, str]] = [(ref, other) for _arch, ref, other in ctx.pairs]
    combos += [(m, m) for m in ctx.models]
    rows = []
    for a, b in combos:
        for kind in cfg.kinds:
            mat = _matrix_from_grams(grams[a], grams[b], kind, cfg.batch_size)
            for la in mat.index:
                for lb in mat.columns:
                    rows.append({
                        "model_a": a, "model_b": b, "layer_a": la, "layer_b": lb,
                        "layer_a_index": positions[a][la], "layer_b_index": positions[b][lb],
                        "kind": kind, "value": float(mat.loc[la, lb]),
                    })
    log.info("cka: %d model combinations × %d kinds on %d examples", len(combos), len(cfg.kinds), n)
    return {"cka": pd.DataFrame(rows, columns=COLUMNS)}

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

Intervals (:func:`bootstrap_cka`): a percentile bootstrap over examples, resampling the
examples jointly for both models (the same indices for both feature matrices), from a seeded
``numpy.random.Generator``. A resample is a vector of copy counts c over the n examples, and
every sum the estimators take over the resample's Gram entries is a c-weighted sum over the
full set's centred Gram (see ``_Resampled``), so the features are never touched again, no
resampled matrix is formed, and a chunk of resamples is one matrix product per layer. A
resample draws some examples more than once, and the Gram entry of two copies of one
example is a self-similarity ‖xᵢ‖²; left in, those ~n extra entries double the weight of
the diagonal, which is what biases CKA upwards when d ≫ n (the debiased estimator exists
to drop it), and the interval then misses the point value (d = 500, n = 40: [0.966, 0.981]
around 0.960). So the entries of pairs of copies are zeroed: linear CKA keeps one self-pair
per row as the point estimate does, the debiased one none. (Features are centred by the
full sample's mean first, as a translation of them changes nothing else.)

Everything is computed in float64: the features are float32 and n × n sums of products
of large activations lose digits in float32. A constant representation (e.g. a layer of
dead ReLUs) has no centred variance; its CKA with anything is undefined and returned as NaN.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from .. import distributed
from ..config import LayerSpec, Strict
from ..errors import WorkbenchError
from ..models import extract_features, resolve_layers
from ..registry import TableSchema
from ..stats import BOOTSTRAP_SAMPLES, LEVEL
from .base import PROBES, ProbeContext
from ..views import FigureSpec, Measure, register_figure, register_measure


class CKAProbe(Strict):
    """Linear (Kornblith et al. 2019) and debiased minibatch (Nguyen et al. 2021) CKA between
    all layers of the models of each pair, and of each model with itself."""

    layers: LayerSpec = Field("all", description="layers compared: names, fnmatch patterns, 'all' or 'penultimate'")
    kinds: tuple[Literal["linear", "debiased"], ...] = Field(("linear", "debiased"), description="CKA estimators")
    # the unbiased HSIC estimator needs n ≥ 4 per minibatch
    batch_size: int = Field(256, ge=4, description="minibatch of the debiased estimator (probe examples per batch)")
    bootstrap: int = Field(BOOTSTRAP_SAMPLES, ge=0, description="bootstrap resamples of the examples for the 95% "
                           "intervals (ci_low, ci_high); 0: no intervals (NaN)")


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
            "ci_low": "95% percentile-bootstrap interval over examples (resampled jointly for both models): lower end",
            "ci_high": "upper end",
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


def _cross(num: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """num[..., i, j] / √(a[..., i] b[..., j]); NaN where that is not positive (see _ratio)."""
    denom = a[..., :, None] * b[..., None, :]
    return torch.where(denom > 0, num / denom.clamp_min(1e-300).sqrt(), torch.nan)


class _Resampled:
    """What the estimators need of one model's Gram stack G (L, n, n) under R resamples given
    as counts c (R, n): c[r, i] = copies of example i in the resample (of size m = Σc).

    A resample K′ has the entries G[i, j] for every pair of drawn positions; the Gram entries
    of two copies of one example are zeroed (module doc), and ``keep`` says whether the
    diagonal (a position with itself) stays (linear) or not (the unbiased HSIC). Sums over the
    resample's m × m entries are then weighted sums over the n × n ones, so no resampled
    matrix is ever formed:

    - row sum of K′ at a copy of i:  ρ_i = (G c)_i − (c_i − keep)·G_ii;
    - 1ᵀK′1 = Σ_i c_i ρ_i;  (K′1)ᵀ(L′1) = Σ_i c_i ρ_i ρ′_i;
    - ⟨K′, L′⟩ = cᵀ(G∘G′)c − Σ_i (c_i² − keep·c_i) G_ii G′_ii  (:func:`_quad` gives the first term).
    """

    def __init__(self, g: torch.Tensor, c: torch.Tensor, keep: float):
        self.c, self.keep = c, keep
        self.diag = torch.diagonal(g, dim1=-2, dim2=-1)  # (L, n)
        self.rho = torch.matmul(c, g) - (c - keep)[None] * self.diag[:, None]  # (L, R, n)
        self.total = (self.rho * c[None]).sum(-1).T  # (R, L)

    def inner(self, other: _Resampled, quad: torch.Tensor) -> torch.Tensor:
        """⟨K′_a, L′_b⟩ for every layer a of self and b of other, (R, La, Lb), from
        ``quad`` = :func:`_quad` of the same counts."""
        w = self.c * self.c - self.keep * self.c
        return quad - torch.einsum("rn,an,bn->rab", w, self.diag, other.diag)

    def rows(self, other: _Resampled) -> torch.Tensor:
        """(K′1)ᵀ(L′1): (R, La, Lb)."""
        return torch.einsum("rn,arn,brn->rab", self.c, self.rho, other.rho)


def _quad(c: torch.Tensor, ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """cᵀ(G_a ∘ G_b)c for every layer a of ``ga`` (La, n, n) and b of ``gb``: (R, La, Lb),
    one (R × n) @ (Lb, n, n) product per layer a: the bootstrap's only O(R·n²) step."""
    out = torch.empty(len(c), len(ga), len(gb), dtype=torch.float64, device=c.device)
    for i, g in enumerate(ga):
        out[:, i] = (torch.matmul(c, g[None] * gb) * c[None]).sum(-1).T
    return out


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(R, m) drawn indices -> (R, n) copies of each example."""
    r = len(idx)
    return np.bincount((np.arange(r)[:, None] * n + idx).ravel(), minlength=r * n).reshape(r, n).astype(np.float64)


def _linear_chunk(a: _Resampled, b: _Resampled, quad: torch.Tensor, m: int) -> torch.Tensor:
    """⟨HK′H, HL′H⟩ (the numerator of linear CKA on the resample): (R, La, Lb)."""
    return a.inner(b, quad) - 2.0 / m * a.rows(b) + a.total[:, :, None] * b.total[:, None, :] / (m * m)


def _hsic_chunk(a: _Resampled, b: _Resampled, quad: torch.Tensor, m: int) -> torch.Tensor:
    """The unbiased HSIC of :func:`hsic_unbiased` on the resample (diagonal dropped): (R, La, Lb)."""
    cross = a.total[:, :, None] * b.total[:, None, :] / ((m - 1) * (m - 2))
    return (a.inner(b, quad) + cross - 2.0 * a.rows(b) / (m - 2)) / (m * (m - 3))


def _quads(c: torch.Tensor, stacks: Mapping[str, torch.Tensor], combos: Sequence[tuple[str, str]]) -> dict:
    """:func:`_quad` for every combination and every model with itself (for the norms),
    each computed once."""
    need = list(dict.fromkeys([*combos, *((m, m) for m in stacks)]))
    return {(a, b): _quad(c, stacks[a], stacks[b]) for a, b in need}


def bootstrap_cka(
    grams: Mapping[str, Mapping[str, torch.Tensor]],
    combos: Sequence[tuple[str, str]],
    kinds: Sequence[str] = KINDS,
    batch_size: int | None = None,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = LEVEL,
    seed: int = 0,
    chunk: int = 250,
) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]:
    """Percentile-bootstrap intervals of CKA for every layer pair of every combination.

    ``grams``: model -> layer -> centred Gram matrix (n × n, :func:`centered_gram`) of the
    same n examples in the same order; ``combos``: (model A, model B) pairs. The resamples are
    ``samples`` rows of n example indices drawn with replacement (one
    ``numpy.random.Generator(seed).integers(0, n, (samples, n))``), the same for every model,
    so both models' features are resampled jointly. Returns (A, B, kind) -> (low, high), each
    a (layers of A) × (layers of B) array in the order of ``grams``; NaN where fewer than half
    the resamples gave a finite value (a constant layer). The debiased estimator's minibatches
    are the consecutive positions of the resample, as for the point value; the Gram entries of
    two copies of one example are zeroed (module doc). Cost: O(R·L_A·L_B·n²) per combination
    (R resamples, ``chunk`` of them at a time), as matrix products. Under torchrun each rank
    computes its share of the chunks, and every rank gets the intervals.
    """
    for kind in kinds:
        _check_kind(kind)
    if samples < 1:
        raise WorkbenchError(f"the bootstrap needs at least one resample, got samples={samples}")
    n = next(iter(next(iter(grams.values())).values())).shape[0]
    used = sorted({m for c in combos for m in c}, key=list(grams).index)
    stacks = {m: torch.stack([grams[m][la] for la in grams[m]]).to(torch.float64) for m in used}
    device = next(iter(stacks.values())).device
    kinds = [k for k in kinds if k == "linear" or n >= 4]
    blocks = minibatches(n, batch_size) if "debiased" in kinds else []
    idx_all = np.random.default_rng(seed).integers(0, n, (samples, n))
    starts = range(0, samples, chunk)

    def resampled(u: int) -> dict[tuple[str, str, str], np.ndarray]:
        """CKA of every combination, layer pair and kind on the resamples of chunk u."""
        start = starts[u]
        idx = idx_all[start:start + chunk]
        vals: dict[tuple[str, str, str], np.ndarray] = {}
        c = torch.as_tensor(_counts(idx, n), device=device)
        one_block = len(blocks) == 1 and blocks[0] == slice(0, n)
        quads = _quads(c, stacks, combos) if "linear" in kinds or one_block else {}
        if "linear" in kinds:
            res = {m: _Resampled(s, c, 1.0) for m, s in stacks.items()}
            norm = {m: torch.diagonal(_linear_chunk(r, r, quads[(m, m)], n), dim1=1, dim2=2) for m, r in res.items()}
            for a, b in combos:
                vals[(a, b, "linear")] = _cross(_linear_chunk(res[a], res[b], quads[(a, b)], n),
                                                    norm[a], norm[b]).cpu().numpy()
        if "debiased" in kinds:
            hsic = {cb: 0.0 for cb in combos}
            selfh = {m: 0.0 for m in used}
            for bs in blocks:
                m_b = bs.stop - bs.start
                cb_ = c if one_block else torch.as_tensor(_counts(idx[:, bs], n), device=device)
                qb = quads if one_block else _quads(cb_, stacks, combos)  # one block: the linear kind's products
                res = {m: _Resampled(s, cb_, 0.0) for m, s in stacks.items()}
                for m, r in res.items():
                    selfh[m] = selfh[m] + torch.diagonal(_hsic_chunk(r, r, qb[(m, m)], m_b), dim1=1, dim2=2)
                for a, b in combos:
                    hsic[(a, b)] = hsic[(a, b)] + _hsic_chunk(res[a], res[b], qb[(a, b)], m_b)
            for a, b in combos:
                vals[(a, b, "debiased")] = _cross(hsic[(a, b)], selfh[a], selfh[b]).cpu().numpy()
        return vals

    # under torchrun each rank computes its share of the chunks of resamples
    done = distributed.run_sharded(len(starts), resampled, "the CKA bootstrap")
    vals = {(a, b, kind): np.concatenate([d[(a, b, kind)] for d in done]) for a, b in combos for kind in kinds}
    q = (1 - level) / 2
    out = {}
    for key, v in vals.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN cell (a constant layer) stays NaN
            lo, hi = np.nanquantile(v, q, axis=0), np.nanquantile(v, 1 - q, axis=0)
        few = np.isfinite(v).sum(0) < max(1, samples / 2)
        lo[few], hi[few] = math.nan, math.nan
        out[key] = (lo, hi)
    return out


# --------------------------------------------------------------------------- runner

COLUMNS = ["model_a", "model_b", "layer_a", "layer_b", "layer_a_index", "layer_b_index", "kind", "value",
           "ci_low", "ci_high"]


@PROBES.register("cka", config=CKAProbe, tables=TABLES_CKA, sharded=True, facts=("pairs",))
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
    model_ids = list(ctx.models)
    sharded = distributed.world().active

    def model_grams(u: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        model = ctx.models[model_ids[u]]
        layers = resolve_layers(model, cfg.layers)
        feats = extract_features(model, ctx.x, layers, batch_size=ctx.batch_size)
        grams = {name: centered_gram(feats.pop(name)[order]) for name in layers}
        all_layers = model.layer_names()
        advance(1)
        # to the CPU for the gather (and back): every rank then holds rank-computed Grams, bit for bit
        return ({k: v.cpu() for k, v in grams.items()} if sharded else grams), {name: all_layers.index(name) for name in layers}

    # under torchrun each rank extracts its share of the models; every rank gets every Gram
    with ctx.progress.task("cka features", len(distributed.my_batches(len(model_ids)))) as advance:
        done = distributed.run_sharded(len(model_ids), model_grams, "the CKA features")
    grams = {m: ({k: v.to(ctx.device) for k, v in gm.items()} if sharded else gm) for m, (gm, _) in zip(model_ids, done)}
    positions = {m: p for m, (_, p) in zip(model_ids, done)}

    combos: list[tuple[str, str]] = [(ref, other) for _arch, ref, other in ctx.pairs]
    combos += [(m, m) for m in ctx.models]
    intervals = {}
    if cfg.bootstrap and n >= 2:
        with ctx.progress.task("cka intervals", 1) as advance:
            intervals = bootstrap_cka(grams, combos, cfg.kinds, cfg.batch_size, samples=cfg.bootstrap,
                                      seed=ctx.seed_for("cka", "bootstrap"))
            advance(1)
    rows = []
    for a, b in combos:
        for kind in cfg.kinds:
            mat = _matrix_from_grams(grams[a], grams[b], kind, cfg.batch_size)
            lo, hi = intervals.get((a, b, kind), (None, None))
            for i, la in enumerate(mat.index):
                for j, lb in enumerate(mat.columns):
                    rows.append({
                        "model_a": a, "model_b": b, "layer_a": la, "layer_b": lb,
                        "layer_a_index": positions[a][la], "layer_b_index": positions[b][lb],
                        "kind": kind, "value": float(mat.loc[la, lb]),
                        "ci_low": float(lo[i, j]) if lo is not None else math.nan,
                        "ci_high": float(hi[i, j]) if hi is not None else math.nan,
                    })
    log.info("cka: %d model combinations × %d kinds on %d examples", len(combos), len(cfg.kinds), n)
    return {"cka": pd.DataFrame(rows, columns=COLUMNS)}


# --------------------------------------------------------------------------- report figures
# drawn by the report from these tables (workbench/views.py; the drawing code is imported only then)

register_figure(FigureSpec(
    "cka",
    "CKA between layers",
    "CKA between every layer of the row model (vertical, input at the bottom) and every layer of the column "
        "model (horizontal) — 1 means identical up to rotation and scale: self panels show each model's own "
        "layer structure, pair panels show at which depth the standard and robust representations part ways "
        "(a dark diagonal).",
    "representations",
    "workbench.report.figures:cka",
    ("cka",),
    order=80))

# the measure workbench compare correlates with robustness
register_measure(Measure("cka_to_reference", "linear CKA to the reference, penultimate",
                         "workbench.probes.views:cka_to_reference", compare=True, order=40))

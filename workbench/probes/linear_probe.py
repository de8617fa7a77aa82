"""Linear probes (Alain & Bengio 2016, "Understanding intermediate layers using linear
classifier probes"): a multinomial logistic regression per layer on frozen eval-mode
features, fitted on training-split features, regularisation chosen on the validation
split (never on test), scored on clean and PGD test features.

How much class information a linear read-out finds at each layer, and how much of it
survives an adversarial perturbation of the input, separates the two models of a pair:
a robust model should keep linearly decodable class information under PGD at deep layers.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, field_validator
from threadpoolctl import threadpool_limits

from .. import distributed
from ..attacks import attack_mode, pgd
from ..config import Eps, LayerSpec, Strict
from ..errors import WorkbenchError
from ..models import WorkbenchModel, extract_features, resolve_layers
from ..registry import TableSchema
from .base import PROBES, ProbeContext
from ..views import FigureSpec, register_figure


class LinearProbe(Strict):
    """Per-layer logistic-regression probes on frozen features (Alain & Bengio 2016), clean and
    under PGD; C chosen on the validation split."""

    layers: LayerSpec = Field("all", description="layers probed: names, fnmatch patterns, 'all' or 'penultimate'")
    eps: tuple[Eps, ...] | None = Field(None, description="L∞ ε of the PGD examples (default: evaluation.eps)")
    train_examples: PositiveInt | None = Field(2000, description="training-split examples fitting each probe")
    C: tuple[float, ...] = Field((0.01, 0.1, 1.0, 10.0), description="inverse regularisation grid, chosen on validation")
    max_iter: PositiveInt = Field(500, description="lbfgs iterations per fit")
    steps: PositiveInt = Field(10, description="steps of the L∞ CE PGD that makes the adversarial test features")
    # a 64×32×32 conv map has 65k features: too wide to fit thousands of probes cheaply. The
    # lbfgs fits cost ∝ width: 512 was measured 4x faster than 2048 (CIFAR PreActResNet, CPU).
    max_features: PositiveInt | None = Field(
        512, description="wider layers are average-pooled over space to fit (see linear_probe.py); null: never reduce"
    )

    @field_validator("C")
    @classmethod
    def _positive_c(cls, v):
        if not v or any(c <= 0 for c in v):
            raise ValueError("C is a non-empty list of positive numbers")
        return v


#: the tables this component writes (collected by workbench.tables)
TABLES_LINEAR_PROBE: dict[str, TableSchema] = {
    "linear_probe": (
        "logistic-regression probe accuracy per layer on frozen features, clean (ε 0) and under PGD",
        {
            "model": "model id",
            "layer": "layer name",
            "layer_index": "position of the layer",
            "feature_dim": "feature size",
            "eps": "ε of the PGD examples (0: clean)",
            "accuracy": "probe accuracy on test features",
            "val_accuracy": "accuracy on the validation split at the chosen C",
            "C": "inverse regularisation chosen on validation",
            "train_examples": "training examples fitting the probe",
        },
    ),
}


log = logging.getLogger("workbench")

#: share of the training subset held out for validation when the study has no val split
CARVED_VAL_FRACTION = 0.2


@dataclass(frozen=True)


class ProbeResult:
    """Outcome of one probe: the chosen C, accuracies (fractions in [0, 1])."""

    C: float
    val_accuracy: float
    train_accuracy: float
    test_accuracy: dict[str, float]
    val_scores: dict[float, float] = field(default_factory=dict)  # C -> validation accuracy
    converged: bool = True  # lbfgs reached its tolerance for the chosen C


def _numpy(a, what: str, dims: int) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if dims == 2:
        if arr.ndim < 2:
            raise WorkbenchError(f"{what} must be (n, d) features, got shape {arr.shape}")
        arr = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:])))
    elif arr.ndim != 1:
        raise WorkbenchError(f"{what} must be (n,) labels, got shape {arr.shape}")
    return arr


def linear_probe(
    train_feats: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    val_feats: torch.Tensor | np.ndarray,
    val_y: torch.Tensor | np.ndarray,
    test_sets: Mapping[str, tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
    C_grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0),
    max_iter: int = 500,
) -> ProbeResult:
    """Fit a logistic-regression probe and score it.

    Features are standardised with a scaler fitted on the training features only; for
    each C of ``C_grid`` (inverse L2 strength, scikit-learn's convention) a multinomial
    ``LogisticRegression`` (lbfgs) is fitted on the training set and scored on the
    validation set. The C with the best validation accuracy is kept (ties: the smallest,
    i.e. the most regularised); the test sets are only scored with that one model, never
    used to choose.

    Args:
        train_feats, val_feats: (n, d) features (trailing dims flattened).
        train_y, val_y: (n,) integer labels.
        test_sets: name -> (features (m, d), labels (m,)); e.g. ``{"clean": ..., "0.1": ...}``.
        C_grid: inverse regularisation strengths (> 0), fitted in increasing order with
            warm starts (the optimum of each is the same; the path is just faster).
        max_iter: lbfgs iterations per fit.

    Returns:
        :class:`ProbeResult` with accuracies in [0, 1].
    """
    xtr, ytr = _numpy(train_feats, "train_feats", 2), _numpy(train_y, "train_y", 1)
    xva, yva = _numpy(val_feats, "val_feats", 2), _numpy(val_y, "val_y", 1)
    if len(xtr) != len(ytr) or len(xva) != len(yva):
        raise WorkbenchError("linear_probe: features and labels have different lengths")
    if len(xva) == 0:
        raise WorkbenchError("linear_probe needs validation examples to choose C")
    if len(np.unique(ytr)) < 2:
        raise WorkbenchError("linear_probe needs at least two classes in the training labels")
    if xva.shape[1] != xtr.shape[1]:
        raise WorkbenchError(f"linear_probe: validation features have {xva.shape[1]} dims, training {xtr.shape[1]}")
    grid = sorted({float(c) for c in C_grid})
    if not grid or grid[0] <= 0:
        raise WorkbenchError(f"C_grid must hold positive numbers, got {list(C_grid)}")

    # BLAS gets torch's thread count: OpenBLAS's default team of all cores spin-waits on a
    # busy machine (a 2048-wide probe was measured 18x slower with 2 threads than with 1
    # on a loaded 2-core box; see runner.default_threads).
    with threadpool_limits(limits=torch.get_num_threads()):
        return _fit_and_score(xtr, ytr, xva, yva, test_sets, grid, max_iter)


def _fit_and_score(xtr, ytr, xva, yva, test_sets, grid, max_iter) -> ProbeResult:
    # imported on use: scikit-learn takes about 2 s to import, which a rerun that reads
    # every result from the cache should not pay
    from sklearn.exceptions import ConvergenceWarning
    # scikit-learn takes seconds to import; only this step needs it
    from sklearn.linear_model import LogisticRegression
    # scikit-learn takes seconds to import; only this step needs it
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr.astype(np.float64))
    ztr = scaler.transform(xtr.astype(np.float64))
    zva = scaler.transform(xva.astype(np.float64))
    clf = LogisticRegression(max_iter=int(max_iter), warm_start=True)
    fits: dict[float, tuple[Any, bool]] = {}
    val_scores: dict[float, float] = {}
    for c in grid:
        clf.set_params(C=c)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(ztr, ytr)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        fits[c] = (copy.deepcopy(clf), converged)
        val_scores[c] = float(clf.score(zva, yva))
    best = max(grid, key=lambda c: (val_scores[c], -c))  # ties: the most regularised
    model, converged = fits[best]
    tests = {}
    for name, (feats, labels) in test_sets.items():
        xt, yt = _numpy(feats, f"test_sets[{name!r}] features", 2), _numpy(labels, f"test_sets[{name!r}] labels", 1)
        tests[name] = float(model.score(scaler.transform(xt.astype(np.float64)), yt)) if len(yt) else float("nan")
    return ProbeResult(C=best, val_accuracy=val_scores[best], train_accuracy=float(model.score(ztr, ytr)),
                       test_accuracy=tests, val_scores=val_scores, converged=converged)


# --------------------------------------------------------------------------- reduction


def layer_shapes(model: WorkbenchModel, x: torch.Tensor, layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Per-example output shape of each layer (e.g. (64, 32, 32)), from one example."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in layers:
        def hook(_m, _i, out, name=name):
            shapes[name] = tuple(out.shape[1:])
        handles.append(model.layer_module(name).register_forward_hook(hook))
    try:
        with attack_mode(model), torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return shapes


@dataclass(frozen=True)


class Reduction:
    """How one layer's flattened features are made at most ``max_features`` wide.

    ``pool`` is None (keep everything) or the (h, w) grid a (C, H, W) map is average
    pooled to before flattening; ``projection`` (rare: a vector layer wider than the
    limit, or more channels than the limit) is a fixed seeded Gaussian random projection
    (Johnson–Lindenstrauss), applied after pooling.
    """

    shape: tuple[int, ...]
    pool: tuple[int, int] | None = None
    projection: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        if self.projection is not None:
            return int(self.projection.shape[1])
        if self.pool is not None:
            return int(self.shape[0] * self.pool[0] * self.pool[1])
        return int(math.prod(self.shape))

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, D) flattened (NCHW order) -> (n, dim)."""
        if self.pool is not None:
            maps = feats.reshape(feats.shape[0], *self.shape)
            feats = F.adaptive_avg_pool2d(maps, self.pool).flatten(1)
        if self.projection is not None:
            feats = feats @ self.projection
        return feats


def plan_reduction(shape: tuple[int, ...], max_features: int | None, seed: int) -> Reduction:
    """The reduction for a layer of per-example ``shape`` (see :class:`Reduction`).

    Spatial maps (C, H, W) wider than ``max_features`` are average-pooled to the largest
    g × g grid (g ≤ H, W) with C·g² ≤ max_features: the channels and the coarse layout are
    kept, nothing is fitted (so no information leaks from any split), and it is applied a
    batch at a time, so a 65k-wide map is never held for thousands of examples.
    """
    d = int(math.prod(shape))
    if max_features is None or d <= max_features:
        return Reduction(shape)
    pool = None
    width = d
    if len(shape) == 3:
        c, h, w = shape
        g = int(math.isqrt(max_features // c)) if c <= max_features else 0
        g = max(g, 1)
        pool = (min(h, g), min(w, g))
        width = c * pool[0] * pool[1]
    if width <= max_features:
        return Reduction(shape, pool=pool)
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(width, max_features, generator=gen) / math.sqrt(max_features)
    return Reduction(shape, pool=pool, projection=proj)


def reduced_features(model: WorkbenchModel, x: torch.Tensor, reductions: Mapping[str, Reduction],
                     batch_size: int) -> dict[str, torch.Tensor]:
    """Features of every layer in ``reductions`` for x, reduced batch by batch: one
    :func:`extract_features` call per batch serves all layers. (n, dim) float32 CPU."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in reductions}
    for s in range(0, len(x), batch_size):
        feats = extract_features(model, x[s:s + batch_size], list(reductions), batch_size=batch_size)
        for name, red in reductions.items():
            parts[name].append(red(feats.pop(name)))
    return {name: torch.cat(p) for name, p in parts.items()}


# --------------------------------------------------------------------------- runner

COLUMNS = ["model", "layer", "layer_index", "feature_dim", "eps", "accuracy", "val_accuracy", "C", "train_examples"]


def _splits(ctx: ProbeContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, val_x, val_y) on the data's device, the same for every model."""
    data, cfg = ctx.data, ctx.cfg
    n = len(data.train_y)
    k = n if cfg.train_examples is None else min(cfg.train_examples, n)
    g = torch.Generator().manual_seed(ctx.seed_for("linear_probe", "train"))
    # always drawn, even when k = n: the carved validation split below continues this stream
    idx = torch.randperm(n, generator=g)[:k].sort().values.to(data.train_x.device)
    tx, ty = data.train_x[idx], data.train_y[idx]
    if len(data.val_y) > 0:
        return tx, ty, data.val_x[:], data.val_y  # [:] decodes a streamed split (a view of a tensor)
    n_val = max(1, int(round(CARVED_VAL_FRACTION * k)))
    if k - n_val < 2:
        raise WorkbenchError("linear_probe: too few training examples to carve a validation split")
    log.info("linear_probe: no validation split; holding out %d of the %d training examples", n_val, k)
    perm = torch.randperm(k, generator=g).to(tx.device)
    return tx[perm[n_val:]], ty[perm[n_val:]], tx[perm[:n_val]], ty[perm[:n_val]]


def _adversarial(model: WorkbenchModel, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                 batch_size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([
        pgd(model, x[s:s + batch_size], y[s:s + batch_size], eps, steps=steps, norm="linf", generator=gen)
        for s in range(0, len(x), batch_size)
    ])


@PROBES.register("linear_probe", config=LinearProbe, tables=TABLES_LINEAR_PROBE, sharded=True, facts=("data",))
def run_linear_probe(ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Per model and layer: a logistic-regression probe fitted on ``cfg.train_examples``
    training examples (a seeded subset, the same for every model), C chosen on the
    validation split, scored on the probe examples clean (ε = 0) and after L∞ CE PGD
    (``cfg.steps`` steps, default α) at each ε of the probe's grid, crafted on that model.

    When the study has no validation split (``data.val_fraction: 0``), a seeded 20% of
    the training subset is held out to choose C, and the probe is fitted on the rest.
    Layers wider than ``cfg.max_features`` are reduced (:func:`plan_reduction`); the table
    records the width actually used.
    """
    cfg = ctx.cfg
    tx, ty, vx, vy = _splits(ctx)
    grid = ctx.eps_grid("linf")
    model_ids = list(ctx.models)

    def probe_model(u: int) -> list[dict]:
        """The rows of one model (seeded by the model and ε, so any rank gives the same)."""
        model_id = model_ids[u]
        model = ctx.models[model_id]
        rows = []
        layers = resolve_layers(model, cfg.layers)
        order = model.layer_names()
        shapes = layer_shapes(model, ctx.x, layers)
        reductions = {
            name: plan_reduction(shapes[name], cfg.max_features, ctx.seed_for("linear_probe", "projection", name))
            for name in layers
        }
        train = reduced_features(model, tx, reductions, ctx.batch_size)
        val = reduced_features(model, vx, reductions, ctx.batch_size)
        tests = {0.0: reduced_features(model, ctx.x, reductions, ctx.batch_size)}
        for eps in grid:
            x_adv = _adversarial(model, ctx.x, ctx.y, eps, cfg.steps, ctx.batch_size,
                                 ctx.seed_for("linear_probe", model_id, eps))
            tests[eps] = reduced_features(model, x_adv, reductions, ctx.batch_size)
        for name in layers:
            res = linear_probe(train[name], ty, val[name], vy,
                               {str(e): (f[name], ctx.y) for e, f in tests.items()}, cfg.C, cfg.max_iter)
            if not res.converged:
                log.warning("linear_probe: %s %s did not converge in %d iterations (C=%g)",
                            model_id, name, cfg.max_iter, res.C)
            for eps in tests:
                rows.append({
                    "model": model_id, "layer": name, "layer_index": order.index(name),
                    "feature_dim": reductions[name].dim, "eps": float(eps),
                    "accuracy": res.test_accuracy[str(eps)], "val_accuracy": res.val_accuracy,
                    "C": res.C, "train_examples": int(len(ty)),
                })
        advance(1)
        return rows

    # under torchrun each rank probes its share of the models (a logistic regression per
    # layer is not split further)
    with ctx.progress.task("linear probes", len(distributed.my_batches(len(model_ids)))) as advance:
        rows = [r for part in distributed.run_sharded(len(model_ids), probe_model, "the linear probe") for r in part]
    return {"linear_probe": pd.DataFrame(rows, columns=COLUMNS)}


# --------------------------------------------------------------------------- report figures
# drawn by the report from these tables (workbench/views.py; the drawing code is imported only then)

register_figure(FigureSpec(
    "linear_probe",
    "Linear probes per layer",
    "Test accuracy of a logistic-regression probe trained on each layer's frozen features, on clean inputs "
        "(first panel) and on PGD examples at each ε (next panels, with the clean curve repeated faintly): the "
        "layer where a model's adversarial curve falls away from its clean one is where the attack destroys the "
        "class information.",
    "representations",
    "workbench.report.figures:linear_probe",
    ("linear_probe",),
    order=90))

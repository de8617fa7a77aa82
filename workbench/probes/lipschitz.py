"""Feature-space Lipschitz ratios per layer, and the logit local Lipschitz estimate.

For a layer l with features φ_l (flattened per example, float32) and a perturbation δ:

    D_l(x, δ) = ‖φ_l(x+δ) − φ_l(x)‖₂ / ‖δ‖_p        (‖δ‖ measured after the [0, 1] clip)

for three kinds of δ at the same ε (docs/methods.md, "Feature-space Lipschitz ratio"):

- ``loss``: PGD on cross-entropy (Madry et al. 2018), one search per ε shared by all layers;
- ``feat``: PGD maximising Σᵢ‖φ_l(xᵢ+δᵢ) − φ_l(xᵢ)‖₂ at that layer (one search per layer);
  every D it finds is a lower bound on the local Lipschitz constant of φ_l on the ball;
- ``rand``: a random direction of the same norm (L∞: ε·sign(u), u ~ N(0, I); L2: a
  Gaussian rescaled to ‖δ‖₂ = ε), then clipped.

Expect D(feat) ≥ D(loss) ≥ D(rand) at every layer; robust models have much smaller D at
deep layers. :func:`logit_lipschitz` is Yang et al. 2020's (arXiv:2003.02460) estimate
max_{x'∈B∞(x,ε)} ‖f(x) − f(x')‖₁ / ‖x − x'‖∞ on the logits, found by gradient *ascent*;
:func:`logit_lipschitz_yang2020` runs their public code's protocol exactly (the values
their tables report, far lower: it descends the ratio and keeps the last iterate).

Notebook use::

    df = lipschitz(model, x, y, layers="all", eps=[0.1, 0.2], norm="linf")
    L = logit_lipschitz(model, x, eps=0.2)          # (N,) per example
    summarize(L)                                      # n, mean, median, q10, q90, sem
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, PositiveInt, model_validator

from .. import distributed
from ..attacks import perturbation_norm, pgd, random_perturbation
from ..attacks.ascent import ascend as _ascend
from ..attacks.ascent import gaussian_start
from ..attacks.base import run_attack
from ..config import Eps, LayerSpec, Norm, Strict
from ..errors import UnknownNameError, WorkbenchError
from ..models import WorkbenchModel, capture, resolve_layers
from ..progress import QUIET, Progress
from ..registry import TableSchema
from ..seeds import seeded_generator
from ..state import eval_mode
from ..stats import bootstrap_interval
from .base import PROBES, ProbeContext
from ..views import FigureSpec, Measure, Note, register_figure, register_measure, register_note
from ..models.layers import as_probe_model


class LipschitzProbe(Strict):
    """Feature-space Lipschitz ratios ‖φ(x+δ) − φ(x)‖₂ / ‖δ‖ per layer (docs/methods.md), for δ from
    PGD on cross-entropy (``loss``), PGD on the feature change at the layer (``feat``) and a
    random direction (``rand``); plus Yang et al. 2020's logit local Lipschitz estimate."""

    layers: LayerSpec = Field("all", description="layers probed: names, fnmatch patterns, 'all' or 'penultimate'")
    eps: tuple[Eps, ...] | None = Field(None, description="L∞ ε grid (default: evaluation.eps)")
    eps_l2: tuple[Eps, ...] | None = Field(None, description="L2 ε grid (default: evaluation.eps_l2)")
    norms: tuple[Norm, ...] = Field(("linf", "l2"), description="norms probed; a norm with an empty ε grid is skipped")
    kinds: tuple[Literal["loss", "feat", "rand"], ...] = Field(
        ("loss", "feat", "rand"), description="kinds of δ: PGD on CE, PGD on the feature change, random"
    )
    steps: PositiveInt = Field(10, description="PGD steps (step 2.5·ε/steps) of the loss attack, of each feature-search start and of the logit ascent")
    feat_restarts: int = Field(
        1, ge=0, description="random starts of the feature search (at δ = 0 a norm has no gradient, so it starts off x)"
    )
    feat_from_loss: bool = Field(
        True,
        description="also start the feature search from the PGD-CE example: δ_feat is a lower bound on the local "
        "Lipschitz constant, so the best of both starts is a tighter one (and D(feat) ≥ D(loss) per example)",
    )
    # A step of ε, not PGD's 2.5ε/steps: the feature change of a near-linear layer peaks on a
    # vertex (L∞) or the sphere (L2), where big steps act as a power iteration (keep-best guards).
    feat_step: float = Field(1.0, gt=0, description="step of the feature search in units of ε")
    logit_lipschitz: bool = Field(True, description="also Yang et al.'s logit local Lipschitz estimate (L∞ grid)")
    logit_protocols: tuple[Literal["search", "yang2020"], ...] = Field(
        ("search",), min_length=1,
        description="how the logit estimate is searched: `search` (the workbench's: ascent of the logit change, best "
        "iterate kept; a tighter lower bound) and/or `yang2020` (Yang et al.'s code exactly: 10 sign steps of 0.003 "
        "that descend the ratio from x + 0.001·N(0, 1), last iterate; the only figures comparable to their tables)",
    )

    @model_validator(mode="after")
    def _feature_start(self) -> LipschitzProbe:
        if "feat" in self.kinds and self.feat_restarts == 0 and not (self.feat_from_loss and "loss" in self.kinds):
            raise ValueError("feat_restarts: the feature search needs a start: feat_restarts >= 1, or feat_from_loss with kind 'loss'")
        return self


#: the tables this component writes (collected by workbench.tables)
TABLES_LIPSCHITZ: dict[str, TableSchema] = {
    "lipschitz": (
        "feature-space Lipschitz ratios D = ‖φ(x+δ) − φ(x)‖₂ / ‖δ‖: model × layer × norm × ε × kind of δ",
        {
            "model": "model id",
            "layer": "layer name",
            "layer_index": "position of the layer (input → output)",
            "feature_dim": "flattened feature size",
            "norm": "`linf` or `l2` (‖δ‖ is measured in this norm)",
            "eps": "ε",
            "kind": "`loss` (PGD on CE), `feat` (PGD on the feature change at this layer), `rand` (random, same norm)",
            "n": "examples",
            "mean": "mean ratio",
            "median": "median ratio",
            "q10": "10% quantile",
            "q90": "90% quantile",
            "sem": "standard error of the mean",
            "ci_low": "95% bootstrap interval of the mean over examples: lower end",
            "ci_high": "upper end",
            "rel_mean": "mean relative change ‖Δφ‖ / ‖φ(x)‖",
            "rel_median": "median relative change",
            "over_random": "mean ratio divided by the mean ratio of `rand` at the same setting",
        },
    ),
    "logit_lipschitz": (
        "logit local Lipschitz estimate of Yang et al. 2020: mean over x of max ‖f(x)−f(x′)‖₁ / ‖x−x′‖∞",
        {
            "model": "model id",
            "eps": "L∞ radius",
            "protocol": "`search` (the workbench's ascent, best iterate) or `yang2020` (Yang et al.'s code exactly; "
            "comparable to their published figures)",
            "steps": "ascent steps",
            "n": "examples",
            "mean": "mean over examples",
            "median": "median",
            "sem": "standard error",
            "ci_low": "95% bootstrap interval of the mean over examples: lower end",
            "ci_high": "upper end",
        },
    ),
    "lipschitz_per_example": (
        "per-example feature Lipschitz ratios behind `lipschitz` (the paired tests of `significance` use them)",
        {
            "model": "model id",
            "layer": "layer name",
            "layer_index": "position of the layer (input → output)",
            "norm": "`linf` or `l2`",
            "eps": "ε",
            "kind": "`loss`, `feat` or `rand` (as in `lipschitz`)",
            "example": "example number within the probe set",
            "index": "position in the test split",
            "ratio": "‖φ(x+δ) − φ(x)‖₂ / ‖δ‖ (NaN where ‖δ‖ = 0 after the clip: excluded)",
        },
    ),
}
#: columns of the per-example table
PER_EXAMPLE_COLUMNS = list(TABLES_LIPSCHITZ["lipschitz_per_example"][1])


#: the kinds of δ, in table order
KINDS = ("loss", "feat", "rand")
#: ε used when the notebook API gets none: the CIFAR-10 conventions (L∞ 8/255, L2 0.5)
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- statistics


def summarize(values: torch.Tensor | np.ndarray | Sequence[float], seed: int = 0) -> dict[str, float]:
    """n, mean, median, q10, q90 and sem of the finite entries (NaN marks an excluded example).

    ``sem`` is the sample standard deviation (ddof 1) over √n; NaN when n < 2;
    ``ci_low``/``ci_high`` the 95% percentile-bootstrap interval of the mean over examples
    (1,000 resamples from a generator seeded with ``seed``: reruns are identical). All NaN
    when nothing is left.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().double().cpu().numpy()
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "q10": math.nan, "q90": math.nan, "sem": math.nan,
                "ci_low": math.nan, "ci_high": math.nan}
    lo, hi = bootstrap_interval(v, seed=seed)
    return {
        "n": n,
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "q10": float(np.quantile(v, 0.10)),
        "q90": float(np.quantile(v, 0.90)),
        "sem": float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "ci_low": lo,
        "ci_high": hi,
    }


# --------------------------------------------------------------------------- helpers


class _ReachedLayer(Exception):
    """Raised by a forward hook to stop the forward pass once the wanted layer has run."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out


@contextmanager
def truncated_forward(model: WorkbenchModel, layer: str) -> Iterator[FeatureFn]:
    """Yields ``f(x) -> φ_layer(x)`` as (N, D) float32 that runs the network only up to
    ``layer``: the forward hook raises once the layer's output exists, so the layers above
    it (not needed for φ_layer or its gradient) never run. The output keeps its autograd
    graph. ``"logits"`` runs the whole model."""
    if layer == "logits":
        yield lambda x: model(x).reshape(x.shape[0], -1).float()
        return

    def hook(_module, _inputs, out):
        raise _ReachedLayer(out)

    handle = model.layer_module(layer).register_forward_hook(hook)

    def features(x: torch.Tensor) -> torch.Tensor:
        try:
            model(x)
        except _ReachedLayer as stop:
            out = stop.out
            if not isinstance(out, torch.Tensor):
                raise WorkbenchError(f"layer {layer!r} returns {type(out).__name__}, not a tensor") from None
            return out.reshape(out.shape[0], -1).float()
        raise WorkbenchError(f"layer {layer!r} did not run in the forward pass of {model.name!r}")

    try:
        yield features
    finally:
        handle.remove()


def _device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _ratio(dphi: torch.Tensor, dnorm: torch.Tensor) -> torch.Tensor:
    """‖Δφ‖ / ‖δ‖ per example; NaN where ‖δ‖ = 0 (excluded, not counted as 0)."""
    return torch.where(dnorm > 0, dphi / dnorm.clamp_min(torch.finfo(dnorm.dtype).tiny), torch.nan)


def _check_eps_norm(eps, norm: str) -> tuple[float, ...]:
    if norm not in DEFAULT_EPS:
        raise WorkbenchError(f"unknown norm {norm!r}; valid norms: linf, l2")
    grid = (float(eps),) if isinstance(eps, (int, float)) else tuple(float(e) for e in eps)
    if not grid or any(not (math.isfinite(e) and e > 0) for e in grid):
        raise WorkbenchError(f"ε must be one or more positive numbers (pixel units), got {eps!r}")
    return grid


# --------------------------------------------------------------------------- feature search


def feature_search(
    features: FeatureFn,
    x: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    *,
    alpha: float | None = None,
    starts: Sequence[torch.Tensor | None] = (None,),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD ascent of Σᵢ‖φ(xᵢ+δᵢ) − φ(xᵢ)‖₂ in the ε-ball (clipped to [0, 1]); returns x+δ.

    Args:
        features: ``x -> φ(x)`` of shape (N, D), differentiable (see :func:`truncated_forward`).
        x: clean inputs in [0, 1], (N, ...).
        eps: radius in pixel units (L∞ per coordinate, L2 per example).
        norm: ``"linf"`` (sign steps) or ``"l2"`` (steps α·g/‖g‖₂).
        steps: gradient steps per start.
        alpha: step size; default 2.5·ε/steps (the PGD rule of docs/methods.md).
        starts: one entry per restart: ``None`` draws a random start (L∞: U[−ε, ε]; L2:
            a Gaussian direction at radius ε·U[0, 1]), a tensor is a starting point x+δ₀ (e.g. the PGD-CE
            example, to refine the loss attack towards the feature worst case).
        generator: seeds the random starts.

    Per example the iterate with the largest ratio ‖Δφ‖/‖δ‖ over all steps and starts is
    kept (‖δ‖ after the clip). A random start is needed: at δ = 0 the gradient of a norm
    is zero, and sign(0) never moves. Memory: a few copies of x, whatever the layer.
    """
    with torch.no_grad():
        phi0 = features(x)

    def change(x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dphi = torch.linalg.vector_norm(features(x_adv) - phi0, dim=1)
        return dphi, _ratio(dphi.detach(), perturbation_norm(x_adv.detach() - x, norm))

    starts = ["random" if s is None else s for s in starts]
    return _ascend(change, x, eps, steps, norm=norm, alpha=alpha, starts=starts, keep="best", generator=generator).x


# --------------------------------------------------------------------------- notebook API


def lipschitz(
    model: WorkbenchModel,
    x: torch.Tensor,
    y: torch.Tensor,
    layers: str | Sequence[str] = "all",
    eps: float | Sequence[float] | None = None,
    norm: str = "linf",
    kinds: Sequence[str] = KINDS,
    steps: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    *,
    feat_restarts: int = 1,
    feat_from_loss: bool = True,
    feat_step: float = 1.0,
    progress: Progress = QUIET,
    per_example: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Feature-space Lipschitz ratios of ``model`` at ``layers``: the ``lipschitz`` table.

    Args:
        model: a :class:`WorkbenchModel`, or any classifier ``nn.Module`` taking ``x`` as it is
            (wrapped with :func:`workbench.models.wrap`, layers found automatically); run in
            eval mode, its mode restored.
        x: inputs in [0, 1], (N, C, H, W); y: labels (N,) for the ``loss`` kind.
        layers: any :func:`~workbench.models.resolve_layers` spec.
        eps: one radius or a grid, pixel units; default 8/255 (L∞) or 0.5 (L2).
        norm: ``"linf"`` or ``"l2"``: the ball searched and the norm ‖δ‖ is measured in.
        kinds: subset of ``("loss", "feat", "rand")``.
        steps: PGD steps of the ``loss`` attack (α = 2.5·ε/steps) and of each ``feat`` start.
        batch_size: examples per batch (memory and time are linear in N).
        seed: seeds every random start and direction (per batch, ε, kind and layer, so a
            subset of kinds or layers sees the same random numbers).
        feat_restarts: random starts of the feature search.
        feat_from_loss: also start the feature search from the PGD-CE example δ_loss (when
            ``"loss"`` is among ``kinds``). δ_feat is a lower bound on the local Lipschitz
            constant, so the best of several starts is a tighter bound; the random starts
            alone are what tests hold to the ordering D(feat) ≥ D(loss).
        feat_step: step of the feature search in units of ε (α = feat_step·ε). Larger than
            PGD's 2.5/steps on purpose: for a near-linear layer the worst case sits on a vertex
            of the L∞ box or on the L2 sphere, and a step of ε makes the ascent a power
            iteration (δ ← ε·sign g or ε·g/‖g‖); the best iterate is kept, so overshooting
            costs nothing. On the quickstart models α = ε beat 2.5ε/steps at every layer.
        per_example: also return the per-example ratios (the ``lipschitz_per_example``
            table without ``index``; ``example`` is the position in ``x``).

    Returns:
        One row per layer × ε × kind with exactly the columns of ``TABLES_LIPSCHITZ["lipschitz"]``;
        ``model`` holds ``model.name`` (the study runner overwrites it with the model id).
        ``n`` counts examples with ‖δ‖ > 0 (after the clip); ``rel_*`` also excludes
        ‖φ(x)‖ = 0. ``over_random`` is this kind's mean over the ``rand`` mean at the same
        layer and ε (NaN without ``rand``).
    """
    grid = _check_eps_norm(DEFAULT_EPS[norm] if eps is None and norm in DEFAULT_EPS else eps, norm)
    for k in kinds:
        if k not in KINDS:
            raise UnknownNameError("kind", k, KINDS)
    kinds = [k for k in KINDS if k in kinds]
    if len(x) == 0 or len(x) != len(y):
        raise WorkbenchError(f"lipschitz needs as many labels as examples (N > 0), got {len(x)} and {len(y)}")
    if steps < 1 or batch_size < 1 or feat_restarts < 0 or not feat_step > 0:
        raise WorkbenchError("steps, batch_size and feat_step must be positive and feat_restarts non-negative")
    if "feat" in kinds and feat_restarts == 0 and not (feat_from_loss and "loss" in kinds):
        raise WorkbenchError("the feature search needs a start: feat_restarts >= 1 or feat_from_loss with kind 'loss'")
    model = as_probe_model(model, x)  # a plain nn.Module is wrapped (its layers found automatically)
    names = resolve_layers(model, layers)
    order = {n: i for i, n in enumerate(model.layer_names())}
    device = _device(model)

    starts = range(0, len(x), batch_size)

    def one_batch(b: int) -> tuple[dict[tuple[str, float, str], tuple[torch.Tensor, torch.Tensor]], dict[str, int]]:
        """Per (layer, ε, kind) of batch b: per-example D and relative change (CPU, NaN where
        excluded), and the layers' feature sizes. Seeded by the batch's start, so a batch's
        values do not depend on which rank computes it."""
        start = starts[b]
        found: dict[tuple[str, float, str], tuple[torch.Tensor, torch.Tensor]] = {}
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        with torch.no_grad(), capture(model, names) as cap:
            model(xb)
            clean = dict(cap.feats)
        dims = {name: clean[name].shape[1] for name in names}
        clean_norm = {n: torch.linalg.vector_norm(f, dim=1) for n, f in clean.items()}

        def record(layer: str, e: float, kind: str, x_adv: torch.Tensor, feats: torch.Tensor) -> None:
            dphi = torch.linalg.vector_norm(feats - clean[layer], dim=1)
            dnorm = perturbation_norm(x_adv - xb, norm)
            r = _ratio(dphi, dnorm)
            rl = torch.where((dnorm > 0) & (clean_norm[layer] > 0), dphi / clean_norm[layer].clamp_min(1e-30), torch.nan)
            found[(layer, e, kind)] = (r.cpu(), rl.cpu())

        for e in grid:
            gen = lambda kind, layer="": seeded_generator(device, seed, "lipschitz", start, norm, e, kind, layer)  # noqa: E731
            x_loss = None
            if "loss" in kinds:
                x_loss = pgd(model, xb, yb, e, steps=steps, norm=norm, generator=gen("loss"))
                with torch.no_grad(), capture(model, names) as cap:
                    model(x_loss)
                    for name in names:
                        record(name, e, "loss", x_loss, cap.feats[name])
            if "rand" in kinds:
                x_rand = random_perturbation(xb, e, norm, generator=gen("rand"))
                with torch.no_grad(), capture(model, names) as cap:
                    model(x_rand)
                    for name in names:
                        record(name, e, "rand", x_rand, cap.feats[name])
            if "feat" in kinds:
                feat_starts: list[torch.Tensor | None] = [None] * feat_restarts
                if feat_from_loss and x_loss is not None:
                    feat_starts.append(x_loss)
                for name in names:
                    with truncated_forward(model, name) as features:
                        g = gen("feat", name)
                        x_feat = run_attack(
                            model, xb, yb,
                            lambda x0, _y: feature_search(
                                features, x0, e, norm, steps, alpha=feat_step * e, starts=feat_starts, generator=g,
                            ),
                            g,
                        )
                        with torch.no_grad():
                            record(name, e, "feat", x_feat, features(x_feat))
            advance(1, status=f"ε={e:g}")
        return found, dims

    # under torchrun each rank computes its share of the batches (gathered in batch order)
    with eval_mode(model):
        with progress.task(f"lipschitz {model.name} {norm}", len(distributed.my_batches(len(starts))) * len(grid)) as advance:
            parts = distributed.run_sharded(len(starts), one_batch, f"the lipschitz probe of {model.name}")
    dims = parts[0][1]
    # per (layer, ε, kind): per-example D and relative change, NaN where excluded
    ratio = {key: [p[0][key][0] for p in parts] for key in parts[0][0]}
    rel = {key: [p[0][key][1] for p in parts] for key in parts[0][0]}

    rows = []
    for name in names:
        for e in grid:
            rand_mean = summarize(torch.cat(ratio[(name, e, "rand")]))["mean"] if "rand" in kinds else math.nan
            for kind in kinds:
                s = summarize(torch.cat(ratio[(name, e, kind)]))
                r = summarize(torch.cat(rel[(name, e, kind)]))
                rows.append({
                    "model": model.name, "layer": name, "layer_index": order[name], "feature_dim": dims[name],
                    "norm": norm, "eps": e, "kind": kind, **s,
                    "rel_mean": r["mean"], "rel_median": r["median"],
                    "over_random": s["mean"] / rand_mean if rand_mean and math.isfinite(rand_mean) else math.nan,
                })
    table = pd.DataFrame(rows, columns=list(TABLES_LIPSCHITZ["lipschitz"][1]))
    if not per_example:
        return table
    frames = [
        pd.DataFrame({"model": model.name, "layer": name, "layer_index": order[name], "norm": norm, "eps": e,
                      "kind": kind, "example": np.arange(len(x)),
                      "ratio": torch.cat(ratio[(name, e, kind)]).double().numpy()})
        for name in names for e in grid for kind in kinds
    ]
    cols = [c for c in PER_EXAMPLE_COLUMNS if c != "index"]
    return table, pd.concat(frames, ignore_index=True)[cols]


def logit_lipschitz(
    model: torch.nn.Module,
    x: torch.Tensor,
    eps: float,
    steps: int = 10,
    *,
    alpha: float | None = None,
    restarts: int = 1,
    ascend: str = "change",
    init_std: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Per-example logit local Lipschitz estimate of Yang et al. 2020 (arXiv:2003.02460).

    L(xᵢ) = max_{x'∈B∞(xᵢ,ε)∩[0,1]} ‖f(xᵢ) − f(x')‖₁ / ‖xᵢ − x'‖∞ (logits f), searched by
    gradient ascent: x'⁰ = x + N(0, init_std²) projected into the ball and clipped (a small
    random start; init_std 1e-3 as in the reference code), then ``steps`` sign steps of
    ``alpha`` (default 2.5·ε/steps), each projected and clipped. Every iterate is scored
    by the ratio and, per example, the best over all steps and restarts is kept, so each
    value is a lower bound on the local Lipschitz constant of f on the ball.

    ``ascend`` picks the function whose gradient sign is followed:

    - ``"change"`` (default): ‖f(x) − f(x')‖₁, i.e. PGD on the logit change, scored by the
      ratio. Chosen because it is the tighter search: on a linear f the ratio's maximum is
      ‖W‖_{∞→1} at a vertex of the box, where ‖x − x'‖∞ has ties; the gradient of the
      ratio spreads ∂‖δ‖∞ over the tied coordinates, which pushes them inward, so sign
      steps oscillate around the vertex (on a rank-1 W the ratio ascent stopped up to 8%
      short; this one reaches ‖W‖_{∞→1}), and on the quickstart CNNs it found larger
      values at every ε tested.
    - ``"ratio"``: the ratio itself, Yang et al.'s objective. (Their public code steps
      along the sign of the *negated* ratio's gradient, i.e. descends; this ascends.)

    Returns a float32 CPU tensor (N,) (NaN where x' = x, which a random start makes
    improbable); :func:`summarize` gives the mean (the paper's L̂) and quantiles.
    """
    if not (math.isfinite(float(eps)) and eps > 0):
        raise WorkbenchError(f"ε must be positive (pixel units), got {eps!r}")
    if steps < 0 or restarts < 1 or batch_size < 1:
        raise WorkbenchError("need steps >= 0, restarts >= 1 and batch_size >= 1")
    if ascend not in ("change", "ratio"):
        raise UnknownNameError("ascent objective", ascend, ("change", "ratio"))
    eps = float(eps)
    device = _device(model)

    def change_and_size(f0: torch.Tensor, x0: torch.Tensor, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(‖f(x) − f(x')‖₁, ‖x − x'‖∞), both (N,)."""
        change = torch.linalg.vector_norm((model(xa).float() - f0).reshape(len(xa), -1), ord=1, dim=1)
        return change, perturbation_norm(xa - x0, "linf")

    starts = range(0, len(x), batch_size)

    def one_batch(b: int) -> torch.Tensor:
        start = starts[b]
        xb = x[start:start + batch_size].to(device)
        g = seeded_generator(device, seed, "logit-lipschitz", start, eps)

        def craft(x0: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                f0 = model(x0).float()

            def objective(xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                change, size = change_and_size(f0, x0, xa)
                ratio = _ratio(change, size)
                return (change if ascend == "change" else ratio), ratio.detach()

            return _ascend(objective, x0, eps, steps, alpha=alpha, starts=[gaussian_start(init_std)] * restarts,
                           keep="best", generator=g, model=model).x

        x_best = run_attack(model, xb, torch.zeros(len(xb), dtype=torch.long, device=device), craft, g)
        with eval_mode(model), torch.no_grad():
            change, size = change_and_size(model(xb).float(), xb, x_best)
        return _ratio(change, size).float().cpu()

    # under torchrun each rank computes its share of the batches (gathered in batch order)
    return torch.cat(distributed.run_sharded(len(starts), one_batch, "the logit Lipschitz estimate"))


#: Yang et al.'s estimate_local_lip_v2 (github.com/yangarbiter/robust-local-lipschitz,
#: lolip/utils.py): its defaults, kept whatever the study's ε or steps
YANG2020 = {"steps": 10, "step_size": 0.003, "init_std": 1e-3, "denominator_shift": 1e-6}


def logit_lipschitz_yang2020(
    model: torch.nn.Module,
    x: torch.Tensor,
    eps: float,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Per-example logit local Lipschitz value by Yang et al. 2020's public code, step for step.

    Their ``estimate_local_lip_v2`` (top norm 1, bottom norm ∞): x'⁰ = x + 0.001·N(0, I), not
    clipped; 10 times x' ← clip₀₁(Π_{B∞(x,ε)}(x' + 0.003·sign ∇(−r(x')))), i.e. sign steps
    that *descend* the ratio r(x') = ‖f(x) − f(x')‖₁ / ‖x − x' + 10⁻⁶‖∞ (the 10⁻⁶ added to
    every coordinate, as there); the value is r at the last iterate. The step is 0.003 in
    pixel units whatever ε. Their published L̂ is the mean of these values over the test set
    (:func:`summarize`'s mean). Being neither an ascent nor a best iterate, it is far below
    :func:`logit_lipschitz`'s search (docs/methods.md); only these values compare with theirs.
    Returns a float32 CPU tensor (N,).
    """
    if not (math.isfinite(float(eps)) and eps > 0):
        raise WorkbenchError(f"ε must be positive (pixel units), got {eps!r}")
    eps = float(eps)
    device = _device(model)
    shift = YANG2020["denominator_shift"]

    def ratio(f0: torch.Tensor, x0: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        top = torch.linalg.vector_norm((f0 - model(xa).float()).reshape(len(xa), -1), ord=1, dim=1)
        return top / perturbation_norm(x0 - xa + shift, "linf")

    def start(ball, generator) -> torch.Tensor:
        # x + 0.001·N(0, I) as drawn there: neither projected nor clipped before the first step
        dev = generator.device if generator is not None else ball.x.device
        noise = torch.randn(ball.x.shape, generator=generator, device=dev, dtype=ball.x.dtype).to(ball.x.device)
        return ball.x + YANG2020["init_std"] * noise

    starts = range(0, len(x), batch_size)

    def one_batch(b: int) -> torch.Tensor:
        first = starts[b]
        xb = x[first:first + batch_size].to(device)
        g = seeded_generator(device, seed, "logit-lipschitz-yang2020", first, eps)

        def craft(x0: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                f0 = model(x0).float()
            # their loss is −r and their step follows its gradient's sign: the engine ascends −r
            return _ascend(lambda xa: -ratio(f0, x0, xa), x0, eps, YANG2020["steps"], alpha=YANG2020["step_size"],
                           starts=[start], keep="last", generator=g, model=model).x

        x_last = run_attack(model, xb, torch.zeros(len(xb), dtype=torch.long, device=device), craft, g)
        with eval_mode(model), torch.no_grad():
            return ratio(model(xb).float(), xb, x_last).float().cpu()

    return torch.cat(distributed.run_sharded(len(starts), one_batch, "the logit Lipschitz estimate (Yang et al.)"))


# --------------------------------------------------------------------------- study runner


@PROBES.register("lipschitz", config=LipschitzProbe, tables=TABLES_LIPSCHITZ, sharded=True)
def run_lipschitz(ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Feature Lipschitz ratios (every model, layer, norm, ε, kind) and Yang et al.'s logit
    estimate (every model and L∞ ε). Every model sees the same random starts and directions
    (seeded by norm, not by model), so the paired comparison uses common random numbers."""
    cfg = ctx.cfg
    frames, per_example, logit_rows = [], [], []
    index = ctx.index.cpu().numpy()
    for model_id, model in ctx.models.items():
        for norm in cfg.norms:
            grid = ctx.eps_grid(norm)
            if not grid:
                continue
            df, pe = lipschitz(
                model, ctx.x, ctx.y, resolve_layers(model, cfg.layers), grid, norm, cfg.kinds, cfg.steps,
                ctx.batch_size, ctx.seed_for("lipschitz", norm), feat_restarts=cfg.feat_restarts,
                feat_from_loss=cfg.feat_from_loss, feat_step=cfg.feat_step, progress=ctx.progress, per_example=True,
            )
            frames.append(df.assign(model=model_id))
            per_example.append(pe.assign(model=model_id, index=index[pe["example"].to_numpy()])[PER_EXAMPLE_COLUMNS])
        if cfg.logit_lipschitz:
            grid = ctx.eps_grid("linf")
            with ctx.progress.task(f"logit lipschitz {model_id}", len(grid)) as advance:
                for e in grid:
                    for protocol in cfg.logit_protocols:
                        if protocol == "yang2020":
                            values = logit_lipschitz_yang2020(model, ctx.x, e, batch_size=ctx.batch_size,
                                                              seed=ctx.seed_for("logit-lipschitz-yang2020"))
                            steps = YANG2020["steps"]
                        else:
                            values = logit_lipschitz(model, ctx.x, e, cfg.steps, batch_size=ctx.batch_size,
                                                     seed=ctx.seed_for("logit-lipschitz"))
                            steps = cfg.steps
                        s = summarize(values)
                        logit_rows.append({"model": model_id, "eps": e, "protocol": protocol, "steps": steps,
                                           **{k: s[k] for k in ("n", "mean", "median", "sem", "ci_low", "ci_high")}})
                    advance(1)
    out = {"lipschitz": pd.concat(frames, ignore_index=True) if frames
           else pd.DataFrame(columns=list(TABLES_LIPSCHITZ["lipschitz"][1])),
           "lipschitz_per_example": pd.concat(per_example, ignore_index=True) if per_example
           else pd.DataFrame(columns=PER_EXAMPLE_COLUMNS)}
    if cfg.logit_lipschitz:
        out["logit_lipschitz"] = pd.DataFrame(logit_rows, columns=list(TABLES_LIPSCHITZ["logit_lipschitz"][1]))
    return out


# --------------------------------------------------------------------------- report figures
# drawn by the report from these tables (workbench/views.py; the drawing code is imported only then)

register_figure(FigureSpec(
    "lipschitz_ratio",
    "Feature-space Lipschitz ratio per layer",
    "Top: D = ‖φ(x+δ) − φ(x)‖₂ / ‖δ‖ per layer (log scale) for adversarial (solid), worst-case-feature (dashed) "
        "and random (dotted) δ at the ε in each title; bottom: the relative change ‖Δφ‖/‖φ‖; lower means a more "
        "stable representation, and dashed ≥ solid ≥ dotted must hold for every model or the search is broken.",
    "representations",
    "workbench.report.figures:lipschitz_ratio",
    ("lipschitz",),
    order=30))

register_figure(FigureSpec(
    "logit_lipschitz",
    "Logit local Lipschitz",
    "Yang et al.'s estimate of the logits' local Lipschitz constant (mean over examples of the largest "
        "‖f(x) − f(x′)‖₁ / ‖x − x′‖∞ found in the L∞ ball, ± s.e.m.) against ε: smaller is smoother. Solid: the "
        "workbench's search (a lower bound on the constant); dashed, where run: Yang et al.'s code, whose values "
        "alone compare with their published ones.",
    "representations",
    "workbench.report.figures:logit_lipschitz",
    ("logit_lipschitz",),
    order=40))

# its column in the report's summary, and the measure workbench compare correlates with robustness
register_measure(Measure("lipschitz_summary", "Lipschitz D, penultimate layer", "workbench.probes.views:lipschitz_summary",
                         summary=True, order=10))
register_measure(Measure("lipschitz_penultimate", "Lipschitz D, penultimate (δ_loss, L∞)",
                         "workbench.probes.views:lipschitz_penultimate", compare=True, order=10))
# what its summary column means (or that the probe was not run)
register_note(Note("lipschitz", "workbench.probes.views:lipschitz_note", order=50))

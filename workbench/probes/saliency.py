"""Attribution maps through captum, with sparsity, faithfulness, stability and agreement.

Methods (all attribute the true-class logit z_y, model in eval mode):

* ``saliency``: the input gradient ∂z_y/∂x (Simonyan et al. 2014), signed
  (captum ``Saliency(abs=False)``);
* ``integrated_gradients``: (x − x₀) ⊙ ∫₀¹ ∇z_y(x₀ + t(x − x₀)) dt with the zero baseline
  x₀ = 0, a black image (Sundararajan et al. 2017). Black is a meaningful "absence" here
  only because normalization lives inside the model, so 0 is a real pixel value;
* ``smoothgrad``: the mean signed gradient at x + N(0, σ²) (Smilkov et al. 2017; captum
  ``NoiseTunnel(Saliency)``); inputs are in [0, 1], so σ is a fraction of the range.

Metrics per example (Tsipras et al. 2019 and Chalasani et al. 2020 predict sparser,
more stable maps for robust models):

* ``gini``: Gini sparsity of |φ| (Hurley & Rickard 2009), 0 for a constant map,
  (d−1)/d for a one-hot map of d entries;
* ``infidelity``: captum ``infidelity`` (Yeh et al. 2019) with ``normalize=True``:
  E_I[(β·Iᵀφ − (z_y(x) − z_y(x − I)))²] with the best scale β, I ~ N(0, σ_I²) per pixel
  (σ_I = ``infidelity_sigma``, default 0.03 of the range, about 8/255). Units: squared
  logits, so it also scales with how much the logit itself moves. Integrated gradients is
  a "global" attribution (it contains a factor x), so, as captum documents for such
  methods, its perturbation is I/(x − x₀) (1 where x = x₀) and Iᵀφ still estimates the
  change of z_y;
* ``sensitivity``: captum ``sensitivity_max`` (Yeh et al. 2019): the largest
  ‖φ(x + u) − φ(x)‖_F / ‖φ(x)‖_F over uniform u in the L∞ ball of radius
  ``sensitivity_radius`` (default 0.02 of the range). SmoothGrad's noise is drawn with
  the same seed at x and at every x + u (common random numbers), so the number measures
  how the explanation moves with the input rather than its Monte-Carlo noise.
* ``spearman`` (table ``saliency_agreement``): rank correlation of |φ| between the two
  models of a pair on the same example. Integrated gradients is exactly 0 wherever the
  input is black for every model, so its agreement is inflated by those shared ties on
  images with black backgrounds (digits, MNIST); compare methods with that in mind.

Perturbed inputs are not clipped to [0, 1]: both metrics probe the function locally, and
clipping would silently shrink the perturbation at saturated pixels (half the pixels of
the digits images are 0).

Maps and inputs are saved in ``<run>/arrays/saliency.npz`` (see :func:`load_saliency`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, PositiveInt

from .. import distributed
from ..attacks import attack_mode
from ..config import Strict
from ..errors import RunFolderError, WorkbenchError
from ..registry import TableSchema
from ..state import seeded_rng
from ..store import RunFolder, atomic_write_bytes
from .base import PROBES, ProbeContext
from ..views import FigureSpec, Measure, register_figure, register_measure


class SaliencyProbe(Strict):
    """Attribution maps through captum, with sparsity, faithfulness and stability metrics."""

    methods: tuple[Literal["saliency", "integrated_gradients", "smoothgrad"], ...] = (
        "saliency",
        "integrated_gradients",
        "smoothgrad",
    )
    examples: PositiveInt = Field(16, description="examples (both models correct) for maps and metrics")
    ig_steps: PositiveInt = Field(32, description="integration points of integrated gradients (zero = black baseline)")
    smoothgrad_samples: PositiveInt = Field(16, description="noisy copies per example for SmoothGrad")
    smoothgrad_sigma: float = Field(0.15, gt=0, description="noise std as a fraction of the [0,1] range")
    metrics: bool = Field(True, description="infidelity and max-sensitivity (Gini and agreement are always computed)")
    # ~8/255: small enough to probe the local (first-order) behaviour the maps claim to explain
    infidelity_sigma: float = Field(0.03, gt=0, description="std of the Gaussian infidelity perturbation (pixel units)")
    infidelity_samples: PositiveInt = Field(32, description="perturbations per example for infidelity (forwards only)")
    sensitivity_radius: float = Field(0.02, gt=0, description="L∞ radius of the sensitivity_max perturbations (pixel units)")
    # each sample is one full explanation (ig_steps or smoothgrad_samples gradients for IG / SmoothGrad)
    sensitivity_samples: PositiveInt = Field(8, description="perturbations per example for sensitivity_max")


#: the tables this component writes (collected by workbench.tables)
TABLES_SALIENCY: dict[str, TableSchema] = {
    "saliency_metrics": (
        "per-example attribution metrics: model × method × example",
        {
            "model": "model id",
            "method": "`saliency`, `integrated_gradients` or `smoothgrad`",
            "example": "example number within the saliency set",
            "index": "position in the test split",
            "gini": "Gini sparsity of |attribution| (0 uniform, 1 one-hot)",
            "infidelity": "captum infidelity (normalize=True)",
            "sensitivity": "captum sensitivity_max",
        },
    ),
    "saliency_agreement": (
        "Spearman rank correlation of the maps of the two models of a pair",
        {
            "pair": "`<reference>~<model>`",
            "reference": "reference model id",
            "model": "paired model id",
            "method": "attribution method",
            "example": "example number",
            "spearman": "rank correlation of |attribution|",
        },
    ),
}


log = logging.getLogger("workbench")

METHODS: tuple[str, ...] = ("saliency", "integrated_gradients", "smoothgrad")
#: file name of the saved maps inside ``<run>/arrays``
ARRAY_FILE = "saliency.npz"
ARRAY_PATH = f"{RunFolder.ARRAYS}/{ARRAY_FILE}"  # inside the run folder


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG seeded, restoring the caller's RNG state after
    (captum's NoiseTunnel draws from the global generator of the input's device)."""
    if seed is None:
        yield
        return
    with seeded_rng(seed, device):
        yield


def _check_methods(methods: Sequence[str]) -> None:
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise WorkbenchError(f"unknown saliency method {bad[0]!r}; valid methods: {', '.join(METHODS)}")


def _leaf(inputs):
    """Detached copies that require grad (captum warns when it has to set the flag itself)."""
    if isinstance(inputs, tuple):
        return tuple(t.detach().requires_grad_(True) for t in inputs)
    return inputs.detach().requires_grad_(True)


def _explainer(
    model: torch.nn.Module,
    method: str,
    *,
    ig_steps: int,
    smoothgrad_samples: int,
    smoothgrad_sigma: float,
    batch_size: int | None,
    seed: int | None,
) -> Callable[..., Any]:
    """``explain(inputs, target=...)`` -> signed attributions of the same shape (a tuple in,
    a tuple out, as captum's metrics call it)."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency  # imported on use: ~1 s

    if method == "saliency":
        sal = Saliency(model)
        return lambda inputs, target: sal.attribute(_leaf(inputs), target=target, abs=False)
    if method == "integrated_gradients":
        ig = IntegratedGradients(model)
        return lambda inputs, target: ig.attribute(
            _leaf(inputs), baselines=0.0, target=target, n_steps=ig_steps, internal_batch_size=batch_size
        )
    nt = NoiseTunnel(Saliency(model))

    def smoothgrad(inputs, target):
        first = inputs[0] if isinstance(inputs, tuple) else inputs
        n = first.shape[0]
        per_batch = None if batch_size is None else max(1, batch_size // max(n, 1))
        with _seeded(seed, first.device):
            return nt.attribute(
                _leaf(inputs), nt_type="smoothgrad", nt_samples=smoothgrad_samples, nt_samples_batch_size=per_batch,
                stdevs=float(smoothgrad_sigma), target=target, abs=False,
            )

    return smoothgrad


def saliency_maps(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    methods: Sequence[str] = METHODS,
    ig_steps: int = 32,
    smoothgrad_samples: int = 16,
    smoothgrad_sigma: float = 0.15,
    *,
    batch_size: int | None = None,
    seed: int | None = 0,
) -> dict[str, torch.Tensor]:
    """Signed attribution maps of the true-class logit.

    Args:
        model: maps x (N, C, H, W) in [0, 1] to logits (N, K), normalization inside.
        x: inputs in [0, 1], (N, C, H, W).
        y: true labels (N,), int64; the logit z_y is attributed.
        methods: any of ``saliency``, ``integrated_gradients``, ``smoothgrad``.
        ig_steps: integration points of integrated gradients (Gauss–Legendre).
        smoothgrad_samples: noisy copies per example for SmoothGrad.
        smoothgrad_sigma: SmoothGrad noise std in pixel units (fraction of [0, 1]).
        batch_size: rows per forward inside captum (IG steps, SmoothGrad samples); None:
            all at once.
        seed: seeds SmoothGrad's noise (the caller's RNG state is restored); None: use
            the global RNG as it is.

    Returns:
        ``{method: (N, C, H, W) float32 tensor}``, detached, on x's device. The model runs
        in eval mode with frozen parameters; its modes and flags are restored afterwards.
    """
    _check_methods(methods)
    if x.shape[0] != y.shape[0]:
        raise WorkbenchError(f"saliency_maps got {x.shape[0]} inputs but {y.shape[0]} labels")
    out: dict[str, torch.Tensor] = {}
    with attack_mode(model), torch.inference_mode(False), torch.enable_grad():
        for method in methods:
            explain = _explainer(model, method, ig_steps=ig_steps, smoothgrad_samples=smoothgrad_samples,
                                 smoothgrad_sigma=smoothgrad_sigma, batch_size=batch_size, seed=seed)
            out[method] = explain(x.detach(), target=y).detach().float()
    return out


def gini(maps: torch.Tensor) -> torch.Tensor:
    """Gini sparsity index of |φ| per example (Hurley & Rickard 2009, "Comparing Measures of
    Sparsity", IEEE Trans. Inf. Theory).

    With c₍₁₎ ≤ … ≤ c₍d₎ the sorted |φ| of one example (flattened, d entries)::

        G = 1 − 2 Σₖ (c₍ₖ₎ / ‖c‖₁) · (d − k + ½) / d

    0 for a constant map, (d − 1)/d for a one-hot map; NaN for an all-zero map (no
    attribution at all: sparsity is undefined). ``maps`` is (N, ...) (a 1-D tensor is one
    example); returns (N,) float64.
    """
    a = maps.detach().abs().to(torch.float64)
    a = a.reshape(1, -1) if a.dim() == 1 else a.reshape(a.shape[0], -1)
    d = a.shape[1]
    c = a.sort(dim=1).values
    total = c.sum(dim=1)
    k = torch.arange(1, d + 1, dtype=torch.float64, device=c.device)
    weights = (d - k + 0.5) / d
    g = 1.0 - 2.0 * (c * weights).sum(dim=1) / total
    return torch.where(total > 0, g, torch.full_like(g, float("nan")))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of |a| and |b| per example (ties get their average rank).

    ``a``, ``b``: (N, ...) maps of the same shape (a 1-D tensor is one example); returns
    (N,) float64, NaN where a map is constant.
    """
    # scipy takes a second to import; only this computation needs it
    from scipy.stats import spearmanr

    if a.shape != b.shape:
        raise WorkbenchError(f"spearman needs maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a_np = a.detach().abs().reshape(1 if a.dim() == 1 else a.shape[0], -1).cpu().double().numpy()
    b_np = b.detach().abs().reshape(a_np.shape).cpu().double().numpy()
    out = np.empty(a_np.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN, which we keep
        for i in range(a_np.shape[0]):
            out[i] = spearmanr(a_np[i], b_np[i]).statistic
    return torch.from_numpy(out)


def _infidelity_perturbation(sigma: float, generator: torch.Generator, global_method: bool):
    """Perturbation function for captum ``infidelity``: returns (I, x − noise) with
    noise ~ N(0, σ²) per pixel; I = noise for local maps (gradients), noise/x (1 where
    x = 0) for integrated gradients, whose attributions carry a factor (x − 0)."""

    def perturb(inputs: torch.Tensor):
        noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype).to(inputs.device) * sigma
        perturbed = inputs - noise
        if global_method:
            denom = torch.where(inputs == 0, torch.ones_like(inputs), inputs)
            return noise / denom, perturbed
        return noise, perturbed

    return perturb


def _uniform_perturbation(generator: torch.Generator):
    """Perturbation function for captum ``sensitivity_max``: x + U[−r, r] per pixel (the
    captum default, drawn from our own generator so runs are reproducible)."""

    def perturb(inputs: torch.Tensor, radius: float):
        u = torch.rand(inputs.shape, generator=generator, dtype=inputs.dtype).to(inputs.device)
        return inputs + (2.0 * u - 1.0) * radius

    return perturb


def attribution_metrics(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    maps: dict[str, torch.Tensor],
    *,
    ig_steps: int = 32,
    smoothgrad_samples: int = 16,
    smoothgrad_sigma: float = 0.15,
    infidelity_sigma: float = 0.03,
    infidelity_samples: int = 32,
    sensitivity_radius: float = 0.02,
    sensitivity_samples: int = 8,
    batch_size: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """Infidelity and max-sensitivity of each method's maps (see the module docstring).

    ``maps`` comes from :func:`saliency_maps` with the same settings and ``seed``. Cost:
    ``infidelity_samples`` forwards per example, and ``sensitivity_samples`` explanations
    per example (an IG explanation is ``ig_steps`` gradients, SmoothGrad's
    ``smoothgrad_samples``). Returns ``{method: {"infidelity": (N,), "sensitivity": (N,)}}``
    as float64 CPU tensors.
    """
    # captum: only the saliency probe's attributions; slow to import
    from captum.metrics import infidelity, sensitivity_max

    n = x.shape[0]
    out: dict[str, dict[str, torch.Tensor]] = {}
    with attack_mode(model), torch.inference_mode(False), torch.enable_grad():
        for j, (method, phi) in enumerate(maps.items()):
            gen = torch.Generator().manual_seed(seed + 1000 * j + 1)
            perturb = _infidelity_perturbation(infidelity_sigma, gen, method == "integrated_gradients")
            infid = infidelity(
                model, perturb, x.detach(), phi, target=y, n_perturb_samples=infidelity_samples,
                max_examples_per_batch=min(max(n, batch_size or 0), n * infidelity_samples), normalize=True,
            )
            explain = _explainer(model, method, ig_steps=ig_steps, smoothgrad_samples=smoothgrad_samples,
                                 smoothgrad_sigma=smoothgrad_sigma, batch_size=batch_size, seed=seed)
            gen = torch.Generator().manual_seed(seed + 1000 * j + 2)
            # one perturbed copy of the batch per call: the SmoothGrad noise then has the
            # same shape, hence the same draw, at x and at every x + u
            sens = sensitivity_max(
                explain, x.detach(), perturb_func=_uniform_perturbation(gen), perturb_radius=sensitivity_radius,
                n_perturb_samples=sensitivity_samples, max_examples_per_batch=n, target=y,
            )
            out[method] = {"infidelity": infid.detach().double().cpu(), "sensitivity": sens.detach().double().cpu()}
    return out


# --------------------------------------------------------------------------- arrays


def saliency_bytes(inputs: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                   maps: dict[str, dict[str, torch.Tensor]]) -> bytes:
    """The maps as one compressed ``.npz`` file's bytes. Keys:

    * ``inputs`` (N, C, H, W) float32, ``labels`` (N,) int64, ``index`` (N,) int64
      (positions in the test split);
    * ``methods`` (K,) and ``models`` (M,) unicode arrays: the order of the maps;
    * ``map_<method>_<j>`` (N, C, H, W) float32: the signed map of ``method`` for the j-th
      model of ``models`` (model ids hold "/", which a key in a zip file should not).

    ``maps`` is ``{method: {model_id: (N, C, H, W)}}``. Loads with ``allow_pickle=False``.
    """
    methods = list(maps)
    models = list(next(iter(maps.values()))) if maps else []
    arrays: dict[str, np.ndarray] = {
        "inputs": inputs.detach().float().cpu().numpy(),
        "labels": labels.detach().long().cpu().numpy(),
        "index": index.detach().long().cpu().numpy(),
        "methods": np.array(methods, dtype=str),
        "models": np.array(models, dtype=str),
    }
    for method in methods:
        for j, model_id in enumerate(models):
            arrays[f"map_{method}_{j}"] = maps[method][model_id].detach().float().cpu().numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def save_saliency(path: str | Path, inputs: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                  maps: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write :func:`saliency_bytes` to ``path`` (atomic)."""
    path = Path(path)
    atomic_write_bytes(path, saliency_bytes(inputs, labels, index, maps))
    return path


def load_saliency(run_dir: str | Path) -> dict[str, Any]:
    """Read ``<run_dir>/arrays/saliency.npz`` (or the ``.npz`` path itself).

    Returns ``{"inputs": (N, C, H, W), "labels": (N,), "index": (N,), "maps": {method:
    {model_id: (N, C, H, W)}}}`` as numpy arrays; maps are signed (take ``abs`` to draw
    |φ|), in the order the study declared methods and models.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / RunFolder.ARRAYS / ARRAY_FILE
    if not path.is_file():
        raise RunFolderError("no saliency maps here (was the saliency probe enabled?)", file=str(path))
    try:
        with np.load(path, allow_pickle=False) as z:
            methods = [str(m) for m in z["methods"]]
            models = [str(m) for m in z["models"]]
            return {
                "inputs": z["inputs"],
                "labels": z["labels"],
                "index": z["index"],
                "maps": {m: {mid: z[f"map_{m}_{j}"] for j, mid in enumerate(models)} for m in methods},
            }
    except (OSError, ValueError, KeyError) as e:
        raise RunFolderError(f"corrupt saliency arrays ({e})", file=str(path)) from None


# --------------------------------------------------------------------------- runner

METRIC_COLUMNS = ["model", "method", "example", "index", "gini", "infidelity", "sensitivity"]
AGREEMENT_COLUMNS = ["pair", "reference", "model", "method", "example", "spearman"]


def _predictions(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with attack_mode(model), torch.no_grad():
        return torch.cat([model(x[s:s + batch_size]).argmax(dim=1) for s in range(0, len(x), batch_size)])


def common_correct(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, k: int,
                   batch_size: int = 256) -> torch.Tensor:
    """Positions (ascending) of the first ``k`` examples that every model classifies
    correctly: one example set shared by all models, so their maps are comparable."""
    ok = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for model in models.values():
        ok &= _predictions(model, x, batch_size) == y
    return ok.nonzero().flatten()[:k].cpu()


@PROBES.register("saliency", config=SaliencyProbe, tables=TABLES_SALIENCY, sharded=True, facts=("pairs",))
def run_saliency(ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Saliency, integrated gradients and SmoothGrad maps of every model on one shared
    example set (the first ``cfg.examples`` probe examples that every model classifies
    correctly), their Gini sparsity, infidelity and max-sensitivity, and the Spearman
    agreement of the two models of each pair. The maps become the artifact
    ``arrays/saliency.npz`` (:func:`saliency_bytes`), which the runner writes."""
    cfg = ctx.cfg
    # rank 0's choice on every rank: the ranks must agree on the examples to the last one
    sel = distributed.broadcast(common_correct(ctx.models, ctx.x, ctx.y, cfg.examples, ctx.batch_size))
    if len(sel) < cfg.examples:
        log.warning("saliency: only %d of %d probe examples are classified correctly by every model "
                    "(%d requested)", len(sel), len(ctx.x), cfg.examples)
    if len(sel) == 0:
        return {"saliency_metrics": pd.DataFrame(columns=METRIC_COLUMNS),
                "saliency_agreement": pd.DataFrame(columns=AGREEMENT_COLUMNS)}
    x, y = ctx.x[sel.to(ctx.x.device)], ctx.y[sel.to(ctx.y.device)]
    index = ctx.index.cpu()[sel]
    settings = dict(ig_steps=cfg.ig_steps, smoothgrad_samples=cfg.smoothgrad_samples,
                    smoothgrad_sigma=cfg.smoothgrad_sigma, batch_size=ctx.batch_size)

    # in chunks: IG and SmoothGrad expand each example ig_steps / samples times
    chunk = max(1, ctx.batch_size // max(cfg.ig_steps, cfg.smoothgrad_samples, 1))
    model_ids = list(ctx.models)
    units = [(model_id, s) for model_id in model_ids for s in range(0, len(x), chunk)]

    def one_chunk(u: int) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """The maps and per-example metrics of one model on one chunk, seeded by the model
        and the chunk's start (so any rank computes the same)."""
        model_id, s = units[u]
        model = ctx.models[model_id]
        seed = ctx.seed_for("saliency", model_id)
        xb, yb = x[s:s + chunk], y[s:s + chunk]
        got = saliency_maps(model, xb, yb, cfg.methods, seed=seed + s, **settings)
        scores: dict[str, dict[str, torch.Tensor]] = {}
        if cfg.metrics:
            met = attribution_metrics(
                model, xb, yb, got, infidelity_sigma=cfg.infidelity_sigma,
                infidelity_samples=cfg.infidelity_samples, sensitivity_radius=cfg.sensitivity_radius,
                sensitivity_samples=cfg.sensitivity_samples, seed=seed + s, **settings,
            )
            scores = {m: {key: met[m][key].flatten().cpu() for key in ("infidelity", "sensitivity")} for m in cfg.methods}
        advance(1)
        return {m: phi.cpu() for m, phi in got.items()}, scores

    # under torchrun each rank computes its share of the (model, chunk) units; all ranks get all maps
    with ctx.progress.task("saliency", len(distributed.my_batches(len(units)))) as advance:
        done = distributed.run_sharded(len(units), one_chunk, "the saliency probe")
    maps: dict[str, dict[str, torch.Tensor]] = {m: {} for m in cfg.methods}
    rows = []
    for model_id in model_ids:
        mine = [d for (mid, _s), d in zip(units, done) if mid == model_id]
        for m in cfg.methods:
            maps[m][model_id] = torch.cat([got[m] for got, _ in mine])
            g = gini(maps[m][model_id])
            nan = torch.full((len(x),), float("nan"), dtype=torch.float64)
            infid = torch.cat([sc[m]["infidelity"] for _, sc in mine]) if cfg.metrics else nan
            sens = torch.cat([sc[m]["sensitivity"] for _, sc in mine]) if cfg.metrics else nan
            for i in range(len(x)):
                rows.append({"model": model_id, "method": m, "example": i, "index": int(index[i]),
                             "gini": float(g[i]), "infidelity": float(infid[i]), "sensitivity": float(sens[i])})

    agreement = []
    for _arch, ref, other in ctx.pairs:
        for m in cfg.methods:
            rho = spearman(maps[m][ref], maps[m][other])
            for i in range(len(x)):
                agreement.append({"pair": f"{ref}~{other}", "reference": ref, "model": other, "method": m,
                                  "example": i, "spearman": float(rho[i])})

    ctx.artifacts[ARRAY_PATH] = saliency_bytes(x, y, index, maps)
    return {"saliency_metrics": pd.DataFrame(rows, columns=METRIC_COLUMNS),
            "saliency_agreement": pd.DataFrame(agreement, columns=AGREEMENT_COLUMNS)}


# --------------------------------------------------------------------------- report figures
# drawn by the report from these tables (workbench/views.py; the drawing code is imported only then)

register_figure(FigureSpec(
    "saliency",
    "Saliency maps",
    "Rows are test examples both models classify correctly; columns are the input, then each attribution method "
        "for each model (|attribution| summed over channels, each map scaled to its own 99th percentile): robust "
        "models' maps are expected to be sparser and to follow the object.",
    "representations",
    "workbench.report.figures:saliency_grid",
    (),
    order=100,
    arrays=ARRAY_FILE,
    load="workbench.probes.saliency:load_saliency"))

register_figure(FigureSpec(
    "saliency_metrics",
    "Attribution metrics",
    "Mean (± s.e.m.) over examples of each map's Gini sparsity, captum infidelity and max-sensitivity per method "
        "and model, and the Spearman rank agreement between the two models of each pair.",
    "representations",
    "workbench.report.figures:saliency_metrics",
    ("saliency_metrics", "saliency_agreement"),
    order=110))

# the measure workbench compare correlates with robustness
register_measure(Measure("saliency_gini", "saliency Gini sparsity", "workbench.probes.views:saliency_gini",
                         compare=True, order=30))

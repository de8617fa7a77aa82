"""What a representation encodes, as plain functions on a model and tensors.

- :func:`invert`: representation inversion (Engstrom et al. 2019): x minimising
  ‖φ(x) − φ(x_t)‖₂ / ‖φ(x_t)‖₂ from a seed image;
- :func:`visualise_features`: maximise single coordinates of a layer from noise;
- :func:`synthesise`: maximise a class logit from a seed (Santurkar et al. 2019), the seeds
  drawn by :func:`class_gaussian_seeds` from a Gaussian fitted to each class's images;
- :func:`targeted_l2`: large-ε targeted L2 examples (Tsipras et al. 2019's perceptually
  aligned gradients);
- :func:`image_agreement`: SSIM (torchmetrics) and normalised L2 of images against targets;
- :func:`class_mean_cosine`: the judge-free measure, cos(δ, μ_target − μ_source).

Every search runs on the one ascent engine (:func:`workbench.attacks.ascent.ascend`) with
L2-normalised steps, inside :func:`~workbench.attacks.base.run_attack` (eval mode, frozen
parameters), over an L2 ball so large that only [0, 1] constrains it (the papers' "ε = 1000").
Random draws come from the caller's generator only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.ascent import ascend
from ..attacks.base import run_attack
from ..models.capture import capture, resolve_layers
from ..types import Tensor
from ..errors import install_hint

#: the ball radius of an unconstrained search (pixel units): far beyond any image's diameter
UNBOUNDED = 1.0e4


def default_step(x: Tensor, scale: float = 0.01) -> float:
    """A step of ``scale``·√d for images of d values: the same fraction of an image's
    diameter whatever its size (0.08 on 8×8 digits, 0.55 on CIFAR-10)."""
    return float(scale * math.sqrt(x[0].numel()))


def noise_seeds(shape: tuple[int, ...], generator: torch.Generator, *, mean: float = 0.5, std: float = 0.05,
                device: torch.device | str = "cpu") -> Tensor:
    """Seeds x₀ ~ N(mean, std²) clipped to [0, 1] (Engstrom et al.'s N(0.5, 0.05²))."""
    z = torch.randn(shape, generator=generator, device=generator.device)
    return (mean + std * z).clamp_(0.0, 1.0).to(device)


def features_fn(model: nn.Module, layer: str) -> Callable[[Tensor], Tensor]:
    """x -> the (N, D) features of ``model`` at ``layer`` (a :func:`resolve_layers` spec
    naming one layer; ``"logits"`` is the output), differentiable in x."""
    if layer == "logits" or not hasattr(model, "layer_names"):
        return lambda x: model(x).float().flatten(1)
    (name,) = resolve_layers(model, layer)[-1:]

    def phi(x: Tensor) -> Tensor:
        with capture(model, name) as cap:
            out = model(x)
            return out.float().flatten(1) if name == "logits" else cap[name]

    return phi


@dataclass
class Inversion:
    """Per example: the image found and the relative representation distance it reaches."""

    x: Tensor
    distance: Tensor


def relative_distance(f: Tensor, f_t: Tensor) -> Tensor:
    """‖f − f_t‖₂ / ‖f_t‖₂ per row (a zero target norm counts as 1: absolute distance)."""
    den = f_t.norm(dim=1)
    return (f - f_t).norm(dim=1) / torch.where(den > 0, den, torch.ones_like(den))


def invert(
    model: nn.Module,
    x_target: Tensor,
    seeds: Tensor,
    *,
    layer: str = "penultimate",
    steps: int = 200,
    step_size: float | None = None,
    phi: Callable[[Tensor], Tensor] | None = None,
) -> Inversion:
    """Representation inversion: from ``seeds``, ``steps`` L2-normalised gradient steps on
    ‖φ(x) − φ(x_t)‖₂ / ‖φ(x_t)‖₂ within [0, 1]; per example the iterate with the lowest
    distance is kept. ``phi`` replaces the model's layer (tests: an identity or a linear
    map). ``step_size`` defaults to :func:`default_step`."""
    phi = phi if phi is not None else features_fn(model, layer)
    with torch.no_grad():
        f_t = phi(x_target).detach()
    step = default_step(x_target) if step_size is None else float(step_size)
    x = _ascend_from(model, seeds, lambda x: -relative_distance(phi(x), f_t), steps, step, keep="best")
    with torch.no_grad():
        dist = relative_distance(phi(x), f_t)
    return Inversion(x, dist)


def visualise_features(
    model: nn.Module,
    features: Tensor,
    seeds: Tensor,
    *,
    layer: str = "penultimate",
    steps: int = 200,
    step_size: float | None = None,
) -> Tensor:
    """Feature visualisation: for each row i, maximise coordinate ``features[i]`` of the
    layer from ``seeds[i]`` by L2-normalised steps within [0, 1]."""
    phi = features_fn(model, layer)
    feats = features.to(seeds.device)
    step = default_step(seeds) if step_size is None else float(step_size)
    return _ascend_from(model, seeds, lambda x: phi(x).gather(1, feats[:, None])[:, 0], steps, step, keep="last")


def _ascend_from(model: nn.Module, seeds: Tensor, objective: Callable[[Tensor], Tensor], steps: int, step: float, *,
                 keep: str) -> Tensor:
    """``steps`` L2-normalised ascent steps of ``objective`` (per example) from ``seeds`` within
    [0, 1], on the ascent engine; the ball is centred on the seed (the start "clean") and never
    binds (the labels handed to the engine's runner are unused)."""

    def craft(x0: Tensor, _y: Tensor) -> Tensor:
        return ascend(objective, x0, UNBOUNDED, steps, norm="l2", alpha=step, starts=["clean"], keep=keep,
                      model=model).x

    return run_attack(model, seeds, torch.zeros(len(seeds), dtype=torch.long, device=seeds.device), craft)


def synthesise(
    model: nn.Module,
    seeds: Tensor,
    classes: Tensor,
    *,
    steps: int = 60,
    step_size: float | None = None,
    eps: float = UNBOUNDED,
) -> Tensor:
    """Class-conditional synthesis (Santurkar et al. 2019): from each seed, L2-normalised
    steps that lower the cross-entropy of its class (raise log p_class), within the L2
    ball of radius ``eps`` around the seed ∩ [0, 1]."""
    return targeted_l2(model, seeds, classes, eps=eps, steps=steps, step_size=step_size)


def targeted_l2(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    *,
    eps: float,
    steps: int = 60,
    step_size: float | None = None,
) -> Tensor:
    """Targeted L2 PGD from x (no random start): ascend −CE(f(x'), target) within
    B₂(x, ε) ∩ [0, 1]; default step 2.5·ε/steps (capped at the unbounded search's step)."""
    if step_size is None:
        step_size = min(2.5 * eps / max(steps, 1), 10 * default_step(x))

    def craft(x0: Tensor, t: Tensor) -> Tensor:
        return ascend(lambda z: -F.cross_entropy(model(z).float(), t, reduction="none"), x0, eps, steps, norm="l2",
                      alpha=float(step_size), starts=["clean"], keep="last", model=model).x

    return run_attack(model, x, targets, craft)


# --------------------------------------------------------------------------- seeds of synthesis


@dataclass
class ClassGaussian:
    """A Gaussian per class fitted to (downsampled) training images: ``mean`` (C, d) and
    the Cholesky factor ``chol`` (C, d, d) at ``size`` (the images' side after pooling)."""

    mean: Tensor
    chol: Tensor
    size: tuple[int, int]
    shape: tuple[int, int, int]


def fit_class_gaussians(x: Tensor, y: Tensor, num_classes: int, *, size: int | None = None,
                        shrink: float = 1e-3) -> ClassGaussian:
    """Per class, the mean and covariance of the training images average-pooled to
    ``size``×``size`` (Santurkar et al. downsample so that the covariance is estimable;
    None keeps the full resolution), with ``shrink``·I added for a positive-definite factor."""
    shape = tuple(x.shape[1:])
    h, w = shape[-2:]
    side = (min(size, h), min(size, w)) if size else (h, w)
    small = F.adaptive_avg_pool2d(x.float().cpu(), side).flatten(1).double()
    d = small.shape[1]
    means, chols = [], []
    for c in range(num_classes):
        s = small[y.cpu() == c]
        if len(s) < 2:
            raise ValueError(f"class {c} has {len(s)} training images; a Gaussian needs at least two")
        mu = s.mean(0)
        cov = torch.cov(s.T) + shrink * torch.eye(d, dtype=s.dtype)
        means.append(mu)
        chols.append(torch.linalg.cholesky(cov))
    return ClassGaussian(torch.stack(means).float(), torch.stack(chols).float(), side, shape)  # type: ignore[arg-type]


def class_gaussian_seeds(g: ClassGaussian, classes: Tensor, generator: torch.Generator,
                         device: torch.device | str = "cpu") -> Tensor:
    """One seed per entry of ``classes``: a draw of that class's Gaussian, upsampled to the
    image size (nearest) and clipped to [0, 1]. The draws depend only on the generator."""
    cls = classes.cpu().long()
    z = torch.randn((len(cls), g.mean.shape[1]), generator=generator, device=generator.device).cpu()
    s = g.mean[cls] + torch.einsum("nij,nj->ni", g.chol[cls], z)
    img = s.reshape(len(cls), g.shape[0], *g.size)
    img = F.interpolate(img, size=g.shape[1:], mode="nearest") if tuple(g.size) != tuple(g.shape[1:]) else img
    return img.clamp_(0.0, 1.0).to(device)


# --------------------------------------------------------------------------- measures


def image_agreement(x: Tensor, x_t: Tensor) -> dict[str, Tensor]:
    """Per example: SSIM against the target (torchmetrics, data range 1, Gaussian window
    of at most 11 pixels and at most the image side, odd) and ‖x − x_t‖₂ / ‖x_t‖₂."""
    try:
        # torchmetrics takes seconds to import; only the inversion's SSIM needs it
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim
    except ImportError as e:  # an optional extra
        raise ImportError(f"the represent probe measures SSIM with torchmetrics: {install_hint('represent')}") from e
    x, x_t = x.detach().float().cpu(), x_t.detach().float().cpu()
    side = min(x.shape[-2:])
    k = min(11, side if side % 2 else side - 1)
    sigma = 1.5 * k / 11
    s = ssim(x, x_t, data_range=1.0, kernel_size=k, sigma=sigma, reduction="none")
    nl2 = (x - x_t).flatten(1).norm(dim=1) / x_t.flatten(1).norm(dim=1).clamp_min(1e-12)
    return {"ssim": s.reshape(-1), "nl2": nl2}


def class_mean_cosine(delta: Tensor, means: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """cos(δ, μ_target − μ_source) per example: how far a perturbation points from the
    source class's mean image towards the target's (needs no judge)."""
    d = delta.detach().float().flatten(1).cpu()
    m = means.float().flatten(1).cpu()
    direction = m[target.cpu()] - m[source.cpu()]
    return F.cosine_similarity(d, direction, dim=1, eps=1e-12)


def class_means(x: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """The mean training image of each class (C, ...)."""
    x, y = x.float().cpu(), y.cpu()
    return torch.stack([x[y == c].mean(0) for c in range(num_classes)])

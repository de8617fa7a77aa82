"""Common corruptions (Hendrycks & Dietterich 2019, arXiv:1903.12261): 15 corruptions × 5 severities.

Written here from the paper's definitions with CIFAR-10-C's parameters (the authors'
``make_cifar_c.py``), because the maintained package (``imagecorruptions`` 1.1.2) does not run
on the workbench's data: it refuses images under 32 pixels, its fog uses ``np.float_`` (gone
in NumPy 2) and its glass blur a scikit-image argument that no longer exists; it also draws
from NumPy's global random state and has ImageNet-C's parameters. Here every image is
corrupted by a pure function of (image, corruption, severity, a generator seeded by the
study seed, the corruption, the severity and the example's index), so results are
deterministic and do not depend on batching.

Departures from the reference (docs/methods.md):
- motion blur (and the snow layer's) is a one-sided Gaussian-weighted line kernel of
  ``2·radius + 1`` taps along a random angle, with edge pixels repeated, in place of
  ImageMagick's ``MotionBlurImage`` (same parameters; not bit-identical);
- frost overlays a crop of the frost photographs that ``imagecorruptions`` ships (needs the
  ``corruptions`` extra; the reference resizes them by 0.2 for 32-pixel images, here by
  0.2·size/32);
- sizes: parameters given in pixels are CIFAR-10-C's unchanged; the fog fractal's map is the
  next power of two at least the image size; elastic's are fractions of the image size, as
  in the reference. Grey images (one channel) are corrupted as grey images.
- every corruption ends, as CIFAR-10-C's files do, with truncation to 8 bits.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from ..present import LazyModule
from ..types import Tensor

# scipy.ndimage takes most of a second to import and only corrupting images needs it (a rerun
# reads the corrupted results from the cache): imported on first use
ndimage = LazyModule("scipy.ndimage")

SEVERITIES = (1, 2, 3, 4, 5)
#: corruptions whose CIFAR-10-C parameters trade one effect against another, so that a higher
#: severity is not a stronger corruption (glass blur's σ falls from severity 3 to 4 while its
#: swaps double; elastic's displacement field gets smoother; frost's mixing weights): the
#: soundness check ``monotonic_severity`` leaves them out
NOT_MONOTONE = ("glass_blur", "elastic_transform", "frost")

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
#: name -> fn(image HWC float64 in [0, 1], severity 1…5, generator) -> image HWC in [0, 1]
CORRUPTIONS: dict[str, Corruption] = {}


def _register(fn: Corruption) -> Corruption:
    CORRUPTIONS[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------------- helpers
def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over the two spatial axes of an HW or HWC array (channels apart)."""
    s = (sigma, sigma) + (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, s, mode=mode, truncate=truncate)


def _clipped_zoom(x: np.ndarray, z: float) -> np.ndarray:
    """Zoom the centre crop of side ⌈H/z⌉ back to H (bilinear), trimming the excess."""
    h = x.shape[0]
    ch = int(math.ceil(h / z))
    top = (h - ch) // 2
    out = ndimage.zoom(x[top:top + ch, top:top + ch], (z, z) + (1,) * (x.ndim - 2), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim:trim + h, trim:trim + h]


def _motion_kernel_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """One-sided motion blur: Σᵢ wᵢ·x(p − i·(cos a, sin a)), wᵢ ∝ exp(−i²/2σ²), i = 0…2r."""
    taps = int(2 * round(radius) + 1)
    w = np.exp(-(np.arange(taps) ** 2) / (2.0 * sigma**2))
    w /= w.sum()
    a = math.radians(angle)
    out = np.zeros_like(x)
    h, wd = x.shape[:2]
    rows, cols = np.arange(h)[:, None], np.arange(wd)[None, :]
    for i, wi in enumerate(w):
        dy, dx = int(round(i * math.sin(a))), int(round(i * math.cos(a)))
        out += wi * x[np.clip(rows - dy, 0, h - 1), np.clip(cols - dx, 0, wd - 1)]
    return out


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """An anti-aliased disk kernel: the pixels within ``radius`` of the centre of a 17×17
    (or (2r+1)² when r > 8) grid, normalised, then blurred by a 3×3 (5×5) Gaussian."""
    half = 8 if radius <= 8 else int(radius)
    k = 3 if radius <= 8 else 5
    ax = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(ax, ax)
    d = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    d /= d.sum()
    g = np.exp(-(np.arange(k) - k // 2) ** 2 / (2.0 * alias_blur**2))
    g /= g.sum()
    d = ndimage.correlate1d(d, g, axis=0, mode="mirror")
    return ndimage.correlate1d(d, g, axis=1, mode="mirror")


def _grey(x: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601, OpenCV's RGB2GRAY) of an HWC image, HW1."""
    if x.shape[2] == 1:
        return x
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def _plasma(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square fractal height map of side ``size`` (a power of two), scaled to [0, 1]."""
    m = np.zeros((size, size))
    step, wibble = size, 100.0

    def noisy(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[0:size:step, 0:size:step]
        sq = corners + np.roll(corners, -1, axis=0)
        sq = sq + np.roll(sq, -1, axis=1)
        m[half:size:step, half:size:step] = noisy(sq)
        centres = m[half:size:step, half:size:step]
        corners = m[0:size:step, 0:size:step]
        m[0:size:step, half:size:step] = noisy(centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1))
        m[half:size:step, 0:size:step] = noisy(centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0))
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def _pil(x: np.ndarray):
    # Pillow: only the image-file data sets and the corruptions use it
    from PIL import Image

    u8 = np.uint8(np.clip(x, 0, 1) * 255)
    return Image.fromarray(u8[..., 0] if x.shape[2] == 1 else u8, mode="L" if x.shape[2] == 1 else "RGB")


def _from_pil(img, channels: int) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64) / 255.0
    return a[..., None] if channels == 1 or a.ndim == 2 else a


# --------------------------------------------------------------------------- noise
@_register
def gaussian_noise(x, severity, rng):
    c = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]
    return x + rng.normal(0.0, c, x.shape)


@_register
def shot_noise(x, severity, rng):
    c = [500, 250, 100, 75, 50][severity - 1]
    return rng.poisson(x * c) / c


@_register
def impulse_noise(x, severity, rng):
    # salt and pepper: a share c of the values set to 0 or 1, each with probability ½
    c = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float64), x)


# --------------------------------------------------------------------------- blur
@_register
def defocus_blur(x, severity, rng):
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    k = _disk(radius, alias)
    return np.stack([ndimage.correlate(x[..., c], k, mode="mirror") for c in range(x.shape[2])], axis=2)


@_register
def glass_blur(x, severity, rng):
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = np.uint8(_gaussian(x, sigma) * 255).astype(np.float64) / 255.0
    h, w = x.shape[:2]
    for _ in range(iterations):  # swap each pixel with a random neighbour, bottom-right first
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=2)
                i2, j2 = i + dy, j + dx
                x[[i, i2], [j, j2]] = x[[i2, i], [j2, j]]
    return _gaussian(x, sigma)


@_register
def motion_blur(x, severity, rng):
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    return _motion_kernel_blur(x, radius, sigma, rng.uniform(-45, 45))


@_register
def zoom_blur(x, severity, rng):
    top = [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1]
    zooms = np.arange(1, top, 0.01)
    out = x.copy()
    for z in zooms:
        out += _clipped_zoom(x, z)
    return out / (len(zooms) + 1)


# --------------------------------------------------------------------------- weather
@_register
def snow(x, severity, rng):
    loc, scale, zoom, cut, radius, sigma, keep = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][severity - 1]
    layer = rng.normal(loc, scale, x.shape[:2])[..., None]
    layer = _clipped_zoom(layer, zoom)
    layer[layer < cut] = 0
    layer = np.uint8(np.clip(layer, 0, 1) * 255) / 255.0
    layer = _motion_kernel_blur(layer, radius, sigma, rng.uniform(-135, -45))
    x = keep * x + (1 - keep) * np.maximum(x, _grey(x) * 1.5 + 0.5)
    return x + layer + np.rot90(layer, 2)


def frost_images() -> list[Path]:
    """The frost photographs shipped by ``imagecorruptions`` (the ``corruptions`` extra), found
    without importing the package (its import loads OpenCV and scikit-image and warns)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "frost"
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]
    return [folder / n for n in names if (folder / n).is_file()]


def frost_available() -> bool:
    return len(frost_images()) >= 5


@functools.lru_cache(maxsize=16)
def _frost_layer(path: str, h: int, w: int) -> np.ndarray:
    """A frost photograph resized by 0.2·size/32 (the reference's 0.2 at 32 pixels), in [0, 1]."""
    # Pillow: only the image-file data sets and the corruptions use it
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        f = 0.2 * max(h, w) / 32.0
        im = im.resize((max(int(im.width * f), w + 1), max(int(im.height * f), h + 1)), Image.BILINEAR)
        out = np.asarray(im, dtype=np.float64) / 255.0
    out.setflags(write=False)
    return out


@_register
def frost(x, severity, rng):
    a, b = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    paths = frost_images()
    if not paths:
        raise RuntimeError("the frost corruption needs the imagecorruptions package: pip install imagecorruptions (a core dependency of robustness-workbench)")
    path = paths[int(rng.integers(5))]  # the reference draws from the first five
    h, w = x.shape[:2]
    layer = _frost_layer(str(path), h, w)
    top, left = rng.integers(0, layer.shape[0] - h), rng.integers(0, layer.shape[1] - w)
    layer = layer[top:top + h, left:left + w]
    if x.shape[2] == 1:
        layer = _grey(layer)
    return a * x + b * layer


@_register
def fog(x, severity, rng):
    strength, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    h, w = x.shape[:2]
    size = 1 << max(int(math.ceil(math.log2(max(h, w, 2)))), 1)
    top = x.max()
    x = x + strength * _plasma(size, decay, rng)[:h, :w, None]
    return x * top / (top + strength)


# --------------------------------------------------------------------------- digital
@_register
def brightness(x, severity, rng):
    # V + c in HSV: with hue and saturation fixed, RGB is proportional to V = max channel,
    # so each pixel is scaled by V'/V (a black pixel becomes grey V')
    c = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]
    v = x.max(axis=2, keepdims=True)
    v2 = np.clip(v + c, 0, 1)
    return np.where(v > 0, x * (v2 / np.where(v > 0, v, 1.0)), v2)


@_register
def contrast(x, severity, rng):
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]
    m = x.mean(axis=(0, 1), keepdims=True)
    return (x - m) * c + m


@_register
def elastic_transform(x, severity, rng):
    h, w = x.shape[:2]
    size = float(max(h, w))
    alpha, sigma, affine = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                            (0.1, 0.03, 0.03)][severity - 1]
    alpha, sigma, affine = alpha * size, sigma * size, affine * size
    # a random affine map moving three points around the centre by up to ±affine pixels
    centre = np.array([w // 2, h // 2], dtype=np.float64)  # (x, y)
    s = min(h, w) // 3
    src = np.array([centre + s, [centre[0] + s, centre[1] - s], centre - s])
    dst = src + rng.uniform(-affine, affine, size=src.shape)
    # forward map dst = A·src + t; sample the output at the inverse
    m = np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst).T  # 2×3 on (x, y)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    x = np.stack([ndimage.map_coordinates(x[..., c], [sy, sx], order=1, mode="mirror") for c in range(x.shape[2])], axis=2)
    # then a smooth random displacement field
    if alpha > 0:
        dx = _gaussian(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect", truncate=3) * alpha
        dy = _gaussian(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect", truncate=3) * alpha
        x = np.stack([ndimage.map_coordinates(x[..., c], [yy + dy, xx + dx], order=1, mode="reflect")
                      for c in range(x.shape[2])], axis=2)
    return x


@_register
def pixelate(x, severity, rng):
    # Pillow: only the image-file data sets and the corruptions use it
    from PIL import Image

    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    h, w = x.shape[:2]
    img = _pil(x)
    img = img.resize((max(int(w * c), 1), max(int(h * c), 1)), Image.BOX).resize((w, h), Image.BOX)
    return _from_pil(img, x.shape[2])


@_register
def jpeg_compression(x, severity, rng):
    # Pillow: only the image-file data sets and the corruptions use it
    from PIL import Image

    q = [80, 65, 58, 50, 40][severity - 1]
    buf = BytesIO()
    _pil(x).save(buf, "JPEG", quality=q)
    buf.seek(0)
    with Image.open(buf) as img:
        return _from_pil(img.convert("L" if x.shape[2] == 1 else "RGB"), x.shape[2])


# --------------------------------------------------------------------------- the batch
def corrupt(x: Tensor, name: str, severity: int, seed: int, index: Tensor | None = None) -> Tensor:
    """``x`` (N, C, H, W) in [0, 1] under corruption ``name`` at ``severity`` (1…5), on x's
    device and dtype. Example i's random draws come from a generator seeded by (``seed``,
    ``name``, ``severity``, ``index[i]``): the same image gets the same corruption in any batch."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity is 1…5, got {severity!r}")
    index = torch.arange(len(x)) if index is None else index
    fn = CORRUPTIONS[name]
    tag = list(CORRUPTIONS).index(name)
    imgs = x.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    out = np.empty_like(imgs)
    for i, img in enumerate(imgs):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, tag, int(severity), int(index[i])])
        y = fn(img.copy(), int(severity), rng)
        out[i] = np.uint8(np.clip(y, 0, 1) * 255) / 255.0  # CIFAR-10-C's 8-bit files
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype).contiguous()

"""Common corruptions: determinism, severity ordering, reference computations, CE/mCE."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.evaluation.corruptions import CORRUPTIONS, corrupt, frost_available
from workbench.probes.corruptions import corruption_errors


def _images(n=8, size=32, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.1, 0.6, size)[None, None, None, :]
    return (torch.rand(n, channels, size, size, generator=g) * 0.4 + ramp).clamp(0, 1)


def test_fifteen_corruptions():
    assert len(CORRUPTIONS) == 15


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n != "frost" or frost_available()])
def test_every_corruption_on_small_grey_and_colour_images(name):
    for x in (_images(3, 8, 1), _images(3, 32, 3)):
        y = corrupt(x, name, 5, seed=0)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.min() >= 0 and y.max() <= 1
        assert (y - x).abs().max() > 0.01  # severity 5 changes the image
        # 8-bit values, as CIFAR-10-C's files
        torch.testing.assert_close(y * 255, torch.round(y * 255), atol=1e-4, rtol=0)


def test_deterministic_and_independent_of_the_batch():
    x = _images(6)
    idx = torch.arange(100, 106)
    full = corrupt(x, "glass_blur", 3, seed=7, index=idx)
    torch.testing.assert_close(corrupt(x, "glass_blur", 3, seed=7, index=idx), full)
    torch.testing.assert_close(corrupt(x[2:4], "glass_blur", 3, seed=7, index=idx[2:4]), full[2:4])
    assert not torch.equal(corrupt(x, "glass_blur", 3, seed=8, index=idx), full)


# the corruptions whose CIFAR-10-C parameters grow with severity (glass blur, elastic, frost and
# the small images' pixelate do not: their parameters trade one effect against another)
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "fog", "brightness",
            "contrast", "jpeg_compression", "motion_blur", "snow", "pixelate"]


@pytest.mark.parametrize("name", MONOTONE)
def test_pixel_distance_non_decreasing_in_severity(name):
    x = _images(16)
    d = [float((corrupt(x, name, s, seed=0) - x).flatten(1).norm(dim=1).mean()) for s in range(1, 6)]
    assert all(b >= a - 1e-6 for a, b in zip(d, d[1:])), d


def test_contrast_and_brightness_by_hand():
    x = torch.tensor([[[[0.2, 0.6], [0.4, 0.8]]]])  # mean 0.5
    y = corrupt(x, "contrast", 1, seed=0)  # c = 0.75
    expected = torch.floor(((x - 0.5) * 0.75 + 0.5) * 255 + 1e-6) / 255
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)
    y = corrupt(x, "brightness", 5, seed=0)  # grey: V + 0.3
    torch.testing.assert_close(y, torch.floor((x + 0.3).clamp(max=1) * 255 + 1e-6) / 255, atol=1e-6, rtol=0)


def test_brightness_matches_hsv_round_trip():
    color = pytest.importorskip("skimage.color")
    x = _images(2, 8, 3)
    img = x[0].permute(1, 2, 0).double().numpy()
    hsv = color.rgb2hsv(img)
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.15, 0, 1)
    ref = np.uint8(np.clip(color.hsv2rgb(hsv), 0, 1) * 255) / 255.0
    got = corrupt(x, "brightness", 3, seed=0)[0].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(got, ref, atol=1.01 / 255)


def test_defocus_matches_opencv_disk_filter():
    cv2 = pytest.importorskip("cv2")
    x = _images(1, 16, 3)
    img = x[0].permute(1, 2, 0).numpy().astype(np.float32)
    r, alias = 1.0, 0.2  # severity 4
    ax = np.arange(-8, 9)
    xx, yy = np.meshgrid(ax, ax)
    disk = ((xx**2 + yy**2) <= r**2).astype(np.float32)
    disk = cv2.GaussianBlur(disk / disk.sum(), ksize=(3, 3), sigmaX=alias)
    ref = np.stack([cv2.filter2D(img[..., c], -1, disk) for c in range(3)], axis=2)
    ref = np.uint8(np.clip(ref, 0, 1) * 255) / 255.0
    got = corrupt(x, "defocus_blur", 4, seed=0)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - ref).max() <= 1.01 / 255


def test_corruption_errors_against_the_baseline():
    rows, correct = [], {}
    errs = {"a": {"clean": 0.1, 1: 0.2, 2: 0.4}, "b": {"clean": 0.1, 1: 0.1, 2: 0.2}}
    n = 10
    for m, e in errs.items():
        for s, err in e.items():
            name, sev = ("clean", 0) if s == "clean" else ("fog", s)
            c = np.arange(n) >= round(err * n)
            correct[(m, name, sev)] = c
            rows.append({"model": m, "corruption": name, "severity": sev, "n": n, "accuracy": c.mean(),
                         "ci_low": 0, "ci_high": 1, "error": 1 - c.mean(), "distance": 0.0})
    out = corruption_errors(pd.DataFrame(rows), correct, "a").set_index(["model", "corruption"])
    assert out.loc[("a", "fog"), "ce"] == pytest.approx(1.0)
    assert out.loc[("b", "fog"), "ce"] == pytest.approx(0.3 / 0.6)
    assert out.loc[("b", "fog"), "relative_ce"] == pytest.approx((0.0 + 0.1) / (0.1 + 0.3))
    assert out.loc[("b", "mean"), "ce"] == pytest.approx(0.5)  # one corruption: mCE = its CE
    # clean counts as severity 0: 0.9 → 0.8 → 0.6, the smallest fall is −0.1
    assert out.loc[("a", "fog"), "max_rise"] == pytest.approx(-0.1)
    assert out.loc[("b", "fog"), "accuracy"] == pytest.approx(0.85)


def test_cifar10_c_folder_is_read_by_severity_and_index(tmp_path):
    from workbench.errors import WorkbenchError
    from workbench.probes.corruptions import read_cifar10_c

    n = 4  # a miniature CIFAR-10-C file: 5 severities × n images, each image filled with its row number
    arr = np.repeat(np.arange(5 * n, dtype=np.uint8)[:, None, None, None], 32 * 32 * 3, axis=1).reshape(5 * n, 32, 32, 3)
    np.save(tmp_path / "fog.npy", arr)
    got = read_cifar10_c(tmp_path, "fog", 3, torch.tensor([1, 3]))
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got[:, 0, 0, 0], torch.tensor([2 * n + 1, 2 * n + 3]) / 255.0)
    with pytest.raises(WorkbenchError, match="no such CIFAR-10-C file"):
        read_cifar10_c(tmp_path, "snow", 1, torch.tensor([0]))
    with pytest.raises(WorkbenchError, match="test split"):
        read_cifar10_c(tmp_path, "fog", 1, torch.tensor([n]))  # beyond the images of a severity

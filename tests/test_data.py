"""Tests for workbench.data: splits, batches, augmentation, and every loader offline.

Torchvision sets are read from fake files written here (no network); imagefolder from
tiny trees of PNG/JPEG files made with PIL. The one test on the real CIFAR-10 tarball is
skipped when the file is absent.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import (
    DATASETS,
    Augmentation,
    DataSplits,
    dataset_options,
    iterate_batches,
    load_dataset,
    stratified_pick,
)
from workbench.data import imagefolder as imagefolder_mod
from workbench.errors import DataError, UnknownNameError, WorkbenchError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
REAL_CIFAR = Path(os.environ.get("WORKBENCH_CIFAR10_JPG", "/work/shared/data/cifar10-jpg.tar.gz"))


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_is_described_and_has_introspectable_options(name: str) -> None:
    assert DATASETS.describe(name)
    opts = dataset_options(name)
    assert isinstance(opts, dict)
    assert not {"root", "download", "cache_dir"} & set(opts)


def test_registry_names_and_options() -> None:
    assert set(DATASETS.names()) == {"digits", "mnist", "fashion-mnist", "cifar10", "svhn", "imagefolder", "imagenet"}
    assert dataset_options("digits") == {}
    assert dataset_options("imagefolder") == {"image_size": None, "grayscale": False}


def test_unknown_name_and_option() -> None:
    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("digitz")
    with pytest.raises(WorkbenchError, match="'foo'"):
        load_dataset("digits", foo=1)
    with pytest.raises(WorkbenchError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


# --------------------------------------------------------------------------- digits splits


def test_digits_shapes_range_and_sizes() -> None:
    s = load_dataset("digits")
    assert isinstance(s, DataSplits)
    assert s.in_shape == (1, 8, 8) and s.num_classes == 10 and s.classes == [str(i) for i in range(10)]
    n_test = round(0.2 * 1797)
    n_val = round(0.1 * (1797 - n_test))
    assert (len(s.test_y), len(s.val_y), len(s.train_y)) == (n_test, n_val, 1797 - n_test - n_val)
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and len(x) == len(y)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(s.train_x.max()) == 1.0  # 16/16 occurs
    assert s.test_carved
    d = s.describe()
    assert d["train"] == len(s.train_y) and d["test"] == n_test and d["in_shape"] == [1, 8, 8]
    # mean/std are those of the training split
    assert s.mean[0] == pytest.approx(float(s.train_x.mean()), abs=1e-5)
    assert s.std[0] == pytest.approx(float(s.train_x.std(correction=0)), abs=1e-5)


def test_digits_split_is_stratified() -> None:
    s = load_dataset("digits", val_fraction=0.2)
    full = torch.cat([s.train_y, s.val_y, s.test_y]).bincount(minlength=10).double()
    for y, frac in ((s.test_y, 0.2), (s.val_y, 0.2 * 0.8)):
        counts = y.bincount(minlength=10).double()
        # each class's share equals the overall share to within one example (+ rounding of the outer split)
        assert torch.all((counts - full * frac).abs() <= 2.0), counts


def test_digits_splits_are_disjoint_and_cover_everything() -> None:
    s = load_dataset("digits")
    tr, va, te = (set(s.indices[k].tolist()) for k in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va | te == set(range(1797))
    # the bookkeeping really points at the examples: test rows are raw rows
    raw = DATASETS.get("digits")(root=None, download=False, cache_dir=None)
    assert torch.equal(s.test_x, raw.train_x[s.indices["test"]])
    assert torch.equal(s.val_y, raw.train_y[s.indices["val"]])


def test_same_seed_same_splits_different_seed_different() -> None:
    a, b, c = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    for k in ("train", "val", "test"):
        assert torch.equal(a.indices[k], b.indices[k])
    assert torch.equal(a.train_x, b.train_x)
    assert not torch.equal(a.indices["test"], c.indices["test"])
    assert not torch.equal(a.indices["val"], c.indices["val"])


def test_test_split_does_not_depend_on_val_fraction_or_limits() -> None:
    a = load_dataset("digits", val_fraction=0.1)
    b = load_dataset("digits", val_fraction=0.3, limit_train=100)
    assert torch.equal(a.indices["test"], b.indices["test"])


def test_val_fraction_zero_gives_empty_val_with_trailing_shape() -> None:
    s = load_dataset("digits", val_fraction=0.0)
    assert s.val_x.shape == (0, 1, 8, 8) and s.val_y.shape == (0,) and s.val_x.dtype == torch.float32
    assert len(s.train_y) + len(s.test_y) == 1797


def test_limits_take_stratified_subsets_of_the_splits() -> None:
    full = load_dataset("digits", seed=1)
    s = load_dataset("digits", seed=1, limit_train=200, limit_test=50)
    assert len(s.train_y) == 200 and len(s.test_y) == 50
    assert torch.equal(s.val_y, full.val_y)  # val untouched
    assert set(s.indices["train"].tolist()) <= set(full.indices["train"].tolist())
    assert set(s.indices["test"].tolist()) <= set(full.indices["test"].tolist())
    assert s.train_y.bincount(minlength=10).min() >= 18  # ~20 per class
    big = load_dataset("digits", limit_train=10**6)  # more than there is: all of it
    assert len(big.train_y) == len(full.train_y)


def test_stratified_pick_hand_checked() -> None:
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    picked, rest = stratified_pick(y, 5, torch.Generator().manual_seed(0))
    assert len(picked) == 5 and len(rest) == 5
    assert sorted(picked.tolist() + rest.tolist()) == list(range(10))
    assert y[picked].bincount().tolist() == [2, 3]
    assert torch.equal(picked, picked.sort().values)


# --------------------------------------------------------------------------- augmentation


def test_augmentation_identity_when_off() -> None:
    x = torch.rand(4, 3, 5, 5)
    assert Augmentation()(x, torch.Generator().manual_seed(0)) is x


def test_flip_flips_hand_checked() -> None:
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]]).repeat(64, 1, 1, 1)
    flipped = torch.tensor([[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]])
    out = Augmentation(flip=True)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    is_flipped = torch.tensor([torch.equal(o[0], flipped) for o in out])
    is_same = torch.tensor([torch.equal(o[0], x[0, 0]) for o in out])
    assert torch.all(is_flipped ^ is_same)
    assert 10 < int(is_flipped.sum()) < 54  # about half


def _shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img moved down by dy and right by dx, zero fill (reference, written with loops)."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    for i in range(h):
        for j in range(w):
            si, sj = i - dy, j - dx
            if 0 <= si < h and 0 <= sj < w:
                out[..., i, j] = img[..., si, sj]
    return out


def test_crop_is_a_shifted_copy_with_zero_fill() -> None:
    img = torch.arange(1, 2 * 4 * 4 + 1, dtype=torch.float32).reshape(2, 4, 4)  # no zeros inside
    x = img.repeat(200, 1, 1, 1)
    out = Augmentation(crop_padding=1)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts = {(dy, dx): _shifted(img, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    seen = set()
    for o in out:
        match = [k for k, ref in shifts.items() if torch.equal(o, ref)]
        assert len(match) == 1, o
        seen.add(match[0])
    assert seen == set(shifts)  # all nine offsets occur
    # hand-checked corner case: shifted right/down by one → first row and column are zero
    assert torch.equal(shifts[(1, 1)][0, 0], torch.zeros(4))
    assert torch.equal(shifts[(1, 1)][0, 1:, 1:], img[0, :3, :3])


def test_augmentation_uint8_and_deterministic() -> None:
    x = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8)
    aug = Augmentation(crop_padding=2, flip=True)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)


@CUDA
def test_augmentation_and_batches_run_on_cuda() -> None:
    s = load_dataset("digits", device="cuda")
    assert s.train_x.is_cuda and s.test_y.is_cuda
    aug = Augmentation(crop_padding=2, flip=True)
    out = aug(s.train_x[:16], torch.Generator(device="cuda").manual_seed(0))
    assert out.is_cuda and out.shape == (16, 1, 8, 8)
    b1 = [(bx.cpu(), by.cpu()) for bx, by in iterate_batches(s.train_x, s.train_y, 100, shuffle=True, seed=5, augment=aug)]
    b2 = [(bx.cpu(), by.cpu()) for bx, by in iterate_batches(s.train_x, s.train_y, 100, shuffle=True, seed=5, augment=aug)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(b1, b2))
    # the permutation is drawn on the CPU: same order as on the CPU
    cpu = load_dataset("digits")
    by_cpu = torch.cat([by for _, by in iterate_batches(cpu.train_x, cpu.train_y, 100, shuffle=True, seed=5)])
    assert torch.equal(torch.cat([q[1] for q in b1]), by_cpu)


# --------------------------------------------------------------------------- batches


def test_iterate_batches_covers_every_example_once() -> None:
    x = torch.arange(103, dtype=torch.float32).reshape(103, 1, 1, 1)
    y = torch.arange(103)
    batches = list(iterate_batches(x, y, 10, shuffle=True, seed=0))
    assert [len(b[1]) for b in batches] == [10] * 10 + [3]
    ys = torch.cat([b[1] for b in batches])
    assert sorted(ys.tolist()) == list(range(103)) and ys.tolist() != list(range(103))
    assert all(torch.equal(bx.flatten().long(), by) for bx, by in batches)  # pairs stay together
    dropped = list(iterate_batches(x, y, 10, shuffle=True, seed=0, drop_last=True))
    assert [len(b[1]) for b in dropped] == [10] * 10


def test_iterate_batches_order_fixed_by_seed() -> None:
    x, y = torch.rand(50, 1, 2, 2), torch.arange(50)

    def order(seed: int | None) -> list[int]:
        return torch.cat([b for _, b in iterate_batches(x, y, 7, shuffle=True, seed=seed)]).tolist()

    assert order(1) == order(1) and order(1) != order(2)
    torch.manual_seed(0)
    a = order(None)
    torch.manual_seed(0)
    assert order(None) == a  # seed=None follows torch's global seed
    plain = list(iterate_batches(x, y, 7, shuffle=False))
    assert torch.cat([b for _, b in plain]).tolist() == list(range(50))
    assert plain[0][0].data_ptr() == x.data_ptr()  # no shuffle: views, no copies


def test_iterate_batches_with_augmentation_is_reproducible() -> None:
    s = load_dataset("digits", limit_train=300)
    aug = Augmentation(crop_padding=1, flip=True)
    run1 = list(iterate_batches(s.train_x, s.train_y, 64, shuffle=True, seed=3, augment=aug))
    run2 = list(iterate_batches(s.train_x, s.train_y, 64, shuffle=True, seed=3, augment=aug))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(run1, run2))
    assert run1[0][0].shape == (64, 1, 8, 8)
    with pytest.raises(ValueError):
        list(iterate_batches(s.train_x, s.train_y[:-1], 8, shuffle=False))


# --------------------------------------------------------------------------- torchvision sets (fake local files)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, folder: str, n_train: int = 30, n_test: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = images
        out[prefix + "_labels"] = labels
    return out


def test_mnist_from_prepared_local_root(tmp_path: Path) -> None:
    files = _fake_mnist(tmp_path, "MNIST")
    s = load_dataset("mnist", root=tmp_path, val_fraction=0.0)
    assert s.in_shape == (1, 28, 28) and s.classes == [str(i) for i in range(10)]
    assert not s.test_carved and len(s.test_y) == 12 and len(s.train_y) == 30
    assert torch.equal(s.test_x[:, 0], torch.from_numpy(files["t10k"]).float() / 255)  # own test split, stored order
    assert s.test_y.tolist() == files["t10k_labels"].tolist()
    # val and limits on top of the fixed test split
    s2 = load_dataset("mnist", root=str(tmp_path), val_fraction=0.2, limit_test=5)
    assert len(s2.val_y) == 6 and len(s2.train_y) == 24 and len(s2.test_y) == 5


def test_fashion_mnist_from_prepared_local_root(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, "FashionMNIST")
    s = load_dataset("fashion-mnist", root=tmp_path)
    assert s.classes[0] == "T-shirt/top" and s.num_classes == 10


def _fake_cifar(root: Path, per_batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, per_batch))
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": [int(v) for v in labels]}, f)
        out[name] = data
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return out


def test_cifar10_from_prepared_local_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    files = _fake_cifar(tmp_path)
    # the fake files cannot match torchvision's md5 sums
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    s = load_dataset("cifar10", root=tmp_path, val_fraction=0.0)
    assert s.in_shape == (3, 32, 32) and s.classes[0] == "airplane" and len(s.train_y) == 20
    # the rows are R-plane, G-plane, B-plane of 32×32: channel c, pixel (h, w) at c·1024 + h·32 + w
    raw = files["test_batch"][0]
    assert float(s.test_x[0, 1, 2, 3]) == pytest.approx(raw[1 * 1024 + 2 * 32 + 3] / 255)
    assert torch.equal(s.test_x[0], torch.from_numpy(raw.reshape(3, 32, 32)).float() / 255)


def test_svhn_from_prepared_local_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    import torchvision.datasets as tvd

    rng = np.random.default_rng(2)
    for split, n in (("train", 10), ("test", 4)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1)  # SVHN stores digit 0 as label 10
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    s = load_dataset("svhn", root=tmp_path, val_fraction=0.0)
    assert s.in_shape == (3, 32, 32) and len(s.train_y) == 10 and len(s.test_y) == 4
    assert s.test_y.tolist() == [1, 2, 3, 4] and 0 in s.train_y.tolist()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "svhn"])
def test_missing_files_give_one_line_error(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        load_dataset(name, root=missing)
    msg = str(e.value)
    assert str(missing) in msg and "download" in msg and "\n" not in msg and msg.startswith(name)
    with pytest.raises(DataError) as e:  # root exists, files do not
        load_dataset(name, root=tmp_path)
    assert str(tmp_path) in str(e.value) and "download" in str(e.value)
    with pytest.raises(DataError, match="data.root"):
        load_dataset(name)


def test_malformed_mnist_files_are_a_data_error(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"xx")
    with pytest.raises(DataError, match="malformed"):
        load_dataset("mnist", root=tmp_path)


def test_cifar10_error_names_expected_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="incomplete or corrupt"):
        load_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------- imagefolder


def _save(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _pattern(label: int, k: int, h: int = 5, w: int = 6) -> np.ndarray:
    """A distinct RGB image per (class, index); H=5, W=6 so a transposition would show."""
    base = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3)
    return ((base * 3 + 40 * label + 7 * k) % 256).astype(np.uint8)


def _make_tree(root: Path, layout: str = "split", jpeg: bool = True) -> dict[str, np.ndarray]:
    """cat/dog/(bird) images as PNG (exact) plus one JPEG per class; returns PNG arrays."""
    arrays = {}
    splits = ["train", "test"] if layout == "split" else [""]
    for split in splits:
        for label, cls in enumerate(["bird", "cat", "dog"]):
            n = 3 if split != "test" else 2
            for k in range(n):
                rel = f"{split}/{cls}/{k:02d}.png".lstrip("/")
                arr = _pattern(label, k + (10 if split == "test" else 0))
                _save(root / rel, arr)
                arrays[rel] = arr
            if jpeg:
                _save(root / (f"{split}/{cls}/zz.jpg".lstrip("/")), _pattern(label, 99))
    (root / "README.txt").write_text("not an image")
    return arrays


def _load_if(root: Path, cache: Path, **kw):
    return load_dataset("imagefolder", root=root, cache_dir=cache, val_fraction=0.0, **kw)


def test_imagefolder_train_test_layout(tmp_path: Path) -> None:
    arrays = _make_tree(tmp_path / "tree")
    s = _load_if(tmp_path / "tree", tmp_path / "cache")
    assert s.classes == ["bird", "cat", "dog"] and s.in_shape == (3, 5, 6)
    assert not s.test_carved and len(s.train_y) == 12 and len(s.test_y) == 9
    assert s.train_y.bincount().tolist() == [4, 4, 4] and s.test_y.bincount().tolist() == [3, 3, 3]
    # stored order: sorted classes, sorted files; first train file is bird/00.png, exact (PNG)
    expect = torch.from_numpy(arrays["train/bird/00.png"]).permute(2, 0, 1).float() / 255
    assert torch.equal(s.train_x[0], expect) and int(s.train_y[0]) == 0
    expect = torch.from_numpy(arrays["test/dog/01.png"]).permute(2, 0, 1).float() / 255
    assert torch.equal(s.test_x[7], expect) and int(s.test_y[7]) == 2


def test_imagefolder_single_tree_carves_test(tmp_path: Path) -> None:
    _make_tree(tmp_path / "tree", layout="single")
    s = load_dataset("imagefolder", root=tmp_path / "tree", cache_dir=tmp_path / "cache", test_fraction=1 / 3, val_fraction=0.0)
    assert s.test_carved and s.classes == ["bird", "cat", "dog"]
    assert len(s.test_y) == 4 and len(s.train_y) == 8
    assert s.test_y.bincount(minlength=3).min() >= 1


def test_imagefolder_tar_gz_matches_directory(tmp_path: Path) -> None:
    _make_tree(tmp_path / "tree")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="wrapper")  # a wrapper folder is looked through
    from_dir = _load_if(tmp_path / "tree", tmp_path / "cache")
    from_tar = _load_if(archive, tmp_path / "cache")
    assert from_tar.classes == from_dir.classes
    assert torch.equal(from_tar.train_x, from_dir.train_x) and torch.equal(from_tar.test_y, from_dir.test_y)
    # plain .tar of the single-tree layout too
    _make_tree(tmp_path / "single", layout="single", jpeg=False)
    plain = tmp_path / "single.tar"
    with tarfile.open(plain, "w") as tar:
        for p in sorted((tmp_path / "single").rglob("*")):
            tar.add(p, arcname=str(p.relative_to(tmp_path / "single")), recursive=False)
    s = _load_if(plain, tmp_path / "cache")
    assert s.test_carved and s.classes == ["bird", "cat", "dog"]


def test_imagefolder_second_load_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    first = _load_if(tmp_path / "tree", cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temporary files left behind
    mtime = files[0].stat().st_mtime_ns

    def fail(*a, **k):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(imagefolder_mod, "decode_source", fail)
    second = _load_if(tmp_path / "tree", cache)
    assert torch.equal(first.train_x, second.train_x) and first.classes == second.classes
    assert files[0].stat().st_mtime_ns == mtime
    # a changed file changes the key: decoded again
    _save(tmp_path / "tree" / "train" / "cat" / "new.png", _pattern(1, 50))
    with pytest.raises(AssertionError, match="decoded again"):
        _load_if(tmp_path / "tree", cache)


def test_imagefolder_truncated_cache_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    first = _load_if(tmp_path / "tree", cache)
    (path,) = cache.iterdir()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="workbench.data.imagefolder"):
        again = _load_if(tmp_path / "tree", cache)
    assert "rebuilding" in caplog.text
    assert torch.equal(first.train_x, again.train_x)
    assert len(path.read_bytes()) == len(data)  # rewritten whole
    monkeypatch.setattr(imagefolder_mod, "decode_source", None)  # the rebuilt cache is used from now on
    assert torch.equal(_load_if(tmp_path / "tree", cache).test_x, first.test_x)


def test_imagefolder_sizes_and_options(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    _save(root / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    _save(root / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))
    _save(root / "b" / "0.png", np.full((6, 10, 3), 200, np.uint8))
    with pytest.raises(DataError, match="image_size"):
        _load_if(root, tmp_path / "cache")
    s = _load_if(root, tmp_path / "cache", image_size=4, test_fraction=0.34)
    assert s.in_shape == (3, 4, 4)
    g = _load_if(root, tmp_path / "cache", image_size=4, grayscale=True, test_fraction=0.34)
    assert g.in_shape == (1, 4, 4)
    with pytest.raises(DataError, match="image_size"):
        _load_if(root, tmp_path / "cache", image_size=0)


def test_imagefolder_user_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root"):
        load_dataset("imagefolder", cache_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        _load_if(tmp_path / "nope", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        _load_if(tmp_path / "empty", tmp_path / "cache")
    root = tmp_path / "with_empty_class"
    _save(root / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    (root / "b").mkdir()
    with pytest.raises(DataError, match="without images.*b"):
        _load_if(root, tmp_path / "cache")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="neither a directory"):
        _load_if(tmp_path / "file.txt", tmp_path / "cache")
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (bad / "0.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match="cannot decode"):
        _load_if(tmp_path / "bad", tmp_path / "cache")


def test_imagefolder_pil_fallback_gives_the_same_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_tree(tmp_path / "tree")
    fast = _load_if(tmp_path / "tree", tmp_path / "cache_tv")
    # a torchvision without image decoders (they are deprecated since 0.29): PIL decodes
    monkeypatch.setattr(imagefolder_mod, "_torchvision_decoder", lambda: None)
    slow = _load_if(tmp_path / "tree", tmp_path / "cache_pil")
    png = torch.tensor([True, True, True, False] * 3)  # per class: 00.png 01.png 02.png zz.jpg
    assert torch.equal(fast.train_x[png], slow.train_x[png])  # lossless: identical
    assert (fast.train_x - slow.train_x).abs().max() <= 8 / 255  # JPEG: decoders may round differently


def test_imagefolder_symlink_loop_terminates(tmp_path: Path) -> None:
    _make_tree(tmp_path / "tree", layout="single", jpeg=False)
    (tmp_path / "tree" / "cat" / "loop").symlink_to(tmp_path / "tree")
    s = _load_if(tmp_path / "tree", tmp_path / "cache", test_fraction=1 / 3)
    assert s.classes == ["bird", "cat", "dog"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_device_without_cuda_is_a_user_error() -> None:
    with pytest.raises(WorkbenchError, match="CUDA"):
        load_dataset("digits", device="cuda")


@pytest.mark.skipif(not REAL_CIFAR.is_file(), reason=f"{REAL_CIFAR} not present")
def test_real_cifar10_jpeg_tarball(tmp_path: Path) -> None:
    s = load_dataset("imagefolder", root=REAL_CIFAR, cache_dir=tmp_path, limit_train=2000, limit_test=500)
    assert s.classes[:2] == ["airplane", "automobile"] and s.num_classes == 10
    assert s.in_shape == (3, 32, 32) and not s.test_carved
    assert len(s.train_y) == 2000 and len(s.val_y) == 5000 and len(s.test_y) == 500
    assert s.train_y.bincount(minlength=10).tolist() == [200] * 10
    assert 0.4 < s.mean[0] < 0.55 and 0.2 < s.std[0] < 0.3


def test_imagefolder_identity_is_its_content_not_its_path(tmp_path: Path) -> None:
    import shutil

    from workbench.study import DataConfig
    from workbench.training.loop import data_identity

    _make_tree(tmp_path / "tree")
    shutil.copytree(tmp_path / "tree", tmp_path / "copy")
    a = _load_if(tmp_path / "tree", tmp_path / "cache")
    b = _load_if(tmp_path / "copy", tmp_path / "cache")
    assert a.digest and len(a.digest) == 64 and a.digest == b.digest  # a moved copy: same models
    cached = _load_if(tmp_path / "tree", tmp_path / "cache")  # digest read back from the decode cache
    assert cached.digest == a.digest
    # a decode cache written before digests existed gets its digest once, and keeps it
    (path,) = [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".pt" and "-tree-" in p.name]
    payload = torch.load(path, weights_only=True)
    payload.pop("digest")
    torch.save(payload, path)
    assert _load_if(tmp_path / "tree", tmp_path / "cache").digest == a.digest
    assert torch.load(path, weights_only=True)["digest"] == a.digest
    cfg_a = DataConfig(name="imagefolder", root=str(tmp_path / "tree"))
    cfg_b = DataConfig(name="imagefolder", root=str(tmp_path / "copy"))
    assert data_identity(cfg_a, a) == data_identity(cfg_b, b)
    assert "root" not in data_identity(cfg_a, a)
    # one changed pixel in one image: another data set, so other model keys
    _save(tmp_path / "copy" / "train" / "cat" / "00.png", _pattern(1, 0) ^ np.uint8(1))
    c = _load_if(tmp_path / "copy", tmp_path / "cache")
    assert c.digest != a.digest
    assert data_identity(cfg_b, c) != data_identity(cfg_a, a)
    # named data sets are fixed by their name: no digest, no root in the identity
    d = load_dataset("digits", val_fraction=0.0)
    assert d.digest is None and "root" not in data_identity(DataConfig(name="digits"), d)

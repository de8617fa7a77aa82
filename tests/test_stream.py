"""Streamed data (data.stream): the same splits, batches and trained weights as in memory;
resuming mid-epoch; the imagenet folder layout; when streaming is chosen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import Augmentation, iterate_batches, load_dataset
from workbench.data import stream as stream_mod
from workbench.data.stream import StreamedImages
from workbench.errors import WorkbenchError
from workbench.store import ModelStore
from workbench.study import study_from_dict
from workbench.training import TrainJob, fit
from workbench.training.loop import data_identity


def _save(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(root: Path, layout: str = "split", n: int = 14, classes=("bird", "cat", "dog")) -> Path:
    """PNG images (exact pixels), 10×12 RGB, distinct per (class, index), plus one JPEG per class."""
    rng = np.random.default_rng(0)
    splits = {"split": ["train", "test"], "tree": [""], "imagenet": ["train", "val"]}[layout]
    for split in splits:
        for c in classes:
            for k in range(n if split in ("", "train") else 4):
                _save(root / split / c / f"{k:03d}.png", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
            _save(root / split / c / "zz.jpg", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("imgs"))


def _load(root: Path, cache: Path, stream, **kw):
    return load_dataset("imagefolder", root=root, cache_dir=cache, seed=3, val_fraction=0.2, stream=stream, workers=0, **kw)


def test_streamed_splits_equal_the_in_memory_ones(folder: Path, tmp_path: Path) -> None:
    mem = _load(folder, tmp_path, False)
    st = _load(folder, tmp_path, True)
    assert st.streamed and not mem.streamed
    assert isinstance(st.train_x, StreamedImages)
    for name in ("train", "val", "test"):
        assert torch.equal(st.indices[name], mem.indices[name])
    assert st.mean == mem.mean and st.std == mem.std
    assert st.in_shape == mem.in_shape and st.classes == mem.classes
    for xs, xm, ys, ym in ((st.train_x, mem.train_x, st.train_y, mem.train_y), (st.val_x, mem.val_x, st.val_y, mem.val_y),
                           (st.test_x, mem.test_x, st.test_y, mem.test_y)):
        assert torch.equal(xs.load(), xm) and torch.equal(ys, ym)
        idx = torch.tensor([len(ym) - 1, 0])
        assert torch.equal(xs[idx], xm[idx]) and torch.equal(xs[1:3], xm[1:3])
    # the test split carved from a single tree indexes the training pool
    tree = _folder(tmp_path / "tree", "tree", n=6)
    a, b = _load(tree, tmp_path, False), _load(tree, tmp_path, True)
    assert b.test_carved and torch.equal(b.test_x.load(), a.test_x)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_epochs_give_identical_batches(folder: Path, tmp_path: Path, workers: int) -> None:
    mem = _load(folder, tmp_path, False)
    st = load_dataset("imagefolder", root=folder, cache_dir=tmp_path, seed=3, val_fraction=0.2, stream=True, workers=workers)
    aug = Augmentation(crop_padding=2, flip=True)
    for seed in (5, 6):
        kw = dict(shuffle=True, seed=seed, augment=aug, drop_last=True)
        got = list(iterate_batches(st.train_x, st.train_y, 8, **kw))
        want = list(iterate_batches(mem.train_x, mem.train_y, 8, **kw))
        assert len(got) == len(want) == len(mem.train_y) // 8
        for (gx, gy), (wx, wy) in zip(got, want):
            assert torch.equal(gx, wx) and torch.equal(gy, wy)
    # another seed gives other batches (the comparison above can fail)
    other = next(iter(iterate_batches(st.train_x, st.train_y, 8, shuffle=True, seed=7, augment=aug)))[0]
    assert not torch.equal(other, got[0][0])


@pytest.mark.parametrize("streamed", [False, True])
def test_start_batch_and_shards_continue_the_same_epoch(folder: Path, tmp_path: Path, streamed: bool) -> None:
    d = _load(folder, tmp_path, streamed)
    aug = Augmentation(crop_padding=2, flip=True)
    kw = dict(shuffle=True, seed=11, augment=aug, drop_last=True)
    full = list(iterate_batches(d.train_x, d.train_y, 8, **kw))
    tail = list(iterate_batches(d.train_x, d.train_y, 8, start_batch=2, **kw))
    assert len(tail) == len(full) - 2
    for (a, ay), (b, by) in zip(tail, full[2:]):
        assert torch.equal(a, b) and torch.equal(ay, by)
    # two ranks' shares of every batch, side by side, are the batch one process gets
    shards = [list(iterate_batches(d.train_x, d.train_y, 8, shard=(r, 2), **kw)) for r in range(2)]
    for (x0, y0), (x1, y1), (x, y) in zip(*shards, full):
        assert x0.shape[0] == 4 and torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def _tiny(root: Path, stream: bool, **train) -> object:
    return study_from_dict({
        "name": "tiny-stream",
        "seed": 3,
        "data": {"name": "imagefolder", "root": str(root), "val_fraction": 0.2, "stream": stream, "workers": 0,
                 "augment": {"crop_padding": 2, "flip": True}},
        "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 16}}],
        "recipes": [{"name": "pgd_at", "eps": 0.05, "steps": 2}],
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "monitor_examples": 8, "monitor_steps": 2, **train},
        "evaluation": {"examples": 8, "eps": [0.05], "soundness": {"enabled": False}},
        "report": {"enabled": False},
    })


def _fit(study, data, store_dir: Path, **kw):
    job = TrainJob(study.models()[0], data_identity(study.data, data), 0.05)
    return fit(job, data, ModelStore(store_dir), "cpu", **kw)


def test_streamed_training_gives_the_in_memory_weights(folder: Path, tmp_path: Path) -> None:
    from workbench.runner import load_study_data

    results = []
    for stream in (False, True):
        study = _tiny(folder, stream)
        data = load_study_data(study, torch.device("cpu"))
        assert data.streamed is stream
        results.append(_fit(study, data, tmp_path / f"store-{stream}"))
    a, b = (r.model.state_dict() for r in results)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert results[0].history.drop(columns="seconds").equals(results[1].history.drop(columns="seconds"))
    # the data identity ignores how the data is read
    assert "stream" not in data_identity(_tiny(folder, True).data) and "workers" not in data_identity(_tiny(folder, True).data)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("stream", [False, True])
def test_resume_mid_epoch_equals_uninterrupted(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               stream: bool) -> None:
    from workbench.runner import load_study_data

    study = _tiny(folder, stream, checkpoint_steps=2)
    data = load_study_data(study, torch.device("cpu"))
    whole = _fit(study, data, tmp_path / "whole")
    steps_per_epoch = len(data.train_y) // 8
    assert steps_per_epoch > 2  # a checkpoint falls inside the epoch

    saved: list[dict] = []
    real = ModelStore.save_checkpoint

    def dies_after_a_mid_epoch_checkpoint(self, key, state):
        real(self, key, state)
        saved.append({"epoch": state["epoch"], "step": state.get("step", 0)})
        if state["epoch"] == 1 and state.get("step"):  # inside the second epoch
            raise _Killed

    monkeypatch.setattr(ModelStore, "save_checkpoint", dies_after_a_mid_epoch_checkpoint)
    with pytest.raises(_Killed):
        _fit(study, data, tmp_path / "cut")
    assert saved[-1] == {"epoch": 1, "step": 2}
    monkeypatch.setattr(ModelStore, "save_checkpoint", real)
    resumed = _fit(study, data, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    cols = [c for c in whole.history.columns if c != "seconds"]
    assert whole.history[cols].equals(resumed.history[cols])


def test_imagenet_layout_streams_by_default(tmp_path: Path) -> None:
    root = _folder(tmp_path / "inet", "imagenet", n=5, classes=("n01440764", "n01443537"))
    d = load_dataset("imagenet", root=root, cache_dir=tmp_path, val_fraction=0.2, stream=None, workers=0, image_size=8)
    assert d.streamed and d.classes == ["n01440764", "n01443537"]
    assert len(d.test_y) == 2 * 5 and d.in_shape == (3, 8, 8)  # val/ is the test split
    mem = load_dataset("imagenet", root=root, cache_dir=tmp_path, val_fraction=0.2, stream=False, image_size=8)
    assert torch.equal(d.test_x.load(), mem.test_x) and torch.equal(d.train_x.load(), mem.train_x)
    with pytest.raises(WorkbenchError, match="train/<synset>/ and val/<synset>/"):
        load_dataset("imagenet", root=root / "train", cache_dir=tmp_path)


def test_auto_streams_beyond_the_memory_budget(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _load(folder, tmp_path, None).streamed  # a few KB fit
    monkeypatch.setattr(stream_mod, "memory_budget", lambda device: 1000)
    assert _load(folder, tmp_path, None).streamed
    with pytest.raises(WorkbenchError, match="data.stream"):
        load_dataset("digits", stream=True)


def test_imagenet_study_is_the_declared_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.runner import load_study_data
    from workbench.study import load_study

    path = Path(__file__).resolve().parents[1] / "studies" / "imagenet_pgd_at.yaml"
    s = load_study(path)
    assert [m.arch.name for m in s.models()] == ["torchvision:resnet50"] * 2
    assert [m.recipe.name for m in s.models()] == ["standard", "pgd_at"]
    pgd = s.models()[1].recipe
    assert pgd.norm == "linf" and pgd.eps == pytest.approx(4 / 255) and s.main_eps() == pytest.approx(4 / 255)
    assert s.data.name == "imagenet" and s.data.stream is True
    assert s.cluster.gpus_per_job == 8 and s.train.batch_size % 8 == 0  # the global batch splits over 8 ranks
    # its data section reads a local ImageNet folder ($IMAGENET) by streaming
    root = _folder(tmp_path / "inet", "imagenet", n=5, classes=("n01440764", "n01443537"))
    monkeypatch.setenv("IMAGENET", str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s = load_study(path, ["data.options.image_size=8", "data.workers=0"])
    data = load_study_data(s, torch.device("cpu"))
    assert data.streamed and data.num_classes == 2 and data.in_shape == (3, 8, 8)

"""data.decode: the streamed images' bytes read by the workers and decoded in a batch in the
main process (nvjpeg on a GPU; here the same path on the CPU) give the batches the workers'
own decoding gives; GPU decoding enters the model key, CPU decoding leaves it as it was; gpu
without CUDA is a one-line user error."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import Augmentation, iterate_batches, load_dataset
from workbench.data import stream as stream_mod
from workbench.data.stream import FileBytes, StreamedImages, imagefolder_files, load_streamed, resolve_decode
from workbench.errors import DataError, TrainingError, WorkbenchError
from workbench.store import ModelStore
from workbench.study import study_from_dict
from workbench.training import TrainJob, fit
from workbench.training.loop import data_identity

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16  # every image: shorter side resized to 16 (antialiased), then the central 16×16, as imagenet does


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like image (smooth gradients and a little noise), so JPEG keeps most of it."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)), xx * yy], -1)
    return ((base * 0.5 + 0.5) * 220 + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _jpeg_folder(root: Path, per_class: int = 10, subsampling: int = 2) -> Path:
    """train/ and test/ of JPEGs in three sizes (so the resize and the crop both act), one
    grayscale JPEG and one PNG per class (the CPU fallback)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    sizes = [(20, 28), (24, 18), (16, 16)]
    for split, n in (("train", per_class), ("test", 3)):
        for c in ("ant", "bee", "cow"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                h, w = sizes[k % 3]
                Image.fromarray(_smooth(rng, h, w)).save(d / f"{k:03d}.jpg", quality=90, subsampling=subsampling)
            Image.fromarray(_smooth(rng, 18, 22)[..., 0]).save(d / "gray.jpg", quality=90)
            Image.fromarray(_smooth(rng, 22, 19)).save(d / "zz.png")
    return root


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    return _jpeg_folder(tmp_path_factory.mktemp("jpegs"))


def _streamed(root: Path, cache: Path, workers: int, decode_device: torch.device | None):
    files = imagefolder_files(root, cache, image_size=SIZE)
    return load_streamed("imagefolder", files, torch.device("cpu"), seed=3, val_fraction=0.2, test_fraction=0.2,
                         limit_train=None, limit_test=None, workers=workers, cache_dir=cache,
                         _decode_device=decode_device)


@pytest.mark.parametrize("workers", [0, 2])
def test_bytes_decoded_in_the_main_process_equal_the_workers_decoding(jpegs: Path, tmp_path: Path, workers: int) -> None:
    cpu = torch.device("cpu")
    want = _streamed(jpegs, tmp_path, workers, None)
    got = _streamed(jpegs, tmp_path, workers, cpu)
    assert got.train_x.decode_device == cpu and want.train_x.decode_device is None
    assert got.decode == want.decode == "cpu"  # libjpeg-turbo either way: the same pixels, the same key
    names = [want.train_x.files.rels[p] for p in want.train_x.positions.tolist()]
    assert any(n.endswith(".png") for n in names) and any(n.endswith("gray.jpg") for n in names)
    aug = Augmentation(crop_padding=2, flip=True)
    for seed in (5, 6):
        kw = dict(shuffle=True, seed=seed, augment=aug, drop_last=False)
        a = list(iterate_batches(got.train_x, got.train_y, 7, **kw))
        b = list(iterate_batches(want.train_x, want.train_y, 7, **kw))
        assert len(a) == len(b) == -(-len(want.train_y) // 7)
        for (ax, ay), (bx, by) in zip(a, b):
            assert ax.shape[1:] == (3, SIZE, SIZE) and ax.dtype == torch.float32
            assert torch.equal(ax, bx) and torch.equal(ay, by)
    # the evaluation's subsets (StreamedImages._decode) take the same path
    for split in ("train_x", "val_x", "test_x"):
        assert torch.equal(getattr(got, split).load(), getattr(want, split).load())
    idx = torch.tensor([len(got.test_y) - 1, 0, 2])
    assert torch.equal(got.test_x[idx], want.test_x[idx]) and torch.equal(got.test_x.subset(idx).load(), want.test_x[idx])
    # and the in-memory decoding of the same folder
    mem = load_dataset("imagefolder", root=jpegs, cache_dir=tmp_path, seed=3, val_fraction=0.2, stream=False,
                       image_size=SIZE)
    assert torch.equal(got.train_x.load(), mem.train_x)


def test_a_jpeg_the_device_decoder_rejects_falls_back_to_the_cpu(jpegs: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.io

    want = _streamed(jpegs, tmp_path, 0, None).train_x
    got = _streamed(jpegs, tmp_path, 0, torch.device("cpu")).train_x
    first = [int(p) for p in got.positions[:6]]
    jpg = next(p for p in first if got.files.rels[p].endswith(".jpg"))
    reject = FileBytes(got.files)[jpg]  # as if nvjpeg could not read this one
    real = torchvision.io.decode_jpeg
    calls = []

    def picky(data, **kw):
        calls.append(len(data) if isinstance(data, list) else 1)
        for d in data if isinstance(data, list) else [data]:
            if torch.equal(d, reject):
                raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    assert torch.equal(got[0:6], want[0:6])
    assert calls[0] > 1 and 1 in calls[1:]  # the batch call failed, then each file alone


def test_unreadable_images_are_named_as_on_the_cpu_path(jpegs: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(jpegs, root)
    victim = root / "train" / "bee" / "001.jpg"
    loaded = [_streamed(root, tmp_path / "c", 0, dd) for dd in (None, torch.device("cpu"))]
    victim.write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 10)  # after loading: read when decoded
    messages = []
    for d in loaded:
        with pytest.raises(DataError) as e:
            [s.load() for s in (d.train_x, d.val_x, d.test_x)]
        messages.append(e.value.one_line())
    assert messages[0] == messages[1] and str(victim) in messages[0] and "cannot decode" in messages[0]


def _study(root: Path, decode: str | None = None):
    data = {"name": "imagefolder", "root": str(root), "val_fraction": 0.2, "stream": True, "workers": 0,
            "options": {"image_size": SIZE}}
    if decode is not None:
        data["decode"] = decode
    return study_from_dict({
        "name": "tiny-decode", "seed": 3, "data": data,
        "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 16}}],
        "recipes": ["standard"],
        "train": {"epochs": 1, "batch_size": 8, "monitor_examples": 8, "monitor_steps": 1},
        "evaluation": {"examples": 8, "eps": [0.05], "soundness": {"enabled": False}},
        "report": {"enabled": False},
    })


#: the data identity's fields before data.decode existed (main at 737defd): the key of every
#: existing model is a hash of these, so CPU decoding must give exactly them
IDENTITY_FIELDS = {"name", "val_fraction", "test_fraction", "limit_train", "augment", "options", "content"}


def test_gpu_decoding_enters_the_model_key_cpu_decoding_leaves_it(jpegs: Path, tmp_path: Path) -> None:
    keys = {}
    for decode in (None, "auto", "cpu"):
        study = _study(jpegs, decode)
        data = load_dataset("imagefolder", root=jpegs, cache_dir=tmp_path, seed=3, val_fraction=0.2, stream=True,
                            workers=0, image_size=SIZE, decode=study.data.decode)
        assert data.decode == "cpu"  # auto on the CPU: the workers decode
        ident = data_identity(study.data, data)
        assert set(ident) == IDENTITY_FIELDS and ident["content"] == data.digest
        keys[decode] = TrainJob(study.models()[0], ident, 0.05).key()
    assert len(set(keys.values())) == 1
    gpu_data = dataclasses.replace(data, decode="gpu")  # what a CUDA machine's auto or gpu loads
    gpu_ident = data_identity(study.data, gpu_data)
    assert gpu_ident == {**data_identity(study.data, data), "decode": "gpu"}
    job = TrainJob(study.models()[0], gpu_ident, 0.05)
    assert job.key() != keys["cpu"]
    # without loaded data the study's word decides
    assert data_identity(_study(jpegs, "gpu").data).get("decode") == "gpu"
    assert "decode" not in data_identity(_study(jpegs, "cpu").data)
    # a model keyed for GPU-decoded pixels is not trained on CPU-decoded ones
    with pytest.raises(TrainingError, match="data.decode"):
        fit(job, data, ModelStore(tmp_path / "store"), "cpu")


def test_decode_gpu_without_cuda_is_one_clear_error(jpegs: Path, tmp_path: Path, monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(WorkbenchError, match="data.decode: gpu decodes JPEGs on a CUDA device"):
        load_dataset("imagefolder", root=jpegs, cache_dir=tmp_path, stream=True, workers=0, decode="gpu")
    with pytest.raises(WorkbenchError, match="data.decode: must be one of auto, cpu, gpu"):
        resolve_decode("nvjpeg", torch.device("cpu"))
    assert resolve_decode("auto", torch.device("cpu")) == "cpu"
    study = tmp_path / "s.yaml"
    study.write_text(_study(jpegs, "gpu").to_yaml())
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "run", str(study), "--out", str(tmp_path / "run"),
                           "--no-report", "-q"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**__import__("os").environ, "WORKBENCH_STORE": str(tmp_path / "store"),
                               "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: data.decode: gpu") and "CUDA" in lines[0]
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("model.pt"))


def test_a_cuda_machine_without_nvjpeg_falls_back_or_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_mod, "cuda_jpeg_unavailable", lambda device: "RuntimeError: not compiled with nvjpeg")
    cuda = torch.device("cuda", 0)  # only its type is read before the (replaced) probe
    assert resolve_decode("auto", cuda) == "cpu"
    with pytest.raises(DataError, match="data.decode: gpu: this torchvision cannot decode JPEGs on cuda:0"):
        resolve_decode("gpu", cuda)
    monkeypatch.setattr(stream_mod, "cuda_jpeg_unavailable", lambda device: None)
    assert resolve_decode("auto", cuda) == resolve_decode("gpu", cuda) == "gpu"
    assert resolve_decode("cpu", cuda) == "cpu"


def test_gpu_on_data_held_in_memory_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_mod, "resolve_decode", lambda decode, device: "gpu")  # as on a CUDA machine
    with pytest.raises(DataError, match="data.decode: gpu decodes streamed images; digits is held in memory"):
        load_dataset("digits", decode="gpu")


#: nvjpeg against libjpeg-turbo on 4:4:4 JPEGs at quality 90, then the antialiased resize on
#: each device, in [0, 255] levels. Both IDCTs are accurate to about one level per pixel
#: (IEEE 1180-style accuracy) and the resize adds at most one level of float rounding, so
#: the mean must stay under one level and no pixel may move by more than 8. UNVERIFIED: no
#: GPU was available where this was written; the first CUDA run of this test checks it.
GPU_MEAN_LEVELS, GPU_MAX_LEVELS = 1.0, 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvjpeg)")
def test_gpu_decoded_batches_are_close_to_the_cpu_decoded_ones(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path / "444", subsampling=0)
    dev = torch.device("cuda")
    if stream_mod.cuda_jpeg_unavailable(str(dev)) is not None:
        pytest.skip(f"this torchvision cannot decode JPEGs on CUDA: {stream_mod.cuda_jpeg_unavailable(str(dev))}")
    kw = dict(root=root, cache_dir=tmp_path, seed=3, val_fraction=0.2, stream=True, workers=2, image_size=SIZE, device=dev)
    gpu = load_dataset("imagefolder", decode="auto", **kw)
    cpu = load_dataset("imagefolder", decode="cpu", **kw)
    assert gpu.decode == "gpu" and cpu.decode == "cpu" and gpu.train_x.decode_device == dev
    diffs = []
    for (gx, gy), (cx, cy) in zip(iterate_batches(gpu.train_x, gpu.train_y, 8, shuffle=True, seed=1),
                                  iterate_batches(cpu.train_x, cpu.train_y, 8, shuffle=True, seed=1)):
        assert gx.is_cuda and gx.shape == cx.shape and torch.equal(gy, cy)
        diffs.append(((gx - cx) * 255).abs().flatten())
    d = torch.cat(diffs)
    assert d.mean().item() < GPU_MEAN_LEVELS and d.max().item() <= GPU_MAX_LEVELS, (d.mean().item(), d.max().item())
    e = ((gpu.test_x.load() - cpu.test_x.load()) * 255).abs()
    assert e.mean().item() < GPU_MEAN_LEVELS and e.max().item() <= GPU_MAX_LEVELS


@pytest.mark.parametrize("decode", ["auto", "gpu"])
def test_a_cluster_driver_hands_its_jobs_the_mode_their_keys_say(jpegs: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, decode: str) -> None:
    pytest.importorskip("submitit")
    from workbench import cluster, grid

    seen: dict[str, object] = {}

    class Driver:
        def train(self, jobs, study_dict, *, retrain, wait):
            seen["jobs"], seen["train"] = jobs, study_dict

        def stages(self, task):
            seen["stages"] = task.study_dict
            return {"path": task.out}

    class Executor:  # records what the driver submits instead of submitting it
        def __init__(self, options, board):
            pass

        def driver(self, store_root, name, progress):
            return Driver()

    monkeypatch.setattr(cluster.EXECUTORS, "get", lambda kind: Executor)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    study = _study(jpegs, decode)
    grid.run_grid(study, tmp_path / "run", cluster.ClusterOptions.from_study(study, "local"), store=tmp_path / "s")
    # auto cannot be resolved for GPUs the driver does not see: the jobs decode on the CPU,
    # as the keys say; gpu stays gpu (the driver on a CPU does not refuse it)
    want = "cpu" if decode == "auto" else "gpu"
    assert seen["train"]["data"]["decode"] == seen["stages"]["data"]["decode"] == want
    assert all(j.data.get("decode", "cpu") == want for j in seen["jobs"])

"""Streamed image data: splits whose images are read from their files batch by batch.

A data set read from image files (``imagefolder`` folders, ``imagenet``) streams when the
study asks for it (``data.stream: true``) or, by default, when its decoded float32 images
would not fit the device's memory budget (:func:`should_stream`). Then nothing is decoded
up front: the splits hold :class:`StreamedImages`, which decode the examples they are
asked for, and training epochs are read by a torch ``DataLoader`` (worker processes,
pinned memory on CUDA) with augmentation on the device.

The streamed path is built to give the same batches as the in-memory one: the splits are
drawn from the labels by the same function (:func:`~.base.split_indices`), the epoch
permutation and the augmentation come from the same seeded generators
(:func:`~.batches.iterate_batches`), and each image is decoded by the same decoder, then
converted to [0, 1] the same way. So pairs see the same batches in the same order, and a
tiny model trained on the CPU from either ends with the same weights (tested).

With ``data.decode: gpu`` (or ``auto`` on a CUDA device whose torchvision decodes JPEGs
there) the workers only read each file's bytes; the main process decodes a batch's JPEGs
together on the device (``torchvision.io.decode_jpeg``, nvjpeg) and resizes them there, and
every other file (PNG, or a JPEG the device decoder rejects) goes through the CPU decoder.
nvjpeg's pixels differ from libjpeg-turbo's by a few levels, so that mode is part of the
data identity (:attr:`~.base.DataSplits.decode`).

Channel statistics (the model's normalisation) are those of the whole training split,
computed exactly as in memory when the split's float32 images take at most
``EXACT_STATS_BYTES``; beyond that from a seeded class-stratified sample of
``STATS_SAMPLE`` training images in float64, cached next to the decode cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..store import atomic_write_text
from .base import (
    DATASETS, DataSplits, RawData, _channel_stats, _generator, content_digest, split_indices, stratified_pick, stream_source,
)
from .batches import Augmentation, stream_batches  # noqa: F401  (stream_batches: part of this module's API)
from .imagefolder import (
    _JPEG_MAGIC,
    _decode_all,
    _decode_one,
    _DirSource,
    _File,
    _quiet_torchvision_deprecation,
    _resize,
    default_cache_dir,
    plan_layout,
)

log = logging.getLogger(__name__)

#: up to this many bytes of float32 training images the statistics are computed exactly as in memory
EXACT_STATS_BYTES = 2 << 30
#: training images the channel statistics are estimated from above that size
STATS_SAMPLE = 50_000
#: share of the device memory (CUDA) or of the machine's RAM (CPU) data sets may take in memory
MEMORY_SHARE = 0.4
#: what data.decode may say; each resolves to "cpu" or "gpu" (:func:`resolve_decode`)
DECODE_MODES = ("auto", "cpu", "gpu")
#: JPEGs per device decode call when a subset is decoded at once (bounds the device memory it takes)
DECODE_CHUNK = 256
#: part of a streamed data set's identity: bumped when the decoding changes what the model
#: sees (v2: 16-bit images scaled to [0, 1] instead of reaching the model as 0-65535)
DECODE_VERSION = b"decode-v2"


@dataclass
class FileSet:
    """The images of a data set as files: relative paths and labels, in stored order."""

    name: str
    root: Path
    classes: list[str]
    train: list[str]
    train_y: torch.Tensor
    test: list[str] | None
    test_y: torch.Tensor | None
    image_size: int | None = None
    grayscale: bool = False

    def decoder(self) -> ImageFiles:
        return ImageFiles(self.root, self.train + (self.test or []), self.image_size, self.grayscale, self.name)

    def fingerprint(self, stats: list[tuple[int, int]] | None = None) -> str:
        """Hash of the listing with every file's size and mtime (for caches of what is derived);
        ``stats``: those of :func:`file_stats`, taken once."""
        h = hashlib.sha256(repr((self.name, str(self.root), self.image_size, self.grayscale, self.classes)).encode())
        rels = self.train + (self.test or [])
        for rel, (size, mtime) in zip(rels, stats if stats is not None else file_stats(self.root, rels)):
            h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        h.update(self.train_y.numpy().tobytes())
        if self.test_y is not None:
            h.update(b"test" + self.test_y.numpy().tobytes())
        return h.hexdigest()


def file_stats(root: Path, rels: list[str]) -> list[tuple[int, int]]:
    """(size, mtime in ns) of every file; (-1, -1) for one that is gone."""
    def one(rel: str) -> tuple[int, int]:
        try:
            st = (root / rel).stat()
        except OSError:
            return (-1, -1)
        return (st.st_size, st.st_mtime_ns)

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # stat releases the GIL
        return list(pool.map(one, rels, chunksize=1024))


class ImageFiles(torch.utils.data.Dataset):
    """Decoded uint8 (C, H, W) images of a list of files, one per index (picklable, so
    DataLoader workers can hold it).

    ``pinned``: every file's (size, mtime) when the data set was loaded, from which its
    identity (the model keys) was derived; :meth:`changed` lists the files that differ now."""

    def __init__(self, root: Path, rels: list[str], image_size: int | None, grayscale: bool, name: str):
        self.root, self.rels, self.image_size, self.grayscale, self.name = root, rels, image_size, grayscale, name
        self.shape: tuple[int, ...] | None = None
        self.pinned: list[tuple[int, int]] | None = None

    def changed(self) -> list[str]:
        """The files (full paths) whose size or mtime differ from :attr:`pinned`, or that are gone."""
        if self.pinned is None:
            return []
        now = file_stats(self.root, self.rels)
        return [str(self.root / rel) for rel, a, b in zip(self.rels, self.pinned, now) if a != b]

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> torch.Tensor:
        _quiet_torchvision_deprecation()
        rel = self.rels[i]
        return self._cpu(i, _File(rel, (self.root / rel).read_bytes))

    def _cpu(self, i: int, f: _File) -> torch.Tensor:
        img = _decode_one(f, image_size=self.image_size, grayscale=self.grayscale, where=str(self.root))
        self._check(i, img)
        return img

    def _check(self, i: int, img: torch.Tensor) -> None:
        if self.shape is not None and tuple(img.shape) != self.shape:
            raise DataError(
                f"{self.name}: {self.root / self.rels[i]} is {img.shape[-1]}×{img.shape[-2]}, other images "
                f"{self.shape[-1]}×{self.shape[-2]}; set data.options.image_size to resize them all"
            )

    def read_bytes(self, i: int) -> bytes:
        return (self.root / self.rels[i]).read_bytes()

    def decode_bytes(self, pos: list[int], data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        """The images at ``pos`` from their bytes (:class:`FileBytes`): the JPEGs decoded
        together on ``device`` (nvjpeg on CUDA) and resized there; any other file (PNG, or a
        JPEG the device decoder rejects) by the CPU path of :meth:`__getitem__`, then moved."""
        # torchvision takes seconds to import; only image decoding and its models need it
        from torchvision.io import ImageReadMode, decode_jpeg

        _quiet_torchvision_deprecation()
        mode = ImageReadMode.GRAY if self.grayscale else ImageReadMode.RGB
        out: list[torch.Tensor | None] = [None] * len(data)
        jpeg = [k for k, d in enumerate(data) if d[:3].numpy().tobytes() == _JPEG_MAGIC]
        if jpeg:
            try:
                decoded: list[torch.Tensor | None] = list(decode_jpeg([data[k] for k in jpeg], mode=mode, device=device))
            except Exception:  # noqa: BLE001 - one bad file fails the batch call: find it alone
                decoded = [_try_decode_jpeg(data[k], mode, device) for k in jpeg]
            for k, img in zip(jpeg, decoded):
                if img is not None:
                    img = _resize(img, self.image_size) if self.image_size is not None else img
                    self._check(pos[k], img)
                    out[k] = img
        for k, img in enumerate(out):
            if img is None:
                raw = data[k].numpy().tobytes()
                out[k] = self._cpu(pos[k], _File(self.rels[pos[k]], lambda raw=raw: raw)).to(device)
        return out  # type: ignore[return-value]


def _try_decode_jpeg(data: torch.Tensor, mode: Any, device: torch.device) -> torch.Tensor | None:
    # torchvision takes seconds to import; only image decoding and its models need it
    from torchvision.io import decode_jpeg

    try:
        return decode_jpeg(data, mode=mode, device=device)
    except Exception:  # noqa: BLE001 - the CPU path decodes it or reports it by name
        return None


class FileBytes(torch.utils.data.Dataset):
    """The bytes of :class:`ImageFiles`' files as 1-D uint8 tensors: what DataLoader workers
    read when the main process decodes on the device (picklable)."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        rel = self.files.rels[i]
        try:
            data = (self.files.root / rel).read_bytes()
        except OSError as e:  # the message the CPU path gives
            raise DataError(f"imagefolder: cannot read {self.files.root}/{rel}: {e}") from None
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _as_list(items: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(items)


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images)


class StreamedImages:
    """A split's images, decoded when asked for: ``x[i:j]`` or ``x[index_tensor]`` gives a
    float32 [0, 1] tensor on ``device``; :meth:`batches` reads an epoch through a
    DataLoader. Behaves like the in-memory tensor where the workbench reads it
    (``len``, ``shape``, ``device``, ``is_cuda``, slicing).

    ``decode_device``: None decodes each file where it is read (DataLoader workers,
    threads); a device reads only the bytes there and decodes them in this process on that
    device (:meth:`ImageFiles.decode_bytes`; CUDA for data.decode gpu, the CPU in tests)."""

    dtype = torch.float32

    def __init__(self, files: ImageFiles, positions: torch.Tensor, shape: tuple[int, int, int], device: torch.device,
                 workers: int = 4, decode_device: torch.device | None = None):
        self.files, self.positions, self.item_shape, self.device, self.workers = files, positions, shape, device, workers
        self.decode_device = decode_device

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.item_shape))

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def subset(self, idx: torch.Tensor) -> StreamedImages:
        """The examples at ``idx`` (positions in this split), still undecoded."""
        return StreamedImages(self.files, self.positions[idx.cpu()], self.item_shape, self.device, self.workers,
                              self.decode_device)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, slice):
            pos = self.positions[key]
        else:
            pos = self.positions[torch.as_tensor(key).cpu()]
        return self._decode(pos.tolist())

    def load(self) -> torch.Tensor:
        """Every example, decoded (for stages that need the whole subset at once)."""
        return self._decode(self.positions.tolist())

    def _decode(self, pos: list[int]) -> torch.Tensor:
        if not pos:
            return torch.zeros((0, *self.item_shape), device=self.device)
        threads = max(1, min(self.workers or 1, 16, len(pos) // 32 or 1))
        read = self.files.__getitem__ if self.decode_device is None else FileBytes(self.files).__getitem__
        if threads == 1:
            items = [read(i) for i in pos]
        else:  # torchvision's decoders and file reads release the GIL
            with ThreadPoolExecutor(threads) as pool:
                items = list(pool.map(read, pos))
        if self.decode_device is not None:  # the same device decoder the training batches use
            items = [img for k in range(0, len(pos), DECODE_CHUNK)
                     for img in self.files.decode_bytes(pos[k:k + DECODE_CHUNK], items[k:k + DECODE_CHUNK],
                                                        self.decode_device)]
        return to_unit_float(torch.stack(items), self.device)

    def batches(self, order: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Decoded batches of the given (split-local) index lists, in that order, read ahead
        by ``workers`` DataLoader processes (none: in this process)."""
        batch_pos = [self.positions[b.cpu()].tolist() for b in order]
        if not batch_pos:
            return iter(())
        on_device = self.decode_device is not None
        loader = torch.utils.data.DataLoader(
            FileBytes(self.files) if on_device else self.files,
            batch_sampler=batch_pos,
            num_workers=self.workers,
            collate_fn=_as_list if on_device else _stack,
            pin_memory=self.is_cuda,
            prefetch_factor=4 if self.workers else None,
            persistent_workers=False,
            # its own generator: the loader's worker seed must not be drawn from torch's
            # global one, which the training's attack starts and dropout read
            generator=torch.Generator().manual_seed(0),
        )
        if on_device:
            return (to_unit_float(torch.stack(self.files.decode_bytes(pos, b, self.decode_device)), self.device)
                    for pos, b in zip(batch_pos, _worker_errors(loader)))
        return (to_unit_float(b, self.device) for b in _worker_errors(loader))


def _worker_errors(loader: Iterable[Any]) -> Iterator[Any]:
    """The loader's batches; a DataError raised in a worker comes back from torch as a new
    DataError whose message is the worker's whole traceback: re-raised as its own one line."""
    try:
        yield from loader
    except DataError as e:
        lines = [ln for ln in e.message.strip().splitlines() if ln.strip()]
        prefix = f"{type(e).__module__}.{type(e).__qualname__}: "
        if len(lines) > 1 and lines[-1].startswith(prefix):
            raise DataError(lines[-1][len(prefix):]) from None
        raise


def to_unit_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 → float32 in [0, 1] on ``device``, as the in-memory path converts (after the move)."""
    x = x.to(device, non_blocking=True)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def is_streamed(x: Any) -> bool:
    return isinstance(x, StreamedImages)


# --------------------------------------------------------------------------- sources


def _check_options(name: str, image_size: Any, grayscale: Any) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0):
        raise DataError(f"{name}: data.options.image_size must be a positive integer, got {image_size!r}")
    if not isinstance(grayscale, bool):
        raise DataError(f"{name}: data.options.grayscale must be true or false, got {grayscale!r}")


def imagefolder_files(root: Path | None, cache_dir: Path | None, image_size: int | None = None,
                      grayscale: bool = False) -> FileSet | None:
    """An ``imagefolder`` directory as files (the layout the in-memory loader reads); None
    for an archive, which is decoded in memory (extract it to stream it)."""
    if root is None or not root.expanduser().is_dir():
        return None  # the in-memory loader reports a missing root or reads the archive
    _check_options("imagefolder", image_size, grayscale)
    src = _DirSource(root.expanduser().absolute())
    files, dirs = src.listing()
    plan = plan_layout(files, dirs, str(src.root))
    return FileSet(
        "imagefolder", src.root, plan.classes,
        [f.rel for f, _ in plan.train], torch.tensor([c for _, c in plan.train], dtype=torch.int64),
        None if plan.test is None else [f.rel for f, _ in plan.test],
        None if plan.test is None else torch.tensor([c for _, c in plan.test], dtype=torch.int64),
        image_size, grayscale,
    )


def imagenet_files(root: Path | None, cache_dir: Path | None, image_size: int = 224) -> FileSet:
    """A local ImageNet folder: ``train/<synset>/*`` and ``val/<synset>/*`` (val is the test
    split; the validation split is carved from train as for every data set)."""
    if root is None:
        raise DataError("imagenet: no data root given; set data.root to a folder with train/<synset>/ and val/<synset>/",
                        field="data.root")
    root = root.expanduser().absolute()
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataError(f"imagenet: {root} must hold train/<synset>/ and val/<synset>/ folders "
                        "(a val/ of loose images needs sorting into synset folders first)", field="data.root")
    _check_options("imagenet", image_size, False)
    src = _DirSource(root)
    files, _ = src.listing()
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}}
    for f in files:
        parts = f.rel.split("/")
        if len(parts) == 3 and parts[0] in by_split:
            by_split[parts[0]].setdefault(parts[1], []).append(f.rel)
    classes = sorted(by_split["train"])
    if not classes:
        raise DataError(f"imagenet: no images under {root}/train/<synset>/", field="data.root")
    unknown = sorted(set(by_split["val"]) - set(classes))
    if unknown:
        raise DataError(f"imagenet: val synsets not in train under {root}: {', '.join(unknown[:5])}", field="data.root")
    index = {c: i for i, c in enumerate(classes)}
    train = [(r, index[c]) for c in classes for r in by_split["train"][c]]
    test = [(r, index[c]) for c in sorted(by_split["val"]) for r in by_split["val"][c]]
    return FileSet("imagenet", root, classes, [r for r, _ in train], torch.tensor([c for _, c in train], dtype=torch.int64),
                   [r for r, _ in test], torch.tensor([c for _, c in test], dtype=torch.int64), image_size, False)


@stream_source(imagenet_files)
@DATASETS.register("imagenet")
def load_imagenet(root: Path | None, download: bool, cache_dir: Path | None, image_size: int = 224) -> RawData:
    """A local ImageNet folder (train/ and val/ by synset; nothing is downloaded), images
    resized (shorter side) and centre-cropped to ``image_size``. Far beyond any device's
    memory at full size, so it streams unless ``data.stream: false`` (a small subset)."""
    files = imagenet_files(root, cache_dir, image_size)
    raw_files = [_File(r, (files.root / r).read_bytes) for r in files.train + (files.test or [])]
    images = _decode_all(raw_files, image_size=image_size, grayscale=False, where=str(files.root))
    x = torch.stack(images)
    n = len(files.train)
    raw = RawData(x[:n], files.train_y, x[n:], files.test_y, files.classes)
    raw.digest = content_digest(raw)
    return raw


# --------------------------------------------------------------------------- splits


def memory_budget(device: torch.device) -> int:
    """Bytes a data set may take on ``device`` (``MEMORY_SHARE`` of its memory)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 16 << 30
    return int(total * MEMORY_SHARE)


def _item_shape(files: FileSet) -> tuple[int, int, int]:
    if not files.train:
        raise DataError(f"{files.name}: no training images under {files.root}")
    return tuple(files.decoder()[0].shape)  # type: ignore[return-value]


def should_stream(files: FileSet | None, device: torch.device) -> bool:
    """Whether the decoded float32 images would exceed the device's memory budget."""
    if files is None:
        return False
    if files.name == "imagenet":
        return True
    c, h, w = _item_shape(files)
    n = len(files.train) + len(files.test or [])
    need = n * c * h * w * 4
    if need > memory_budget(device):
        log.info("%s: %d images (%.1f GB as float32) exceed the memory budget of %s: streaming them",
                 files.name, n, need / 1e9, device)
        return True
    return False


def load_streamed(
    name: str,
    files: FileSet | None,
    device: torch.device,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    limit_train: int | None,
    limit_test: int | None,
    workers: int = 4,
    cache_dir: Path | None = None,
    decode: str = "cpu",
    _decode_device: torch.device | None = None,
) -> DataSplits:
    """Streamed splits of ``files`` (the same examples :func:`~.base.load_dataset` picks).

    ``decode``: data.decode (:func:`resolve_decode`). ``_decode_device`` (tests only): decode
    the bytes in this process on that device whatever ``decode`` says (the CPU here)."""
    if files is None:
        raise DataError(f"{name}: only a folder streams (an archive is decoded in memory; extract it to stream it)",
                        field="data.stream")
    train_idx, val_idx, test_idx = split_indices(
        name, files.train_y, files.test_y, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        limit_train=limit_train, limit_test=limit_test,
    )
    decoder = files.decoder()
    shape = _item_shape(files)
    decoder.shape = shape
    n_train_pool = len(files.train)
    test_carved = files.test is None
    test_pos = test_idx if test_carved else test_idx + n_train_pool
    test_pool_y = files.train_y if test_carved else files.test_y
    assert test_pool_y is not None

    resolved = resolve_decode(decode, device)
    decode_device = _decode_device if _decode_device is not None else (device if resolved == "gpu" else None)

    def split(pos: torch.Tensor) -> StreamedImages:
        return StreamedImages(decoder, pos, shape, device, workers, decode_device)

    train = split(train_idx)
    stats_now = file_stats(files.root, decoder.rels)
    decoder.pinned = stats_now  # what the identity below is of: training checks the files still match
    fingerprint = files.fingerprint(stats_now)
    cache = (cache_dir or default_cache_dir()) / f"stream-{name}-{fingerprint[:20]}-{DECODE_VERSION.decode()}.json"
    stats = _read_json(cache)
    index_key = hashlib.sha256(train_idx.numpy().tobytes()).hexdigest()
    if stats is None or stats.get("train_index") != index_key:
        mean, std = channel_stats(train, files.train_y[train_idx], seed)
        digest = stats["digest"] if stats else content_digest_files(decoder, files)
        stats = {"train_index": index_key, "mean": list(mean), "std": list(std), "digest": digest}
        _write_json(cache, stats)
    return DataSplits(
        name=name,
        train_x=train,  # type: ignore[arg-type]
        train_y=files.train_y[train_idx].to(device),
        val_x=split(val_idx),  # type: ignore[arg-type]
        val_y=files.train_y[val_idx].to(device),
        test_x=split(test_pos),  # type: ignore[arg-type]
        test_y=test_pool_y[test_idx].to(device),
        classes=list(files.classes),
        num_classes=len(files.classes),
        in_shape=shape,
        mean=tuple(stats["mean"]),
        std=tuple(stats["std"]),
        indices={"train": train_idx, "val": val_idx, "test": test_idx},
        test_carved=test_carved,
        digest=stats["digest"],
        streamed=True,
        decode=resolved,
    )


def check_unchanged(data: DataSplits, who: str) -> None:
    """A streamed data set whose files changed since it was loaded (size or mtime) stops the
    training: the model would be trained on a mixture and stored under the key of the
    original files. One line naming the changed files; nothing is cached."""
    x = data.train_x
    if not is_streamed(x):
        return
    changed = x.files.changed()  # type: ignore[attr-defined]
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise DataError(f"{len(changed)} file(s) of the streamed data set changed while {who} trained: "
                        f"{', '.join(changed[:3])}{more}; nothing of this training was cached: rerun once the files "
                        "stay put", field="data.root")


def resolve_decode(decode: str, device: torch.device) -> str:
    """What data.decode means for streamed data on ``device``: "gpu" (nvjpeg on that CUDA
    device) or "cpu". ``auto`` is gpu where this torchvision decodes JPEGs on it; ``gpu``
    where it cannot is a DataError naming data.decode."""
    if decode not in DECODE_MODES:
        raise DataError(f"must be one of {', '.join(DECODE_MODES)}, got {decode!r}", field="data.decode")
    if decode == "cpu":
        return "cpu"
    if device.type != "cuda":
        if decode == "gpu":
            raise DataError(f"gpu decodes JPEGs on a CUDA device, but the data is on {device} "
                            "(no CUDA here); use auto or cpu", field="data.decode")
        return "cpu"
    why = cuda_jpeg_unavailable(str(device))
    if why is None:
        if decode == "auto":
            log.info("decoding the streamed JPEGs on %s (data.decode: auto; nvjpeg)", device)
        return "gpu"
    if decode == "gpu":
        raise DataError(f"gpu: this torchvision cannot decode JPEGs on {device} ({why}); use auto or cpu",
                        field="data.decode")
    log.info("decoding the streamed images on the CPU: torchvision cannot decode JPEGs on %s (%s)", device, why)
    return "cpu"


@functools.lru_cache(maxsize=None)
def cuda_jpeg_unavailable(device: str) -> str | None:
    """None when torchvision decodes a JPEG on ``device``, else why not: tried once per
    device on a 16×16 JPEG encoded here (a torchvision built without nvjpeg raises)."""
    try:
        # torchvision takes seconds to import; only image decoding and its models need it
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

        _quiet_torchvision_deprecation()
        data = encode_jpeg(torch.full((3, 16, 16), 128, dtype=torch.uint8))
        img = decode_jpeg([data], mode=ImageReadMode.RGB, device=device)[0]
        torch.cuda.synchronize(device)
        if tuple(img.shape) != (3, 16, 16) or img.device.type != "cuda":
            return f"a test JPEG decoded to {tuple(img.shape)} on {img.device}"
    except Exception as e:  # noqa: BLE001 - whatever it is, the CPU decodes instead
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return None


def channel_stats(train: StreamedImages, labels: torch.Tensor, seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the training split: exactly as in memory (one float32
    tensor on the CPU) when it is small enough, else from a seeded stratified sample."""
    cpu = StreamedImages(train.files, train.positions, train.item_shape, torch.device("cpu"), train.workers)
    c, h, w = train.item_shape
    if len(cpu) * c * h * w * 4 <= EXACT_STATS_BYTES:
        return _channel_stats(cpu.load())
    pick, _ = stratified_pick(labels, STATS_SAMPLE, _generator(seed, "stream-stats"))
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    count = 0
    sample = cpu.subset(pick)
    for start in range(0, len(sample), 1024):
        chunk = sample[start:start + 1024].double()
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
        count += chunk.shape[0] * h * w
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def content_digest_files(decoder: ImageFiles, files: FileSet) -> str:
    """sha256 of every file's bytes with its relative path and label, and the class names:
    what identifies a streamed data set (a moved copy keeps it, a changed image does not)."""
    h = hashlib.sha256(repr(list(files.classes)).encode())
    labels = files.train_y.tolist() + (files.test_y.tolist() if files.test_y is not None else [])
    n_train = len(files.train)

    def one(i: int) -> bytes:
        split = "train" if i < n_train else "test"
        name = f"{split}\0{decoder.rels[i]}\0{labels[i]}".encode("utf-8", "surrogateescape")
        return hashlib.sha256(decoder.read_bytes(i)).digest() + name

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for part in pool.map(one, range(len(decoder)), chunksize=256):
            h.update(part)
    h.update(repr((files.image_size, files.grayscale)).encode())
    h.update(DECODE_VERSION)
    return "files-" + h.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: dict[str, Any]) -> None:

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(obj))
    except OSError as e:  # a read-only cache only costs recomputing next time
        log.warning("could not write %s: %s", path, e)


__all__ = ["DECODE_MODES", "FileBytes", "FileSet", "ImageFiles", "resolve_decode", "StreamedImages", "is_streamed", "load_streamed", "should_stream", "stream_batches"]

# the image folder (registered in imagefolder.py) streams too: its file lists, through the one registry
stream_source(imagefolder_files)(DATASETS.get("imagefolder"))

"""Any folder-per-class image tree, or a tar archive of one, decoded once and cached.

Accepted layouts under ``root`` (a directory, or a ``.tar``/``.tar.gz``/``.tgz`` file):

- ``train/<class>/*`` and ``test/<class>/*``: the data set's own test split;
- ``<class>/*``: one tree; the test split is carved from it by seed.

A single wrapper folder around either (``cifar10/train/...``) is looked through. Class
names are the sorted folder names (as ``torchvision.datasets.ImageFolder``); hidden
files and non-image files are skipped.

Archives are read as a stream, not extracted: the images are small, so decoding from
the archive's bytes avoids writing tens of thousands of files (and cannot be tricked into
writing outside the cache by ``../`` member names). The decoded uint8 tensors are cached
in ``cache_dir`` under a hash of the source (absolute path, and per file its relative
path, size and mtime; for an archive its own size and mtime) and the options, so a second
load is a single ``torch.load``. The cache is written atomically (temporary file and
``os.replace``); a cache that cannot be read or does not match is rebuilt, never trusted.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import tarfile
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..store import atomic_write, default_store
from .base import DATASETS, RawData, content_digest

log = logging.getLogger(__name__)

#: file name endings read as images (those of torchvision's ImageFolder, plus .gif)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: bump when the cached payload or the decoding changes, so old caches are not reused
CACHE_VERSION = 1

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def default_cache_dir() -> Path:
    """Where decoded data is cached: ``$WORKBENCH_DATA_CACHE``, else ``data/`` in the model
    store (``$WORKBENCH_STORE``, by default ``~/.cache/workbench``), where ``workbench gc``
    sees it."""
    if os.environ.get("WORKBENCH_DATA_CACHE"):
        return Path(os.environ["WORKBENCH_DATA_CACHE"]).expanduser()
    return default_store() / "data"


@DATASETS.register("imagefolder")
def load_imagefolder(
    root: Path | None,
    download: bool,
    cache_dir: Path | None,
    image_size: int | None = None,
    grayscale: bool = False,
) -> RawData:
    """Folder-per-class images (train/ and test/ trees, one tree, or a .tar/.tar.gz of either).

    ``image_size``: resize the shorter side to this many pixels and centre-crop a square
    (needed when the images differ in size). ``grayscale``: decode to one channel instead
    of RGB. ``download`` is ignored (there is nothing to fetch).
    """
    if root is None:
        raise DataError(
            "imagefolder: no data root given; set data.root to a folder-per-class directory "
            "(train/<class>/, test/<class>/ or <class>/) or a .tar/.tar.gz archive of one"
        )
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0):
        raise DataError(f"imagefolder: data.options.image_size must be a positive integer, got {image_size!r}")
    if not isinstance(grayscale, bool):
        raise DataError(f"imagefolder: data.options.grayscale must be true or false, got {grayscale!r}")
    root = root.expanduser().absolute()
    if root.is_dir():
        source: _Source = _DirSource(root)
    elif root.is_file() and root.name.lower().endswith(ARCHIVE_SUFFIXES):
        source = _ArchiveSource(root)
    elif root.exists():
        raise DataError(f"imagefolder: {root} is neither a directory nor a .tar/.tar.gz/.tgz archive")
    else:
        raise DataError(f"imagefolder: data root {root} does not exist")

    options = {"image_size": image_size, "grayscale": grayscale}
    key = _hash([CACHE_VERSION, source.fingerprint(), options])
    cache = (cache_dir or default_cache_dir()) / f"imagefolder-{_slug(root.name)}-{key[:20]}.pt"
    raw = _read_cache(cache, key)
    if raw is not None:
        log.debug("imagefolder: %s read from cache %s", root, cache)
        if raw.digest is None:  # a cache from before content digests: hash once, keep it
            raw.digest = content_digest(raw)
            _write_cache(cache, key, raw)
        return raw
    t0 = time.perf_counter()
    raw = decode_source(source, image_size=image_size, grayscale=grayscale)
    raw.digest = content_digest(raw)
    n = len(raw.train_y) + (len(raw.test_y) if raw.test_y is not None else 0)
    log.info("imagefolder: decoded %d images from %s in %.1f s", n, root, time.perf_counter() - t0)
    _write_cache(cache, key, raw)
    return raw


# --------------------------------------------------------------------------- sources


@dataclass
class _File:
    rel: str  # posix path relative to the root
    read: Callable[[], bytes]


class _Source:
    root: Path

    def fingerprint(self) -> Any:
        raise NotImplementedError

    def listing(self) -> tuple[list[_File], set[str]]:
        """Image files and directories (both relative posix paths)."""
        raise NotImplementedError


class _DirSource(_Source):
    def __init__(self, root: Path):
        self.root = root
        self._files: list[tuple[str, int, int]] | None = None
        self._dirs: set[str] = set()

    def _walk(self) -> list[tuple[str, int, int]]:
        if self._files is None:
            files: list[tuple[str, int, int]] = []
            stack = [""]
            st = self.root.stat()
            seen = {(st.st_dev, st.st_ino)}  # symlinked folders are followed once (no loops)
            while stack:
                rel_dir = stack.pop()
                try:
                    entries = list(os.scandir(self.root / rel_dir if rel_dir else self.root))
                except OSError as e:
                    raise DataError(f"imagefolder: cannot list {self.root / rel_dir}: {e}") from None
                for entry in entries:
                    if entry.name.startswith(".") or entry.name == "__MACOSX":
                        continue
                    rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                    try:
                        if entry.is_dir():  # follows symlinks, as ImageFolder does
                            dst = entry.stat()
                            if (dst.st_dev, dst.st_ino) in seen:
                                continue
                            seen.add((dst.st_dev, dst.st_ino))
                            self._dirs.add(rel)
                            stack.append(rel)
                        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                            st = entry.stat()
                            files.append((rel, st.st_size, st.st_mtime_ns))
                    except FileNotFoundError:
                        raise DataError(f"imagefolder: {self.root / rel} is a dangling symbolic link "
                                        "(its target is gone); remove it or restore the target") from None
                    except OSError as e:
                        raise DataError(f"imagefolder: cannot read {self.root / rel}: {e.strerror or e}") from None
            files.sort()
            self._files = files
        return self._files

    def fingerprint(self) -> Any:
        return ["dir", str(self.root), self._walk()]

    def listing(self) -> tuple[list[_File], set[str]]:
        root = self.root

        def reader(rel: str) -> Callable[[], bytes]:
            return lambda: (root / rel).read_bytes()

        return [_File(rel, reader(rel)) for rel, _, _ in self._walk()], set(self._dirs)


class _ArchiveSource(_Source):
    def __init__(self, root: Path):
        self.root = root

    def fingerprint(self) -> Any:
        st = self.root.stat()
        return ["archive", str(self.root), st.st_size, st.st_mtime_ns]

    def listing(self) -> tuple[list[_File], set[str]]:
        files: list[_File] = []
        dirs: set[str] = set()
        try:
            # Stream mode: one sequential pass, the whole archive never sits in memory
            # uncompressed beyond the image bytes we keep.
            with tarfile.open(self.root, mode="r|*") as tar:
                for member in tar:
                    rel = _clean_member_name(member.name)
                    if rel is None:
                        continue
                    if member.isdir():
                        dirs.add(rel)
                    elif member.isfile() and rel.lower().endswith(IMAGE_EXTENSIONS):
                        f = tar.extractfile(member)
                        data = f.read() if f is not None else b""
                        files.append(_File(rel, (lambda d: lambda: d)(data)))
                        parent = posixpath.dirname(rel)
                        while parent:  # archives need not list directories explicitly
                            dirs.add(parent)
                            parent = posixpath.dirname(parent)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"imagefolder: cannot read archive {self.root}: {e}") from None
        files.sort(key=lambda f: f.rel)
        return files, dirs


def _clean_member_name(name: str) -> str | None:
    """Normalised relative name, or None for names to skip (hidden, absolute, ``..``)."""
    rel = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    parts = rel.split("/")
    if rel in ("", ".") or ".." in parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return rel


# --------------------------------------------------------------------------- layout


@dataclass
class _Plan:
    classes: list[str]
    train: list[tuple[_File, int]]
    test: list[tuple[_File, int]] | None


def plan_layout(files: Sequence[_File], dirs: set[str], where: str) -> _Plan:
    """Decide the layout (train/test trees or one tree) and label every file."""
    if not files:
        raise DataError(f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {where}")
    parts = [f.rel.split("/") for f in files]
    dir_parts = [d.split("/") for d in dirs]
    # Look through wrapper folders shared by every file (e.g. the archive's top folder),
    # as long as a class level remains below.
    while all(len(p) >= 3 for p in parts) and len({p[0] for p in parts}) == 1:
        top = parts[0][0]
        parts = [p[1:] for p in parts]
        dir_parts = [d[1:] for d in dir_parts if len(d) > 1 and d[0] == top]
    tops = {p[0] for p in parts if len(p) >= 2}
    split = {"train", "test"} <= tops

    def class_folders(prefix: list[str]) -> set[str]:
        depth = len(prefix)
        return {d[depth] for d in dir_parts if len(d) == depth + 1 and d[:depth] == prefix}

    def group(prefix: list[str]) -> dict[str, list[_File]]:
        depth = len(prefix)
        out: dict[str, list[_File]] = {}
        for f, p in zip(files, parts):
            if len(p) >= depth + 2 and p[:depth] == prefix:
                out.setdefault(p[depth], []).append(f)
        for name in class_folders(prefix):
            out.setdefault(name, [])
        empty = sorted(c for c, fs in out.items() if not fs)
        if empty:
            sub = "/".join(prefix)
            raise DataError(
                f"imagefolder: class folder(s) without images under {where}{'/' + sub if sub else ''}: "
                f"{', '.join(empty)} (remove them or add images)"
            )
        if not out:
            raise DataError(f"imagefolder: no class folders with images under {where}/{'/'.join(prefix)}")
        return out

    if split:
        others = sorted(tops - {"train", "test"})
        if others:
            log.warning("imagefolder: %s has train/ and test/; ignoring other folders: %s", where, ", ".join(others))
        train_groups, test_groups = group(["train"]), group(["test"])
        classes = sorted(train_groups)
        unknown = sorted(set(test_groups) - set(train_groups))
        if unknown:
            raise DataError(f"imagefolder: test classes not in train under {where}: {', '.join(unknown)}")
        index = {c: i for i, c in enumerate(classes)}
        train = [(f, index[c]) for c in classes for f in train_groups[c]]
        test = [(f, index[c]) for c in sorted(test_groups) for f in test_groups[c]]
        return _Plan(classes, train, test)
    groups = group([])
    loose = sum(1 for p in parts if len(p) == 1)
    if loose:
        log.warning("imagefolder: ignoring %d image(s) directly under %s (not in a class folder)", loose, where)
    classes = sorted(groups)
    index = {c: i for i, c in enumerate(classes)}
    return _Plan(classes, [(f, index[c]) for c in classes for f in groups[c]], None)


# --------------------------------------------------------------------------- decoding


def decode_source(source: _Source, *, image_size: int | None, grayscale: bool) -> RawData:
    """List, label and decode every image of ``source`` (threads; torchvision decoders)."""
    files, dirs = source.listing()
    plan = plan_layout(files, dirs, str(source.root))
    items = plan.train + (plan.test or [])
    images = _decode_all([f for f, _ in items], image_size=image_size, grayscale=grayscale, where=str(source.root))
    shapes = Counter(tuple(im.shape) for im in images)
    if len(shapes) > 1:
        (common, _), (other, _) = shapes.most_common(2)
        a = next(f.rel for (f, _), im in zip(items, images) if tuple(im.shape) == common)
        b = next(f.rel for (f, _), im in zip(items, images) if tuple(im.shape) == other)
        raise DataError(
            f"imagefolder: images under {source.root} differ in size ({_hw(common)} in {a}, {_hw(other)} in {b}); "
            "set data.options.image_size to resize them all"
        )
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    n_train = len(plan.train)
    train_x = torch.stack(images[:n_train])
    if plan.test is None:
        return RawData(train_x=train_x, train_y=y, test_x=None, test_y=None, classes=plan.classes)
    test_x = torch.stack(images[n_train:]) if len(plan.test) else train_x.new_zeros((0, *train_x.shape[1:]))
    return RawData(train_x=train_x, train_y=y[:n_train], test_x=test_x, test_y=y[n_train:], classes=plan.classes)


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[-1]}×{shape[-2]}"


def _decode_all(files: Sequence[_File], *, image_size: int | None, grayscale: bool, where: str) -> list[torch.Tensor]:
    _quiet_torchvision_deprecation()
    workers = max(1, min(16, os.cpu_count() or 1))
    # Chunks rather than one task per file: 60k futures cost more than the decoding.
    size = max(64, len(files) // (workers * 8) + 1)
    chunks = [files[i : i + size] for i in range(0, len(files), size)]

    def run(chunk: Sequence[_File]) -> list[torch.Tensor]:
        return [_decode_one(f, image_size=image_size, grayscale=grayscale, where=where) for f in chunk]

    if workers == 1 or len(chunks) == 1:
        return [im for chunk in chunks for im in run(chunk)]
    # torchvision's decoders are C++ ops that release the GIL, so threads scale.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [im for part in pool.map(run, chunks) for im in part]


def _decode_one(f: _File, *, image_size: int | None, grayscale: bool, where: str) -> torch.Tensor:
    try:
        data = f.read()
    except OSError as e:
        raise DataError(f"imagefolder: cannot read {where}/{f.rel}: {e}") from None
    if not data:
        raise DataError(f"imagefolder: empty image file {where}/{f.rel}")
    decode = _torchvision_decoder()
    try:
        if decode is not None and (data.startswith(_JPEG_MAGIC) or data.startswith(_PNG_MAGIC)):
            img = decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), grayscale)
        else:
            img = _decode_pil(data, grayscale)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file, reported by name
        try:
            img = _decode_pil(data, grayscale)  # PIL reads some files libjpeg/libpng reject
        except DataError as refused:
            raise DataError(f"imagefolder: {where}/{f.rel}: {refused.message}") from None
        except Exception:  # noqa: BLE001
            raise DataError(f"imagefolder: cannot decode {where}/{f.rel}: {e}") from None
    img = _to_uint8(img, f"{where}/{f.rel}")
    if image_size is not None:
        img = _resize(img, image_size)
    return img


def _to_uint8(img: torch.Tensor, where: str) -> torch.Tensor:
    """Every image as 8 bits per channel, whatever depth it was stored in: a 16-bit PNG
    decodes to uint16 (0-65535), which must reach the model in [0, 1] as an 8-bit one does;
    it is rounded to the nearest of the 256 levels, the same in memory and streamed."""
    if img.dtype == torch.uint8:
        return img
    if img.dtype == torch.uint16:
        return (img.to(torch.int32) * 255 + 32767).div(65535, rounding_mode="floor").to(torch.uint8)
    raise DataError(f"imagefolder: {where}: images of {img.dtype} pixels are not supported (8- or 16-bit only)")


def _quiet_torchvision_deprecation() -> None:
    # Per call, not once: test runners and callers may reset the filters in between.
    # filterwarnings replaces an identical entry, so the list does not grow.
    warnings.filterwarnings(
        "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
    )


@functools.lru_cache(maxsize=1)
def _torchvision_decoder() -> Callable[[torch.Tensor, bool], torch.Tensor] | None:
    """torchvision's libjpeg/libpng decoder (2× faster than PIL here), or None if absent.

    torchvision 0.29 deprecated its image decoders in favour of TorchCodec and warns on
    every call; :func:`_decode_all` silences that one message (not deprecations in
    general), and we fall back to PIL once a torchvision without them is installed.
    """
    try:
        # torchvision takes seconds to import; only image decoding and its models need it
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None

    def decode(data: torch.Tensor, grayscale: bool) -> torch.Tensor:
        return decode_image(data, mode=ImageReadMode.GRAY if grayscale else ImageReadMode.RGB)

    return decode


def _decode_pil(data: bytes, grayscale: bool) -> torch.Tensor:
    # Pillow: only the image-file data sets and the corruptions use it
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode.startswith("I;16"):  # 16-bit grey: convert() would clip it at 255, not scale it
            arr16 = np.asarray(im).astype(np.int64)
            t = torch.from_numpy((arr16 * 255 + 32767) // 65535).to(torch.uint8)
            t = t.unsqueeze(0)
            return t if grayscale else t.expand(3, -1, -1).contiguous()
        if im.mode in ("I", "F"):  # 32-bit integers or floats: no range to scale from
            raise DataError(f"image mode {im.mode} (32-bit pixels) is not supported; save it with 8 or 16 bits")
        arr = np.asarray(im.convert("L" if grayscale else "RGB"))
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` (antialiased), then the central size×size square."""
    # torchvision takes seconds to import; only image decoding and its models need it
    from torchvision.transforms.v2 import functional as F

    h, w = img.shape[-2:]
    if (h, w) != (size, size):
        if min(h, w) != size:
            img = F.resize(img, [size], antialias=True)
        img = F.center_crop(img, [size, size])
    return img.contiguous()


# --------------------------------------------------------------------------- cache


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40] or "root"


def _read_cache(path: Path, key: str) -> RawData | None:
    """The cached data if the file exists, reads cleanly and matches ``key``; else None."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        raw = _payload_to_raw(obj, key)
    except Exception as e:  # noqa: BLE001 - a cache is never trusted: any failure means rebuild
        log.warning("imagefolder: cache %s is unreadable or stale (%s: %s); rebuilding it", path, type(e).__name__, e)
        return None
    return raw


def _payload_to_raw(obj: Any, key: str) -> RawData:
    if not isinstance(obj, dict) or obj.get("version") != CACHE_VERSION or obj.get("key") != key:
        raise ValueError("version or key mismatch")
    classes = obj["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError("bad class list")
    pairs = [(obj["train_x"], obj["train_y"])]
    if obj["test_x"] is not None:
        pairs.append((obj["test_x"], obj["test_y"]))
    for x, y in pairs:
        ok = (
            isinstance(x, torch.Tensor)
            and isinstance(y, torch.Tensor)
            and x.dtype == torch.uint8
            and x.ndim == 4
            and y.dtype == torch.int64
            and y.shape == (len(x),)
            and (len(y) == 0 or (int(y.min()) >= 0 and int(y.max()) < len(classes)))
            and x.shape[1:] == pairs[0][0].shape[1:]
        )
        if not ok:
            raise ValueError("malformed tensors")
    digest = obj.get("digest")  # None in caches written before digests: load_imagefolder adds it
    digest = digest if isinstance(digest, str) and len(digest) == 64 else None
    return RawData(obj["train_x"], obj["train_y"], obj["test_x"], obj["test_y"], list(classes), digest)


def _write_cache(path: Path, key: str, raw: RawData) -> None:
    """Write atomically: readers see the old file, no file, or the whole new one."""
    payload = {
        "version": CACHE_VERSION,
        "key": key,
        "classes": list(raw.classes),
        "train_x": raw.train_x,
        "train_y": raw.train_y,
        "test_x": raw.test_x,
        "test_y": raw.test_y,
        "digest": raw.digest,
    }
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
        log.debug("imagefolder: wrote cache %s", path)
    except OSError as e:
        # A read-only or full cache folder costs speed, not correctness.
        log.warning("imagefolder: could not write cache %s (%s); the next load decodes again", path, e)

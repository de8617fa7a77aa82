"""A study's ``data:`` section (:class:`DataConfig`) and the one path from it to data:
:func:`load_section` (the runner, the process-pool workers and the cluster jobs all call
it) and :func:`load_dataset`, which turns a registered loader's raw data into fixed, seeded
splits on the device, held in memory or streamed from the files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt, field_validator, model_validator

from ..config import Strict, check_registry
from ..errors import DataError, WorkbenchError
from .base import (
    DATASETS, DataSplits, _channel_stats, _check_raw, _device, _to_device, dataset_options, split_indices, stream_files,
    streaming_sets,
)
from . import stream as _stream  # its functions looked up when called (tests stand in for them there)

# --------------------------------------------------------------------------- the section


class AugmentConfig(Strict):
    """Batch augmentation applied on the training device."""

    crop_padding: int = Field(0, ge=0, description="random crop after zero padding by this many pixels (0: off)")
    flip: bool = Field(False, description="random horizontal flip")


class DataConfig(Strict):
    name: str = Field("digits", description="data set name (workbench list datasets)")
    root: str | None = Field(None, description="data root for torchvision sets and imagefolder ($VARS and ~ expanded)")
    download: bool = Field(False, description="let torchvision download missing files (needs internet)")
    val_fraction: float = Field(0.1, ge=0, lt=0.5, description="share of the training split held out for validation")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="test share for sets without their own test split")
    limit_train: PositiveInt | None = Field(None, description="use at most this many training examples")
    limit_test: PositiveInt | None = Field(None, description="use at most this many test examples")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    options: dict[str, Any] = Field(default_factory=dict, description="data-set specific options (imagefolder: image_size)")
    stream: bool | None = Field(
        None, description="read images from their files batch by batch (imagefolder folders, imagenet); "
        "default: when they would not fit the device's memory budget"
    )
    workers: int = Field(4, ge=0, description="DataLoader worker processes of a streamed data set (0: in the main process)")
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="where streamed JPEGs are decoded: gpu (nvjpeg on the CUDA device; the workers only read "
        "the files), cpu (in the workers), auto (gpu when the data streams on a CUDA device that torchvision decodes "
        "JPEGs on, else cpu); gpu is part of the model key"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return check_registry("data set", v, DATASETS.names())

    @model_validator(mode="after")
    def _options(self) -> DataConfig:
        valid = dataset_options(self.name)
        for key in self.options:
            if key not in valid:
                raise ValueError(
                    f"options.{key}: unknown option for data set {self.name!r}; valid: {', '.join(sorted(valid)) or '(none)'}"
                )
        return self

    def resolved_root(self) -> Path | None:
        return Path(os.path.expandvars(self.root)).expanduser() if self.root else None


# --------------------------------------------------------------------------- loading


def load_section(section: Any, seed: int, device: str | torch.device = "cpu", *, decode: str | None = None,
                 cache_dir: Path | None = None) -> DataSplits:
    """The one way a study's ``data:`` section (a :class:`DataConfig`) and
    seed become data: the runner, the process-pool workers, the cluster jobs and the driver
    all call it, so every field (streaming, loader workers, decoding, options) reaches
    each of them alike. ``decode`` overrides ``data.decode`` (a job decodes as its model key
    says; the cluster driver resolves ``auto`` before its jobs run). ``cache_dir``: where
    decoded data is cached (default :func:`~.imagefolder.default_cache_dir`: in the store)."""
    return load_dataset(
        section.name, root=section.resolved_root(), download=section.download, val_fraction=section.val_fraction,
        test_fraction=section.test_fraction, seed=int(seed), limit_train=section.limit_train,
        limit_test=section.limit_test, device=device, stream=section.stream, workers=section.workers,
        decode=decode or section.decode, cache_dir=cache_dir, **dict(section.options),
    )


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    stream: bool | None = False,
    workers: int = 4,
    decode: str = "auto",
    **options: Any,
) -> DataSplits:
    """Load data set ``name`` and split it, fixed by ``seed``.

    test: the data set's own test split, or (when it has none) a stratified
    ``test_fraction`` of its examples. val: a stratified ``val_fraction`` of the rest of
    train (0 gives empty tensors). ``limit_train``/``limit_test`` then keep a seeded,
    stratified subset of train / test (val is not limited). Each of these draws uses its
    own generator derived from ``seed``, so e.g. changing ``val_fraction`` leaves the
    test split unchanged. ``decode`` (data.decode: auto, cpu, gpu) says where streamed
    JPEGs are decoded (:func:`~.stream.resolve_decode`); data held in memory is decoded on
    the CPU, and ``gpu`` for it is an error.
    """
    loader = DATASETS.get(name)
    valid = dataset_options(name)
    for key in options:
        if key not in valid:
            raise WorkbenchError(
                f"unknown option {key!r} for data set {name!r}; valid options: {', '.join(sorted(valid)) or '(none)'}"
            )
    if not 0.0 <= val_fraction < 1.0:
        raise WorkbenchError(f"{name}: val_fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 < test_fraction < 1.0:
        raise WorkbenchError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
    for label, lim in (("limit_train", limit_train), ("limit_test", limit_test)):
        if lim is not None and (not isinstance(lim, int) or lim <= 0):
            raise WorkbenchError(f"{name}: {label} must be a positive integer, got {lim!r}")
    dev = _device(device)
    if decode != "auto":  # a bad mode, or gpu where there is none, fails before anything is read
        _stream.resolve_decode(decode, dev)

    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    root_path = Path(root).expanduser() if root is not None else None
    if stream is not False:
        # Image-file data sets can be read batch by batch instead of decoded whole
        # (data.stream; by default when they would not fit the device's memory budget).
        lister = stream_files(name)
        if lister is not None:
            files = lister(root_path, cache, **options)
            if stream or _stream.should_stream(files, dev):
                return _stream.load_streamed(name, files, dev, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                                     limit_train=limit_train, limit_test=limit_test, workers=workers, cache_dir=cache,
                                     decode=decode)
        elif stream:
            raise WorkbenchError(f"{name}: data.stream needs a data set read from image files ({', '.join(sorted(streaming_sets()))})",
                                 field="data.stream")

    if decode == "gpu":
        raise DataError(f"gpu decodes streamed images; {name} is held in memory here "
                        "(set data.stream: true to stream an image folder, or use auto or cpu)", field="data.decode")
    raw = loader(root=root_path, download=download, cache_dir=cache, **options)
    _check_raw(name, raw)

    train_idx, val_idx, test_idx = split_indices(
        name, raw.train_y, raw.test_y, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        limit_train=limit_train, limit_test=limit_test,
    )
    test_pool_x, test_pool_y = (raw.train_x, raw.train_y) if raw.test_x is None else (raw.test_x, raw.test_y)
    train_x = _to_device(raw.train_x[train_idx], dev)
    mean, std = _channel_stats(train_x)
    return DataSplits(
        name=name,
        train_x=train_x,
        train_y=raw.train_y[train_idx].to(dev),
        val_x=_to_device(raw.train_x[val_idx], dev),
        val_y=raw.train_y[val_idx].to(dev),
        test_x=_to_device(test_pool_x[test_idx], dev),
        test_y=test_pool_y[test_idx].to(dev),
        classes=list(raw.classes),
        num_classes=len(raw.classes),
        in_shape=tuple(raw.train_x.shape[1:]),  # type: ignore[arg-type]
        mean=mean,
        std=std,
        indices={"train": train_idx, "val": val_idx, "test": test_idx},
        test_carved=raw.test_x is None,
        digest=raw.digest,
    )

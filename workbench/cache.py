"""The result cache: the tables (and artifacts) of a run's stages (the evaluation, the
soundness checks, each probe; see :mod:`workbench.stages`), kept in the model store so
that a rerun with nothing changed reuses them.

A stage's result is stored under a key: the sha256 of the canonical JSON
(:func:`workbench.config.content_hash`) of everything that determines it, made by
:func:`workbench.stages.stage_key_inputs` — the stage name, its section of the study, the
keys of the shared facts it declares (models, pairs, data, examples, seed, device, main ε,
...), the torch version, the keys of the stages it reads, and the hash of the code it runs
(:func:`workbench.codehash.code_hash` of the stage's modules and their imports: a comment
edit or a change to figure code recomputes nothing). Layout::

    <store>/results/<key>/meta.json              the key's inputs, when it was computed, sha256 of every file
    <store>/results/<key>/tables/<name>.parquet  the stage's tables
    <store>/results/<key>/files/<path>           the stage's artifacts (paths in the run folder: arrays/saliency.npz)
    <store>/results/<key>.lock                   flock held while one process computes or reads that key

An entry is written into a temporary folder next to it and renamed into place, so a killed
process never leaves a partial entry under a key; an entry that is nevertheless unreadable
or does not match its recorded sha256 is a miss (a warning, then it is recomputed and
overwritten), never an error. Two processes computing the same key take its lock: one
computes, the other waits and reuses the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .config import content_hash
from .store import _UMASK, atomic_write_bytes, file_lock, now
from . import distributed

log = logging.getLogger("workbench")

#: the version of the entry layout; part of every key
FORMAT_VERSION = 1
#: run-folder subfolders where a stage may write files that its entry keeps (arrays: the
#: probes; figures and report: a cached report's figures). An entry listing a file anywhere
#: else (study.yaml, tables/) would overwrite what another part of the run wrote.
STAGE_FILE_FOLDERS = ("arrays", "figures", "report")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_]+\Z")


@dataclass
class CachedResult:
    """One entry read back: its tables and artifacts (path in the run folder -> bytes)."""

    key: str
    tables: dict[str, pd.DataFrame]
    artifacts: dict[str, bytes] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class CorruptEntry(Exception):
    pass


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ResultCache:
    """Stage results in ``<store root>/results``."""

    def __init__(self, store_root: str | Path):
        self.root = Path(store_root) / "results"

    @staticmethod
    def key(inputs: Mapping[str, Any]) -> str:
        return content_hash({"format": FORMAT_VERSION, **inputs})

    def entry(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock, held while one process computes or reads that key."""
        with file_lock(self.root / f"{key}.lock"):
            yield

    # ---- read

    def load(self, key: str) -> CachedResult | None:
        """The entry, or None when there is none or it is unreadable (with a warning)."""
        d = self.entry(key)
        if not d.exists():
            return None
        try:
            return self._read(key, d)
        except CorruptEntry as e:
            log.warning("cached result %s is unusable (%s); recomputing it", d, e)
            return None

    def _read(self, key: str, d: Path) -> CachedResult:
        try:
            meta = json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            raise CorruptEntry("meta.json is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptEntry(f"meta.json unreadable: {e}") from None
        if not isinstance(meta, dict) or meta.get("key") != key or not isinstance(meta.get("tables"), dict):
            raise CorruptEntry("meta.json does not describe this key")
        if not isinstance(meta.get("files") or {}, dict):
            raise CorruptEntry("meta.json: files is not a mapping")
        for name, sha in [*meta["tables"].items(), *(meta.get("files") or {}).items()]:
            if not isinstance(sha, str):
                raise CorruptEntry(f"meta.json: {name!r} has no sha256")
        tables: dict[str, pd.DataFrame] = {}
        for name, sha in meta["tables"].items():
            if not _TABLE_NAME.match(name):  # a table name becomes a file name in the run folder
                raise CorruptEntry(f"table name {name!r} is not a plain name")
            data = self._checked(d / "tables" / f"{name}.parquet", sha)
            try:
                tables[name] = pd.read_parquet(io.BytesIO(data))
            except Exception as e:  # noqa: BLE001 - any parquet failure means "corrupt"
                raise CorruptEntry(f"table {name} unreadable: {str(e)[:160]}") from None
        artifacts: dict[str, bytes] = {}
        for rel, sha in (meta.get("files") or {}).items():
            parts = Path(rel).parts
            # a stage writes only below these folders; anything else would overwrite another part of the run
            if not _inside(rel) or len(parts) < 2 or parts[0] not in STAGE_FILE_FOLDERS:
                raise CorruptEntry(f"file path {rel!r} is outside the folders a stage writes ({', '.join(STAGE_FILE_FOLDERS)})")
            artifacts[rel] = self._checked(d / "files" / rel, sha)
        return CachedResult(key, tables, artifacts, meta)

    @staticmethod
    def _checked(path: Path, sha: str) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CorruptEntry(f"{path.name}: {e.strerror or e}") from None
        if _sha(data) != sha:
            raise CorruptEntry(f"{path.name} does not match its recorded sha256")
        return data

    # ---- write

    def save(
        self,
        key: str,
        inputs: Mapping[str, Any],
        tables: Mapping[str, pd.DataFrame],
        artifacts: Mapping[str, bytes] | None = None,
        *,
        seconds: float | None = None,
    ) -> Path:
        """Write the entry into a temporary folder next to it, then rename it into place
        (replacing an older entry under the same key). Call with :meth:`lock` held."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f".{key}.*"):  # left by a killed writer (the lock is ours now)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key}.", suffix=".tmp"))
        try:
            os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; the store is meant to be shared
            table_sha: dict[str, str] = {}
            for name, df in tables.items():
                buf = io.BytesIO()
                df.to_parquet(buf, index=False)
                data = buf.getvalue()
                atomic_write_bytes(tmp / "tables" / f"{name}.parquet", data)
                table_sha[name] = _sha(data)
            file_sha: dict[str, str] = {}
            for rel, data in (artifacts or {}).items():
                if not _inside(rel):
                    raise ValueError(f"artifact path {rel!r} is not inside the run folder")
                atomic_write_bytes(tmp / "files" / rel, data)
                file_sha[rel] = _sha(data)
            meta = {
                "key": key,
                "inputs": dict(inputs),
                "computed_at": now(),
                "seconds": seconds,
                "tables": table_sha,
                "files": file_sha,
            }
            atomic_write_bytes(tmp / "meta.json", json.dumps(meta, indent=1, default=str).encode())
            dest = self.entry(key)
            old = None
            if dest.exists():
                old = dest.with_name(f".{key}.old-{os.getpid()}-{time.monotonic_ns()}")
                dest.rename(old)
            tmp.rename(dest)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return dest
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _inside(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts


@dataclass
class StageResult:
    tables: dict[str, pd.DataFrame]
    cached: bool
    key: str
    artifacts: dict[str, bytes] = field(default_factory=dict)
    #: the stage's in-memory value when it was computed now (None from the cache)
    value: Any = None


def cached_stage(
    cache: ResultCache,
    stage: str,
    inputs: Mapping[str, Any],
    compute: Callable[[], Any],
    *,
    recompute: bool = False,
    progress=None,
    ranks: bool = True,
) -> StageResult:
    """``compute()``'s result, or the cached one under the key of ``inputs``.

    ``compute`` returns a :class:`~workbench.stages.StageOutput` (or a mapping of tables);
    its tables and artifacts are stored under the key. ``recompute`` ignores (and
    overwrites) the entry. A failure to write the cache is a warning: the result is still
    returned. Nothing here touches the run folder. ``ranks=False``: only this process runs
    the work (the table steps run on rank 0 alone), so no collective is entered.
    """
    inputs = {"stage": stage, **inputs}
    key = ResultCache.key(inputs)
    if ranks and distributed.world().active:
        return _cached_stage_ranks(cache, stage, inputs, key, compute, recompute=recompute, progress=progress)
    return _cached_stage_local(cache, stage, inputs, key, compute, recompute=recompute, progress=progress)


def _cached_stage_local(cache: ResultCache, stage: str, inputs: Mapping[str, Any], key: str,
                       compute: Callable[[], Any], *, recompute: bool, progress) -> StageResult:
    """:func:`cached_stage` in one process (``inputs`` with the stage name, ``key`` their key)."""
    with cache.lock(key):
        hit = None if recompute else cache.load(key)
        if hit is not None:
            log.info("%s: reused cached result %s (computed %s)", stage, key[:12], hit.meta.get("computed_at", "?"))
            if progress is not None:
                with progress.task(f"{stage}: reused cached result", 1) as advance:
                    advance(1)
            return StageResult(hit.tables, True, key, hit.artifacts)
        t0 = time.perf_counter()
        out = compute()
        seconds = time.perf_counter() - t0
        tables = dict(out.tables if hasattr(out, "tables") else out)
        artifacts = dict(getattr(out, "artifacts", {}) or {})
        try:
            cache.save(key, inputs, tables, artifacts, seconds=seconds)
        except OSError as e:
            log.warning("%s: could not store the result in %s (%s)", stage, cache.root, e)
        return StageResult(tables, False, key, artifacts, getattr(out, "value", None))


def _cached_stage_ranks(cache: ResultCache, stage: str, inputs: Mapping[str, Any], key: str, compute: Callable[[], Any],
                        *, recompute: bool, progress) -> StageResult:
    """:func:`cached_stage` under ``torchrun``: rank 0 alone reads and writes the cache and
    tells the others whether it hit (with the entry's tables, which a later stage may
    read); on a miss every rank computes (a sharded stage needs them all) and rank 0
    stores the result. The other ranks never take the key's lock: waiting for it while
    rank 0 waits for them in a collective would deadlock."""
    if distributed.world().main:
        def compute_together() -> Any:
            distributed.broadcast(None)  # a miss: the other ranks compute with this one
            return compute()

        got = _cached_stage_local(cache, stage, inputs, key, compute_together, recompute=recompute, progress=progress)
        if got.cached:
            distributed.broadcast((got.tables, got.artifacts))
        return got
    hit = distributed.broadcast(None)
    if hit is not None:
        return StageResult(hit[0], True, key, hit[1])
    out = compute()
    return StageResult(dict(out.tables if hasattr(out, "tables") else out), False, key,
                       dict(getattr(out, "artifacts", {}) or {}), getattr(out, "value", None))

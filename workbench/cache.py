"""The result cache: the tables (and files) of a run's evaluation, soundness checks and
probes, kept in the model store so that a rerun with nothing changed reuses them.

A stage's result is stored under a key: the sha256 of the canonical JSON
(:func:`workbench.study.content_hash`) of everything that determines it — the stage name,
its section of the study, the store keys and ids of the models in order, the pairs, the
data identity and the examples used, the seed, the device type, the torch version and a
hash of the workbench source code (:func:`code_hash`, so any code change recomputes).
Layout::

    <store>/results/<key>/meta.json              the key's inputs, when it was computed, sha256 of every file
    <store>/results/<key>/tables/<name>.parquet  the stage's tables
    <store>/results/<key>/files/<path>           files the stage wrote into the run folder (arrays/saliency.npz)
    <store>/results/<key>.lock                   flock held while one process computes or reads that key

An entry is written into a temporary folder next to it and renamed into place, so a killed
process never leaves a partial entry under a key; an entry that is nevertheless unreadable
or does not match its recorded sha256 is a miss (a warning, then it is recomputed and
overwritten), never an error. Two processes computing the same key take its lock: one
computes, the other waits and reuses the result.
"""

from __future__ import annotations

import contextlib
import functools
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

from .store import _UMASK, atomic_write_bytes, file_lock, now
from .study import content_hash

log = logging.getLogger("workbench")

#: the version of the entry layout; part of every key
FORMAT_VERSION = 1
#: run-folder subfolders where a stage may write files that its entry keeps (arrays: the
#: probes; figures and report: a cached report's figures). An entry listing a file anywhere
#: else (study.yaml, tables/) would overwrite what another part of the run wrote.
STAGE_FILE_FOLDERS = ("arrays", "figures", "report")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_]+\Z")


def source_hash(root: str | Path) -> str:
    """sha256 over every ``*.py`` file under ``root`` (relative path and contents, sorted by
    path): any change to the code changes it."""
    root = Path(root)
    h = hashlib.sha256()
    for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file()):
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """:func:`source_hash` of the installed workbench package (computed once per process)."""
    return source_hash(Path(__file__).resolve().parent)


@dataclass
class CachedResult:
    """One entry read back: its tables and the paths (inside the entry) of its files."""

    key: str
    tables: dict[str, pd.DataFrame]
    files: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class CorruptEntry(Exception):
    pass


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of the files a stage may write into a run folder
    (everything but the log and the archive of earlier runs)."""
    out: dict[str, tuple[int, int]] = {}
    if not folder.is_dir():
        return out
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if rel.parts[0] in ("archive", "run.log") or not p.is_file() or p.is_symlink():
            continue
        st = p.stat()
        out[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


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
        files: dict[str, Path] = {}
        for rel, sha in (meta.get("files") or {}).items():
            parts = Path(rel).parts
            # a stage writes only below arrays/; anything else would overwrite another stage's files
            if len(parts) < 2 or parts[0] not in STAGE_FILE_FOLDERS or Path(rel).is_absolute() or ".." in parts:
                raise CorruptEntry(f"file path {rel!r} is outside the folders a stage writes ({', '.join(STAGE_FILE_FOLDERS)})")
            path = d / "files" / rel
            self._checked(path, sha)
            files[rel] = path
        return CachedResult(key, tables, files, meta)

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
        files: Mapping[str, Path] | None = None,
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
            for rel, src in (files or {}).items():
                data = Path(src).read_bytes()
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


@dataclass
class StageResult:
    tables: dict[str, pd.DataFrame]
    cached: bool
    key: str


def cached_stage(
    cache: ResultCache,
    stage: str,
    inputs: Mapping[str, Any],
    compute: Callable[[], Mapping[str, pd.DataFrame]],
    *,
    recompute: bool = False,
    folder: Path | None = None,
    progress=None,
) -> StageResult:
    """``compute()``'s tables, or the cached ones under the key of ``inputs``.

    With ``folder`` (the run folder), the files ``compute`` writes there are stored with
    the tables and copied back on a hit. ``recompute`` ignores (and overwrites) the entry.
    A failure to write the cache is a warning: the result is still returned.
    """
    inputs = {"stage": stage, **inputs}
    key = ResultCache.key(inputs)
    with cache.lock(key):
        hit = None if recompute else cache.load(key)
        if hit is not None:
            if folder is not None:
                for rel, src in hit.files.items():
                    atomic_write_bytes(folder / rel, src.read_bytes())
            log.info("%s: reused cached result %s (computed %s)", stage, key[:12], hit.meta.get("computed_at", "?"))
            if progress is not None:
                with progress.task(f"{stage}: reused cached result", 1) as advance:
                    advance(1)
            return StageResult(hit.tables, True, key)
        before = _snapshot(folder) if folder is not None else {}
        t0 = time.perf_counter()
        tables = dict(compute())
        seconds = time.perf_counter() - t0
        files: dict[str, Path] = {}
        if folder is not None:
            after = _snapshot(folder)
            files = {rel: folder / rel for rel, st in sorted(after.items())
                     if before.get(rel) != st and rel.split("/")[0] in STAGE_FILE_FOLDERS}
        try:
            cache.save(key, inputs, tables, files, seconds=seconds)
        except OSError as e:
            log.warning("%s: could not store the result in %s (%s)", stage, cache.root, e)
        return StageResult(tables, False, key)

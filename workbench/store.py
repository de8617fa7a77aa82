"""Run folders and the model store.

The **model store** caches trained weights by a hash of everything that determines them
(data, architecture, recipe, training settings, seed, and a hash of the training code:
``workbench.training.jobs``), so a rerun, or
another study declaring the same model, reuses them. Layout::

    <store>/models/<key>/model.pt        final weights (state dict, loaded weights_only=True)
    <store>/models/<key>/meta.json       spec, history, sha256 of model.pt, timings
    <store>/models/<key>/checkpoint.pt   last finished epoch while training (resume)
    <store>/models/<key>.lock            flock held while one process trains that key
    <store>/results/<key>/               cached stage results (evaluation, checks, probes): see cache.py

Every file is written to a temporary name and moved into place with ``os.replace`` (atomic
on POSIX), so a killed process never leaves a half-written file behind; the lock makes a
second process wait for, then reuse, a model the first one is training.

A **run folder** (default ``reports/<study>/``) holds the resolved study, the
environment, tidy tables (parquet and CSV), figures, arrays, a log and ``index.html``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import CheckpointError, RunFolderError, StoreError

log = logging.getLogger("workbench")


def default_store() -> Path:
    """``$WORKBENCH_STORE``, else ``$XDG_CACHE_HOME/workbench`` (``~/.cache/workbench``)."""
    if os.environ.get("WORKBENCH_STORE"):
        return Path(os.environ["WORKBENCH_STORE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "workbench"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` into a temporary file next to ``path``, then rename it into place:
    readers see the old file, no file, or the whole new one; a failed write leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from None  # name the file, not its temporary
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` (flock: released by the kernel if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_claim(path: Path) -> tuple[dict[str, Any] | None, float]:
    """(the claim's owner, seconds since its last heartbeat); (None, 0) when there is none.
    An unreadable claim (being written, or garbage) counts as one with an unknown owner."""
    try:
        age = time.time() - path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None, 0.0
    except OSError:
        return {}, 0.0
    try:
        holder = json.loads(text)
    except ValueError:
        holder = {}
    return (holder if isinstance(holder, dict) else {}), age


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: only the heartbeat can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _drop_claim(path: Path, seen: dict[str, Any]) -> None:
    """Remove the stale claim ``seen``, and only that one: moved aside first, and put back
    (without replacing anything) if another process had claimed it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved, _ = _read_claim(aside)
    if moved is not None and moved.get("token") != seen.get("token"):
        with contextlib.suppress(OSError):
            os.link(aside, path)  # a fresh claim: back where it was, unless one was made since
    with contextlib.suppress(FileNotFoundError):
        aside.unlink()


def torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


#: torch stores the records of its zip archives uncompressed, so an archive declares about
#: its own size; one declaring more than this many times its size (plus 1 MiB) is a
#: decompression bomb, refused before anything is allocated
MAX_EXPANSION = 4


def check_archive_sizes(data: bytes, file: str) -> None:
    """Refuse a torch zip archive whose members declare more than ``MAX_EXPANSION`` × its
    size (+1 MiB) uncompressed; reads only the central directory. Not a zip: nothing to check."""
    if not data.startswith(b"PK"):
        return
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            declared = sum(max(0, i.file_size) for i in z.infolist())
    except (zipfile.BadZipFile, ValueError, OSError):
        return  # torch.load names what is wrong with it
    limit = MAX_EXPANSION * len(data) + (1 << 20)
    if declared > limit:
        raise CheckpointError(f"refused: the archive declares {declared / (1 << 20):.0f} MiB of contents in a "
                              f"{len(data) / (1 << 20):.1f} MiB file (more than {MAX_EXPANSION}x its size); torch "
                              "never compresses its files, so it is not one torch wrote", file=file)


def load_torch_file(path: Path, *, what: str = "checkpoint", sha256: str | None = None) -> Any:
    """``torch.load(weights_only=True)``; anything unreadable or not matching its recorded
    hash raises :class:`CheckpointError` (reported, never trusted)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {what}: {e.strerror}", file=str(path)) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"corrupt {what}: contents do not match the recorded sha256", file=str(path))
    check_archive_sizes(data, str(path))  # a decompression bomb is refused before it is expanded
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "corrupt"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt {what} ({reason[:160]})", file=str(path)) from None


class ModelStore:
    """The cache of trained models, shared by all studies and processes that name it."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_store()

    def entry(self, key: str) -> Path:
        return self.root / "models" / key

    def check(self) -> None:
        """The store is (or can become) a writable folder: fail before any work otherwise."""
        for anc in (self.root, *self.root.parents):
            if anc.exists() and not anc.is_dir():
                raise StoreError(f"{anc} is a file, not a folder; pass --store DIR or set $WORKBENCH_STORE",
                                 file=str(self.root))
        try:
            (self.root / "models").mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root / "models", prefix=".probe.", suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise StoreError(f"model store is not writable ({e.strerror or e}); pass --store DIR or set "
                             "$WORKBENCH_STORE", file=str(self.root)) from None

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock, held while one process trains that key: an ``flock`` (this
        machine's processes wake at once) and the :meth:`claim` (every machine's)."""
        with file_lock(self.root / "models" / f"{key}.lock"), self.claim(key):
            yield

    @contextlib.contextmanager
    def claim(self, key: str, *, stale_s: float | None = None, poll_s: float = 2.0) -> Iterator[None]:
        """The store's claim on ``key`` while this process trains it, one that works where
        ``flock`` does not (NFS, where cluster stores live): ``<key>.claim`` created with
        ``O_EXCL``, holding the owner's host and pid, its mtime a heartbeat renewed every
        ``stale_s``/4 seconds. Another process waits while the claim lives; it takes it over
        when its heartbeat is older than ``stale_s`` (default ``$WORKBENCH_CLAIM_STALE_S`` or
        300 s), or at once when its owner is a process of this host that is gone."""
        stale = float(stale_s if stale_s is not None else os.environ.get("WORKBENCH_CLAIM_STALE_S") or 300)
        path = self.root / "models" / f"{key}.claim"
        path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "since": now()}
        waiting = False
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
            except FileExistsError:
                holder, age = _read_claim(path)
                if holder is None:
                    continue  # released meanwhile
                gone = holder.get("host") == me["host"] and not _pid_alive(holder.get("pid"))
                if gone or age > stale:
                    why = "its process is gone" if gone else f"no heartbeat for {age:.0f} s"
                    log.warning("%s: taking over the training claim of pid %s on %s (%s)", key, holder.get("pid"),
                                holder.get("host"), why)
                    _drop_claim(path, holder)
                    continue
                if not waiting:
                    log.warning("%s: pid %s on %s is training this model; waiting for it (its claim: %s)", key,
                                holder.get("pid"), holder.get("host"), path)
                    waiting = True
                time.sleep(poll_s)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(stale / 4):
                holder, _ = _read_claim(path)
                if holder is None or holder.get("token") != me["token"]:
                    log.warning("%s: the training claim was taken over (%s)", key, path)
                    return
                with contextlib.suppress(OSError):
                    os.utime(path)

        beat = threading.Thread(target=heartbeat, name=f"workbench-claim-{key[:8]}", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            holder, _ = _read_claim(path)
            if holder is not None and holder.get("token") == me["token"]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # ---- final models

    def has_model(self, key: str) -> bool:
        d = self.entry(key)
        return (d / "meta.json").is_file() and (d / "model.pt").is_file()

    def load_model(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        d = self.entry(key)
        where = str(d / "meta.json")
        try:
            meta = json.loads((d / "meta.json").read_bytes().decode("utf-8"))
        except OSError as e:
            raise CheckpointError(f"cannot read model metadata ({e.strerror or e})", file=where) from None
        except UnicodeDecodeError:
            raise CheckpointError("corrupt model metadata (not UTF-8 text)", file=where) from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"corrupt model metadata (line {e.lineno}: {e.msg})", file=where) from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"corrupt model metadata (a JSON {type(meta).__name__}, not an object)", file=where)
        sha = meta.get("sha256")
        if not isinstance(sha, str):
            raise CheckpointError("corrupt model metadata (no sha256 of model.pt)", file=where)
        history = meta.get("history", [])
        if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
            raise CheckpointError("corrupt model metadata (history is not a list of epochs)", file=where)
        state = load_torch_file(d / "model.pt", what="model", sha256=sha)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError("corrupt model: not a state dict", file=str(d / "model.pt"))
        return state, meta

    def save_model(self, key: str, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        d = self.entry(key)
        data = torch_bytes({k: v.detach().cpu() for k, v in state.items()})
        meta = {**meta, "sha256": hashlib.sha256(data).hexdigest(), "saved_at": now()}
        atomic_write_bytes(d / "model.pt", data)
        atomic_write_text(d / "meta.json", json.dumps(meta, indent=1, default=str))  # meta last: it marks "done"
        with contextlib.suppress(FileNotFoundError):
            (d / "checkpoint.pt").unlink()

    # ---- per-epoch checkpoints

    #: what :meth:`load_checkpoint` requires of a checkpoint, and the types
    CHECKPOINT_FIELDS = {"epoch": int, "model": dict, "optimizer": dict, "scheduler": dict, "history": list}

    def load_checkpoint(self, key: str, *, epochs: int | None = None) -> dict[str, Any] | None:
        """The checkpoint of ``key`` (None when there is none); one with missing fields, or an
        epoch outside 1..``epochs``, raises :class:`CheckpointError`."""
        path = self.entry(key) / "checkpoint.pt"
        if not path.is_file():
            return None
        state = load_torch_file(path, what="checkpoint")
        if not isinstance(state, dict):
            raise CheckpointError("corrupt checkpoint: not a mapping of fields", file=str(path))
        missing = [k for k in self.CHECKPOINT_FIELDS if k not in state]
        if missing:
            raise CheckpointError(f"corrupt checkpoint: missing field(s) {', '.join(missing)}", file=str(path))
        for k, kind in self.CHECKPOINT_FIELDS.items():
            if not isinstance(state[k], kind) or isinstance(state[k], bool):
                raise CheckpointError(f"corrupt checkpoint: {k} is a {type(state[k]).__name__}, not a {kind.__name__}",
                                      file=str(path))
        epoch, step = state["epoch"], state.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise CheckpointError(f"corrupt checkpoint: step is {step!r}, not a count of batches", file=str(path))
        # epoch: finished epochs; a mid-epoch checkpoint (step > 0) may come before the first ends
        if (epoch < (0 if step else 1) or (epochs is not None and epoch > epochs)
                or len(state["history"]) != epoch):
            raise CheckpointError(
                f"impossible checkpoint: epoch {epoch} with {len(state['history'])} epochs of history"
                + (f" (training has {epochs} epochs)" if epochs is not None else ""), file=str(path),
            )
        return state

    def save_checkpoint(self, key: str, state: dict[str, Any]) -> None:
        atomic_write_bytes(self.entry(key) / "checkpoint.pt", torch_bytes(state))

    def quarantine(self, key: str) -> Path | None:
        """Move an entry aside (``--retrain`` over a corrupt one): nothing is deleted."""
        d = self.entry(key)
        if not d.exists():
            return None
        dest = d.with_name(f"{key}.bad-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
        d.rename(dest)
        return dest


# --------------------------------------------------------------------------- run folders


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunFolder:
    """One folder per run, written so that no result is ever lost.

    ``workbench run`` writes through :meth:`staged`: the run is written into a staging folder
    beside the run folder (``<parent>/.<name>.staging-<pid>-<random>/<name>/``) and published
    by :meth:`publish` when complete, in two renames: the previous run folder moves as a
    whole into the new one's ``archive/<time>/``, then the new folder takes its place. A
    failure or interruption before that leaves the previous run exactly as it was; the
    staging folder is removed, or, after a kill, by the next run into the folder. An
    ``flock`` on ``<parent>/.<name>.lock`` makes a second run into the same folder wait (the
    kernel releases it when the holder dies, ``kill -9`` included).

    Only the files a run writes (:data:`RUN_FILES`) stay archived; the previous archive's
    entries join the new ``archive/``, and anything else the user put into the folder moves
    back to the top. A folder that holds files but no run is refused (:meth:`check`).
    ``prepare`` makes the folder for writing in place (tests, library use), archiving nothing.
    """

    TABLES, FIGURES, ARRAYS = "tables", "figures", "arrays"
    #: the names a run writes at the top of its folder
    RUN_FILES = frozenset({"study.yaml", "environment.json", "run.json", "run.log", "index.html", TABLES, FIGURES,
                           ARRAYS})
    #: any of these marks a folder as a run folder (written at the start of every run)
    MARKERS = ("study.yaml", "environment.json", "run.json")
    #: the subfolders a run writes into
    SUBFOLDERS = (TABLES, FIGURES, ARRAYS)
    #: archived runs kept in ``archive/`` after a publish (``--keep``); older ones are deleted
    KEEP = 5
    #: why a folder that holds files but none of MARKERS is refused
    FOREIGN = ("folder exists and holds files but no run (no study.yaml, environment.json or run.json); refusing to "
               "archive what a run did not write: pass a new or empty folder, or the folder of an earlier run")
    #: room left in NAME_MAX (255 bytes) for the staging and lock names built from the folder name
    MAX_NAME_BYTES = 200

    def __init__(self, path: str | Path, *, keep: int | None = None):
        self.keep = self.KEEP if keep is None else keep
        if self.keep < 0:
            raise RunFolderError(f"--keep must be 0 or more, got {self.keep}", field="--keep")
        self.path = Path(path)  # where files are written (the staging folder while a run is staged)
        self.target = self.path  # where the run is published
        self._lock: Any = None
        self._staging: Path | None = None

    @property
    def tables(self) -> Path:
        return self.path / self.TABLES

    @property
    def figures(self) -> Path:
        return self.path / self.FIGURES

    @property
    def arrays(self) -> Path:
        return self.path / self.ARRAYS

    # ---- where a run may go

    def check(self) -> None:
        """Refuse targets that are not ours to replace; touches nothing."""
        target = self.target
        where = str(target)
        try:
            real = _real(target)
            here = Path.cwd().resolve()
        except OSError as e:
            raise RunFolderError(f"cannot resolve the run folder path ({e.strerror or e})", file=where) from None
        if real == here or real in here.parents:
            raise RunFolderError(
                "refusing to use the current folder (or one above it) as the run folder: a run replaces its folder "
                "when it finishes; pass a new folder, e.g. --out reports/<study name>", file=where or "--out",
            )
        if len(real.name.encode()) > self.MAX_NAME_BYTES:
            raise RunFolderError(f"run folder name longer than {self.MAX_NAME_BYTES} bytes", file=where)
        if real.exists() and not real.is_dir():
            raise RunFolderError("run folder path exists and is not a folder", file=where)
        if real.is_dir():
            try:
                entries = [p.name for p in real.iterdir()]
            except OSError as e:
                raise RunFolderError(f"cannot list the run folder ({e.strerror or e})", file=where) from None
            if entries and not any((real / m).exists() for m in self.MARKERS):
                raise RunFolderError(self.FOREIGN, file=where)
        for anc in (real.parent, *real.parent.parents):
            if anc.exists() and not anc.is_dir():
                raise RunFolderError(f"{anc} is a file, not a folder", file=where)

    def prepare(self) -> None:
        """Create the folder and its subfolders for writing in place (no staging, no archive)."""
        self.check()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for sub in self.SUBFOLDERS:
                (self.path / sub).mkdir(exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot create the run folder ({e.strerror or e})", file=str(e.filename or self.path)) from None

    # ---- staged runs

    @contextlib.contextmanager
    def staged(self) -> Iterator[RunFolder]:
        """Write into a staging folder while the block runs (lock held); call :meth:`publish`
        inside it. Leaving it otherwise (an error, Ctrl-C) removes the staging folder."""
        self.begin()
        try:
            yield self
        except OSError as e:
            staged = self.path
            name = Path(os.fspath(e.filename)) if e.filename is not None else None
            if name is None or staged not in (name, *name.parents):
                raise
            # say where it will land, not the staging folder, and that nothing was lost
            raise RunFolderError(
                f"cannot write the run folder: {e.strerror or e}; the previous run there is untouched",
                file=str(self.target / name.relative_to(staged)),
            ) from None
        finally:
            self.abandon()

    def begin(self) -> None:
        self.check()
        real = _real(self.target)
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
            self._acquire(real)
            _recover(real, self.RUN_FILES)
            self._staging = Path(tempfile.mkdtemp(dir=real.parent, prefix=f".{real.name}.staging-{os.getpid()}-"))
            os.chmod(self._staging, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
            self.path = self._staging / real.name
            self.path.mkdir()
            for sub in self.SUBFOLDERS:
                (self.path / sub).mkdir()
        except OSError as e:
            self.abandon()
            raise RunFolderError(f"cannot prepare the run folder ({e.strerror or e}, in {real.parent})",
                                 file=str(self.target)) from None
        except BaseException:
            self.abandon()
            raise

    def _acquire(self, real: Path) -> None:
        f = open(real.parent / f".{real.name}.lock", "a+")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            log.warning("another run (pid %s) is writing %s; waiting for it to finish", holder, self.target)
            fcntl.flock(f, fcntl.LOCK_EX)
        except BaseException:
            f.close()
            raise
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def publish(self) -> Path | None:
        """Put the staged run in place of the run folder; returns where the previous run went."""
        if self._staging is None:
            raise RuntimeError("publish() without begin()")
        real = _real(self.target)
        archived = None
        if real.is_dir() and not any(real.iterdir()):
            real.rmdir()  # an empty folder holds nothing to archive
        if real.exists():
            # Runs archived within one second get -1, -2, ... after the ones already there, so
            # names never compound and a later suffix is a later run (what --keep sorts by).
            stamp = _free_stamp(real / "archive", _previous_stamp(real))
            # The marker lets the next run finish a publish killed between the two renames.
            atomic_write_text(self._staging / "PUBLISH", stamp)
            (self.path / "archive").mkdir()
            archived = self.path / "archive" / stamp
            os.rename(real, archived)
        try:
            os.rename(self.path, real)
        except BaseException:
            if archived is not None:  # put the previous run back before the staging folder goes
                os.rename(archived, real)
            raise
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None
        self.path = self.target
        if archived is not None:
            archived = real / "archive" / archived.name
            _flatten_archive(real, archived, self.RUN_FILES)
            _prune_archive(real / "archive", self.keep)
        self.release()
        return archived

    def abandon(self) -> None:
        """Remove an unpublished staging folder; release the lock."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
            self.path = self.target
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # ---- writing

    def write_table(self, name: str, df) -> None:
        """Tidy table as parquet (types kept) and CSV (for anything else)."""
        self.tables.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(self.tables / f"{name}.parquet", buf.getvalue())
        atomic_write_text(self.tables / f"{name}.csv", df.to_csv(index=False))

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(obj, indent=1, default=str))

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)


class ComparisonFolder(RunFolder):
    """The folder of ``workbench compare``: the rules of a run folder (staged, published, the
    previous comparison archived), with a comparison's files; a folder holding files but no
    comparison (``comparison.json``, or the ``tables/cross_model.parquet`` of one written
    before that marker existed) is refused."""

    RUN_FILES = frozenset({"comparison.json", "index.html", RunFolder.TABLES, RunFolder.FIGURES})
    MARKERS = ("comparison.json", "tables/cross_model.parquet")
    SUBFOLDERS = (RunFolder.TABLES, RunFolder.FIGURES)
    FOREIGN = ("folder exists and holds files but no comparison (no comparison.json); refusing to archive what "
               "compare did not write: pass a new or empty folder, or the folder of an earlier comparison")


def _real(path: Path) -> Path:
    """Absolute path with symlinks resolved (a linked run folder is replaced where it lives)."""
    return Path(os.path.abspath(path)).resolve() if str(path) else Path.cwd().resolve()


def _unique(path: Path) -> Path:
    """``path``, or the first free ``path-N``; an archive stamp's own ``-N`` is replaced, not
    extended (``T034243-1`` taken gives ``T034243-2``, never ``T034243-1-1``)."""
    base = path.name[:15] if _STAMP.fullmatch(path.name) else path.name
    out, n = path, 1
    while out.exists():
        out = path.with_name(f"{base}-{n}")
        n += 1
    return out


def _free_stamp(archive: Path, stamp: str) -> str:
    """``stamp``, or ``stamp-N`` with N above every suffix ``archive`` already holds for it."""
    try:
        taken = [p.name for p in archive.iterdir() if _STAMP.fullmatch(p.name) and p.name[:15] == stamp[:15]]
    except OSError:
        return stamp
    if not taken:
        return stamp
    return f"{stamp[:15]}-{max(int(t[16:] or 0) for t in taken) + 1}"


def _recover(real: Path, run_files: frozenset[str]) -> None:
    """With the folder's lock held: finish a publish killed between its two renames, drop
    stale staging folders (every staging folder is stale: only the lock holder writes one)."""
    for staging in sorted(real.parent.glob(f".{real.name}.staging-*")):
        inner = staging / real.name
        marker = staging / "PUBLISH"
        if marker.is_file() and inner.is_dir() and not real.exists():
            stamp = _safe_stamp(marker.read_text().strip())
            os.rename(inner, real)
            log.warning("finished publishing the run interrupted in %s", staging)
            if stamp and (real / "archive" / stamp).is_dir():
                _flatten_archive(real, real / "archive" / stamp, run_files)
        elif marker.is_file() and not inner.exists():
            pass  # published; only the marker was left
        else:
            log.info("removing %s, left by an interrupted run", staging)
        shutil.rmtree(staging, ignore_errors=True)


def _flatten_archive(real: Path, archived: Path, run_files: frozenset[str]) -> None:
    """The previous folder moved whole into ``archive/<time>/``: its own archive joins the new
    ``archive/`` and what no run writes goes back to the top. Each step is a rename; an
    interruption only leaves things nested, never lost."""
    try:
        old_archive = archived / "archive"
        if old_archive.is_dir():
            for entry in sorted(old_archive.iterdir()):
                os.rename(entry, _unique(real / "archive" / entry.name))
            old_archive.rmdir()
        for entry in sorted(archived.iterdir()):
            if entry.name not in run_files and not (real / entry.name).exists():
                os.rename(entry, real / entry.name)
    except OSError as e:
        log.warning("could not tidy the archive %s (%s); its files are all there", archived, e)


#: what an archive entry's name may be: a time stamp (optionally ``-N``); anything read from a
#: file is checked against it, so no file's contents can build a path outside ``archive/``
_STAMP = re.compile(r"\d{8}T\d{6}(-\d{1,6})?")


def _safe_stamp(text: object) -> str | None:
    return text if isinstance(text, str) and _STAMP.fullmatch(text) else None


def _prune_archive(archive: Path, keep: int) -> None:
    """Keep the newest ``keep`` archived runs (time-stamped names sort by time); entries with
    other names are not ours and stay."""
    try:
        runs = sorted((p for p in archive.iterdir() if _STAMP.fullmatch(p.name) and p.is_dir() and not p.is_symlink()),
                      key=lambda p: (p.name[:15], int(p.name[16:] or 0)))
    except OSError:
        return
    for old in runs[:max(0, len(runs) - keep)]:
        log.info("removing the archived run %s (--keep %d)", old, keep)
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        if not any(archive.iterdir()):
            archive.rmdir()


def _previous_stamp(path: Path) -> str:
    """The archive name of the run in ``path``: when it started (its ``environment.json``; a
    comparison: ``comparison.json``), or now when that file is missing, malformed, or says
    anything but a time."""
    for name, field in (("environment.json", "started_at"), ("comparison.json", "written_at")):
        try:
            started = json.loads((path / name).read_text()).get(field, "")
            stamp = _safe_stamp(str(started).replace(":", "").replace("+0000", "").replace("-", "")[:15])
            if stamp:
                return stamp
        except (OSError, ValueError, AttributeError):
            pass
    return _dt.datetime.now().strftime("%Y%m%dT%H%M%S")


# --------------------------------------------------------------------------- provenance


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, seed: int) -> dict[str, Any]:
    versions = {}
    for pkg in ("workbench", "torch", "torchvision", "captum", "scikit-learn", "pandas", "numpy", "seaborn", "pydantic"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    dev: dict[str, Any] = {"type": device.type, "name": str(device)}
    if device.type == "cuda":
        dev["gpu"] = torch.cuda.get_device_name(device)
    else:
        dev["cpu"] = platform.processor() or platform.machine()
        dev["threads"] = torch.get_num_threads()
    return {
        "started_at": now(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "device": dev,
        "git_commit": git_commit(),
        "seed": seed,
        "command": " ".join(sys.argv),
    }

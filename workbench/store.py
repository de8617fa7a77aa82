"""Run folders and the model store.

The **model store** caches trained weights by a hash of everything that determines them
(data, architecture, recipe, training settings, seed, code version), so a rerun, or
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
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import CheckpointError, RunFolderError

log = logging.getLogger("workbench")

#: bump when a change to training code changes what a given spec produces
#: (2: the reference PreActBlock shortcut, class-stratified overfitting-check and monitor batches)
TRAINING_CODE_VERSION = 2


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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


def torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_torch_file(path: Path, *, what: str = "checkpoint", sha256: str | None = None) -> Any:
    """``torch.load(weights_only=True)``; anything unreadable or not matching its recorded
    hash raises :class:`CheckpointError` (reported, never trusted)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {what}: {e.strerror}", file=str(path)) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"corrupt {what}: contents do not match the recorded sha256", file=str(path))
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

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock, held while one process trains that key."""
        with file_lock(self.root / "models" / f"{key}.lock"):
            yield

    # ---- final models

    def has_model(self, key: str) -> bool:
        d = self.entry(key)
        return (d / "meta.json").is_file() and (d / "model.pt").is_file()

    def load_model(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        d = self.entry(key)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"corrupt model metadata ({e})", file=str(d / "meta.json")) from None
        state = load_torch_file(d / "model.pt", what="model", sha256=meta.get("sha256"))
        if not isinstance(state, dict):
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

    def load_checkpoint(self, key: str) -> dict[str, Any] | None:
        path = self.entry(key) / "checkpoint.pt"
        if not path.is_file():
            return None
        state = load_torch_file(path, what="checkpoint")
        if not isinstance(state, dict) or "epoch" not in state:
            raise CheckpointError("corrupt checkpoint: missing fields", file=str(path))
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
    """One folder per run. ``prepare`` moves a previous run's files to ``archive/<time>/``
    so nothing already there is lost."""

    TABLES, FIGURES, ARRAYS = "tables", "figures", "arrays"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def tables(self) -> Path:
        return self.path / self.TABLES

    @property
    def figures(self) -> Path:
        return self.path / self.FIGURES

    @property
    def arrays(self) -> Path:
        return self.path / self.ARRAYS

    def prepare(self) -> Path | None:
        """Create the folder; archive the files of an earlier run. Returns the archive path."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError("run folder path exists and is not a folder", file=str(self.path))
        self.path.mkdir(parents=True, exist_ok=True)
        previous = [p for p in self.path.iterdir() if p.name != "archive"]
        archived = None
        if previous:
            stamp = _previous_stamp(self.path)
            archived = self.path / "archive" / stamp
            n = 1
            while archived.exists():
                archived = self.path / "archive" / f"{stamp}-{n}"
                n += 1
            archived.mkdir(parents=True)
            for p in previous:
                shutil.move(str(p), archived / p.name)
        for sub in (self.tables, self.figures, self.arrays):
            sub.mkdir(exist_ok=True)
        return archived

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


def _previous_stamp(path: Path) -> str:
    env = path / "environment.json"
    try:
        started = json.loads(env.read_text()).get("started_at", "")
        stamp = started.replace(":", "").replace("+0000", "").replace("-", "")[:15]
        if stamp:
            return stamp
    except (OSError, json.JSONDecodeError, AttributeError):
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
    from importlib.metadata import PackageNotFoundError, version

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

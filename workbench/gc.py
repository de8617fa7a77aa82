"""``workbench gc RUN_DIR...``: the store entries no given run folder uses, and removing them.

A run folder says what it used: the model keys in ``tables/models.parquet`` and the result
keys in ``run.json`` (``result_keys``), for the run itself and for each run in its
``archive/``. Every other model entry (``<store>/models/<key>/``, including entries moved
aside by ``--retrain``) and result entry (``<store>/results/<key>/``) is garbage. The
decoded-data cache (``<store>/data/``) is rebuilt on demand and is listed as garbage only
with ``data=True``. Some entries are never garbage: a model still training (a
``checkpoint.pt`` without a ``model.pt``, which a rerun resumes from), an entry whose
training claim is held, and anything under ``jobs/`` or not named like an entry.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import RunFolderError, StoreError
from .store import ModelStore, _read_claim

log = logging.getLogger("workbench")

_KEY = re.compile(r"[0-9a-f]{16,64}(\.bad-\d{8}-\d{6})?")


@dataclass
class Garbage:
    """What :func:`find_garbage` found: entries to remove (path, bytes) and those kept."""

    remove: list[tuple[Path, int]] = field(default_factory=list)
    in_use: int = 0
    kept: list[tuple[Path, str]] = field(default_factory=list)  # (entry, why it stays although unused)

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.remove)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def used_keys(run_dirs: list[Path]) -> tuple[set[str], set[str]]:
    """(model keys, result keys) the run folders (and the runs in their archives) use; a
    folder that is not a run, or whose models table cannot be read, is an error: what it
    uses would be unknown, and so would what may go."""
    models: set[str] = set()
    results: set[str] = set()
    for run_dir in run_dirs:
        if not (run_dir / "study.yaml").is_file():
            raise RunFolderError("not a run folder (no study.yaml); gc keeps what the run folders given use",
                                 file=str(run_dir))
        runs = [run_dir] + sorted(p for p in (run_dir / "archive").glob("*") if (p / "study.yaml").is_file())
        for run in runs:
            table = run / "tables" / "models.parquet"
            if table.exists():
                try:
                    models.update(str(k) for k in pd.read_parquet(table, columns=["key"])["key"].dropna())
                except Exception as e:  # noqa: BLE001 - pyarrow raises many types
                    raise RunFolderError(f"cannot read the model keys ({str(e).splitlines()[0][:120]}); "
                                         "gc removes nothing it cannot tell is unused", file=str(table)) from None
            manifest = run / "run.json"
            if manifest.exists():
                try:
                    keys = json.loads(manifest.read_text()).get("result_keys") or {}
                except (OSError, ValueError, AttributeError) as e:
                    raise RunFolderError(f"cannot read the result keys ({e})", file=str(manifest)) from None
                results.update(str(v) for v in keys.values())
    return models, results


def find_garbage(store: ModelStore, run_dirs: list[Path], *, data: bool = False) -> Garbage:
    """The entries of ``store`` that none of ``run_dirs`` uses (see the module docstring)."""
    if not store.root.is_dir():
        raise StoreError("no such model store", file=str(store.root))
    models, results = used_keys(run_dirs)
    out = Garbage()
    for entry in sorted((store.root / "models").glob("*")):
        if not entry.is_dir() or not _KEY.fullmatch(entry.name):
            continue
        key = entry.name.split(".bad-")[0]
        if entry.name in models:
            out.in_use += 1
        elif (entry / "checkpoint.pt").exists() and not (entry / "model.pt").exists() and ".bad-" not in entry.name:
            out.kept.append((entry, "training in progress (a rerun resumes from its checkpoint)"))
        elif ".bad-" not in entry.name and _read_claim(store.root / "models" / f"{key}.claim")[0] is not None:
            out.kept.append((entry, "claimed by a training process"))
        else:
            out.remove.append((entry, _size(entry)))
    for entry in sorted((store.root / "results").glob("*")):
        if not entry.is_dir() or not _KEY.fullmatch(entry.name):
            continue
        if entry.name in results:
            out.in_use += 1
        else:
            out.remove.append((entry, _size(entry)))
    cache = store.root / "data"
    if cache.is_dir():
        for entry in sorted(cache.iterdir()):
            if data:
                out.remove.append((entry, _size(entry)))
            else:
                out.kept.append((entry, "decoded-data cache (--data removes it; rebuilt when needed)"))
    return out


def remove(garbage: Garbage) -> int:
    """Delete what :func:`find_garbage` listed; returns the bytes freed."""
    freed = 0
    for path, size in garbage.remove:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        freed += size
    return freed

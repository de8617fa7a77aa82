"""Read a run folder back: ``load(run_dir) -> Results``.

The one way reports, comparisons, notebooks and tests read what ``workbench run`` wrote::

    res = load("reports/quickstart")
    res.robustness                 # the robustness table (a DataFrame)
    res["lipschitz"]               # same, by name; KeyError lists the tables present
    res.get("cka")                 # None when the probe was not run
    res.study.main_eps()           # the validated study

Everything the folder holds is checked on the way in: a missing folder or study.yaml, an
unreadable table or one lacking a column of its schema (:mod:`workbench.tables`) raises
:class:`~workbench.errors.RunFolderError` naming the file, in one line.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .errors import RunFolderError, WorkbenchError
from .study import Study, safe_yaml, study_from_dict
from .tables import TABLES
from .display import run_repr, run_html
from .models.sources import load_study_models
from .models import create_model
from .store import ModelStore


@dataclass(repr=False)
class Results:
    """A loaded run folder. Tables are also attributes (``res.robustness``) and items."""

    path: Path
    study: Study
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> pd.DataFrame:
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"run {self.path} has no table {name!r}; tables: {', '.join(sorted(self.tables))}") from None

    def __getattr__(self, name: str) -> pd.DataFrame:
        # only called when normal lookup fails; dataclass fields never reach here
        if name.startswith("_") or name == "tables":
            raise AttributeError(name)
        try:
            return self.tables[name]
        except KeyError:
            raise AttributeError(
                f"run {self.path} has no table {name!r}; tables: {', '.join(sorted(self.tables))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.tables

    def __repr__(self) -> str:
        return run_repr("Results", self.study.name, self.path, self.tables)

    def _repr_html_(self) -> str:
        return run_html("Results", self.study.name, self.path, self.tables, self.study.main_eps())

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def get(self, name: str) -> pd.DataFrame | None:
        """The table, or None when absent or empty (e.g. a probe that was not run)."""
        df = self.tables.get(name)
        return df if df is not None and len(df) else None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model_ids(self) -> list[str]:
        """Model ids in study order (architectures × recipes, then the loaded models)."""
        return self.study.model_ids()

    def model(self, model_id: str, *, store: Any = None, device: Any = "cpu") -> Any:
        """A model of this run, ready (eval mode, inputs in [0, 1]).

        A trained model comes from the model store (``store``: default ``$WORKBENCH_STORE``)
        by the key the models table recorded; a loaded one from its source again, checked
        against the sha256 recorded. Raises :class:`RunFolderError` when neither is there.
        """
        mt = self.get("models")
        if mt is None or model_id not in set(mt["model"].astype(str)):
            raise RunFolderError(f"no model {model_id!r} in this run; models: {', '.join(self.model_ids)}",
                                 file=str(self.path / "tables" / "models.parquet"))
        row = mt[mt["model"].astype(str) == model_id].iloc[0]
        num_classes = int(self.environment.get("data", {}).get("num_classes") or 0)
        in_shape = tuple(self.environment.get("data", {}).get("in_shape") or ())
        if not num_classes or len(in_shape) != 3:
            raise RunFolderError("environment.json lacks the data's num_classes/in_shape", file=str(self.path / "environment.json"))
        decl = next((m for m in self.study.loaded if m.id == model_id), None)
        if decl is not None:
            study = types.SimpleNamespace(loaded=[decl])
            data = types.SimpleNamespace(num_classes=num_classes, in_shape=in_shape)
            lm = load_study_models(study, data, device)[model_id]
            if str(row.get("sha256", "")) and lm.sha256 != str(row["sha256"]):
                raise RunFolderError(f"the weights of {model_id} changed since the run (sha256 differs)", file=lm.file)
            return lm.model
        return _trained_model(self, model_id, str(row["key"]), num_classes, in_shape, store, device)


def _trained_model(res: Results, model_id: str, key: str, num_classes: int, in_shape: tuple, store: Any, device: Any) -> Any:
    store = store if isinstance(store, ModelStore) else ModelStore(store)
    if not store.has_model(key):
        raise RunFolderError(f"model {model_id} (key {key}) is not in the store", file=str(store.entry(key)))
    state, _meta = store.load_model(key)
    spec = next(s for s in res.study.models_trained() if s.id == model_id)
    data = res.environment.get("data", {})
    model = create_model(spec.arch.name, num_classes=num_classes, in_shape=in_shape, mean=data.get("mean"),
                         std=data.get("std"), **dict(spec.arch.options))
    model.load_state_dict(state)
    return model.to(device).eval()


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} when the file is absent (an interrupted run has no run.json)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise RunFolderError(f"cannot read: {getattr(e, 'strerror', None) or e}", file=str(path)) from None
    except json.JSONDecodeError as e:
        raise RunFolderError(f"corrupt JSON (line {e.lineno}: {e.msg})", file=str(path)) from None
    if not isinstance(data, dict):
        raise RunFolderError(f"expected a JSON object, got {type(data).__name__}", file=str(path))
    return data


def _read_study(path: Path) -> Study:
    if not path.is_file():
        raise RunFolderError("not a run folder: study.yaml is missing", file=str(path))
    try:
        raw = safe_yaml(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise RunFolderError(f"cannot read: {getattr(e, 'strerror', None) or e}", file=str(path)) from None
    except yaml.YAMLError as e:
        raise RunFolderError(f"invalid YAML ({str(e).splitlines()[0]})", file=str(path)) from None
    if not isinstance(raw, dict):
        raise RunFolderError("study.yaml is not a mapping of fields", file=str(path))
    try:
        return study_from_dict(raw, source=str(path))
    except WorkbenchError as e:
        # StudyError's message already names file and field; re-raise as a run-folder problem
        raise RunFolderError(f"study does not validate: {e.field or ''} {e.message}", file=str(path)) from None


def column_kinds(path: Path) -> dict[str, str]:
    """Each column's kind in a parquet file (number, bool, text, time, null, other), from its
    schema alone: what ``run.json`` records of the tables a run wrote, so a table whose
    column types were changed since is recognised."""
    # pyarrow's schema reader: only for a table's column kinds
    import pyarrow as pa
    # pyarrow's schema reader: only for a table's column kinds
    import pyarrow.parquet as pq

    def kind(t: pa.DataType) -> str:
        if pa.types.is_dictionary(t):
            return kind(t.value_type)
        if pa.types.is_boolean(t):
            return "bool"
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            return "number"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "text"
        if pa.types.is_temporal(t):
            return "time"
        if pa.types.is_null(t):
            return "null"
        return "other"

    schema = pq.read_schema(path)
    return {f.name: kind(f.type) for f in schema if not f.name.startswith("__index_level_")}


def check_kinds(df: pd.DataFrame, name: str, recorded: Any, path: Path) -> None:
    """A column whose kind differs from what the run recorded (``run.json`` ``table_kinds``)
    is one :class:`RunFolderError` naming the table and the column; empty (null) columns,
    and runs that recorded nothing, are not checked."""
    if not isinstance(recorded, dict):
        return
    try:
        now = column_kinds(path)
    except Exception:  # noqa: BLE001 - read_table already read it; nothing more to say here
        return
    for col, was in recorded.items():
        if col in now and now[col] != was and "null" not in (now[col], was):
            values = df[col].dropna() if col in df.columns else pd.Series([], dtype=object)
            example = f", e.g. {str(values.iloc[0])[:40]!r}" if len(values) else ""
            raise RunFolderError(f"table {name!r}: column {col!r} holds {now[col]} values ({df[col].dtype}{example}) "
                                 f"where the run wrote {was} values; was the file edited? Rerun the study to write "
                                 "it anew", file=str(path))


#: columns later versions added to existing tables (intervals, p-values, per-example norm)
ADDED_COLUMNS = {"ci_low", "ci_high", "p_value", "norm", "seed", "protocol"}
#: what an added column holds in a run written before it (NaN unless listed): older logit
#: Lipschitz rows were all the workbench's search
ADDED_DEFAULTS = {"norm": "", "protocol": "search"}


def read_table(path: Path, name: str | None = None) -> pd.DataFrame:
    """One parquet table, checked against its schema when ``name`` is a known table."""
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunFolderError(f"unreadable table ({reason[:160]})", file=str(path)) from None
    name = name or path.stem
    if name in TABLES and len(df.columns):  # an empty frame with no columns = "nothing recorded"
        missing = [c for c in TABLES[name][1] if c not in df.columns]
        # columns added since older runs were written: those runs still load, with them empty
        for c in [c for c in missing if c in ADDED_COLUMNS]:
            df[c] = ADDED_DEFAULTS.get(c, np.nan)
        missing = [c for c in missing if c not in ADDED_COLUMNS]
        if missing:
            raise RunFolderError(f"table {name!r} lacks column(s) {', '.join(missing)}", file=str(path))
    return df


def load(run_dir: str | Path) -> Results:
    """Load a run folder written by ``workbench run`` (see :class:`Results`)."""
    path = Path(run_dir)
    if not path.exists():
        raise RunFolderError("no such run folder", file=str(path))
    if not path.is_dir():
        raise RunFolderError("not a folder", file=str(path))
    study = _read_study(path / "study.yaml")
    tdir = path / "tables"
    if not tdir.is_dir():
        raise RunFolderError("not a run folder: tables/ is missing (did the run finish?)", file=str(tdir))
    tables = {p.stem: read_table(p) for p in sorted(tdir.glob("*.parquet"))}
    run = _read_json(path / "run.json")
    kinds = run.get("table_kinds") or {}
    for name, df in tables.items():
        check_kinds(df, name, kinds.get(name) if isinstance(kinds, dict) else None, tdir / f"{name}.parquet")
    mt = tables.get("models")
    if mt is not None and "seed" in mt.columns and len(mt) and mt["seed"].isna().all():
        # a run written before models had a seed column: its trained models have the study's seed
        mt["seed"] = pd.array([study.seed_of(str(m)) for m in mt["model"]], dtype="Int64")
    return Results(
        path=path,
        study=study,
        tables=tables,
        environment=_read_json(path / "environment.json"),
        run=run,
    )

"""Compare the tables of two run folders: every table and column the same, values equal to
float32 rounding, apart from timings and keys (which differ between runs by design).

    python benchmarks/compare_tables.py OLD_RUN NEW_RUN [--ignore-columns a,b]

Prints one line per table (same / the first difference) and exits 1 if any differs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

#: columns that differ between two runs of the same code: timings, store and result keys,
#: whether something came from a cache
VOLATILE = {"seconds", "train_seconds", "key", "cached", "resumed_from_epoch"}


def compare(old: pd.DataFrame, new: pd.DataFrame, ignore: set[str]) -> str | None:
    """None when equal, else a one-line description of the first difference."""
    drop = VOLATILE | ignore
    a = old.drop(columns=[c for c in old.columns if c in drop])
    b = new.drop(columns=[c for c in new.columns if c in drop])
    if list(a.columns) != list(b.columns):
        return f"columns differ: only old {sorted(set(a.columns) - set(b.columns))}, only new {sorted(set(b.columns) - set(a.columns))}" \
            if set(a.columns) != set(b.columns) else f"column order differs: {list(a.columns)} vs {list(b.columns)}"
    if len(a) != len(b):
        return f"rows differ: {len(a)} vs {len(b)}"
    for c in a.columns:
        x, y = a[c].reset_index(drop=True), b[c].reset_index(drop=True)
        if pd.api.types.is_float_dtype(x) or pd.api.types.is_float_dtype(y):
            xv, yv = x.to_numpy(dtype=np.float64, na_value=np.nan), y.to_numpy(dtype=np.float64, na_value=np.nan)
            ok = np.isclose(xv, yv, rtol=2 * np.finfo(np.float32).eps, atol=1e-7, equal_nan=True)
            if not ok.all():
                i = int(np.argmin(ok))
                return f"column {c!r} row {i}: {xv[i]!r} vs {yv[i]!r} ({int((~ok).sum())} values differ)"
        else:
            ne = ~((x == y) | (x.isna() & y.isna()))
            if ne.any():
                i = int(np.argmax(ne.to_numpy()))
                return f"column {c!r} row {i}: {x[i]!r} vs {y[i]!r} ({int(ne.sum())} values differ)"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--ignore-columns", default="", help="further columns to leave out, comma-separated")
    args = ap.parse_args()
    ignore = {c for c in args.ignore_columns.split(",") if c}
    old = {p.stem: p for p in sorted((args.old / "tables").glob("*.parquet"))}
    new = {p.stem: p for p in sorted((args.new / "tables").glob("*.parquet"))}
    bad = 0
    for name in sorted(set(old) | set(new)):
        if name not in new or name not in old:
            print(f"{name}: only in {'old' if name in old else 'new'}")
            bad += 1
            continue
        diff = compare(pd.read_parquet(old[name]), pd.read_parquet(new[name]), ignore)
        print(f"{name}: {'same' if diff is None else diff}")
        bad += diff is not None
    print(f"{len(set(old) | set(new)) - bad} of {len(set(old) | set(new))} tables equal")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

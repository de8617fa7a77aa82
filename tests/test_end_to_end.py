"""The shrunk quickstart, end to end (built once per session by tests/test_report.py):
every stage ran, every table has exactly its documented columns, the paired models paired."""

from __future__ import annotations

import json

import pandas as pd

from workbench.results import load
from workbench.tables import OPEN, TABLES

from test_report import shrunk_runs


def test_every_stage_wrote_its_tables_with_exactly_the_documented_columns(tmp_path_factory):
    run = shrunk_runs(tmp_path_factory)["full"]
    res = load(run)
    expected = set(TABLES)
    assert set(res.tables) == expected, set(res.tables) ^ expected
    for name, df in res.tables.items():
        cols = list(TABLES[name][1])
        if name in OPEN:
            assert set(cols) - {"val_robust_acc", "monitor_eps"} <= set(df.columns), name
        else:
            assert list(df.columns) == cols, (name, list(df.columns))
        assert len(df), name
    timings = json.loads((run / "run.json").read_text())["timings"]
    assert {"data", "train", "evaluate", "soundness", "probes", "report"} <= set(timings)
    assert (run / "index.html").is_file() and (run / "arrays" / "saliency.npz").is_file()


def test_pairs_share_initial_weights_and_are_recorded(tmp_path_factory):
    res = load(shrunk_runs(tmp_path_factory)["full"])
    pairs = res.tables["pairs"]
    assert list(pairs.itertuples(index=False, name=None)) == [
        ("small_cnn/standard~small_cnn/pgd_at", "small_cnn", "small_cnn/standard", "small_cnn/pgd_at")
    ]
    rob = res.tables["robustness"]
    clean = rob[rob.attack == "clean"].set_index("model").accuracy
    assert clean.between(0, 1).all()
    # transfer rows go both ways within the pair
    t = res.tables["transfer"]
    assert set(zip(t.source, t.target)) == {("small_cnn/standard", "small_cnn/pgd_at"), ("small_cnn/pgd_at", "small_cnn/standard")}
    pd.testing.assert_index_equal(pd.Index(sorted(res.tables["models"].model)), pd.Index(sorted(clean.index)))

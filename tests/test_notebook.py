"""The example notebook runs as written in a real Jupyter kernel: progress and the run's log
show in the cell, Run / Results / Comparison display as compact HTML, a probe takes a plain
nn.Module."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def outputs(cell, kind: str) -> str:
    text = []
    for o in cell.get("outputs", []):
        if kind == "stderr" and o.get("output_type") == "stream" and o.get("name") == "stderr":
            text.append(o["text"])
        elif kind in ("text/html", "text/plain") and o.get("output_type") in ("execute_result", "display_data"):
            text.append(o["data"].get(kind, ""))
    return "".join(text)


def test_example_notebook_runs_and_displays(tmp_path, monkeypatch):
    # a copy of what the notebook reads, so its run folders land in tmp_path, not the repository
    (tmp_path / "studies").mkdir()
    shutil.copy(ROOT / "studies" / "quickstart.yaml", tmp_path / "studies")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("WORKBENCH_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    run_cell = next(c for c in code if "run_study(" in c.source and "small = " in c.source)
    log = outputs(run_cell, "stderr")
    assert "models:" in log and "done in" in log, log[:2000]  # progress lines (no ipywidgets here)
    assert "runs on cpu" in log and "run finished in" in log, log[:2000]  # the run's log
    html = outputs(run_cell, "text/html")
    assert "worst case at ε=0.2" in html and "small_cnn/pgd_at" in html and "sound" in html
    assert len(outputs(run_cell, "text/plain")) < 300  # a short repr, not the dataclass dump
    res_cell = next(c for c in code if c.source.startswith("res = results.load"))
    assert "<b>Results quickstart</b>" in outputs(res_cell, "text/html")
    cmp_cell = next(c for c in code if "compare_runs([" in c.source)
    cmp_html = outputs(cmp_cell, "text/html")
    assert "Comparison of 2 runs" in cmp_html and "notebook-wide" in cmp_html
    lip_cell = next(c for c in code if "probes.lipschitz(net" in c.source)
    assert "logits" in outputs(lip_cell, "text/plain") and "loss" in outputs(lip_cell, "text/plain")
    assert (tmp_path / "reports" / "notebook" / "tables" / "robustness.parquet").is_file()


def test_progress_in_jupyter_without_widgets_prints_lines_and_shows_the_log(monkeypatch, capsys):
    import importlib.util
    import logging

    from workbench import progress as P

    monkeypatch.setattr(P, "in_jupyter", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    p = P.Progress()
    assert p.enabled and p.mode == "lines"
    logger = logging.getLogger("workbench")
    before = list(logger.handlers)
    with p.showing_log():
        logger.info("hello from the run")
        with p.task("models", 2) as advance:
            with p.task("train m", 3) as inner:
                with p.task("epoch 1/3", 10) as deepest:
                    deepest(10)
                inner(3)
            advance(2)
    assert logger.handlers == before  # nothing left behind
    err = capsys.readouterr().err
    assert "hello from the run" in err
    assert "models: 0/2 started" in err and "models: 2/2 done in" in err and "  train m: 3/3 done in" in err
    assert "epoch 1/3" not in err  # deeper tasks stay quiet
    # outside Jupyter and a terminal: nothing
    monkeypatch.setattr(P, "in_jupyter", lambda: False)
    assert P.Progress().mode == "off"


def test_probes_take_a_plain_module_or_say_how_to_wrap_it():
    import torch
    from torch import nn

    from workbench import probes
    from workbench.errors import WorkbenchError
    from workbench.models import resolve_layers, wrap

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    plain = probes.lipschitz(net, x, y, layers="all", eps=[0.1], kinds=("loss", "rand"), steps=2)
    wrapped = probes.lipschitz(wrap(net, in_shape=(1, 8, 8), name="Sequential"), x, y, layers="all", eps=[0.1],
                               kinds=("loss", "rand"), steps=2)
    assert plain.drop(columns="model").equals(wrapped.drop(columns="model")) and "logits" in set(plain["layer"])
    with pytest.raises(WorkbenchError, match=r"workbench\.models\.wrap\(net, in_shape"):
        resolve_layers(net, "all")


def test_run_results_comparison_reprs_are_short_and_escaped(tmp_path):
    import pandas as pd

    from workbench.display import comparison_html, run_html, run_repr

    rob = pd.DataFrame([{"model": "<b>m</b>", "attack": "clean", "norm": "none", "eps": 0.0, "accuracy": 0.5,
                         "ci_low": 0.4, "ci_high": 0.6, "n": 10}])
    html = run_html("Run", "<script>x</script>", tmp_path, {"robustness": rob}, 0.1)
    assert "<script>" not in html and "&lt;b&gt;m&lt;/b&gt;" in html and "50.0 % [40.0, 60.0]" in html
    assert run_repr("Run", "s", tmp_path, {"robustness": rob}) == f"<Run 's' at {tmp_path}: 1 models, 1 tables>"
    cross = pd.DataFrame({"run": ["a", "b"], "model": ["m", "m"], "clean": [0.5, 0.6], "worst case": [0.1, 0.2]})
    html = comparison_html(["a", "b"], cross, pd.DataFrame(), ["a: <i>x</i>"])
    assert "60.0 %" in html and "&lt;i&gt;x&lt;/i&gt;" in html

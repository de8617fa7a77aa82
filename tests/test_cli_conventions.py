"""Command-line conventions a user expects: --version, python -m, readable help, whole
descriptions, install hints naming the extra, whole refusal messages, a run compared with
itself refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def wb(*args, module: str = "workbench", **kw):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **kw.pop("env", {})}, timeout=300, **kw)


def test_version_and_python_dash_m():
    import workbench
    from workbench.errors import DISTRIBUTION

    out = wb("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"workbench {workbench.__version__} ({DISTRIBUTION}")
    # python -m workbench is the command itself
    assert wb("--help").returncode == 0 and "compare" in wb("--help").stdout


def test_version_warns_about_the_unrelated_workbench_distribution(monkeypatch):
    from importlib import metadata

    from workbench import cli

    real = metadata.distribution

    def fake(name):
        if name == "workbench":
            return object()  # "installed"
        return real(name)

    monkeypatch.setattr(metadata, "distribution", fake)
    text = cli._version_text()
    assert "pip uninstall workbench" in text and "robustness-workbench" in text


def test_distribution_name_is_used_by_pyproject_and_every_install_hint():
    from workbench.errors import DISTRIBUTION, install_hint

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'name = "{DISTRIBUTION}"' in pyproject
    assert install_hint("models").startswith(f"pip install '{DISTRIBUTION}[models]'")
    # no doc, study or message tells anyone to install PyPI's unrelated `workbench`
    files = [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *(ROOT / "studies").glob("*.yaml"),
             *(ROOT / "workbench").rglob("*.py"), *(ROOT / "benchmarks").glob("*")]
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in files if p.is_file()
           for m in re.findall(r"pip install[^\n`]*?(?<![\w-])workbench\[", p.read_text(errors="replace"))]
    assert not bad, bad


def test_help_shows_metavars_not_python_types():
    for cmd in ("run", "validate", "list", "compare", "report", "convert-checkpoint", "schema"):
        text = wb(cmd, "--help").stdout
        assert "<" not in re.sub(r"<store>|<study name>|<name>|<[a-z_]+>/", "", text), (cmd, text)
        assert "{" not in text.splitlines()[0], text.splitlines()[0]
    assert "--set KEY=VALUE" in wb("run", "--help").stdout
    assert wb("compare", "--help").stdout.splitlines()[0].endswith("compare [OPTIONS] RUN_DIR...")


def test_list_gives_whole_descriptions_without_markup():
    out = wb("list")
    assert out.returncode == 0
    assert "…" not in out.stdout and "``" not in out.stdout and ":func:" not in out.stdout
    # every entry's whole first docstring paragraph is printed (descriptions used to be cut at 108 characters)
    import inspect

    from workbench import registries
    from workbench.attacks import ATTACKS

    flat = " ".join(out.stdout.split())
    for kind in ("datasets", "attacks", "recipes", "probes", "stages"):
        for name, doc in registries.listing(kind):
            assert " ".join(doc.split()) in flat, (kind, name)
    first = " ".join(inspect.cleandoc(ATTACKS.get("autoattack").__doc__).split("\n\n")[0].split())
    from workbench.registry import plain_text

    assert registries.listing("attacks", "autoattack")[0][1] == plain_text(first)


def test_plain_text_strips_rst():
    from workbench.registry import plain_text

    assert plain_text("``x`` and :func:`~workbench.attacks.pgd` and :data:`LOSSES`") == "x and pgd and LOSSES"


def test_list_models_timm_hints_the_extra_when_timm_is_missing(monkeypatch):
    import importlib.util

    from workbench import registries

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    (entry,) = registries.listing("models", "timm:*")
    assert entry[0] == "timm:<name>" and "pip install 'robustness-workbench[models]'" in entry[1]
    assert not [e for e in registries.listing("models", "resnet*") if e[0].startswith("timm")]


def test_list_models_timm_counts_matches():
    pytest.importorskip("timm")
    out = wb("list", "models", "--pattern", "timm:resnet5*")
    assert out.returncode == 0 and "timm models matching 'resnet5*'" in out.stdout and "timm:resnet50" in out.stdout


class _Foreign:
    pass


def test_pickled_checkpoint_refusal_is_whole(tmp_path):
    from workbench.errors import CheckpointError
    from workbench.models.checkpoint import read_weights

    path = tmp_path / "pickled.pt"
    torch.save({"obj": _Foreign(), "w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as e:
        read_weights(path)
    msg = e.value.one_line()
    assert f"{__name__}._Foreign" in msg and "workbench convert-checkpoint" in msg
    assert "(the class or function " in msg and "torch.se)" not in msg


def test_compare_refuses_a_run_given_twice(tmp_path):
    from workbench.errors import WorkbenchError
    from workbench.report import write_comparison

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(WorkbenchError, match="same run folder"):
        write_comparison([run, tmp_path / "." / "run"], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
    out = wb("compare", run, run, "--out", tmp_path / "cmp")
    assert out.returncode == 2 and "give each run once" in out.stderr


def test_timings_mark_cached_stages():
    import types

    import pandas as pd

    from workbench.report.html import _timings

    models = pd.DataFrame({"model": ["a", "b"], "role": ["reference", "paired"], "cached": [True, True]})
    res = types.SimpleNamespace(run={"timings": {"data": 0.1, "train": 0.02, "evaluate": 0.01, "soundness": 4.0},
                                     "cached_stages": ["evaluate"]},
                                get=lambda name: models if name == "models" else None)
    table = _timings(res)
    assert [c.label for c in table.columns] == ["stage", "seconds", "how"]
    how = {r.cells[0].text: r.cells[2].text for r in table.rows}
    assert how["evaluate"].startswith("cached") and how["train"].startswith("cached")
    assert how["soundness"] == "" and how["data"] == ""

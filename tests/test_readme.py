"""The README matches the code: its quickstart figures equal a run of the current code (the
full quickstart, run once here: the slowest test of the suite), the verdict it shows is what
the terminal prints, and its Python snippet runs as written (on that run's store, so it
reuses the models and results)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_table():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "docs" / "readme_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The README's quickstart, as docs/readme_table.py --run runs it, into a fresh store."""
    tmp = tmp_path_factory.mktemp("quickstart")
    cmd = list(readme_table().RUN_COMMAND)
    cmd[cmd.index("--out") + 1] = str(tmp / "quickstart")
    env = {**os.environ, "WORKBENCH_STORE": str(tmp / "store")}
    out = subprocess.run([sys.executable, "-m", "workbench", *cmd[1:]], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"dir": tmp / "quickstart", "store": tmp / "store", "stdout": out.stdout, "tmp": tmp}


def test_readme_figures_are_those_of_a_run_of_the_current_code(quickstart):
    rt = readme_table()
    tables, main_eps = rt.load_run(quickstart["dir"])
    block = README.split(rt.BEGIN, 1)[1].split(rt.END, 1)[0].strip()
    assert block == rt.render(tables, main_eps).strip(), (
        "README.md's quickstart figures differ from a run of the current code: run `python docs/readme_table.py --run`")
    # the verdict the README shows is the one `workbench run` printed
    verdict = block.split("```text\n", 1)[1].split("\n```", 1)[0]
    assert verdict in quickstart["stdout"]
    # the prose above the table: test images and soundness checks
    n = int(tables["robustness"]["n"].iloc[0])
    checks = tables["soundness"].groupby("model").size().iloc[0]
    assert f"evaluates both models on the {n} test images" in README
    assert f"the {checks} soundness checks" in README


def test_readme_python_snippet_runs_as_written(quickstart):
    blocks = [b for b in re.findall(r"```python\n(.*?)\n```", README, flags=re.S) if "run_study(" in b]
    assert len(blocks) == 1
    work = quickstart["tmp"] / "work"
    (work / "studies").mkdir(parents=True)
    shutil.copy(ROOT / "studies" / "quickstart.yaml", work / "studies")
    env = {**os.environ, "WORKBENCH_STORE": str(quickstart["store"]), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", blocks[0]], cwd=work, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PGD accuracy:" in out.stdout and "debiased CKA at fc1:" in out.stdout
    assert (work / "reports" / "qs" / "tables" / "robustness.parquet").is_file()

"""``workbench.results.load``: a run folder read back, and every way one can be broken.

The folders here are built by hand (a validated study, hand-made tables written through
RunFolder), so nothing is trained and each test takes milliseconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench.errors import RunFolderError
from workbench.results import Results, load
from workbench.store import RunFolder
from workbench.study import load_study

ROOT = Path(__file__).resolve().parents[1]
ROBUSTNESS = pd.DataFrame({
    "model": ["small_cnn/standard", "small_cnn/standard", "small_cnn/pgd_at"],
    "attack": ["clean", "fgsm", "clean"], "method": ["clean", "fgsm", "clean"], "norm": ["none", "linf", "none"],
    "loss": ["ce"] * 3, "steps": [0, 1, 0], "restarts": [0, 1, 0], "eps": [0.0, 0.2, 0.0], "n": [10] * 3,
    "accuracy": [0.9, 0.3, 0.8], "ci_low": [0.6, 0.1, 0.5], "ci_high": [0.98, 0.6, 0.95],
    "adv_risk": [0.1, 2.0, 0.2], "seconds": [0.1] * 3,
})


@pytest.fixture
def run_dir(tmp_path) -> Path:
    folder = RunFolder(tmp_path / "run")
    folder.prepare()
    folder.write_text("study.yaml", load_study(ROOT / "studies" / "quickstart.yaml").to_yaml())
    folder.write_json("environment.json", {"seed": 0, "versions": {"torch": "x"}})
    folder.write_json("run.json", {"timings": {"train": 1.5}})
    folder.write_table("robustness", ROBUSTNESS)
    folder.write_table("history", pd.DataFrame())  # what the runner writes when nothing was trained
    return folder.path


def one_line_error(path: Path, match: str) -> RunFolderError:
    with pytest.raises(RunFolderError, match=match) as info:
        load(path)
    assert "\n" not in str(info.value)
    return info.value


def test_load_reads_study_tables_environment_and_run(run_dir):
    res = load(run_dir)
    assert isinstance(res, Results) and res.path == run_dir and res.name == "run"
    assert res.study.name == "quickstart" and res.study.main_eps() == 0.2
    assert res.model_ids == ["small_cnn/standard", "small_cnn/pgd_at"]
    pd.testing.assert_frame_equal(res.robustness, ROBUSTNESS)
    assert res["robustness"] is res.robustness is res.tables["robustness"]
    assert "robustness" in res and set(res) == {"robustness", "history"}
    assert res.environment["versions"]["torch"] == "x" and res.run["timings"]["train"] == 1.5
    assert res.get("history") is None  # an empty table counts as "not recorded"
    assert res.get("cka") is None


def test_a_run_written_before_the_intervals_loads_with_them_empty(run_dir):
    (run_dir / "tables" / "robustness.parquet").unlink()
    RunFolder(run_dir).write_table("robustness", ROBUSTNESS.drop(columns=["ci_low", "ci_high"]))
    rob = load(run_dir).robustness
    assert rob["ci_low"].isna().all() and rob["ci_high"].isna().all()
    assert rob["accuracy"].tolist() == ROBUSTNESS["accuracy"].tolist()


def test_absent_table_errors_list_what_is_there(run_dir):
    res = load(run_dir)
    with pytest.raises(KeyError, match="history, robustness"):
        res["cka"]
    with pytest.raises(AttributeError, match="no table 'cka'"):
        res.cka


def test_missing_json_files_are_empty_dicts(run_dir):
    (run_dir / "run.json").unlink()
    (run_dir / "environment.json").unlink()
    res = load(run_dir)
    assert res.run == {} and res.environment == {}


def test_missing_folder(tmp_path):
    e = one_line_error(tmp_path / "nope", "no such run folder")
    assert e.file == str(tmp_path / "nope")


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(tmp_path / "f", "not a folder")


def test_missing_study(run_dir):
    (run_dir / "study.yaml").unlink()
    assert one_line_error(run_dir, "study.yaml is missing").file == str(run_dir / "study.yaml")


@pytest.mark.parametrize("text, match", [
    ("name: [unclosed", "invalid YAML"),
    ("- a list", "not a mapping"),
    ("name: x\narchitectures: [small_cnn]\nrecipes: [standard]\nbogus: 1", "does not validate.*bogus"),
])
def test_malformed_study(run_dir, text, match):
    (run_dir / "study.yaml").write_text(text)
    assert one_line_error(run_dir, match).file == str(run_dir / "study.yaml")


def test_missing_tables_folder(run_dir):
    for p in (run_dir / "tables").iterdir():
        p.unlink()
    (run_dir / "tables").rmdir()
    one_line_error(run_dir, "tables/ is missing")


def test_corrupt_table(run_dir):
    path = run_dir / "tables" / "robustness.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    assert one_line_error(run_dir, "unreadable table").file == str(path)


def test_table_lacking_a_schema_column(run_dir):
    RunFolder(run_dir).write_table("robustness", ROBUSTNESS.drop(columns=["adv_risk", "n"]))
    e = one_line_error(run_dir, "lacks column")
    assert "n, adv_risk" in e.message and e.file.endswith("robustness.parquet")


def test_corrupt_json(run_dir):
    (run_dir / "run.json").write_text("{not json")
    assert one_line_error(run_dir, "corrupt JSON").file == str(run_dir / "run.json")
    (run_dir / "run.json").write_text("[1, 2]")
    one_line_error(run_dir, "expected a JSON object")


#: the training code: the loop (optimiser, schedule, checkpoints) and the job planning, and
#: what runs a study (runner, facts, grid). The recipes' modules are not in it: each is one
#: component (its typed config, which the study schema is built from, and its loss).
TRAINING_CODE = ("workbench.training.loop", "workbench.training.jobs", "workbench.runner", "workbench.facts",
                 "workbench.grid")


def test_reading_a_run_folder_imports_no_training_code(run_dir):
    code = ("import sys, workbench.results as r; res = r.load(sys.argv[1]); assert len(res.robustness); "
            "print(sorted(m for m in sys.modules if m.startswith('workbench.')))")
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)
    assert "workbench.study" in loaded and "workbench.training.standard" in loaded  # the schema, with the recipes
    assert not [m for m in loaded if m in TRAINING_CODE or m.startswith("workbench.report")]

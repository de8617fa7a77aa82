"""The command line: user errors exit 2 with one line and touch nothing; the commands work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name: tiny
data: {name: digits, limit_train: 200}
architectures: [{name: small_cnn, options: {width: 8, fc: 32}}]
recipes: [standard]
train: {epochs: 1, batch_size: 64, monitor_examples: 32, monitor_steps: 2}
evaluation: {examples: 50, eps: [0.1], attacks: [fgsm], soundness: {enabled: false}}
report: {enabled: false}
"""


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=kw.pop("cwd", ROOT), env={**os.environ, **kw.pop("env", {})}, timeout=300, **kw)


def assert_user_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("error: ")
    for w in words:
        assert w in lines[0], lines[0]


def test_help_teaches():
    out = cli("--help")
    assert out.returncode == 0 and "workbench run studies/quickstart.yaml" in out.stdout
    for cmd in ("run", "validate", "schema", "list", "report", "compare"):
        assert cmd in out.stdout
    run_help = cli("run", "--help").stdout
    assert "--set" in run_help and "Example" in run_help


def test_validate_ok_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(TINY)
    assert cli("validate", good).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("recipes: [standard]", "recipes: [{name: pgd_at, eps: '8/0'}]"))
    assert_user_error(cli("validate", bad), str(bad), "recipes[0].eps", "8/255")


def test_run_with_bad_study_touches_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("small_cnn", "small_cnnn"))
    assert_user_error(cli("run", bad, "--out", out), str(bad), "architectures[0]", "valid models")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_missing_data_root_is_a_user_error(tmp_path):
    study = tmp_path / "m.yaml"
    study.write_text(TINY.replace("{name: digits, limit_train: 200}", f"{{name: mnist, root: {tmp_path / 'nowhere'}}}"))
    out = tmp_path / "run"
    assert_user_error(cli("run", study, "--out", out), "mnist", "download")
    assert not out.exists()


def test_unknown_device_and_kind(tmp_path):
    study = tmp_path / "t.yaml"
    study.write_text(TINY)
    assert_user_error(cli("run", study, "--out", tmp_path / "r", "--device", "tpu"), "--device")
    assert_user_error(cli("list", "gadgets"), "datasets")


def test_list_and_schema():
    out = cli("list")
    assert out.returncode == 0
    for name in ("digits", "small_cnn", "preact_resnet18", "torchvision:<name>", "pgd_at", "fgsm", "margin"):
        assert name in out.stdout
    schema = json.loads(cli("schema").stdout)
    assert "architectures" in schema["properties"]


def test_run_archives_previous_results_and_override(tmp_path):
    study = tmp_path / "t.yaml"
    study.write_text(TINY)
    out = tmp_path / "run"
    first = cli("run", study, "--out", out, "-q")
    assert first.returncode == 0, first.stderr
    second = cli("run", study, "--out", out, "-q", "--set", "evaluation.examples=40")
    assert second.returncode == 0, second.stderr
    archived = list((out / "archive").iterdir())
    assert len(archived) == 1 and (archived[0] / "tables" / "robustness.csv").is_file()
    assert "examples: 40" in (out / "study.yaml").read_text()
    assert "examples: 50" in (archived[0] / "study.yaml").read_text()


def test_corrupt_cached_model_exits_2(tmp_path):
    study = tmp_path / "t.yaml"
    study.write_text(TINY)
    store = tmp_path / "store"
    assert cli("run", study, "--out", tmp_path / "a", "--store", store, "-q").returncode == 0
    (model,) = store.glob("models/*/model.pt")
    model.write_bytes(b"garbage")
    assert_user_error(cli("run", study, "--out", tmp_path / "b", "--store", store, "-q"), str(model), "--retrain")
    assert cli("run", study, "--out", tmp_path / "b", "--store", store, "-q", "--retrain").returncode == 0

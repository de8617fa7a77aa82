"""What a new user installs: its own distribution name, a default install that runs every
shipped study, LICENSE / CITATION / CHANGELOG in step with the version."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import workbench

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_autoattack_is_a_core_dependency():
    # 6 of the 9 shipped studies name autoattack: without it the default install cannot validate them
    assert any(d.startswith("pyautoattack") for d in PYPROJECT["project"]["dependencies"])
    assert any("autoattack" in p.read_text() for p in (ROOT / "studies").glob("*.yaml"))


def test_every_shipped_study_validates():
    studies = sorted((ROOT / "studies").glob("*.yaml")) + sorted((ROOT / "benchmarks").glob("*.yaml"))
    assert len(studies) >= 9
    out = subprocess.run([sys.executable, "-m", "workbench", "validate", *map(str, studies)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ok: ") == len(studies)


def test_license_citation_changelog_match_the_package():
    assert "MIT" in PYPROJECT["project"]["license"]["text"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == workbench.__version__ and cff["license"] == "MIT"
    assert PYPROJECT["project"]["dynamic"] == ["version"]  # read from workbench.__version__
    assert f"## {workbench.__version__}" in (ROOT / "CHANGELOG.md").read_text()

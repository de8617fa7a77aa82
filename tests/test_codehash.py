"""The on-disk memo of parsed modules (workbench.codehash): same hashes as parsing, used
when present, ignored when unreadable, harmless when it cannot be written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from workbench.codehash import CodeIndex

ROOT = Path(__file__).resolve().parents[1] / "workbench"
MODULES = ("workbench.runner", "workbench.training.loop", "workbench.report.html")


def _hashes(index: CodeIndex) -> dict[str, str]:
    return {m: index.hash(m) for m in MODULES}


def test_memo_gives_the_hashes_of_parsing_and_is_read_back(tmp_path):
    plain = _hashes(CodeIndex(ROOT))
    memo = tmp_path / "memo"
    first = CodeIndex(ROOT, memo=memo)
    assert _hashes(first) == plain
    entries = sorted(memo.glob("*.json"))
    assert entries, "nothing memoised"
    # a second index reads the memo instead of parsing: planting a different hash in every
    # entry changes its answer (which shows the entries are used, and keyed by the bytes)
    for e in entries:
        e.write_text(e.read_text().replace('"hash": "', '"hash": "planted', 1))
    assert _hashes(CodeIndex(ROOT, memo=memo)) != plain


def test_an_edit_is_a_new_entry_so_the_memo_is_never_stale(tmp_path):
    pkg = tmp_path / "workbench"
    shutil.copytree(ROOT, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    memo = tmp_path / "memo"
    before = CodeIndex(pkg, memo=memo).hash("workbench.training.loop")
    loop = pkg / "training" / "loop.py"
    loop.write_text(loop.read_text() + "\n_EDITED = 1\n")
    after = CodeIndex(pkg, memo=memo).hash("workbench.training.loop")
    assert after != before
    assert after == CodeIndex(pkg).hash("workbench.training.loop")


@pytest.mark.parametrize("garbage", ["", "{not json", "[1, 2]", '{"hash": 3, "imports": [], "top_from": []}'])
def test_unreadable_entries_are_parsed_again(tmp_path, garbage):
    memo = tmp_path / "memo"
    plain = _hashes(CodeIndex(ROOT, memo=memo))
    for e in memo.glob("*.json"):
        e.write_text(garbage)
    assert _hashes(CodeIndex(ROOT, memo=memo)) == plain
    # and the entries were rewritten whole
    assert _hashes(CodeIndex(ROOT, memo=memo)) == plain


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_memo_that_cannot_be_written_is_skipped(tmp_path):
    memo = tmp_path / "memo"
    memo.mkdir()
    memo.chmod(0o500)
    try:
        assert _hashes(CodeIndex(ROOT, memo=memo)) == _hashes(CodeIndex(ROOT))
        assert not list(memo.iterdir())
    finally:
        memo.chmod(0o700)


def test_a_memo_path_under_a_file_is_skipped(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _hashes(CodeIndex(ROOT, memo=blocker / "memo")) == _hashes(CodeIndex(ROOT))
    assert blocker.read_text() == "x"

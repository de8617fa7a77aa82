"""The docs stay true: the README's two commands, CI calling the test command, the table schema in docs/tables.md."""

from __future__ import annotations

import re
from pathlib import Path

from workbench.tables import markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TABLES_DOC = (ROOT / "docs" / "tables.md").read_text()


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    main, tests = blocks[0].strip(), blocks[1].strip()
    assert README.index(blocks[0]) < README.index("---")  # both come before anything else
    assert main.endswith("workbench run studies/quickstart.yaml") and "\n" not in main
    assert "pytest" in tests and "\n" not in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_docs_document_every_table_exactly():
    assert markdown().strip() in TABLES_DOC


def test_development_md_test_counts_are_current():
    """docs/development.md's test figures are floors of the real counts (to the hundred
    functions, the ten files): adding tests changes them only when a boundary is crossed."""
    files = sorted((ROOT / "tests").glob("test_*.py"))
    functions = sum(len(re.findall(r"^\s*(?:async )?def test_", p.read_text(), flags=re.M)) for p in files)
    text = (ROOT / "docs" / "development.md").read_text()
    want = f"over {functions // 100 * 100} test functions in over {len(files) // 10 * 10} files"
    assert want in " ".join(text.split()), f"docs/development.md should say: {want}"


def test_docs_cite_no_path_of_one_machine():
    """Instructions name paths a reader has; a record of a measurement keeps the exact command
    it ran (its paragraph starts with "Measured")."""
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    bad = [f"{p.name}: {m}" for p in pages for para in p.read_text().split("\n\n") if not para.startswith("Measured")
           for m in re.findall(r"\.\./shared/\S*|/work/\S*|/home/\w+\S*|/Users/\w+\S*", para)]
    assert not bad, bad

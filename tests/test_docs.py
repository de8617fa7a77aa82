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

"""The tidy schema of every table a run writes (``<run>/tables/<name>.parquet|csv``).

One row per observation, one column per variable. Each component declares the tables it
writes next to its code (the runner: ``models``, ``pairs``, ``history``; every stage:
``Stage.tables``, probes through their registration; the table steps after the stages,
``TableStep.tables``: ``significance``, ``replicates``); this module collects them, in the
order the runner writes them. The result is the single source of the table documentation
(``python -m workbench.tables`` prints it as Markdown) and of the schema tests: every
table a run writes must have exactly these columns (extra columns are allowed only where
``OPEN`` lists the table, e.g. recipe-specific history).
"""

from __future__ import annotations

from typing import Any

from .registry import TableSchema

#: tables whose rows may carry extra, recipe- or probe-specific columns
OPEN = {"history"}


def all_tables() -> dict[str, TableSchema]:
    """name -> (what a row is, {column: meaning}) of every table of every registered component."""
    from . import components  # noqa: F401  (imports, and so registers, every component)
    from .runner import TABLES_RUN
    from .stages import STAGES, table_steps

    out: dict[str, TableSchema] = dict(TABLES_RUN)
    for stage in sorted((STAGES.get(n) for n in STAGES.in_order()), key=lambda s: (s.order, s.name)):
        for name, schema in stage.tables.items():
            if name in out:
                raise ValueError(f"table {name!r} is declared twice (stage {stage.name})")
            out[name] = schema
    for step in table_steps():  # then the tables the steps after the stages derive from them
        for name, schema in step.tables.items():
            if name in out:
                raise ValueError(f"table {name!r} is declared twice (table step {step.name})")
            out[name] = schema
    return out


def __getattr__(name: str) -> Any:
    # ``TABLES`` is computed on first use: the components import this package's registries
    if name == "TABLES":
        return all_tables()
    raise AttributeError(name)


def markdown() -> str:
    out = []
    for name, (what, cols) in all_tables().items():
        out.append(f"#### `{name}`: {what}\n")
        out.append("| column | meaning |\n|---|---|")
        out.extend(f"| `{c}` | {d} |" for c, d in cols.items())
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(markdown())

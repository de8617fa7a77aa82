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
from . import components  # noqa: F401  (imports, and so registers, every component's tables)
from .stages import STAGES, table_steps

#: tables whose rows may carry extra, recipe- or probe-specific columns
OPEN = {"history"}

#: the tables the runner itself writes (before the stages' tables)
TABLES_RUN: dict[str, TableSchema] = {
    "models": (
        "one row per model: each trained one (architecture × recipe), then each loaded one (study `models`)",
        {
            "model": "model id: `<architecture>/<recipe>` (`<architecture>/<recipe>/s<seed>` in a study of several seeds), "
            "or the id of a loaded model",
            "architecture": "architecture label (`loaded` for a loaded model)",
            "arch_name": "registry name of the architecture (a loaded model: its network's class)",
            "recipe": "recipe label (`loaded` for a loaded model)",
            "recipe_name": "registry name of the recipe (`loaded` for a loaded model)",
            "train_eps": "training ε (0 for non-adversarial recipes)",
            "train_norm": "training norm (`none` for non-adversarial recipes)",
            "role": "`reference` (first recipe), `paired` (other recipes) or `loaded`",
            "seed": "seed the model was trained with (study `seed`; a list trains one replicate per seed); empty for a "
            "loaded model",
            "key": "model-store key (hash of everything that determines the weights; a loaded model: of its source, "
            "weight file and declaration)",
            "cached": "weights reused from the store",
            "resumed_from_epoch": "epoch a resumed training started from (empty if none)",
            "epochs": "epochs trained",
            "train_seconds": "training time (seconds, when trained)",
            "stopped_early": "why training stopped early (e.g. catastrophic overfitting), else empty",
            "parameters": "number of parameters",
            "source": "where a loaded model came from (e.g. `robustbench:cifar10/Linf/Wong2020Fast`); empty if trained",
            "file": "the weight file a loaded model was read from; empty if trained or built without weights",
            "sha256": "sha256 of that weight file; empty if none",
        },
    ),
    "pairs": (
        "which models are compared (study `pairs`): by default each architecture's first-recipe model with its others "
        "(same initial weights and data order)",
        {
            "pair": "`<reference>~<model>`",
            "architecture": "the two models' architecture label, or `<a>~<b>` when they differ (`loaded` for loaded models)",
            "reference": "model id of the reference (first recipe), or of the pair's first model",
            "model": "model id of the other model",
        },
    ),
    "history": (
        "per-epoch training history",
        {
            "model": "model id",
            "epoch": "epoch (1-based)",
            "lr": "learning rate at the end of the epoch",
            "train_loss": "mean training loss (on the inputs trained on)",
            "train_acc": "training accuracy (on the inputs trained on)",
            "val_acc": "clean accuracy on the held-out monitor batch",
            "monitor_eps": "ε of the monitoring PGD (the model's L∞ training ε, else the study's main ε; part of the model's key)",
            "val_robust_acc": "PGD accuracy on the monitor batch at `monitor_eps`",
            "seconds": "epoch wall time",
        },
    ),
}


def all_tables() -> dict[str, TableSchema]:
    """name -> (what a row is, {column: meaning}) of every table of every registered component."""
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
    # ``TABLES`` is computed on each use: it includes what was registered since this import
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

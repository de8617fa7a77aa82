"""Reports: figures and one self-contained HTML page per run, and comparisons of runs.

``write_report(run_dir)`` reads a run folder (through :func:`workbench.results.load`) and
writes ``<run>/figures/*.png|svg`` and ``<run>/index.html``; ``write_comparison(run_dirs,
out)`` sets several runs side by side in ``<out>/index.html``. Both raise
:class:`~workbench.errors.RunFolderError` for a missing or malformed run folder.
"""

from typing import Any

from .html import build_report, summary_table, write_report

_COMPARE = ("Comparison", "compare_runs", "write_comparison")


def __getattr__(name: str) -> Any:
    if name in _COMPARE:
        # the comparison (and matplotlib with it) is imported when asked for: writing a run's
        # report whose figures are all cached needs neither
        from . import compare

        return getattr(compare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Comparison", "build_report", "compare_runs", "summary_table", "write_comparison", "write_report"]

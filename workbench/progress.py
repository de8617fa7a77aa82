"""Progress bars (rich) shared by every stage of a run.

One live display per process: stages open *tasks* on a shared :class:`Progress`, so bars
nest (a model's epochs inside the study's models) without fighting over the terminal.
Disabled automatically when stderr is not a terminal (CI logs stay clean).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as _Rich, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Progress:
    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._rich: _Rich | None = None
        self._depth = 0

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """Yields ``advance(n=1, **fields)``; the bar disappears when the block ends."""
        if not self.enabled:
            yield lambda n=1, **kw: None
            return
        if self._rich is None:
            self._rich = _Rich(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._rich.start()
        self._depth += 1
        tid = self._rich.add_task(description, total=total, status="")
        rich = self._rich

        def advance(n: int = 1, status: str | None = None) -> None:
            rich.update(tid, advance=n, **({"status": status} if status is not None else {}))

        try:
            yield advance
        finally:
            rich.remove_task(tid)
            self._depth -= 1
            if self._depth == 0:
                rich.stop()
                self._rich = None


#: a Progress that shows nothing (library calls default to it)
QUIET = Progress(enabled=False)

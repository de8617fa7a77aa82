"""Progress bars shared by every stage of a run, in a terminal and in Jupyter.

One live display per process: stages open *tasks* on a shared :class:`Progress`, so bars
nest (a model's epochs inside the study's models) without fighting over the terminal.

Where it shows (``Progress(None)``, the default of ``run_study``):

- a terminal (stderr is a TTY): rich's live bars, gone when each task ends;
- Jupyter (an IPython kernel): rich's bars in the cell when ipywidgets is installed (the
  ``notebook`` extra), else one line per task on stderr when it starts, at most every few
  seconds while it runs, and when it ends; the run's log messages (``run.log``) are shown
  in the cell as well, for the duration of the run only;
- anywhere else (CI logs, pipes): nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as _Rich, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: seconds between two lines of a running task (the line mode)
LINE_INTERVAL = 5.0
#: nesting depth of the tasks the line mode prints (the study's stages and each model)
LINE_DEPTH = 2


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell; Colab)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None) if ipython is not None else None
    shell = get() if get is not None else None
    return shell is not None and (type(shell).__name__ == "ZMQInteractiveShell" or "google.colab" in str(type(shell)))


class Progress:
    def __init__(self, enabled: bool | None = None):
        jupyter = in_jupyter()
        self.enabled = (sys.stderr.isatty() or jupyter) if enabled is None else enabled
        #: "rich" (live bars), "lines" (plain lines on stderr: Jupyter without ipywidgets) or "off"
        self.mode = "off"
        if self.enabled:
            self.mode = "lines" if jupyter and importlib.util.find_spec("ipywidgets") is None else "rich"
        self.jupyter = jupyter
        self._rich: _Rich | None = None
        self._depth = 0

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """Yields ``advance(n=1, **fields)``; the bar disappears when the block ends."""
        if self.mode == "lines":
            with self._line_task(description, total) as advance:
                yield advance
            return
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
                console=Console(stderr=True, force_jupyter=True if self.jupyter else None),
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

    @contextlib.contextmanager
    def _line_task(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A task as plain lines on stderr (a notebook cell shows them as they come)."""
        indent = "  " * self._depth
        state = {"done": 0, "status": "", "last": time.monotonic()}
        t0 = time.monotonic()
        shown = self._depth < LINE_DEPTH  # a model's epochs and batches stay quiet: its line says enough

        def line(what: str) -> None:
            if not shown:
                return
            count = f" {state['done']}/{total}" if total else ""
            status = f" {state['status']}" if state["status"] else ""
            print(f"{indent}{description}:{count} {what}{status}", file=sys.stderr, flush=True)

        def advance(n: int = 1, status: str | None = None) -> None:
            state["done"] += n
            if status is not None:
                state["status"] = status
            now = time.monotonic()
            if now - state["last"] >= LINE_INTERVAL:
                state["last"] = now
                line(f"({now - t0:.0f} s)")

        self._depth += 1
        line("started")
        try:
            yield advance
        finally:
            self._depth -= 1
            line(f"done in {time.monotonic() - t0:.1f} s")

    @contextlib.contextmanager
    def showing_log(self) -> Iterator[None]:
        """In Jupyter, the ``workbench`` logger's INFO messages appear in the cell for the
        duration of the block (a terminal has the CLI's own handler; a library call adds
        nothing outside the block)."""
        logger = logging.getLogger("workbench")
        if not (self.enabled and self.jupyter) or any(getattr(h, "_workbench_console", False) for h in logger.handlers):
            yield
            return
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.INFO)
        old_level = logger.level
        logger.addHandler(handler)
        logger.setLevel(min(old_level or logging.INFO, logging.INFO))
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)


#: a Progress that shows nothing (library calls default to it)
QUIET = Progress(enabled=False)

"""User-facing errors.

Anything a user can cause (a malformed study, an unknown name, a missing data root, a
corrupt checkpoint) raises a :class:`WorkbenchError`. The CLI prints its one-line message
and exits with status 2; library callers (notebooks, tests) catch it like any exception.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

#: the name to install by (PyPI's ``workbench`` is an unrelated AWS SageMaker tool); the
#: import package and the command are ``workbench``
DISTRIBUTION = "robustness-workbench"


def install_hint(extra: str) -> str:
    """The command installing an optional extra, for messages about a missing package."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (in a clone: pip install -e '.[{extra}]')"


class WorkbenchError(Exception):
    """An error caused by user input; printed as one line, exit status 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ": ".join(p for p in (self.file, self.field) if p)
        text = f"{where}: {self.message}" if where else self.message
        return " ".join(text.split())  # one line, whatever the message held


class StudyError(WorkbenchError):
    """A study file that cannot be read or does not validate."""


class UnknownNameError(WorkbenchError):
    """A name that is not in a registry; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], **where):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(
            f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid) or '(none)'}", **where
        )


class DataError(WorkbenchError):
    """A data set that is missing, incomplete or malformed."""


class CheckpointError(WorkbenchError):
    """A checkpoint or cached model that cannot be trusted."""


class RunFolderError(WorkbenchError):
    """A run folder that is missing or malformed."""


class StoreError(WorkbenchError):
    """A model store that cannot be used (a file, not writable)."""


class TrainingError(WorkbenchError):
    """Training that cannot go on (a non-finite loss)."""


def os_error(e: OSError, what: str = "") -> WorkbenchError:
    """An operating-system failure (disk full, read-only, a file where a folder belongs) as
    one line naming the path; the CLI's last guard, where no closer code knew better."""
    name = errno.errorcode.get(e.errno or 0, "")
    reason = e.strerror or str(e) or type(e).__name__
    return WorkbenchError(f"{what + ': ' if what else ''}{reason}{f' ({name})' if name else ''}",
                          file=str(e.filename) if e.filename is not None else None)

"""Registries by name: one for data sets, models, recipes, attacks and probes.

A plain function decorated with ``@REGISTRY.register("name")`` is an entry (as in timm).
Looking up an unknown name raises :class:`~workbench.errors.UnknownNameError` listing the
valid names, which the study validator turns into a file/field error.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._entries[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def describe(self, name: str) -> str:
        """First paragraph of the entry's docstring on one line, at most ~110 characters
        (for ``workbench list``)."""
        import inspect

        doc = inspect.cleandoc(getattr(self.get(name), "__doc__", None) or "")
        text = " ".join(doc.split("\n\n")[0].split())
        return text if len(text) <= 110 else text[:108].rstrip() + " …"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

"""Registries by name: data sets, models, recipes, attacks, probes, stages, executors.

A plain function or class decorated with ``@REGISTRY.register("name")`` is an entry (as in
timm). An entry may also declare its **typed config** (the pydantic model of its study
section: the study schema is built from these, so a new component needs no edit to
``study.py``) and its **tables** (name -> (what, {column: meaning}): ``tables.py``
collects them, so a new component needs no edit there either).

Looking up an unknown name raises :class:`~workbench.errors.UnknownNameError` listing the
valid names, which the study validator turns into a file/field error.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Annotated, Any, Generic, TypeVar, Union

from pydantic import Field

from .errors import UnknownNameError

T = TypeVar("T")

#: a table's schema: (one line on what a row is, {column: meaning})
TableSchema = tuple[str, dict[str, str]]


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._configs: dict[str, Any] = {}
        self._tables: dict[str, dict[str, TableSchema]] = {}

    def register(
        self, name: str | None = None, *, config: Any = None, tables: Mapping[str, TableSchema] | None = None
    ) -> Callable[[T], T]:
        """``config``: the pydantic model of the entry's study section; ``tables``: the
        tables it writes (their schema, documented in the README / docs/tables.md)."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._entries[key] = obj
            if config is not None:
                self._configs[key] = config
            if tables:
                self._tables[key] = dict(tables)
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def config(self, name: str) -> Any:
        """The typed config of ``name`` (None when it declares none)."""
        self.get(name)
        return self._configs.get(name)

    def configs(self) -> dict[str, Any]:
        """name -> typed config, in registration order."""
        return dict(self._configs)

    def tables(self) -> dict[str, TableSchema]:
        """Every table the entries declare, in registration order."""
        out: dict[str, TableSchema] = {}
        for entry, tables in self._tables.items():
            for t, schema in tables.items():
                if t in out:
                    raise ValueError(f"table {t!r} declared twice ({self.kind} {entry!r})")
                out[t] = schema
        return out

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def in_order(self) -> list[str]:
        """Names in registration order (the order of tables and stages)."""
        return list(self._entries)

    def describe(self, name: str) -> str:
        """First paragraph of the entry's docstring on one line, whole, as plain text (for
        ``workbench list``)."""
        doc = inspect.cleandoc(getattr(self.get(name), "__doc__", None) or "")
        return plain_text(" ".join(doc.split("\n\n")[0].split()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def plain_text(text: str) -> str:
    """Docstring text without its reStructuredText markup: ``code`` -> code,
    :func:`~pkg.mod.name` -> name, :data:`X` -> X."""
    text = re.sub(r":[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", lambda m: m.group(1).rsplit(".", 1)[-1]
                  if m.group(0).split("`")[1].startswith("~") else m.group(1), text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def tagged_union(registry: Registry) -> Any:
    """The discriminated union (on ``name``) of the configs registered in ``registry``: the
    type of a study field that takes any of them (``recipes[]``, ``evaluation.attacks[]``)."""
    configs = tuple(registry.configs().values())
    return Annotated[Union[configs], Field(discriminator="name")]  # type: ignore[valid-type]


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every module of a package (in name order) so that each registers itself: a
    new component is one new module, with no import to add anywhere."""
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")

"""Hashes of the code that can change a result: a module and what it imports, as syntax.

A cache key (of a trained model, of a stage's result) holds :func:`code_hash` of the
modules that compute it. Each module counts by its syntax tree with docstrings removed
(``ast.dump``), so a comment, a docstring or a reformatting changes nothing, while any
change to what the code does changes the hash. The modules a module imports from inside
the ``workbench`` package count too, recursively: the import graph is read from the
source (every ``import`` statement, also those inside functions, but not those under
``if TYPE_CHECKING:``, which only name types), so the hash of the
evaluation covers the attack code, and a change to figure or HTML code (which no stage
imports) invalidates nothing.

``from .pkg import name`` depends on ``pkg.name`` when that is a module, else on the
module ``pkg/__init__.py`` re-exports ``name`` from (one level of ``from .mod import
name``), else on ``pkg/__init__.py`` itself: the registration glue of a package's
``__init__`` is not a dependency of every module that imports one name from it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "workbench"


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (at any depth), not those under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)
    return out


class CodeIndex:
    """The modules of one source tree of the package (``root`` is the package folder)."""

    def __init__(self, root: str | Path, package: str = PACKAGE):
        self.root = Path(root)
        self.package = package
        self._trees: dict[str, ast.Module] = {}
        self._hashes: dict[str, str] = {}
        self._deps: dict[str, frozenset[str]] = {}

    # ---- modules

    def path(self, module: str) -> Path | None:
        """The file of ``module`` (``workbench.attacks.pgd``), or None outside the package.
        A component defined elsewhere (a plugin, a test) is hashed by the file it was
        imported from; its imports from the package are followed as well."""
        parts = module.split(".")
        if parts[0] != self.package:
            import sys

            f = getattr(sys.modules.get(module), "__file__", None)
            return Path(f) if f and f.endswith(".py") and Path(f).is_file() else None
        base = self.root.joinpath(*parts[1:])
        if (base / "__init__.py").is_file():
            return base / "__init__.py"
        f = base.with_suffix(".py")
        return f if f.is_file() else None

    def is_package(self, module: str) -> bool:
        p = self.path(module)
        return p is not None and p.name == "__init__.py"

    def _tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            path = self.path(module)
            if path is None:
                raise KeyError(f"{module} is not a module of {self.root}")
            self._trees[module] = ast.parse(path.read_text(), filename=str(path))
        return self._trees[module]

    def module_hash(self, module: str) -> str:
        """sha256 of the module's syntax tree without docstrings (comments are not in it)."""
        if module not in self._hashes:
            tree = _strip_docstrings(ast.parse(self.path(module).read_text()))  # type: ignore[union-attr]
            self._hashes[module] = hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()
        return self._hashes[module]

    # ---- the import graph

    def _absolute(self, module: str, level: int, target: str | None) -> str:
        if level == 0:
            return target or ""
        pkg = module.split(".") if self.is_package(module) else module.split(".")[:-1]
        base = pkg[: len(pkg) - (level - 1)]
        return ".".join(base + ([target] if target else []))

    def _reexport(self, package: str, name: str) -> str | None:
        """The module ``package/__init__.py`` takes ``name`` from (``from .mod import name``)."""
        for node in self._tree(package).body:
            if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                src = self._absolute(package, node.level, node.module)
                if self.path(src) is not None and src != package:
                    return src
        return None

    def deps(self, module: str) -> frozenset[str]:
        """The package modules ``module`` imports directly."""
        if module in self._deps:
            return self._deps[module]
        out: set[str] = set()
        for node in _runtime_imports(self._tree(module)):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == self.package and self.path(a.name) is not None:
                        out.add(a.name)
            elif isinstance(node, ast.ImportFrom):
                src = self._absolute(module, node.level, node.module)
                if not src.startswith(self.package) or self.path(src) is None:
                    continue
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    if self.path(sub) is not None:
                        out.add(sub)
                    elif self.is_package(src):
                        out.add(self._reexport(src, a.name) or src)
                    else:
                        out.add(src)
        out.discard(module)
        self._deps[module] = frozenset(out)
        return self._deps[module]

    def closure(self, modules: list[str] | tuple[str, ...]) -> list[str]:
        """``modules`` and everything they import from the package, transitively (sorted)."""
        seen: set[str] = set()
        todo = [m for m in modules]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            if self.path(m) is None:
                raise KeyError(f"{m} is not a module of {self.root}")
            seen.add(m)
            todo.extend(self.deps(m) - seen)
        return sorted(seen)

    def hash(self, *modules: str) -> str:
        """sha256 over (name, :meth:`module_hash`) of the closure of ``modules``."""
        h = hashlib.sha256()
        for m in self.closure(list(modules)):
            h.update(m.encode() + b"\0" + self.module_hash(m).encode() + b"\n")
        return h.hexdigest()


@functools.lru_cache(maxsize=1)
def installed() -> CodeIndex:
    """The index of the imported workbench package (parsed lazily, once per process)."""
    return CodeIndex(Path(__file__).resolve().parent)


def code_hash(*modules: str, index: CodeIndex | None = None) -> str:
    """:meth:`CodeIndex.hash` of ``modules`` in the installed package (or ``index``)."""
    return (index or installed()).hash(*modules)

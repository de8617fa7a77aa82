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

Parsing is the slow part (about 0.6 s for the package on the 2-core CI machine, paid by
every run, the rerun that computes nothing included), so what a file's syntax gives (its
hash, its imports) is memoised on disk by the sha256 of the file's bytes and the Python
version (``ast.dump`` differs between versions): ``<store>/codehash/<sha>.json``. An entry
depends on nothing but the bytes it is named by, so it can never be stale; an unreadable
one is parsed again, and a memo that cannot be written is skipped.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import site
import sys
import sysconfig
from pathlib import Path
from .store import default_store

PACKAGE = "workbench"
#: bump when what a memo entry holds (or how it is computed) changes
MEMO_VERSION = 1


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


def _import_records(tree: ast.Module) -> dict:
    """What the import graph needs from a module's syntax, as JSON: every runtime import
    (``[level, module, names]``; level -1 for ``import a.b``) and the top-level ``from``
    imports with the names they bind (to resolve re-exports of a package's ``__init__``)."""
    imports = []
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            imports.append([-1, None, [a.name for a in node.names]])
        else:
            imports.append([node.level, node.module, [a.name for a in node.names]])
    top = [[n.level, n.module, [a.asname or a.name for a in n.names]] for n in tree.body if isinstance(n, ast.ImportFrom)]
    return {"imports": imports, "top_from": top}


def _syntax_info(source: bytes, filename: str) -> dict:
    tree = ast.parse(source, filename=filename)
    info = _import_records(tree)  # before the docstrings go: they hold no imports
    info["hash"] = hashlib.sha256(ast.dump(_strip_docstrings(tree), include_attributes=False).encode()).hexdigest()
    return info


def default_memo() -> Path | None:
    """``<default store>/codehash`` (``$WORKBENCH_STORE`` or ``~/.cache/workbench``)."""
    try:
        return default_store() / "codehash"
    except (OSError, RuntimeError):  # no home directory
        return None


class CodeIndex:
    """The modules of one source tree of the package (``root`` is the package folder);
    ``memo``: the folder of the on-disk memo of parsed files (None: parse every file)."""

    def __init__(self, root: str | Path, package: str = PACKAGE, memo: str | Path | None = None):
        self.root = Path(root)
        self.package = package
        self.memo = Path(memo) if memo is not None else None
        self._info: dict[str, dict] = {}
        self._deps: dict[str, frozenset[str]] = {}
        self._paths: dict[str, Path | None] = {}  # a rerun hashes ~20 closures of the same modules

    # ---- modules

    def path(self, module: str) -> Path | None:
        """The file of ``module`` (``workbench.attacks.pgd``), or None outside the package.
        A component defined elsewhere (a plugin, a test) is hashed by the file it was
        imported from; its imports from the package are followed as well."""
        if module not in self._paths:
            self._paths[module] = self._find(module)
        return self._paths[module]

    def _find(self, module: str) -> Path | None:
        parts = module.split(".")
        if parts[0] != self.package:
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

    def _syntax(self, module: str) -> dict:
        """The module's :func:`_syntax_info`, from the memo when it has the file's bytes."""
        if module in self._info:
            return self._info[module]
        path = self.path(module)
        if path is None:
            raise KeyError(f"{module} is not a module of {self.root}")
        source = path.read_bytes()
        digest = hashlib.sha256(b"%d %d.%d\0" % (MEMO_VERSION, *sys.version_info[:2]) + source).hexdigest()
        entry = self.memo / f"{digest}.json" if self.memo is not None else None
        info = None
        if entry is not None:
            try:
                info = json.loads(entry.read_text())
                if not (isinstance(info, dict) and isinstance(info.get("hash"), str)
                        and isinstance(info.get("imports"), list) and isinstance(info.get("top_from"), list)):
                    info = None
            except (OSError, ValueError):
                info = None
        if info is None:
            info = _syntax_info(source, str(path))
            if entry is not None:
                _write_memo(entry, info)
        self._info[module] = info
        return info

    def module_hash(self, module: str) -> str:
        """sha256 of the module's syntax tree without docstrings (comments are not in it)."""
        return self._syntax(module)["hash"]

    # ---- the import graph

    def _absolute(self, module: str, level: int, target: str | None) -> str:
        if level == 0:
            return target or ""
        pkg = module.split(".") if self.is_package(module) else module.split(".")[:-1]
        base = pkg[: len(pkg) - (level - 1)]
        return ".".join(base + ([target] if target else []))

    def _reexport(self, package: str, name: str) -> str | None:
        """The module ``package/__init__.py`` takes ``name`` from (``from .mod import name``)."""
        for level, target, bound in self._syntax(package)["top_from"]:
            if name in bound:
                src = self._absolute(package, level, target)
                if self.path(src) is not None and src != package:
                    return src
        return None

    def deps(self, module: str) -> frozenset[str]:
        """The package modules ``module`` imports directly."""
        if module in self._deps:
            return self._deps[module]
        out: set[str] = set()
        for level, target, names in self._syntax(module)["imports"]:
            if level < 0:  # import a.b
                for name in names:
                    if name.split(".")[0] == self.package and self.path(name) is not None:
                        out.add(name)
                continue
            src = self._absolute(module, level, target)
            if not src.startswith(self.package) or self.path(src) is None:
                continue
            for name in names:
                sub = f"{src}.{name}"
                if self.path(sub) is not None:
                    out.add(sub)
                elif self.is_package(src):
                    out.add(self._reexport(src, name) or src)
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


def _write_memo(entry: Path, info: dict) -> None:
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(info))
        os.replace(tmp, entry)  # whole or absent, also when two processes write it at once
    except OSError:  # a read-only or full disk: parse again next time
        try:
            tmp.unlink()
        except OSError:
            pass


@functools.lru_cache(maxsize=1)
def installed() -> CodeIndex:
    """The index of the imported workbench package (parsed lazily, once per process;
    memoised in :func:`default_memo`)."""
    return CodeIndex(Path(__file__).resolve().parent, memo=default_memo())


def _installed_roots() -> tuple[Path, ...]:
    """Where installed code lives: the standard library, site-packages (also the user's) and
    the workbench package itself (hashed by :func:`code_hash` where a stage runs it)."""
    roots = {Path(__file__).resolve().parent}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(name)
        if p:
            roots.add(Path(p).resolve())
    try:
        roots.update(Path(p).resolve() for p in site.getsitepackages())
    except AttributeError:  # a virtualenv's old site module
        pass
    user = getattr(site, "USER_SITE", None)
    if user:
        roots.add(Path(user).resolve())
    return tuple(roots)


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` (imported or importable), or None (built in, an
    extension module, a namespace package, not found)."""
    mod = sys.modules.get(name)
    f = getattr(mod, "__file__", None) if mod is not None else None
    if f is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a parent that is not a package, a broken import
            return None
        f = spec.origin if spec is not None and spec.has_location else None
    return Path(f).resolve() if f and f.endswith(".py") and Path(f).is_file() else None


def user_code_hash(module: str, memo: str | Path | None | bool = True) -> str:
    """sha256 over the syntax (as :func:`code_hash`: comments and docstrings do not count) of
    ``module`` and of every module it imports, transitively, that is the user's own code: a
    ``.py`` file outside the standard library, the site-packages and the workbench package
    (those are versioned by the environment). The key of a ``python:`` model source.

    Imports are read from the syntax (also those inside functions), resolved by name like
    the interpreter does (``sys.modules``, else ``importlib.util.find_spec``); one that cannot
    be found (an optional dependency) is skipped. ``memo``: the parse memo folder (True: the
    default store's, as :func:`installed`)."""
    memo_dir = default_memo() if memo is True else (Path(memo) if memo else None)
    roots = _installed_roots()

    def user_file(name: str) -> Path | None:
        # the top-level package first: finding a submodule imports its parent, which for an
        # installed package (an import inside a function, say timm's) is work for nothing
        for part in ([name.split(".")[0]] if "." in name else []) + [name]:
            f = _module_file(part)
            if f is None or any(f.is_relative_to(r) for r in roots):
                return None
        return f

    first = _module_file(module)
    if first is None:
        raise KeyError(f"{module} has no Python source file")
    h = hashlib.sha256()
    seen: dict[str, Path] = {}
    todo = [(module, first)]
    while todo:
        name, path = todo.pop()
        if name in seen:
            continue
        seen[name] = path
        info = _file_syntax(path, memo_dir)
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for level, target, names in info["imports"]:
            if level < 0:
                candidates = list(names)
            else:
                base = pkg.split(".") if pkg else []
                base = base[: len(base) - (level - 1)] if level else []
                src = ".".join(base + ([target] if target else []))
                if not src:
                    continue
                candidates = [src] + [f"{src}.{n}" for n in names if n != "*"]
            for cand in candidates:
                if cand in seen:
                    continue
                f = user_file(cand)
                if f is not None:
                    todo.append((cand, f))
    for name in sorted(seen):
        h.update(name.encode() + b"\0" + _file_syntax(seen[name], memo_dir)["hash"].encode() + b"\n")
    return h.hexdigest()


def _file_syntax(path: Path, memo: Path | None) -> dict:
    """:func:`_syntax_info` of a file, memoised by its bytes like :meth:`CodeIndex._syntax`."""
    source = path.read_bytes()
    digest = hashlib.sha256(b"%d %d.%d\0" % (MEMO_VERSION, *sys.version_info[:2]) + source).hexdigest()
    entry = memo / f"{digest}.json" if memo is not None else None
    if entry is not None:
        try:
            info = json.loads(entry.read_text())
            if isinstance(info, dict) and isinstance(info.get("hash"), str) and isinstance(info.get("imports"), list):
                return info
        except (OSError, ValueError):
            pass
    info = _syntax_info(source, str(path))
    if entry is not None:
        _write_memo(entry, info)
    return info


def code_hash(*modules: str, index: CodeIndex | None = None) -> str:
    """:meth:`CodeIndex.hash` of ``modules`` in the installed package (or ``index``)."""
    return (index or installed()).hash(*modules)

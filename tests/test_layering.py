"""The layering, checked on the import statements of workbench/ (every import, those inside
functions included; not those under ``if TYPE_CHECKING:``, which only name types), plus the
import Python adds: importing ``workbench.a.b`` first runs ``workbench/a/__init__.py`` (and what it
imports), so an import of a package's module counts as an import of the package too:

- foundations (config, registries, store, cache, statistics, stages, views, ...) import no
  component, schema, runner or report;
- components (attacks, models, data, recipes, evaluation, probes, ...) import neither the
  study schema nor the runner nor the report;
- reading a run folder (``workbench.results``) imports no runner;
- no import cycles.

The exceptions that remain are listed below with their reason; the test fails when a new
one appears, and when a listed one is gone (so the list stays true)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "workbench"

FOUNDATIONS = {"config", "registry", "store", "cache", "stats", "seeds", "state", "errors", "codehash", "progress",
               "views", "present", "stages", "types", "distributed"}
COMPONENTS = {"attacks", "models", "data", "training", "evaluation", "probes", "represent", "significance", "replicates",
              "executors", "cluster"}
SCHEMA = {"study", "components"}
RUNNER = {"runner", "facts", "grid", "cli", "registries", "__main__"}
REPORT = {"report"}
READING = {"results", "tables", "display", "verdict"}

#: (importer's layer, imported module) that remain, and why (none: a crossing that comes back fails the test)
KNOWN: dict[tuple[str, str], str] = {}
#: import cycles that remain (sets of modules; none)
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> set[str]:
    """The workbench modules ``module`` imports anywhere (a package's name when no module matches)."""
    tree = ast.parse(MODULES[module].read_text())
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    out: set[str] = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                todo.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                out |= {a.name for a in child.names if a.name.split(".")[0] == "workbench"}
            elif isinstance(child, ast.ImportFrom):
                base = package[:len(package) - (child.level - 1)] if child.level else []
                mod = ".".join(base + ([child.module] if child.module else []))
                if mod.split(".")[0] == "workbench":
                    out |= {f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in child.names}
            todo.append(child)
    return {m for m in out if m in MODULES and m != module}


def with_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` plus the imports Python adds: a module importing ``a.b.c`` also imports the
    packages ``a.b`` and ``a`` (their ``__init__`` runs first), except the packages the importer
    itself belongs to, which have begun running before it."""
    def packages(m: str) -> set[str]:
        parts = m.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    out = {}
    for m, deps in graph.items():
        own = packages(m) | {m}
        out[m] = deps | {p for d in deps for p in packages(d) if p in graph and p not in own}
    return out


GRAPH = with_packages({m: imports_of(m) for m in MODULES})


def layer(module: str) -> str:
    top = module.split(".")[1] if "." in module else ""
    for name, members in (("foundation", FOUNDATIONS), ("component", COMPONENTS), ("schema", SCHEMA),
                          ("runner", RUNNER), ("report", REPORT), ("reading", READING)):
        if top in members:
            return name
    return "package"


#: layer -> the layers it must not import
FORBIDDEN = {
    "foundation": {"component", "schema", "runner", "report", "reading"},
    "component": {"schema", "runner", "report", "reading"},
    "reading": {"runner"},
}


def _violations(graph: dict[str, set[str]] | None = None) -> dict[tuple[str, str], str]:
    out = {}
    for m, deps in (GRAPH if graph is None else graph).items():
        for d in deps:
            if layer(d) in FORBIDDEN.get(layer(m), ()):
                out[(m, ".".join(d.split(".")[:2]) if layer(d) != "report" else d)] = f"{layer(m)} -> {layer(d)}"
    return out


def test_the_layers_import_only_downwards():
    found = _violations()
    new = {k: v for k, v in found.items() if k not in KNOWN}
    assert not new, f"imports against the layering: {new}"
    gone = set(KNOWN) - set(found)
    assert not gone, f"listed exceptions that no longer exist (remove them from KNOWN): {gone}"


def _cycles(graph: dict[str, set[str]] | None = None) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph = GRAPH if graph is None else graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_new_import_cycles():
    cycles = _cycles()
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not new, f"new import cycles: {[sorted(c) for c in new]}"
    assert all(c in cycles for c in KNOWN_CYCLES), "a listed cycle is gone: remove it from KNOWN_CYCLES"


def test_the_rules_catch_a_violation():
    """The check itself: a foundation importing a component is found."""
    graph = dict(GRAPH)
    graph["workbench.stats"] = graph["workbench.stats"] | {"workbench.training"}
    assert ("workbench.stats", "workbench.training") in _violations(graph)


def test_a_cycle_through_a_package_init_is_found():
    """The cycle the import statements alone do not show: ``disp`` imports ``pkg.figures``, which
    runs ``pkg/__init__``, which imports ``pkg.html`` -> ``res`` -> ``disp``. A module importing a
    sibling gains no edge to its own package (which has begun running before it)."""
    written = {"pkg": {"pkg.html"}, "pkg.html": {"res", "pkg.figures"}, "pkg.figures": set(),
               "res": {"disp"}, "disp": {"pkg.figures"}}
    assert _cycles(written) == []
    assert _cycles(with_packages(written)) == [{"pkg", "pkg.html", "res", "disp"}]
    siblings = {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert with_packages(siblings) == siblings and _cycles(siblings) == []


def test_reading_a_run_folder_imports_no_runner():
    code = "import sys, workbench.results; print(sorted(m for m in sys.modules if m.startswith('workbench.')))"
    loaded = eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    # (nor the training code: tests/test_results.py::test_reading_a_run_folder_imports_no_training_code)
    assert not [m for m in loaded if m in ("workbench.runner", "workbench.facts") or m.startswith("workbench.report")]


def _function_level_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, states why) of each import inside a function: it states why when a comment
    is on its line, or on the line above the run of import (and blank) lines it belongs to."""
    lines = path.read_text().splitlines()
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, ast.If) and _type_checking(ch.test):
                continue
            if in_function and isinstance(ch, (ast.Import, ast.ImportFrom)):
                mod = ("." * ch.level + (ch.module or "")) if isinstance(ch, ast.ImportFrom) else ch.names[0].name
                i = ch.lineno - 1
                why = "#" in lines[i]
                j = i - 1
                while not why and j >= 0 and (not lines[j].strip() or lines[j].lstrip().startswith(("import ", "from "))):
                    j -= 1
                why = why or (j >= 0 and lines[j].lstrip().startswith("#"))
                out.append((ch.lineno, mod, why))
            visit(ch, in_function or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse("\n".join(lines)), False)
    return out


def test_every_lazy_import_states_why():
    """An import inside a function defers a module for start-up time (``workbench --help`` starts
    without torch; reading a run folder without the training loop) or because it is an optional
    extra: the comment says which. A standard-library, already-loaded or workbench module that
    needs no deferring belongs at the top, where the layering above sees it as it runs."""
    silent = [f"{p.relative_to(ROOT.parent)}:{line} {mod}" for p in sorted(ROOT.rglob("*.py"))
              for line, mod, why in _function_level_imports(p) if not why]
    assert not silent, f"imports inside functions with no reason given: {silent}"


def test_a_silent_lazy_import_is_found(tmp_path):
    """The check itself: an import of a workbench module inside a function, with no comment, is
    reported; with a comment above its run of imports, or on its line, it is not."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from . import stats\n    from workbench import store  # start-up: torch\n\n"
                 "def g():\n    # optional extra\n    import timm\n    from .x import y\n")
    assert _function_level_imports(f) == [(2, ".", False), (3, "workbench", True), (7, "timm", True), (8, ".x", True)]

"""Import graph of host/edgeprobe, built with ``ast``: no import cycle, and reading records needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "host" / "edgeprobe"
# energy arithmetic and the records it reads: no cycle among these even through deferred
# (function-level) imports (results <-> odpm was one, through two deferred imports)
ENERGY_MODULES = ("edgeprobe.results", "edgeprobe.energy", "edgeprobe.odpm")


def modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every .py under ``package_dir``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(body: list[ast.stmt], deferred: bool):
    """Import statements that run: at module level (top level, and inside top-level if/try/with/
    class blocks), or with ``deferred`` anywhere (in functions too); never those under
    ``if TYPE_CHECKING:``, which only type checkers read."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse, deferred)
        elif deferred or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # class bodies run too
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):  # statement lists, nested
                for child in getattr(node, name, None) or ():
                    if isinstance(child, (ast.excepthandler, ast.match_case)):
                        yield from _imports(child.body, deferred)
                    elif isinstance(child, ast.stmt):
                        yield from _imports([child], deferred)


def import_graph(package_dir: Path, *, deferred: bool = False) -> dict[str, set[str]]:
    """module -> the package's modules it imports. Module-level imports only, unless ``deferred``
    (then imports inside functions count too; ``if TYPE_CHECKING:`` never). ``from a import b``
    is an edge to ``a.b`` when that is a module, else to ``a``; the implicit import of a
    module's parent packages is not an edge."""
    mods = modules(package_dir)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = list(_imports(tree.body, deferred))
        here = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in mods else source)
        edges = set()
        for target in targets:
            while target and target not in mods:  # import a.b.c where only a.b is ours: a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module, as a path
    ``[a, b, ..., a]`` (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        components.append(sorted(comp))
    return [_path_within(graph, comp) for comp in components]


def _path_within(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component."""
    members, start = set(comp), comp[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {comp}")  # a component always has one


def _show(found: list[list[str]]) -> str:
    return "; ".join(" -> ".join(c) for c in found)


def test_no_module_level_import_cycle():
    found = cycles(import_graph(PACKAGE_DIR))
    assert not found, f"import cycle(s) in host/edgeprobe: {_show(found)}"


def test_energy_modules_have_no_cycle_even_through_deferred_imports():
    found = [c for c in cycles(import_graph(PACKAGE_DIR, deferred=True)) if set(c) & set(ENERGY_MODULES)]
    assert not found, f"import cycle(s) through the energy modules: {_show(found)}"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path / "pkg"


def test_the_checker_names_a_cycle_and_ignores_type_checking_and_deferred_imports(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "try:\n    from .sub import c\nexcept ImportError:\n    pass\n",
        "sub/__init__.py": "",
        "sub/c.py": "import pkg.a\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n",
        "e.py": "import pkg.d\n\ndef f():\n    from pkg import a\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.d"] == set() and graph["pkg.e"] == {"pkg.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    with pytest.raises(AssertionError, match=r"pkg\.a -> pkg\.b -> pkg\.sub\.c -> pkg\.a"):
        assert not cycles(graph), _show(cycles(graph))
    # counting deferred imports, e -> a joins in; the TYPE_CHECKING one never does
    deep = import_graph(pkg, deferred=True)
    assert deep["pkg.d"] == set() and deep["pkg.e"] == {"pkg.d", "pkg.a"}
    assert cycles(deep) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    # a deferred import that closes a loop is a cycle in that graph only
    pkg = _package(tmp_path / "2", {"__init__.py": "", "x.py": "import pkg.y\n",
                                    "y.py": "class K:\n    def m(self):\n        from pkg import x\n"})
    assert cycles(import_graph(pkg)) == [] and cycles(import_graph(pkg, deferred=True)) == [["pkg.x", "pkg.y", "pkg.x"]]


def test_reading_records_and_energy_does_not_import_torch():
    code = ("import sys, edgeprobe.results, edgeprobe.energy, edgeprobe.odpm; "
            "heavy = sorted(m for m in ('torch', 'numpy', 'executorch') if m in sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)

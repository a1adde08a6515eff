"""The package's import graph: imports point one way, and all stand at the top.

Every ``import`` in ``passt/`` counts, those under ``if TYPE_CHECKING:`` too
(a circle that only the type checker sees is still a circle in the design).
An edge goes to the module named, or to ``passt.a.b`` for ``from passt.a
import b`` when ``b`` is a module.  The package ``__init__`` files import
nothing from the package, so edges to them close no circle and are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from passt import runtime

PACKAGE = Path(__file__).resolve().parents[2] / "passt"
LAZY_MODULES = frozenset(runtime.LAZY_MODULES)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str, known: dict[str, Path]) -> bool:
    return known[name].name == "__init__.py"


def imported(node: ast.Import | ast.ImportFrom, here: str, known: dict[str, Path]) -> set[str]:
    """The modules of the package that ``node`` (in module ``here``) imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        anchor = here if is_package(here, known) else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            anchor = anchor.rpartition(".")[0]
        base = f"{anchor}.{base}" if base else anchor
    found = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            found.add(sub)
        elif base in known:
            found.add(base)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= imported(node, name, known)
        edges[name] = {t for t in targets if not is_package(t, known) and t != name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``edges`` as a path that ends where it starts, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def nested_imports() -> list[str]:
    """Imports of the package inside functions or classes: hidden edges of the graph.

    (Third-party modules imported when first needed, NumPy, are no edges of
    the package's graph.)  ``passt.runtime`` may import the modules of its
    ``LAZY_MODULES`` in functions, those a run may not need: they are edges
    all the same (``graph`` walks functions too), and nothing else is.
    """
    known = modules()
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        allowed = LAZY_MODULES if name == "passt.runtime" else frozenset()
        for scope in ast.walk(tree):
            if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found += [f"{name}:{node.lineno}" for node in ast.walk(scope)
                          if isinstance(node, ast.Import | ast.ImportFrom)
                          and imported(node, name, known) - allowed]
    return sorted(set(found))


def test_no_import_circles() -> None:
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_no_imports_hidden_in_functions() -> None:
    assert nested_imports() == []


def test_the_entry_points_leave_the_lazy_modules_and_heavy_libraries_out() -> None:
    """The point of ``LAZY_MODULES``: importing the programs does not load them
    (nor NumPy or pyroute2, whose import cost more than the rest of start-up)."""
    code = ("import sys, passt.cli; "
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('passt', 'numpy', 'pyroute2')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, timeout=60, cwd=PACKAGE.parent).stdout.split())
    assert "passt.runtime" in loaded
    assert loaded & (LAZY_MODULES | {"numpy", "pyroute2"}) == set()


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_and_type_only_imports() -> None:
    edges = graph()
    assert "passt.backends.tap" in edges["passt.runtime"]
    assert "passt.flow.table" in edges["passt.context"]
    assert "passt.log" in edges["passt.cli"]  # from . import log


# The layers of doc/internals.md, bottom up: a module may import its own layer
# and those below.  The longest matching prefix decides.
LAYERS = {
    "passt": 0, "passt.log": 0, "passt.loop": 0, "passt.packet": 0, "passt.checksum": 0,
    "passt.pcap": 0, "passt.fsref": 0, "passt.conf": 0, "passt.ports": 0, "passt.buffers": 0,
    "passt.errors": 0,
    "passt.backends": 1,
    "passt.host": 2,
    "passt.flow": 3,
    "passt.context": 4,
    "passt.l2": 5, "passt.flow.icmp": 5, "passt.tcp": 5, "passt.udp": 5,
    "passt.backends.dispatch": 5,
    "passt.control_socket.rules": 3, "passt.control_socket.wire": 3, "passt.control_socket.server": 5,
    "passt.migrate.wire": 0, "passt.migrate.repair": 2, "passt.migrate": 5,
    "passt.runtime": 6, "passt.cli": 6, "passt.repair_helper": 6, "passt.__main__": 6, "passt.control": 6, "passt.pesto": 6,
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module}: in no layer of doc/internals.md")


def test_imports_point_down_the_layers() -> None:
    upward = [f"{a} ({layer(a)}) -> {b} ({layer(b)})"
              for a, targets in graph().items() for b in sorted(targets) if layer(b) > layer(a)]
    assert upward == []

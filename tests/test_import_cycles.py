"""No import cycles between our modules (issue 17).

Every module-level import counts, those under ``if TYPE_CHECKING:`` too: a type-only
import back into a caller is still a cycle in the design (a class split by exiling its
methods into modules that reach back into it). Imports inside functions are the one
deliberate escape hatch (lazy, optional dependencies) and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("models", "offload", "edge_agent", "cloud_gateway", "simulators", "benchmarks")
ROOT = Path(__file__).resolve().parent.parent

#: Cycles still to be taken apart, with the module sets as they stand (none left). A new
#: cycle, or a known one that grows, fails the test; one that disappears must go from here.
KNOWN: dict[frozenset[str], str] = {}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    this = _module(path)

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # ``from pkg import sub`` depends on the submodule; ``from pkg import name``
                # on the package (importing a submodule runs its parent package's
                # __init__ too, but a package re-exporting its submodules is no cycle).
                base = node.module
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            elif isinstance(node, ast.If):  # if TYPE_CHECKING: (and other guards)
                visit(node.body)
                visit(node.orelse)
                continue
            elif isinstance(node, ast.Try):
                visit(node.body)
                continue
            else:
                continue
            for name in names:
                # the longest prefix that is one of our modules
                parts = name.split(".")
                for k in range(len(parts), 0, -1):
                    cand = ".".join(parts[:k])
                    if cand in modules and cand != this:
                        found.add(cand)
                        break

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module(p) for p in files}
    return {_module(p): _imports(p, modules) for p in files}


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_new_import_cycles() -> None:
    cycles = _cycles(_graph())
    new = [sorted(c) for c in cycles if c not in KNOWN]
    assert not new, f"import cycles: {new}"
    gone = [sorted(k) for k in KNOWN if k not in cycles]
    assert not gone, f"these cycles are gone: remove them from KNOWN: {gone}"


def test_the_checker_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]

"""Fail on an import cycle among latentdiff's modules, function-level imports included.

    python benchmarks/import_cycles.py        # prints the cycles, exits 1 if there are any

A cycle hidden behind a function-level import still ties the modules into one: each needs the
other to work, and the layering (files and constants, cards, the Hub, model resolution, ...) is
gone. The walk reads the source with ``ast`` (nothing is imported), maps files to module names as
pyproject's package-dir does (``pipelines/`` is ``latentdiff.pipelines``, ``train/`` is
``latentdiff.train``), and finds the strongly connected components of the import graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"latentdiff": ROOT / "latentdiff", "latentdiff.pipelines": ROOT / "pipelines",
            "latentdiff.train": ROOT / "train"}


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """{dotted module name: file} for every .py below each package folder."""
    out = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, or the longest known module it lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the modules it imports}, every import statement counted wherever it stands."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {_target(a.name, modules) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:  # `from pkg import module` imports the module, else pkg itself
                    full = f"{base}.{a.name}"
                    targets.add(full if full in modules else _target(base, modules))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "; ".join(edges)


def main() -> int:
    graph = import_graph(module_files(PACKAGES))
    found = cycles(graph)
    for component in found:
        print("import cycle:", describe(component, graph))
    if not found:
        print(f"no import cycles among {len(graph)} modules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

"""The layers import one way (docs/CONTRACTS.md), with no cycle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "precision_lab"

#: Layer order: a module may import from its own layer and the ones before it.
LAYERS = ["numerics", "implementations", "experiment", "search", "testing", "explain", "report",
          "studies", "cli"]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        mod = ".".join(rel.parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("precision_lab"):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("precision_lab")}
        out[mod] = deps
    return out


def test_imports_flow_one_way():
    bad = []
    for mod, deps in _imports().items():
        src = _layer(mod)
        if src in ("__init__", "__main__") or src not in LAYERS:
            continue
        for dep in deps:
            dst = _layer(dep)
            if dst in ("__init__",):
                continue
            if dst in LAYERS and LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{mod} imports {dep}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles_between_modules():
    graph = _imports()
    mods = set(graph)

    def resolve(dep: str) -> "str | None":
        while dep and dep not in mods:
            dep = dep.rpartition(".")[0]
        return dep or None

    edges = {m: {r for d in deps if (r := resolve(d)) and r != m} for m, deps in graph.items()}
    # packages' __init__ re-export their modules: an edge into a package is an edge into all of
    # its modules only through those re-exports, so ignore edges from a package to its children
    for m in edges:
        edges[m] = {d for d in edges[m] if not d.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in edges.get(m, ()):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)

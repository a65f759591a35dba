"""The package's import graph: no cycle among registry's subpackages, local imports explained.

Every import counts (module level, function-local, under ``TYPE_CHECKING``). ``registry.api``
is the one exception: the composition root that imports every router, so its own imports are
not edges (everything else may still import ``registry.api.deps``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "registry"
COMPOSITION_ROOTS = frozenset({"registry.api"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    yield base
    # ``from registry.storage import s3`` imports the submodule registry.storage.s3 too.
    yield from (f"{base}.{alias.name}" for alias in node.names)


def imports_of(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement of a file."""
    module = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    local: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            local.update(id(n) for n in ast.walk(node)
                         if isinstance(n, ast.Import | ast.ImportFrom))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in _imported(node, module, path.name == "__init__.py"):
                yield name, node.lineno, id(node) in local


def node_of(module: str) -> str | None:
    """The graph node of a module: ``registry.<first component>`` (a subpackage or a module)."""
    parts = module.split(".")
    if parts[0] != "registry" or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def package_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """node -> the nodes it imports (self-imports and composition roots left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        source = node_of(module_name(path))
        if source is None:
            continue
        graph.setdefault(source, set())
        if source in COMPOSITION_ROOTS:
            continue
        for imported, _, _ in imports_of(path):
            target = node_of(imported)
            if target is not None and target != source:
                graph[source].add(target)
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_cycle_among_subpackages():
    graph = package_graph()
    assert "registry.adapters" in graph and "registry.compat" in graph  # the walk found them
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_domains_depend_one_way_on_compat():
    graph = package_graph()
    assert "registry.compat" in graph["registry.adapters"]
    assert "registry.compat" in graph["registry.base_models"]
    assert not graph["registry.compat"] & {"registry.adapters", "registry.base_models"}


def test_cycle_finder_finds_cycles():
    # Guards the guard: a finder that never reports would make the first test pass vacuously.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": set(), "c": {"d"}, "d": {"c"}}) == ["c", "d", "c"]


def test_cycle_finder_sees_function_local_imports(tmp_path: Path):
    pkg = tmp_path / "registry"
    for sub in ("one", "two"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "one" / "service.py").write_text("from registry.two import service\n")
    (pkg / "two" / "service.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "def f():\n    from registry.one.service import g\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert find_cycle(package_graph(pkg)) is not None
    finally:
        ROOT = saved


def test_function_local_imports_say_why():
    """An import inside a function is there for start-up time; a comment must say so."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for _, lineno, local in imports_of(path):
            if not local:
                continue
            # The comment may sit on the import's line or on the lines just above its group.
            i = lineno - 1
            while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
                i -= 1
            window = lines[max(i - 2, 0): lineno]
            if not any("#" in line for line in window):
                unexplained.append(f"{path.relative_to(ROOT)}:{lineno}")
    assert not sorted(set(unexplained)), unexplained

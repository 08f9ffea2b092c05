"""The shape of the house: module-level imports inside embedcache form no cycle, and the data path depends on the
store alone (STYLE.md, "Dependencies point one way")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "embedcache"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports() -> dict[str, set[str]]:
    """embedcache module -> the embedcache modules it imports at module level (not inside functions)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedcache"):
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("embedcache")}
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def test_no_import_cycles():
    graph, state, cycle = top_level_imports(), {}, []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle.extend(stack[stack.index(target):] + [node, target] if target in stack else [node, target])
                return True
            if target not in state and visit(target, [*stack, node]):
                return True
        state[node] = "done"
        return False

    for module in sorted(graph):
        if module not in state:
            assert not visit(module, []), f"import cycle: {' -> '.join(cycle)}"


def test_the_data_path_and_the_results_point_one_way():
    graph = top_level_imports()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    assert not {m for m in reaches("embedcache.loader") if m.startswith(("embedcache.train", "embedcache.probe"))}
    assert "embedcache.probe" not in reaches("embedcache.results") and "embedcache.sweep" not in reaches(
        "embedcache.probe")
    assert "embedcache.extract" not in reaches("embedcache.store")

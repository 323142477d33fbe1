"""The package's shape: each module says what it is, and no module imports another that imports it back."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "brain_tumor"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at the top or inside functions)."""
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[name] = deps & set(modules) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]):
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in sorted(graph[node]):
                if dep == start:
                    return path + [dep]
                if dep not in path:
                    stack.append((dep, path + [dep]))
    return None


def test_find_cycle_sees_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    assert find_cycle(import_graph()) is None


def test_every_module_says_what_it_is():
    for path in PACKAGE.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.splitlines()[0]) > 10, path.name


def test_no_private_torch_api_in_the_package():
    import re

    private = re.compile(r"torch\.ops\.mkldnn|torch\._C\b|\._version\b")
    for path in PACKAGE.glob("*.py"):
        hits = [line for line in path.read_text().splitlines() if private.search(line)]
        assert not hits, (path.name, hits)
    assert private.search("w._version == 3") and not private.search("torch.__version__")

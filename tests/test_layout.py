"""The packages are floors and imports run one way: cli -> {worker, service} -> {jobs, models} -> media.

Read from the source (ast), so a violation is named by file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "worker", "service", "jobs", "models", "media")
# What each package may import of the others (models.limits is the torch-free part the gateway checks
# requests with: models/__init__.py loads nothing until asked).
ALLOWED = {
    "cli": {"worker", "service", "jobs", "models", "media"},
    "worker": {"jobs", "models", "media"},
    "service": {"jobs", "models.limits", "media"},
    "jobs": set(),
    "models": {"media"},
    "media": set(),
}
RQ_MODULES = {"jobs/queue.py", "worker/main.py", "worker/tasks.py"}
LONGEST_FUNCTION = 80


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved to absolute names."""
    tree = ast.parse(path.read_text())
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from package import module` imports the module: keep each name (resolved later to what exists).
            found += [(node.lineno, f"{name}.{alias.name}" if name else alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_down_the_floors(package):
    wrong = []
    for path in modules(package):
        for line, name in imports(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and not any(
                    name == allowed or name.startswith(allowed + ".") or top == allowed
                    for allowed in ALLOWED[package]):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_only_the_queue_module_and_the_worker_loop_import_rq():
    found = {str(path.relative_to(REPO)) for package in PACKAGES for path in modules(package)
             if any(name == "rq" or name.startswith("rq.") for _, name in imports(path))}
    assert found <= RQ_MODULES, sorted(found - RQ_MODULES)


@pytest.mark.parametrize("package", ["service", "worker", "jobs"])
def test_functions_stay_short(package):
    long = []
    for path in modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} has {length} lines")
    assert not long, "\n".join(long)


def test_there_is_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in modules(package):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            graph[name] = {imported for _, imported in imports(path)}
    known = set(graph)

    def resolve(name: str) -> str | None:  # `from pkg import module` names the module or the package
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {r for r in map(resolve, targets) if r and r != m} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt):], nxt])
                                     if nxt in trail else f"{node} -> {nxt}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])

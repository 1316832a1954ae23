"""The measures of the layout: small modules, small Protocols, no import cycle, and the
dependency rules of the planes (policies/ does no I/O; store/ knows no HTTP)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("gateway", "policies")
MAX_LINES = 500
MAX_PROTOCOL_METHODS = 15


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every project module ``name`` imports, at any depth of its code (TYPE_CHECKING too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in MODULES and t != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """The strongly connected parts of the import graph with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def _is_package_init_reexport(name: str, target: str) -> bool:
    # A package's __init__ re-exporting its own modules is not a cycle of logic.
    return MODULES[name].name == "__init__.py" and target.startswith(f"{name}.")


def test_the_walk_sees_every_plane() -> None:
    for plane in ("gateway.ingest", "gateway.limits", "gateway.billing", "gateway.admin"):
        assert plane in MODULES and any(m.startswith(f"{plane}.") for m in MODULES)
    assert "gateway.store.sql" in MODULES and "policies.billing.transitions" in MODULES


def test_no_module_is_over_500_lines() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: size for n, size in long.items() if size > MAX_LINES} == {}


def test_there_is_no_import_cycle() -> None:
    # Edges from a package __init__ into its own modules go one way only; keep the rest.
    for name in GRAPH:
        GRAPH[name] = {t for t in GRAPH[name] if not _is_package_init_reexport(name, t)}
    assert _cycles() == []


def test_no_protocol_has_more_than_15_methods() -> None:
    sizes: dict[str, int] = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                (isinstance(b, ast.Name) and b.id == "Protocol")
                or (isinstance(b, ast.Attribute) and b.attr == "Protocol")
                for b in node.bases
            ):
                methods = [
                    n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
                sizes[f"{name}.{node.name}"] = len(methods)
    assert "gateway.store.base.QuotaStore" in sizes and "gateway.ingest.upstream.Upstream" in sizes
    assert {n: s for n, s in sizes.items() if s > MAX_PROTOCOL_METHODS} == {}


def test_policies_do_no_io_and_know_nothing_of_the_gateway() -> None:
    forbidden = ("gateway", "asyncio", "socket", "httpx", "asyncpg", "redis", "sqlite3", "time")
    for name, path in MODULES.items():
        if not name.startswith("policies"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & set(forbidden), f"{name} imports {roots & set(forbidden)}"


def test_the_store_knows_no_plane_and_no_http() -> None:
    planes = ("gateway.ingest", "gateway.limits", "gateway.billing", "gateway.admin")
    for name, targets in GRAPH.items():
        if name.startswith("gateway.store"):
            assert not {t for t in targets if t.startswith(planes)}, name
            assert "starlette" not in MODULES[name].read_text(), name

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
    """Every project module ``name`` imports, at any depth of its code (TYPE_CHECKING too).

    ``from package import submodule`` is an edge to the submodule; ``from package import
    name`` an edge to the package's ``__init__``, which is where that name is run from; and a
    module of another package is an edge to that package's ``__init__`` too."""
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
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in MODULES else base)
    # Importing a.b.c from outside package a.b runs a.b's __init__ first.
    for target in list(targets):
        parts = target.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if not name.startswith(f"{parent}.") and name != parent:
                targets.add(parent)
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


def test_the_walk_sees_every_plane() -> None:
    for plane in ("gateway.ingest", "gateway.limits", "gateway.billing", "gateway.admin"):
        assert plane in MODULES and any(m.startswith(f"{plane}.") for m in MODULES)
    assert "gateway.store.sql" in MODULES and "policies.billing.transitions" in MODULES


def test_no_module_is_over_500_lines() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: size for n, size in long.items() if size > MAX_LINES} == {}


def test_there_is_no_import_cycle() -> None:
    assert GRAPH["gateway.ingest.app"] >= {"gateway.runtime", "gateway.billing.webhooks"}
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


def test_the_readme_draws_every_package_and_only_packages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```\npolicies/")
    block = readme[start : readme.index("```\n", start + 4)]
    drawn: set[str] = set()
    path: list[str] = []
    for line in block.splitlines()[1:]:
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip())) // 2
        path[depth:] = [name.rstrip("/")]
        drawn.add("/".join(path))
    packages = {
        str(init.parent.relative_to(ROOT))
        for package in PACKAGES
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert packages <= drawn
    assert all((ROOT / d).is_dir() for d in drawn)


def test_no_plane_but_the_apps_imports_ingest_or_the_runtime() -> None:
    # The planes depend one way: ingest serves through limits and billing, never back.
    for name, targets in GRAPH.items():
        if name.startswith(("gateway.limits", "gateway.billing", "gateway.store")):
            assert not {t for t in targets if t.startswith("gateway.ingest")}, name
        if name != "gateway.ingest.app" and not name.startswith(("gateway.admin", "gateway.cli")):
            assert "gateway.runtime" not in targets or name == "gateway.server", name


def test_production_code_never_imports_the_in_memory_fake() -> None:
    fakes = {"gateway.store.memory", "gateway.store.memory_billing"}
    importers = {name for name, targets in GRAPH.items() if targets & fakes}
    # The fake's own halves, and the store factory for memory:// URLs (a lazy import).
    assert importers <= {"gateway.store.memory", "gateway.store"}, importers

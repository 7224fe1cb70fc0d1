"""The shape of the code, checked: who may import whom, and who may change a server's state.

- `telemetry/` imports nothing from `gateway/`: recording sites know an interface, not the gateway.
- No import cycle among `gateway/` modules, type-only imports included.
- `gateway/app.py` (the composition root) is imported by the CLI alone.
- Only `gateway/runtime.py` writes a runtime's fields; everyone else calls its methods.
- The transport (stdio or streamable HTTP) is decided once, where a runtime is built.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.fast


def _modules(package: str) -> dict[str, ast.Module]:
    root = REPO / package
    found = {}
    for path in sorted(root.rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


def _imports(tree: ast.Module) -> Iterator[str]:
    """Every module an import names, wherever it stands (under TYPE_CHECKING, inside a function)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


GATEWAY = _modules("gateway")
TELEMETRY = _modules("telemetry")


def test_telemetry_never_imports_the_gateway() -> None:
    for name, tree in TELEMETRY.items():
        gateway = sorted({module for module in _imports(tree) if module.split(".")[0] == "gateway"})
        assert gateway == [], f"{name} imports {gateway}"


def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(tree) if m in GATEWAY and m != name} for name, tree in GATEWAY.items()}


def test_no_import_cycle_in_the_gateway() -> None:
    graph, state, path = _graph(), dict.fromkeys(GATEWAY, 0), []  # 0 new, 1 on the path, 2 done

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            if state[target] == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state[target] == 0:
                visit(target)
        path.pop()
        state[name] = 2

    for name in GATEWAY:
        if state[name] == 0:
            visit(name)


def test_only_the_cli_imports_the_app() -> None:
    importers = sorted(name for name, targets in _graph().items() if "gateway.app" in targets)
    assert importers == ["gateway.cli"], importers


def test_only_the_runtime_module_writes_a_runtimes_fields() -> None:
    """`runtime.x = ...` or `server.runtime.x += ...` anywhere else would bypass the state it keeps."""
    for name, tree in GATEWAY.items():
        if name == "gateway.runtime":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign | ast.AugAssign):
                continue
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AugAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Attribute) and _is_runtime(target.value):
                    raise AssertionError(f"{name}:{node.lineno} writes {ast.unparse(target)}")


def _is_runtime(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "runtime") or (
        isinstance(node, ast.Attribute) and node.attr == "runtime"
    )


def test_the_transport_is_decided_once() -> None:
    """Only `build_runtime` asks which kind of server a config is; the rest calls the runtime it built."""
    deciders = []
    for name, tree in GATEWAY.items():
        if name == "gateway.config":
            continue  # validating a config entry picks its model: that is parsing, not a decision made later
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
                kinds = ast.unparse(node.args[1])
                if "StdioServer" in kinds or "HttpServer" in kinds:
                    deciders.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in ("stdio", "streamable-http") for c in node.comparators
            ):
                deciders.append(f"{name}:{node.lineno}")
    assert len(deciders) == 1 and deciders[0].startswith("gateway.runtime:"), deciders


def test_modules_stay_small() -> None:
    """One concept per module: none grows past 450 lines (most are under 400)."""
    long = {p.name: n for p in Path(REPO / "gateway").rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}, long

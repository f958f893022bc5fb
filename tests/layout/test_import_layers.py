"""Imports flow one way: handlers -> services -> adapters -> base, in the gateway and in the
operator. Walks every ``import`` of ``gateway/src`` and ``operator/src`` (module level and
inside functions) against the layers declared here and fails on an import of a layer above,
or of another module's private name."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Each program's modules by layer, lowest first: a module may import its own layer and the
# ones below. A name matches a module and everything under it; the longest match decides.
LAYERS: dict[str, list[tuple[str, list[str]]]] = {
    "tollgate_gateway": [
        (
            "base",
            [
                "",
                "metrics",
                "exposition",
                "logs",
                "config",
                "tracing",
                "routing",
                "fairqueue",
                "requestpolicy",
            ],
        ),
        ("adapters", ["storage", "usage.writer", "usage.stream"]),
        (
            "services",
            [
                "errors",
                "accesslog",
                "sse",
                "keys.service",
                "catalog",
                "limits",
                "usage",
                "audit.service",
                "audit.recorder",
                "admin.service",
                "admin.schemas",
                "admin.security",
                "admin.logins",
                "chat.schemas",
                "chat.service",
                "messages.models",
                "messages.schemas",
                "messages.service",
                "responses.schemas",
                "responses.service",
                "routing.service",  # the router: the pure policy fed by the upstream adapter
                "pools",  # the pool queue: fairqueue's order kept in Redis for every gateway
            ],
        ),
        (
            "handlers",
            [
                "routes",
                "keys.router",
                "chat.router",
                "native",
                "messages.router",
                "responses.router",
                "admin.router",
                "admin.console",
                "audit.router",
                "console",
                "dependencies",
                "middleware",
                "openapi",
                "services",
                "main",
                "server",
                "cli",
            ],
        ),
    ],
    "tollgate_operator": [
        (
            "base",
            [
                "",
                "errors",
                "metrics",
                "tracing",
                "settings",
                "resources",
                "autoscaling",
                "builders",
            ],
        ),
        ("adapters", ["db", "k8s", "ollama", "leader", "demand"]),
        ("services", ["services"]),
        ("handlers", ["handlers", "factory", "__main__"]),
    ],
}
SOURCES = {"tollgate_gateway": "gateway/src", "tollgate_operator": "operator/src"}
# Domains of one layer that stay independent of each other (neither imports the other).
INDEPENDENT = [("tollgate_gateway.catalog", "tollgate_gateway.keys")]


def layer_of(package: str, module: str) -> int | None:
    """The layer index of ``package.module`` (None: not part of this program)."""
    if module != package and not module.startswith(package + "."):
        return None
    rest = module[len(package) + 1 :]
    best: tuple[int, int] | None = None  # (length of the match, layer)
    for index, (_, names) in enumerate(LAYERS[package]):
        for name in names:
            if rest == name or (name and rest.startswith(name + ".")) or name == "":
                length = len(name) if name else -1
                if best is None or length > best[0]:
                    best = (length, index)
    if best is None:
        raise AssertionError(f"{module} is in no layer: declare it in LAYERS")
    return best[1]


def modules(package: str) -> Iterator[tuple[str, Path]]:
    root = REPO / SOURCES[package]
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def imports(module: str, path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, imported module, names) of every import statement, relative ones resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent[: len(parent) - node.level + (1 if is_package else 0)]
                base = ".".join([*parent, base] if base else parent)
            yield node.lineno, base, [a.name for a in node.names]


def violations(package: str) -> list[str]:
    found = []
    order = [layer for layer, _ in LAYERS[package]]
    for module, path in modules(package):
        own = layer_of(package, module)
        assert own is not None
        for line, target, names in imports(module, path):
            where = f"{path.relative_to(REPO)}:{line}"
            # `from package.sub import name` may name a submodule: judge the submodule then.
            candidates = [f"{target}.{n}" for n in names] if names else [target]
            for candidate in candidates:
                probe = candidate if _is_module(package, candidate) else target
                theirs = layer_of(package, probe)
                if theirs is not None and theirs > own:
                    found.append(
                        f"{where}: {module} ({order[own]}) imports {probe} ({order[theirs]})"
                    )
            for name in names:
                private = name.startswith("_") and not name.startswith("__")
                if private and target != module and target.startswith(package):
                    found.append(f"{where}: {module} imports the private {target}.{name}")
            for a, b in INDEPENDENT:
                for mine, other in ((a, b), (b, a)):
                    if _under(module, mine) and _under(target, other):
                        found.append(f"{where}: {module} imports {target} ({mine} and {other})")
    return sorted(set(found))


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _is_module(package: str, dotted: str) -> bool:
    root = REPO / SOURCES[package]
    rel = Path(*dotted.split("."))
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_flow_one_way(package: str) -> None:
    assert violations(package) == []


def test_every_module_has_a_layer() -> None:
    for package in LAYERS:
        for module, _ in modules(package):
            assert layer_of(package, module) is not None


def test_the_walk_catches_an_import_of_a_layer_above(tmp_path: Path) -> None:
    """The checker is no blind spot: an adapter importing a service is reported."""

    def named(package: str, module: str) -> str:
        index = layer_of(package, module)
        assert index is not None
        return LAYERS[package][index][0]

    assert named("tollgate_gateway", "tollgate_gateway.storage.changes") == "adapters"
    assert named("tollgate_gateway", "tollgate_gateway.keys.service") == "services"
    assert named("tollgate_gateway", "tollgate_gateway.keys.router") == "handlers"
    assert named("tollgate_operator", "tollgate_operator.db") == "adapters"
    assert named("tollgate_operator", "tollgate_operator.services.errors") == "services"
    assert layer_of("tollgate_operator", "kopf") is None
    source = tmp_path / "probe.py"
    source.write_text("from ..keys.service import KeyService\n")
    ((_, target, names),) = imports("tollgate_gateway.storage.probe", source)
    assert (target, names) == ("tollgate_gateway.keys.service", ["KeyService"])

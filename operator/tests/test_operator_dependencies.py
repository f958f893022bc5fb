"""What installing the operator's distribution pulls in, resolved from uv.lock as
`uv sync --package tollgate-operator` (and its image) installs it: the shared
tollgate-schema, never the gateway's web stack."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"
GATEWAY_ONLY = {"tollgate-gateway", "fastapi", "uvicorn", "argon2-cffi", "pyjwt"}


def resolved(root: str) -> set[str]:
    """Every package `root` needs, following extras, without development groups."""
    packages: dict[str, dict[str, Any]] = {
        p["name"]: p for p in tomllib.loads(LOCK.read_text())["package"]
    }
    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    while todo:
        name, extras = todo.pop()
        package = packages[name]
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        if name in seen and not extras:
            continue
        seen.add(name)
        for dep in deps:
            todo.append((dep["name"], tuple(dep.get("extra", ()))))
    return seen


def test_the_operator_installs_the_shared_schema_package_and_none_of_the_gateway() -> None:
    needed = resolved("tollgate-operator")
    # redis: the demand the gateways publish per pool (autoscaling), not the gateway's stack.
    assert {"tollgate-schema", "kopf", "sqlalchemy", "alembic", "psycopg", "redis"} <= needed
    assert not needed & GATEWAY_ONLY, sorted(needed & GATEWAY_ONLY)


def test_the_shared_schema_package_needs_only_the_database_stack() -> None:
    needed = resolved("tollgate-schema")
    assert not needed & (GATEWAY_ONLY | {"kopf", "aiohttp", "pydantic", "redis"}), sorted(needed)


def test_the_walk_sees_the_gateway_stack_where_it_is() -> None:
    """The resolver above is no blind spot: the gateway's own set holds what the operator's
    must not."""
    assert resolved("tollgate-gateway") >= GATEWAY_ONLY

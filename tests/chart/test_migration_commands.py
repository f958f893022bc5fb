"""The commands of the migration Job and of the pods' wait-for-schema init containers, taken
from the rendered chart and run here against a real Postgres, with the packages the
images contain: they succeed when they should and exit non-zero, loudly, when they must."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from chart_helpers import Render, one, pod_spec

from tollgate_dev.proc import free_port
from tollgate_dev.servers.backing import LocalPostgres
from tollgate_schema.db import head_revision


@pytest.fixture(scope="module")
def job(render: Render) -> dict[str, Any]:
    return pod_spec(one(render(), "Job", "tollgate-migrate"))


@pytest.fixture(scope="module")
def schema_wait(render: Render) -> dict[str, Any]:
    init: dict[str, Any] = pod_spec(one(render(), "Deployment", "tollgate-gateway"))[
        "initContainers"
    ][0]
    return init


@pytest.fixture
def fresh_dsn(postgres: LocalPostgres) -> Iterator[str]:
    """An empty database of its own (the session's database is migrated already)."""
    name = f"chart_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres.dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def command_of(container: dict[str, Any]) -> list[str]:
    """The container's command, else the image's entrypoint (tollgate-gateway) + args, found
    in this environment as the image has them on its PATH."""
    program, *rest = container.get("command") or ["tollgate-gateway", *container["args"]]
    found = shutil.which(program, path=str(Path(sys.executable).parent))
    assert found, f"{program} is not installed in the environment"
    return [found, *rest]


def run(
    container: dict[str, Any], dsn: str, wait: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a container's command as the image would: command, else the entrypoint + args."""
    argv = command_of(container)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "TOLLGATE"))}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    env["POSTGRES_DSN"] = dsn
    if wait is not None:
        env["WAIT_SECONDS"] = wait
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def test_wait_for_database_passes_once_postgres_answers(
    job: dict[str, Any], fresh_dsn: str
) -> None:
    (wait,) = job["initContainers"]
    result = run(wait, fresh_dsn, wait="30")
    assert result.returncode == 0, result.stderr
    assert "database accepts connections" in result.stderr


def test_wait_for_database_fails_loudly_when_postgres_never_answers(job: dict[str, Any]) -> None:
    (wait,) = job["initContainers"]
    result = run(wait, f"postgresql://tollgate@127.0.0.1:{free_port()}/tollgate", wait="3")
    assert result.returncode == 1
    assert "database not reachable after 3s" in result.stderr


def test_migrate_brings_an_empty_database_to_head(job: dict[str, Any], fresh_dsn: str) -> None:
    (migrate,) = job["containers"]
    result = run(migrate, fresh_dsn)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(fresh_dsn) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row is not None and row[0] == head_revision()
    again = run(migrate, fresh_dsn)  # idempotent: an upgrade with nothing to do
    assert again.returncode == 0, again.stderr


def test_migrate_exits_non_zero_when_it_cannot_migrate(job: dict[str, Any]) -> None:
    (migrate,) = job["containers"]
    result = run(migrate, f"postgresql://tollgate@127.0.0.1:{free_port()}/tollgate")
    assert result.returncode != 0
    assert "Traceback" in result.stderr or "error" in result.stderr.lower()


def test_pods_wait_for_the_migration_then_start(
    job: dict[str, Any], schema_wait: dict[str, Any], fresh_dsn: str
) -> None:
    """The gateway's init container holds the pod until the Job has migrated."""
    too_early = run(schema_wait, fresh_dsn, wait="3")
    assert too_early.returncode == 1
    assert "schema not ready after 3s" in too_early.stderr
    assert "database schema is at nothing" in too_early.stderr

    env = {**os.environ, "POSTGRES_DSN": fresh_dsn, "WAIT_SECONDS": "120"}
    waiting = subprocess.Popen(
        command_of(schema_wait),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        (migrate,) = job["containers"]
        assert run(migrate, fresh_dsn).returncode == 0
        _, stderr = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, stderr
    assert "database schema is at head" in stderr

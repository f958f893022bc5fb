"""Pytest fixture for a real trace backend: Jaeger receiving OTLP (never a mock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tollgate_dev.plugins.services import serve
from tollgate_dev.servers.jaeger import JaegerServer


@pytest.fixture(scope="session")
def jaeger(service_dir: Path) -> Iterator[JaegerServer]:
    yield from serve("Jaeger", JaegerServer(service_dir / "jaeger"))

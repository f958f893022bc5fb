"""Pytest fixture for a real trace backend: Jaeger receiving OTLP (never a mock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tollgate_dev.jaeger import JaegerServer
from tollgate_dev.pytest_services import _serve


@pytest.fixture(scope="session")
def jaeger(service_dir: Path) -> Iterator[JaegerServer]:
    yield from _serve("Jaeger", JaegerServer(service_dir / "jaeger"))

"""Pytest fixtures for the real Ollama (built from source), its tiny model and a local registry.

The binaries come from ``hack/build-ollama.sh`` (``make test`` runs it first). A
binary that is missing, or a server that cannot start, fails the test: nothing is
skipped. Every Ollama runs with ``OLLAMA_NO_CLOUD=1``, a private ``HOME`` and models
folder, and only names that carry a local registry's address are ever pulled.

* ``real_ollama``: one Ollama on loopback with the tiny model created as ``tiny``
  (session);
* ``ollama_registry``: a local registry holding ``HOST:PORT/library/tiny:latest``
  (session); ``registry_tiny`` is that name, ready for ``/api/pull`` with
  ``"insecure": true``;
* ``real_ollama_pods``: starts empty Ollamas on given addresses, such as a Pod's
  loopback IP and port 11434 (per test).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from tollgate_dev.proc import ServiceError
from tollgate_dev.servers.realollama import (
    TINY_MODEL,
    LocalRegistry,
    RealOllama,
    RealOllamaMissingError,
    publish_tiny,
    require_binaries,
)

OLLAMA_PORT = 11434
"""Ollama's default port, which a pool Pod listens on."""


_STARTUP_ERRORS = (
    ServiceError,
    OSError,
    RealOllamaMissingError,
    ImportError,  # gguf, which writes the tiny model
    subprocess.CalledProcessError,  # `ollama create`
    subprocess.TimeoutExpired,
)


def _fail(what: str, exc: BaseException, log: str = "") -> NoReturn:
    stderr = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else None
    detail = "".join(f"\n{part}" for part in (stderr, log) if part)
    pytest.fail(f"{what}: {exc}{detail}", pytrace=False)


@pytest.fixture(scope="session")
def ollama_binaries() -> tuple[Path, Path]:
    """``(ollama, registry)``: the pinned binaries, failing when they are not built."""
    try:
        return require_binaries()
    except RealOllamaMissingError as exc:
        _fail("the real Ollama is not built", exc)


@pytest.fixture(scope="session")
def real_ollama(ollama_binaries: tuple[Path, Path], service_dir: Path) -> Iterator[RealOllama]:
    """A real Ollama on 127.0.0.1 (free port) with the tiny model created as ``tiny``."""
    server = RealOllama(root=service_dir / "real-ollama", binary=ollama_binaries[0])
    try:
        server.start()
        server.create_tiny(TINY_MODEL)
    except _STARTUP_ERRORS as exc:
        log = server.log_tail()
        server.stop()
        _fail("the real Ollama with the tiny model could not start", exc, log)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ollama_registry(
    ollama_binaries: tuple[Path, Path], service_dir: Path
) -> Iterator[LocalRegistry]:
    """A local registry with the tiny model published as ``library/tiny:latest``.

    Its name there is ``ollama_registry.model_name()`` (``127.0.0.1:PORT/library/tiny:latest``);
    plain HTTP, so pulls need ``"insecure": true``.
    """
    registry = LocalRegistry(root=service_dir / "ollama-registry", binary=ollama_binaries[1])
    try:
        registry.start()
        publish_tiny(registry)
    except _STARTUP_ERRORS as exc:
        registry.stop()
        _fail("the local registry with the tiny model could not start", exc)
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def registry_tiny(ollama_registry: LocalRegistry) -> str:
    """``127.0.0.1:PORT/library/tiny:latest``: the tiny model's name in the local registry."""
    return ollama_registry.model_name(TINY_MODEL)


@dataclass
class RealOllamaPods:
    """Starts real Ollamas with empty models folders, each on its own address; stops them all.

    ``start("127.10.0.5")`` is what a pool Pod runs: Ollama listening on the Pod's
    IP (a loopback address here) and port 11434.
    """

    root: Path
    binary: Path
    started: list[RealOllama] = field(default_factory=list)

    def start(
        self, host: str, port: int = OLLAMA_PORT, env: Mapping[str, str] | None = None
    ) -> RealOllama:
        folder = self.root / f"{host}-{port}-{len(self.started)}"
        server = RealOllama(host=host, port=port, root=folder, env=dict(env or {}))
        server.binary = self.binary
        self.started.append(server)
        try:
            server.start()
        except _STARTUP_ERRORS as exc:
            _fail(f"a real Ollama could not start on {host}:{port}", exc, server.log_tail())
        return server

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop()
        self.started.clear()


@pytest.fixture
def real_ollama_pods(
    ollama_binaries: tuple[Path, Path], tmp_path: Path
) -> Iterator[RealOllamaPods]:
    """``real_ollama_pods.start(host, port=11434, env=None) -> RealOllama``; stopped after."""
    pods = RealOllamaPods(root=tmp_path / "ollama-pods", binary=ollama_binaries[0])
    yield pods
    pods.stop_all()

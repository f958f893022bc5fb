"""ollama/bootstrap.sh against the Ollama stand-in: it pulls through /api/pull what is missing,
skips what is there, fails loudly on what cannot be pulled, and in serve mode starts the server,
pulls, marks itself ready and passes SIGTERM on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tollgate_dev.proc import free_port
from tollgate_dev.servers.programs import StandinProcess

SCRIPT = Path(__file__).resolve().parents[2] / "ollama" / "bootstrap.sh"


@pytest.fixture
def ollama(tmp_path: Path) -> Iterator[StandinProcess]:
    proc = StandinProcess(models="llama3:8b", log_path=tmp_path / "standin.log")
    proc.start()
    yield proc
    proc.stop()


def bootstrap(
    *args: str, host: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "OLLAMA_HOST": host, "OLLAMA_PULL_RETRIES": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tags(url: str) -> set[str]:
    return {m["name"] for m in httpx.get(url + "/api/tags", timeout=5).json()["models"]}


def pulls(url: str) -> list[str]:
    requests = httpx.get(url + "/_standin/requests?path=/api/pull", timeout=5).json()["requests"]
    return [str(r["path"]) for r in requests]


def test_pulls_what_is_missing_and_skips_what_is_there(ollama: StandinProcess) -> None:
    host = ollama.url.removeprefix("http://")
    result = bootstrap("pull", host=host, OLLAMA_PULL_MODELS=" qwen2.5:0.5b, llama3:8b ,,gemma3:1b")
    assert result.returncode == 0, result.stderr
    assert {"qwen2.5:0.5b", "gemma3:1b", "llama3:8b"} <= tags(ollama.url)
    assert "llama3:8b: already present" in result.stderr
    assert "qwen2.5:0.5b: success" in result.stderr
    assert len(pulls(ollama.url)) == 2  # llama3:8b was not pulled again
    again = bootstrap("pull", host=host, OLLAMA_PULL_MODELS="qwen2.5:0.5b")
    assert again.returncode == 0
    assert "qwen2.5:0.5b: already present" in again.stderr


def test_a_model_that_cannot_be_pulled_fails_the_bootstrap(ollama: StandinProcess) -> None:
    host = ollama.url.removeprefix("http://")
    result = bootstrap("pull", host=host, OLLAMA_PULL_MODELS="no-such-model:7b,gemma3:1b")
    assert result.returncode == 1
    assert "no-such-model:7b: pull failed: pull model manifest: file does not exist" in (
        result.stderr
    )
    assert "gemma3:1b" in tags(ollama.url)  # the others are still pulled
    bad = bootstrap("pull", host=host, OLLAMA_PULL_MODELS='x";rm -rf /')
    assert bad.returncode == 1
    assert "is not a model name" in bad.stderr


def test_plain_http_registries_are_pulled_from_only_when_named(tmp_path: Path) -> None:
    proc = StandinProcess(
        models="llama3:8b", extra=["--registry", "*"], log_path=tmp_path / "standin.log"
    )
    proc.start()
    try:
        host = proc.url.removeprefix("http://")
        local = "127.0.0.1:5999/library/tiny:latest"
        refused = bootstrap("pull", host=host, OLLAMA_PULL_MODELS=local)
        assert refused.returncode == 1
        assert "server gave HTTP response to HTTPS client" in refused.stderr
        pulled = bootstrap(
            "pull",
            host=host,
            OLLAMA_PULL_MODELS=f"{local},gemma3:1b",
            OLLAMA_PULL_INSECURE_REGISTRIES="registry.test, 127.0.0.1:*",
        )
        assert pulled.returncode == 0, pulled.stderr
        assert {local, "gemma3:1b"} <= tags(proc.url)
        bodies = httpx.get(proc.url + "/_standin/requests?path=/api/pull", timeout=5).json()
        insecure = {r["body"]["model"]: r["body"]["insecure"] for r in bodies["requests"]}
        assert insecure == {local: True, "gemma3:1b": False}
    finally:
        proc.stop()


def test_no_ollama_is_an_error(tmp_path: Path) -> None:
    result = bootstrap(
        "pull",
        host=f"127.0.0.1:{free_port()}",
        OLLAMA_PULL_MODELS="llama3:8b",
        OLLAMA_STARTUP_SECONDS="2",
    )
    assert result.returncode == 1
    assert "did not answer" in result.stderr


def fake_ollama(tmp_path: Path) -> Path:
    """An `ollama` executable whose `serve` is the stand-in on OLLAMA_HOST's port."""
    shim = tmp_path / "ollama"
    shim.write_text(
        "#!/bin/sh\n"
        '[ "$1" = serve ] || exit 2\n'
        f"exec {sys.executable} -m tollgate_standin --host 127.0.0.1 "
        '--port "${OLLAMA_HOST##*:}" --models llama3:8b\n'
    )
    shim.chmod(0o755)
    return shim


def test_serve_mode_pulls_then_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)],
        env={
            **os.environ,
            "OLLAMA_HOST": f"0.0.0.0:{port}",
            "OLLAMA_BIN": str(fake_ollama(tmp_path)),
            "OLLAMA_PULL_MODELS": "qwen2.5:0.5b",
            "OLLAMA_READY_FILE": str(ready),
        },
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        assert "qwen2.5:0.5b" in tags(url)
        assert proc.poll() is None  # still serving
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "every model is present" in stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=2)


def test_serve_mode_stops_when_a_pull_fails(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_BIN": str(fake_ollama(tmp_path)),
            "OLLAMA_PULL_MODELS": "no-such-model:7b",
            "OLLAMA_PULL_RETRIES": "1",
            "OLLAMA_READY_FILE": str(tmp_path / "ready"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "stopping: a model could not be pulled" in result.stderr
    assert not (tmp_path / "ready").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=2)

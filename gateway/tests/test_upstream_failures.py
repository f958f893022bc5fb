"""Upstream (Ollama) failures as clients see them, injected into a dedicated stand-in."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tollgate_dev.plugins.services import Admin, Gateways
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

NewKey = Callable[..., dict[str, Any]]
ALIAS = "faulty"
# Ollama's own words when OLLAMA_MAX_QUEUE is full (two spaces included)
OLLAMA_BUSY = "server busy, please try again.  maximum pending requests exceeded"


@pytest.fixture(scope="module")
def faulty(service_dir: Path, admin: Admin) -> Iterator[StandinProcess]:
    proc = StandinProcess(
        log_path=service_dir / "faulty-standin.log",
        extra=["--tokens-per-second", "50", "--completion-tokens", "40"],
    )
    proc.start()
    admin.ensure_model(ALIAS, "llama3:8b", backend_url=proc.url)
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def clean_faults(faulty: StandinProcess) -> None:
    httpx.post(faulty.url + "/_standin/reset").raise_for_status()


def inject(standin: StandinProcess, **fault: Any) -> None:
    httpx.post(standin.url + "/_standin/faults", json=fault).raise_for_status()


def fail_next(standin: StandinProcess, status: int, message: str) -> None:
    inject(
        standin, kind="fail", status=status, path="/v1/chat/completions", body={"error": message}
    )


def chat(gateway: GatewayProcess, key: str, **kw: Any) -> Any:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "hi"}], **kw
    )


def test_queue_full_is_503_with_retry_after(
    gateway: GatewayProcess, faulty: StandinProcess, new_key: NewKey
) -> None:
    fail_next(faulty, 503, OLLAMA_BUSY)
    with pytest.raises(openai.InternalServerError) as err:
        chat(gateway, new_key()["key"])
    assert err.value.status_code == 503
    assert err.value.code == "upstream_overloaded"
    assert err.value.response.headers["retry-after"] == "1"


def test_openai_client_retries_a_busy_upstream_and_succeeds(
    gateway: GatewayProcess, faulty: StandinProcess, new_key: NewKey
) -> None:
    fail_next(faulty, 503, OLLAMA_BUSY)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=new_key()["key"], max_retries=2)
    result = client.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "hi"}]
    )
    assert result.choices[0].message.content


def test_upstream_500_is_502(
    gateway: GatewayProcess, faulty: StandinProcess, new_key: NewKey
) -> None:
    fail_next(faulty, 500, "llama runner process has terminated")
    with pytest.raises(openai.InternalServerError) as err:
        chat(gateway, new_key()["key"])
    assert err.value.status_code == 502
    assert "llama runner process has terminated" in err.value.message


def test_slow_upstream_is_504(gateways: Gateways, faulty: StandinProcess, new_key: NewKey) -> None:
    impatient = gateways.start(TOLLGATE_UPSTREAM_READ_TIMEOUT_SECONDS="1")
    inject(faulty, kind="delay", delay_ms=3000, path="/v1/chat/completions")
    with pytest.raises(openai.APIStatusError) as err:
        chat(impatient, new_key()["key"])
    assert err.value.status_code == 504
    assert err.value.code == "upstream_timeout"


def test_error_mid_stream_raises_in_the_client(
    gateway: GatewayProcess, faulty: StandinProcess, new_key: NewKey
) -> None:
    inject(faulty, kind="drop", after_chunks=3, path="/v1/chat/completions")
    received: list[Any] = []
    stream = chat(gateway, new_key()["key"], stream=True)
    with pytest.raises(openai.APIError) as err:
        received.extend(stream)
    assert len(received) >= 1
    assert "mid-stream" in err.value.message


def test_error_mid_stream_on_the_native_api(
    gateway: GatewayProcess, faulty: StandinProcess, new_key: NewKey
) -> None:
    inject(faulty, kind="drop", after_chunks=3, path="/api/chat")
    client = ollama.Client(
        host=gateway.url, headers={"Authorization": f"Bearer {new_key()['key']}"}
    )
    with pytest.raises(ollama.ResponseError) as err:
        for _ in client.chat(
            model=ALIAS, messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    assert "mid-stream" in err.value.error


def test_client_disconnect_cancels_the_upstream(
    gateway: GatewayProcess, faulty: StandinProcess, new_key: NewKey
) -> None:
    key = new_key()["key"]
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": ALIAS, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")
    deadline = time.monotonic() + 10
    while True:
        stats = httpx.get(faulty.url + "/_standin/stats").json()
        if stats["cancelled"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stats["cancelled"] == 1
    assert stats["in_flight"] == 0

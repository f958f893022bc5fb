"""Streams pass through Caddy unbuffered: a real Caddy in front of a real gateway, in front of a
slow Ollama stand-in (5 tokens a second).

Two proxy configurations are checked: the Caddyfile the chart's docs recommend
(`flush_interval -1`, no `encode` on the API paths) and the JSON the Caddy ingress controller
generates for the chart's Ingress (a bare `reverse_proxy`). For each, the first chunk must reach
the client while the upstream is still generating the answer: the stand-in reports the
generation in flight at that moment, and the end of the stream comes later. That is an
ordering, not a speed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.caddy import CaddyProcess, ingress_controller_config, streaming_caddyfile
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

SLOW_ALIAS = "slow-llama"
PROMPT = [{"role": "user", "content": "Count slowly."}]


@pytest.fixture(scope="module")
def slow_standin(service_dir: Path) -> Iterator[StandinProcess]:
    proc = StandinProcess(
        extra=["--tokens-per-second", "5"], log_path=service_dir / "slow-standin.log"
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def slow_alias(admin: Admin, slow_standin: StandinProcess) -> str:
    admin.ensure_model(SLOW_ALIAS, "llama3:8b", backend_url=slow_standin.url)
    return SLOW_ALIAS


@pytest.fixture(scope="module", params=["caddyfile", "ingress-controller"])
def caddy(
    request: pytest.FixtureRequest, gateway: GatewayProcess, service_dir: Path
) -> Iterator[CaddyProcess]:
    upstream = gateway.url.removeprefix("http://")
    state = service_dir / f"caddy-{request.param}"
    if request.param == "caddyfile":
        proc = CaddyProcess(state, caddyfile=streaming_caddyfile(upstream))
    else:
        proc = CaddyProcess(state, config=ingress_controller_config(upstream))
    proc.start()
    yield proc
    proc.stop()


def in_flight(standin: StandinProcess) -> int:
    stats: dict[str, Any] = httpx.get(standin.url + "/_standin/stats", timeout=5).json()
    return int(stats["in_flight"])


def wait_idle(standin: StandinProcess, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while in_flight(standin) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(standin) == 0, "the stand-in still generates: the control is not clean"


def test_openai_sse_chunks_arrive_while_the_upstream_still_generates(
    caddy: CaddyProcess,
    slow_standin: StandinProcess,
    slow_alias: str,
    new_key: Callable[..., dict[str, Any]],
) -> None:
    wait_idle(slow_standin)
    client = openai.OpenAI(base_url=caddy.url + "/v1", api_key=new_key()["key"], max_retries=0)
    first_at: float | None = None
    generating_at_first: int | None = None
    contents: list[str] = []
    stream = client.chat.completions.create(model=slow_alias, messages=PROMPT, stream=True)
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            contents.append(delta)
            if first_at is None:
                first_at = time.monotonic()
                generating_at_first = in_flight(slow_standin)
    ended_at = time.monotonic()
    assert first_at is not None and len(contents) > 2
    assert generating_at_first == 1, "the first chunk came only after the upstream had finished"
    assert first_at < ended_at
    wait_idle(slow_standin)


def test_ollama_ndjson_chunks_arrive_while_the_upstream_still_generates(
    caddy: CaddyProcess,
    slow_standin: StandinProcess,
    slow_alias: str,
    new_key: Callable[..., dict[str, Any]],
) -> None:
    wait_idle(slow_standin)
    headers = {"Authorization": f"Bearer {new_key()['key']}"}
    body = {"model": slow_alias, "messages": PROMPT, "stream": True}
    first_at: float | None = None
    generating_at_first: int | None = None
    lines = []
    with httpx.stream(
        "POST", caddy.url + "/api/chat", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line:
                continue
            message = json.loads(line)
            lines.append(message)
            if message.get("message", {}).get("content") and first_at is None:
                first_at = time.monotonic()
                generating_at_first = in_flight(slow_standin)
    ended_at = time.monotonic()
    assert lines[-1]["done"] is True
    assert first_at is not None and len(lines) > 2
    assert generating_at_first == 1, "the first line came only after the upstream had finished"
    assert first_at < ended_at
    wait_idle(slow_standin)


def test_streams_are_not_compressed(
    caddy: CaddyProcess, slow_alias: str, new_key: Callable[..., dict[str, Any]]
) -> None:
    """A client asking for gzip still gets the event stream as is, chunk by chunk."""
    headers = {"Authorization": f"Bearer {new_key()['key']}", "Accept-Encoding": "gzip, zstd"}
    body = {"model": slow_alias, "messages": PROMPT, "stream": True, "max_tokens": 3}
    with httpx.stream(
        "POST", caddy.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        assert "content-length" not in response.headers
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"

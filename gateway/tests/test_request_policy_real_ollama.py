"""The request policy against a real Ollama v0.24 (built from source, tiny model): the
gateway's ``keep_alive`` is the one Ollama keeps the model loaded for, whatever the client
asks. Ollama's own ``/api/ps`` expiry is the witness."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess
from tollgate_dev.servers.realollama import TINY_MODEL, RealOllama

ALIAS = "tiny-policy"
KEEP_SECONDS = 7 * 60  # neither Ollama's default (5m) nor what the clients below ask


@pytest.fixture(scope="module")
def policy_alias(admin: Admin, real_ollama: RealOllama, gateway: GatewayProcess) -> str:
    admin.ensure_model(
        ALIAS,
        f"{TINY_MODEL}:latest",
        backend_url=real_ollama.url,
        request_policy={"keep_alive": "7m", "max_output_tokens": 4},
    )
    key = admin.create_key()["key"]
    deadline = time.monotonic() + 10
    while httpx.get(f"{gateway.url}/v1/models/{ALIAS}", headers=auth(key)).status_code != 200:
        assert time.monotonic() < deadline, "the new alias never reached the gateway"
        time.sleep(0.1)
    return ALIAS


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def go_time(text: str) -> datetime:
    """An RFC 3339 time as Go writes it (nanoseconds, a zone offset) as a datetime."""
    match = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    assert match is not None, text
    base, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{base}.{micro}{'+00:00' if zone == 'Z' else zone}")


def expiry_seconds(real_ollama: RealOllama, asked_at: float) -> float:
    """How long after `asked_at` Ollama will keep the tiny model loaded (its /api/ps)."""
    loaded = httpx.get(real_ollama.url + "/api/ps", timeout=10).json()["models"]
    expiries = [m["expires_at"] for m in loaded if m["name"] == f"{TINY_MODEL}:latest"]
    assert expiries, loaded
    return go_time(expiries[0]).timestamp() - asked_at


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"prompt": "hello", "keep_alive": -1}),  # pinned for ever
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "keep_alive": "24h"}),
        ("/api/generate", {"prompt": "hello", "keep_alive": 0}),  # unloaded at once
    ],
)
def test_ollama_keeps_the_model_for_the_gateways_keep_alive(
    gateway: GatewayProcess,
    admin: Admin,
    real_ollama: RealOllama,
    policy_alias: str,
    path: str,
    body: dict[str, Any],
) -> None:
    key = admin.create_key()["key"]
    asked_at = datetime.now(UTC).timestamp()
    request = {"model": policy_alias, "stream": False, "options": {"temperature": 0}, **body}
    r = httpx.post(gateway.url + path, json=request, headers=auth(key), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["eval_count"] <= 4  # the output cap reached Ollama as num_predict
    left = expiry_seconds(real_ollama, asked_at)
    # the request itself took well under a minute: Ollama counts 7 minutes from its end
    assert KEEP_SECONDS - 60 < left <= KEEP_SECONDS + 60, left

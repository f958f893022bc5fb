"""What one request may cost, per alias (``request_policy``), through a real gateway to the
Ollama stand-in: what the stand-in received is the witness of every clamp, and a request
over a limit in mode ``reject`` is answered 400 in its API's own error shape and never
reaches the stand-in. The policy also bounds what admission reserves for a key's token
limit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

CLAMP, REJECT, FIXED = "policy-clamp", "policy-reject", "policy-fixed"
POLICY: dict[str, Any] = {
    "max_output_tokens": 64,
    "default_output_tokens": 16,
    "max_num_ctx": 2048,
    "keep_alive": "2m",
    "allowed_options": ["temperature", "top_p"],
}
HI = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def policy_standin(service_dir: Path) -> Iterator[StandinProcess]:
    """A stand-in of its own (what it received is only this module's), whose answers are
    long unless the request caps them."""
    proc = StandinProcess(
        log_path=service_dir / "policy-standin.log",
        extra=["--parallel", "16", "--completion-tokens", "500"],
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def aliases(admin: Admin, policy_standin: StandinProcess, gateway: GatewayProcess) -> None:
    url = policy_standin.url
    for alias, policy in (
        (CLAMP, POLICY),
        (REJECT, {**POLICY, "mode": "reject"}),
        (FIXED, {"num_ctx": 6144, "keep_alive": "90", "max_output_tokens": 8}),
    ):
        admin.ensure_model(alias, "llama3:8b", backend_url=url, request_policy=policy)
    key = admin.create_key()["key"]
    for alias in (CLAMP, REJECT, FIXED):
        wait_alias(gateway, key, alias)


def wait_alias(gateway: GatewayProcess, key: str, alias: str) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"{gateway.url}/v1/models/{alias}", headers=auth(key)).status_code != 200:
        assert time.monotonic() < deadline, "the new alias never reached the gateway"
        time.sleep(0.1)


@pytest.fixture
def key(admin: Admin, aliases: None) -> str:
    created: str = admin.create_key()["key"]
    return created


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "x-api-key": key}


def received(standin: StandinProcess, path: str) -> dict[str, Any]:
    """The body of the last request the stand-in received on `path`."""
    seen = httpx.get(standin.url + "/_standin/requests", params={"path": path}).json()
    entries = [e for e in seen["requests"] if e["path"] == path]
    assert entries, f"the stand-in received nothing on {path}"
    body: dict[str, Any] = entries[-1]["body"]
    return body


def requests_seen(standin: StandinProcess) -> int:
    total: int = httpx.get(standin.url + "/_standin/stats").json()["requests_total"]
    return total


def post(gateway: GatewayProcess, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers=auth(key), timeout=30)


# -- clamp: what the stand-in received -----------------------------------------------------


CHAT, COMPLETIONS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"


@pytest.mark.parametrize(
    ("path", "body", "field", "sent", "clamped"),
    [
        (CHAT, {"messages": HI, "max_tokens": 5000}, "max_tokens", 64, "max_tokens"),
        (
            CHAT,
            {"messages": HI, "max_completion_tokens": 5000},
            "max_tokens",
            64,
            "max_completion_tokens",
        ),
        (CHAT, {"messages": HI, "max_tokens": 30}, "max_tokens", 30, None),
        (CHAT, {"messages": HI, "stream": True}, "max_tokens", 16, None),
        (COMPLETIONS, {"prompt": "hello", "max_tokens": 5000}, "max_tokens", 64, "max_tokens"),
        (COMPLETIONS, {"prompt": "hello"}, "max_tokens", 16, None),
        ("/v1/messages", {"messages": HI, "max_tokens": 5000}, "max_tokens", 64, "max_tokens"),
        (
            RESPONSES,
            {"input": "hello", "max_output_tokens": 5000, "stream": True},
            "max_output_tokens",
            64,
            "max_output_tokens",
        ),
        (RESPONSES, {"input": "hello", "store": False}, "max_output_tokens", 16, None),
    ],
)
def test_the_output_cap_and_default_reach_the_model_server(
    gateway: GatewayProcess,
    key: str,
    policy_standin: StandinProcess,
    path: str,
    body: dict[str, Any],
    field: str,
    sent: int,
    clamped: str | None,
) -> None:
    r = post(gateway, key, path, {"model": CLAMP, **body})
    assert r.status_code == 200, r.text
    upstream = received(policy_standin, path)
    assert upstream[field] == sent, upstream
    assert "max_completion_tokens" not in upstream
    assert r.headers.get("x-tollgate-clamped") == clamped


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"messages": HI, "stream": False}),
        ("/api/generate", {"prompt": "hello", "stream": True}),
    ],
)
def test_native_options_and_keep_alive_are_clamped(
    gateway: GatewayProcess,
    key: str,
    policy_standin: StandinProcess,
    path: str,
    body: dict[str, Any],
) -> None:
    asked = {
        "num_predict": 5000,
        "num_ctx": 131072,
        "num_gpu": 99,  # not in the allow-list: dropped
        "temperature": 0.1,
    }
    r = post(gateway, key, path, {"model": CLAMP, **body, "options": asked, "keep_alive": -1})
    assert r.status_code == 200, r.text
    upstream = received(policy_standin, path)
    assert upstream["options"] == {"num_predict": 64, "num_ctx": 2048, "temperature": 0.1}
    assert upstream["keep_alive"] == "2m"
    told = "options.num_predict,options.num_ctx,keep_alive,options.num_gpu"
    assert r.headers["x-tollgate-clamped"] == told
    # no options, no keep_alive: the default output bound and the gateway's keep_alive
    r = post(gateway, key, path, {"model": CLAMP, **body})
    assert r.status_code == 200, r.text
    upstream = received(policy_standin, path)
    assert upstream["options"] == {"num_predict": 16}
    assert upstream["keep_alive"] == "2m"
    assert "x-tollgate-clamped" not in r.headers  # defaults are not clamps


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/embed", {"input": "hello"}), ("/api/embeddings", {"prompt": "hello"})],
)
def test_embeddings_get_the_num_ctx_cap_and_keep_alive(
    gateway: GatewayProcess,
    key: str,
    policy_standin: StandinProcess,
    path: str,
    body: dict[str, Any],
) -> None:
    request = {"model": CLAMP, **body, "options": {"num_ctx": 65536}, "keep_alive": "24h"}
    r = post(gateway, key, path, request)
    assert r.status_code == 200, r.text
    upstream = received(policy_standin, path)
    assert upstream["options"] == {"num_ctx": 2048}
    assert upstream["keep_alive"] == "2m"


def test_a_fixed_num_ctx_and_keep_alive_replace_the_clients(
    gateway: GatewayProcess, key: str, policy_standin: StandinProcess
) -> None:
    body = {
        "model": FIXED,
        "messages": HI,
        "stream": False,
        "options": {"num_ctx": 512, "num_predict": 4},
        "keep_alive": 0,  # would unload the model for everyone
    }
    r = post(gateway, key, "/api/chat", body)
    assert r.status_code == 200, r.text
    upstream = received(policy_standin, "/api/chat")
    assert upstream["options"] == {"num_ctx": 6144, "num_predict": 4}
    assert upstream["keep_alive"] == 90  # whole seconds go as a number, as Ollama reads them
    # the stand-in loaded the model with the gateway's context and keep_alive
    loaded = httpx.get(policy_standin.url + "/api/ps").json()["models"]
    assert [m["context_length"] for m in loaded if m["name"] == "llama3:8b"] == [6144]


# -- reject: 400 in each API's shape, nothing upstream ------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": HI, "max_tokens": 65}, "max_tokens"),
        (
            "/v1/chat/completions",
            {"messages": HI, "max_completion_tokens": 100},
            "max_completion_tokens",
        ),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 1000}, "max_tokens"),
        ("/v1/responses", {"input": "hi", "max_output_tokens": 65}, "max_output_tokens"),
    ],
)
def test_reject_answers_openai_400_naming_the_field(
    gateway: GatewayProcess,
    key: str,
    policy_standin: StandinProcess,
    path: str,
    body: dict[str, Any],
    param: str,
) -> None:
    before = requests_seen(policy_standin)
    r = post(gateway, key, path, {"model": REJECT, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == "request_policy_violation"
    assert "at most 64" in error["message"]
    assert requests_seen(policy_standin) == before


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"num_predict": 65}, "'options.num_predict' is 65; this model allows at most 64"),
        ({"num_predict": -1}, "'options.num_predict' is -1"),
        ({"num_ctx": 4096}, "'options.num_ctx' is 4096; this model allows at most 2048"),
        ({"num_gpu": 1}, "The option 'num_gpu' is not allowed"),
    ],
)
def test_reject_answers_ollama_400(
    gateway: GatewayProcess,
    key: str,
    policy_standin: StandinProcess,
    options: dict[str, Any],
    words: str,
) -> None:
    before = requests_seen(policy_standin)
    body = {"model": REJECT, "messages": HI, "options": options}
    r = post(gateway, key, "/api/chat", body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}
    assert words in r.json()["error"]
    assert requests_seen(policy_standin) == before


def test_reject_answers_anthropic_400_on_messages(
    gateway: GatewayProcess, key: str, policy_standin: StandinProcess
) -> None:
    before = requests_seen(policy_standin)
    r = post(gateway, key, "/v1/messages", {"model": REJECT, "max_tokens": 4096, "messages": HI})
    assert r.status_code == 400, r.text
    data = r.json()
    assert data["type"] == "error"
    assert data["error"]["type"] == "invalid_request_error"
    assert "'max_tokens' is 4096; this model allows at most 64" in data["error"]["message"]
    assert requests_seen(policy_standin) == before


def test_reject_lets_requests_within_the_policy_through(
    gateway: GatewayProcess, key: str, policy_standin: StandinProcess
) -> None:
    body = {
        "model": REJECT,
        "messages": HI,
        "stream": False,
        "options": {"num_predict": 64, "num_ctx": 2048, "temperature": 0},
        "keep_alive": "-1",  # replaced in both modes: the keep_alive is the gateway's
    }
    r = post(gateway, key, "/api/chat", body)
    assert r.status_code == 200, r.text
    upstream = received(policy_standin, "/api/chat")
    assert upstream["options"] == {"num_predict": 64, "num_ctx": 2048, "temperature": 0}
    assert upstream["keep_alive"] == "2m"


def test_a_refusal_is_counted_with_its_class(
    gateway: GatewayProcess, key: str, aliases: None
) -> None:
    post(gateway, key, "/v1/chat/completions", {"model": REJECT, "messages": HI, "max_tokens": 99})
    metrics = httpx.get(gateway.metrics_url).text  # its own port, never the serving one
    assert any(
        line.startswith("tollgate_requests_total{")
        and f'alias="{REJECT}"' in line
        and 'error_class="request_policy_violation"' in line
        and 'status="400"' in line
        for line in metrics.splitlines()
    ), "no tollgate_requests_total sample for the refusal"


# -- the cap bounds what admission reserves -------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"max_tokens": 100_000}])
def test_the_cap_bounds_the_tokens_admission_reserves(
    gateway: GatewayProcess,
    admin: Admin,
    aliases: None,
    policy_standin: StandinProcess,
    body: dict[str, Any],
) -> None:
    """A key with 10,000 tokens a minute: a request without a bound would reserve the
    gateway's default (4,096) and one asking 100,000 everything left; with a cap of 64 on
    the alias, both reserve the prompt and at most 64."""
    key = admin.create_key(tpm_limit=10_000)["key"]
    r = post(gateway, key, "/v1/chat/completions", {"model": CLAMP, "messages": HI, **body})
    assert r.status_code == 200, r.text
    remaining = int(r.headers["x-ratelimit-remaining-tokens"])
    assert remaining >= 10_000 - 64 - 100, remaining  # a one-word prompt is far under 100
    assert received(policy_standin, "/v1/chat/completions")["max_tokens"] <= 64


# -- the admin API ----------------------------------------------------------------------------


def test_the_admin_api_sets_changes_and_removes_a_policy(
    gateway: GatewayProcess, admin: Admin, policy_standin: StandinProcess, aliases: None
) -> None:
    created = admin.http.post(
        "/admin/models",
        json={
            "alias": "policy-admin",
            "backend_tag": "llama3:8b",
            "backend_url": policy_standin.url,
            "request_policy": {"max_output_tokens": 40, "allowed_options": ["top_p", "seed"]},
        },
    )
    assert created.status_code == 201, created.text
    model = created.json()
    assert model["request_policy"] == {
        "max_output_tokens": 40,
        "allowed_options": ["seed", "top_p"],
        "mode": "clamp",
    }
    listed = [m for m in admin.http.get("/admin/models").json() if m["alias"] == "policy-admin"]
    assert listed[0]["request_policy"] == model["request_policy"]
    key = admin.create_key()["key"]
    wait_alias(gateway, key, "policy-admin")
    chat = {"model": "policy-admin", "messages": HI, "max_tokens": 500}

    def sent_max_tokens() -> int:
        assert post(gateway, key, "/v1/chat/completions", chat).status_code == 200
        value: int = received(policy_standin, "/v1/chat/completions")["max_tokens"]
        return value

    assert sent_max_tokens() == 40
    # a change reaches every gateway through the change feed
    changed = admin.http.patch(
        f"/admin/models/{model['id']}", json={"request_policy": {"max_output_tokens": 12}}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["request_policy"] == {"max_output_tokens": 12, "mode": "clamp"}
    deadline = time.monotonic() + 10
    while sent_max_tokens() != 12:
        assert time.monotonic() < deadline, "the changed policy never reached the gateway"
        time.sleep(0.1)
    removed = admin.http.patch(f"/admin/models/{model['id']}", json={"request_policy": None})
    assert removed.json()["request_policy"] is None
    deadline = time.monotonic() + 10
    while sent_max_tokens() != 500:
        assert time.monotonic() < deadline, "the removed policy still applied"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        ({"max_output_tokens": 10, "default_output_tokens": 20}, "must not exceed"),
        ({"num_ctx": 4096, "max_num_ctx": 8192}, "not both"),
        ({"keep_alive": "forever"}, "keep_alive"),
        ({"keep_alive": "5d"}, "keep_alive"),
        ({"allowed_options": ["Top P"]}, "allowed_options"),
        ({"mode": "sometimes"}, "mode"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_tokens": 10}, "max_tokens"),  # not a field of the policy
    ],
)
def test_the_admin_api_refuses_invalid_policies(
    admin: Admin, policy: dict[str, Any], words: str
) -> None:
    r = admin.http.post(
        "/admin/models",
        json={"alias": "policy-invalid", "backend_tag": "llama3:8b", "request_policy": policy},
    )
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"], r.text

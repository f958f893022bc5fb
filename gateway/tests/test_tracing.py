"""Traces through a real Jaeger (OTLP over HTTP, queried back from its API)."""

from __future__ import annotations

import asyncio
import json
import secrets
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from tollgate_dev.plugins.services import Admin, Gateways
from tollgate_dev.servers.jaeger import JaegerServer
from tollgate_dev.servers.programs import StandinProcess
from tollgate_gateway.routes import traced_json
from tollgate_gateway.tracing import RequestTrace, Tracing, now_ns


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def test_tracing_exports_request_spans_and_honours_traceparent(jaeger: JaegerServer) -> None:
    tracing = Tracing(jaeger.otlp_endpoint, 1.0, service_name="tollgate-unit")
    parent_trace = secrets.token_hex(16)
    parent_span = secrets.token_hex(8)
    headers = [(b"traceparent", f"00-{parent_trace}-{parent_span}-01".encode())]
    trace = tracing.start("POST", "/v1/chat/completions", headers, "req_1")
    assert trace is not None
    t0 = now_ns()
    trace.step("authenticate", t0, t0 + 1000, **{"tollgate.key.id": "k1"})
    carrier = trace.start_upstream("chat", "llama3:8b", "127.0.0.1:11434")
    assert carrier["traceparent"].split("-")[1] == parent_trace
    trace.first_token()
    trace.finish(200, None, {"gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 7})
    tracing.shutdown()  # flushes the batch

    found = jaeger.trace(parent_trace, min_spans=3)
    by_name = {s["operationName"]: s for s in found["spans"]}
    assert set(by_name) == {"POST /v1/chat/completions", "authenticate", "chat llama3:8b"}
    root = by_name["POST /v1/chat/completions"]
    assert root["references"][0]["spanID"] == parent_span
    upstream = by_name["chat llama3:8b"]
    assert tags(upstream)["gen_ai.usage.output_tokens"] == 7
    assert tags(upstream)["span.kind"] == "client"
    assert [log["fields"][0]["value"] for log in upstream["logs"]] == ["gen_ai.first_token"]


def test_a_stored_response_read_the_client_left_is_traced_as_a_disconnect(
    jaeger: JaegerServer,
) -> None:
    """A route outside the proxy whose client leaves mid-answer: 499 client_disconnected, as
    the proxy's own spans say it, not a 500 internal error."""
    tracing = Tracing(jaeger.otlp_endpoint, 1.0, service_name="tollgate-unit")
    trace_id = secrets.token_hex(16)
    services = SimpleNamespace(proxy=SimpleNamespace(tracing=tracing))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/responses/resp_1",
        "headers": [(b"traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01".encode())],
        "app": SimpleNamespace(state=SimpleNamespace(services=services)),
        "state": {"request_id": "req_left"},
    }

    async def answer(trace: RequestTrace | None) -> bytes:
        raise asyncio.CancelledError  # what the server raises in a handler whose client left

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(traced_json(Request(scope), "/v1/responses/{response_id}", answer))
    tracing.shutdown()

    (root,) = jaeger.trace(trace_id)["spans"]
    assert root["operationName"] == "GET /v1/responses/{response_id}"
    assert tags(root)["http.response.status_code"] == 499
    assert tags(root)["error.type"] == "client_disconnected"


def test_tracing_is_off_without_an_endpoint() -> None:
    tracing = Tracing(None, 1.0)
    assert not tracing.enabled
    assert tracing.start("POST", "/v1/chat/completions", [], "req_2") is None


def test_a_streamed_chat_through_the_gateway_is_one_trace(
    jaeger: JaegerServer, gateways: Gateways, admin: Admin, chat_model: str, standin: StandinProcess
) -> None:
    gateway = gateways.start(TOLLGATE_OTLP_ENDPOINT=jaeger.otlp_endpoint)
    key = admin.create_key(app="traced", rate_limit_rpm=100)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    prompt = "secret-prompt-" + secrets.token_hex(4)
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        headers={
            "Authorization": f"Bearer {key['key']}",
            "traceparent": f"00-{trace_id}-{parent}-01",
        },
        json={
            "model": chat_model,
            "stream": True,
            "messages": [{"role": "user", "content": prompt}],
        },
        timeout=30,
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert "[DONE]" in body

    found = jaeger.trace(trace_id, min_spans=4)
    by_name = {s["operationName"]: s for s in found["spans"]}
    assert {"POST /v1/chat/completions", "authenticate", "admission", "chat llama3:8b"} <= set(
        by_name
    )
    root = by_name["POST /v1/chat/completions"]
    assert root["references"][0]["spanID"] == parent  # the client's traceparent
    upstream = tags(by_name["chat llama3:8b"])
    assert upstream["gen_ai.operation.name"] == "chat"
    assert upstream["gen_ai.request.model"] == "llama3:8b"
    assert upstream["gen_ai.usage.output_tokens"] > 0
    assert upstream["gen_ai.usage.input_tokens"] > 0
    assert upstream["tollgate.alias"] == chat_model and upstream["tollgate.app"] == "traced"
    assert upstream["tollgate.key.id"] == key["id"]
    events = [log["fields"][0]["value"] for log in by_name["chat llama3:8b"]["logs"]]
    assert events == ["gen_ai.first_token"]
    assert tags(root)["http.response.status_code"] == 200
    dump = json.dumps(found)
    assert key["key"] not in dump and prompt not in dump  # no key, no prompt, in any span

    # Ollama got our trace context: the stand-in saw the same trace id
    seen = httpx.get(standin.url + "/_standin/requests", params={"path": "/v1/chat"}).json()
    parents = [r["headers"].get("traceparent", "") for r in seen["requests"]]
    assert any(p.split("-")[1:2] == [trace_id] for p in parents)


def test_a_refused_request_is_traced_too(
    jaeger: JaegerServer, gateways: Gateways, chat_model: str
) -> None:
    gateway = gateways.start(TOLLGATE_OTLP_ENDPOINT=jaeger.otlp_endpoint)
    trace_id = secrets.token_hex(16)
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={
            "Authorization": "Bearer tg-wrong",
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
        },
        json={"model": chat_model, "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 401
    (root,) = jaeger.trace(trace_id)["spans"]
    assert tags(root)["http.response.status_code"] == 401
    assert tags(root)["error.type"] == "invalid_api_key"


def test_the_responses_and_messages_apis_are_traced_like_chat(
    jaeger: JaegerServer, gateways: Gateways, admin: Admin, chat_model: str, standin: StandinProcess
) -> None:
    """Streamed `/v1/responses` and `/v1/messages`: one trace each, with the same spans as a
    chat completion, the first token, and the trace context passed to the model server.
    (They had none: only the OpenAI and Ollama proxy routes were traced.)"""
    gateway = gateways.start(TOLLGATE_OTLP_ENDPOINT=jaeger.otlp_endpoint)
    key = admin.create_key(app="traced-apis", rate_limit_rpm=100)
    hi = [{"role": "user", "content": "hi"}]
    for path, headers, body in [  # the model server has the same paths
        ("/v1/responses", {"Authorization": f"Bearer {key['key']}"}, {"input": "hi"}),
        ("/v1/messages", {"x-api-key": key["key"]}, {"max_tokens": 16, "messages": hi}),
    ]:
        trace_id = secrets.token_hex(16)
        with httpx.stream(
            "POST",
            gateway.url + path,
            headers={**headers, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
            json={**body, "model": chat_model, "stream": True},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            response.read()
        found = jaeger.trace(trace_id, min_spans=4)
        by_name = {s["operationName"]: s for s in found["spans"]}
        assert {f"POST {path}", "authenticate", "admission", "chat llama3:8b"} <= set(by_name)
        upstream = tags(by_name["chat llama3:8b"])
        assert upstream["gen_ai.usage.output_tokens"] > 0, path
        assert upstream["tollgate.app"] == "traced-apis"
        events = [log["fields"][0]["value"] for log in by_name["chat llama3:8b"]["logs"]]
        assert events == ["gen_ai.first_token"], path
        assert tags(by_name[f"POST {path}"])["http.response.status_code"] == 200
        seen = httpx.get(standin.url + "/_standin/requests", params={"path": path})
        parents = [r["headers"].get("traceparent", "") for r in seen.json()["requests"]]
        assert any(p.split("-")[1:2] == [trace_id] for p in parents), path


def test_stored_responses_and_token_counts_are_traced(
    jaeger: JaegerServer, gateways: Gateways, admin: Admin, chat_model: str
) -> None:
    """GET, input items and DELETE of a stored response and `/v1/messages/count_tokens`: a
    trace each, named by the route (not the response's id), with the key's authentication and
    the store's step; a refusal is told by its status. (They were not traced at all.)"""
    gateway = gateways.start(TOLLGATE_OTLP_ENDPOINT=jaeger.otlp_endpoint)
    key = admin.create_key(app="traced-store", rate_limit_rpm=100)
    auth = {"Authorization": f"Bearer {key['key']}"}
    created = httpx.post(
        gateway.url + "/v1/responses",
        headers=auth,
        json={"model": chat_model, "input": "hi", "max_output_tokens": 8},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    rid = created.json()["id"]
    hi = [{"role": "user", "content": "hi"}]

    def traced(method: str, path: str, headers: dict[str, str], **kw: Any) -> str:
        trace_id = secrets.token_hex(16)
        parent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        r = httpx.request(
            method, gateway.url + path, headers={**headers, "traceparent": parent}, **kw
        )
        assert r.status_code < 500, r.text
        return trace_id

    route = "/v1/responses/{response_id}"
    cases = [
        ("GET", f"/v1/responses/{rid}", auth, {}, route, 200, "response_store get"),
        (
            "GET",
            f"/v1/responses/{rid}/input_items",
            auth,
            {},
            route + "/input_items",
            200,
            "response_store get",
        ),
        ("DELETE", f"/v1/responses/{rid}", auth, {}, route, 200, "response_store delete"),
        ("GET", f"/v1/responses/{rid}", auth, {}, route, 404, "response_store get"),
        (
            "POST",
            "/v1/messages/count_tokens",
            {"x-api-key": key["key"]},
            {"json": {"model": chat_model, "messages": hi}},
            "/v1/messages/count_tokens",
            200,
            None,
        ),
    ]
    for method, path, headers, kw, name, status, store_step in cases:
        trace_id = traced(method, path, headers, **kw)
        spans = jaeger.trace(trace_id, min_spans=3 if store_step else 2)["spans"]
        by_name = {s["operationName"]: s for s in spans}
        root = tags(by_name[f"{method} {name}"])
        assert root["http.route"] == name and root["url.path"] == path, path
        assert root["http.response.status_code"] == status, path
        assert tags(by_name["authenticate"])["tollgate.key.id"] == key["id"], path
        if store_step is not None:
            assert store_step in by_name, path
        if status == 404:
            assert root["error.type"] == "not_found", path
        if path.endswith("count_tokens"):
            assert root["gen_ai.usage.input_tokens"] > 0
        assert key["key"] not in json.dumps(spans), path

    # a wrong key: the trace holds the refusal and no authentication step
    trace_id = traced("GET", f"/v1/responses/{rid}", {"Authorization": "Bearer tg-wrong"})
    (root,) = jaeger.trace(trace_id)["spans"]
    assert tags(root)["http.response.status_code"] == 401
    assert tags(root)["error.type"] == "invalid_api_key"

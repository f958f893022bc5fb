"""Traces through a real Jaeger (OTLP over HTTP, queried back from its API)."""

from __future__ import annotations

import secrets
from typing import Any

from tollgate_dev.jaeger import JaegerServer
from tollgate_gateway.tracing import Tracing, now_ns


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


def test_tracing_is_off_without_an_endpoint() -> None:
    tracing = Tracing(None, 1.0)
    assert not tracing.enabled
    assert tracing.start("POST", "/v1/chat/completions", [], "req_2") is None

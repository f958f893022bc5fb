"""The stand-in's ``/v1/responses`` and ``/v1/messages``, through the official clients and
next to the real Ollama v0.24 (shapes: keys and types, event sequences, error bodies)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tollgate_dev.servers.realollama import RealOllama
from tollgate_dev.testdata import ANTHROPIC_WEATHER, WEATHER
from tollgate_standin import StandinConfig, StandinServer, standin_in_thread


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinServer]:
    with standin_in_thread(StandinConfig(port=0)) as server:
        yield server


@pytest.fixture(scope="module")
def standin_024() -> Iterator[StandinServer]:
    config = StandinConfig(port=0, models=("tiny",), version="0.24.0", cpu=True)
    with standin_in_thread(config) as server:
        yield server


def test_responses_plain_stream_and_tool(standin: StandinServer) -> None:
    c = openai.OpenAI(base_url=standin.url + "/v1", api_key="x", max_retries=0)
    whole = c.responses.create(
        model="llama3:8b", input="Say hello", instructions="Be brief", max_output_tokens=4
    )
    assert re.fullmatch(r"resp_\d+", whole.id) and whole.model == "llama3:8b"
    assert whole.status == "completed" and whole.instructions == "Be brief"
    assert len(whole.output_text.split()) == 4
    assert whole.usage is not None and whole.usage.output_tokens == 4
    assert (
        whole.previous_response_id is None and whole.to_dict()["store"] is False
    )  # Ollama stores nothing
    events = list(c.responses.create(model="llama3:8b", input="Say hello", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == deltas
    called = c.responses.create(
        model="llama3:8b",
        input="get_weather city=Paris",
        tools=[WEATHER],  # type: ignore[list-item]
    )
    call = called.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_messages_plain_stream_tools_and_errors(standin: StandinServer) -> None:
    c = anthropic.Anthropic(base_url=standin.url, api_key="x", max_retries=0)
    msg = c.messages.create(
        model="llama3:8b",
        max_tokens=3,
        system="Be brief",
        messages=[{"role": "user", "content": "hi"}],
    )
    assert msg.id.startswith("msg_") and msg.model == "llama3:8b"
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3
    assert msg.content[0].type == "text" and len(msg.content[0].text.split()) == 3
    with c.messages.stream(
        model="llama3:8b", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    used = c.messages.create(
        model="llama3:8b",
        max_tokens=50,
        tools=[ANTHROPIC_WEATHER],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "get_weather city=Oslo"}],
    )
    assert used.stop_reason == "tool_use"
    block = used.content[0]
    assert block.type == "tool_use" and block.input == {"city": "Oslo"}
    turns: Any = [
        {"role": "user", "content": "get_weather city=Oslo"},
        {"role": "assistant", "content": [block.model_dump()]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sun"}],
        },
    ]
    answered = c.messages.create(
        model="llama3:8b",
        max_tokens=50,
        tools=[ANTHROPIC_WEATHER],  # type: ignore[list-item]
        messages=turns,
    )
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"
    with pytest.raises(anthropic.NotFoundError) as missing:
        c.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    bad = httpx.post(standin.url + "/v1/messages", json={"model": "llama3:8b", "messages": []})
    assert bad.status_code == 400
    assert bad.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens is required and must be positive",
    }


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    if isinstance(value, bool) or value is None:
        return repr(value)
    return type(value).__name__


def _events(base: str, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    with httpx.stream("POST", base + path, json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["cache-control"] == "no-cache"
        raw = r.read().decode()
    out = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        event, data = block.split("\n", 1)
        out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def _stream_outline(events: list[tuple[str, Any]]) -> list[Any]:
    """Event names, collapsing repeated deltas, with the shape of each distinct event."""
    outline: list[Any] = []
    for name, data in events:
        item = (name, _shape(data))
        if not outline or outline[-1] != item:
            outline.append(item)
    return outline


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/responses", {"model": "tiny", "input": "hi", "max_output_tokens": 3}),
    (
        "/v1/responses",
        {"model": "tiny", "input": [{"role": "user", "content": "hi"}], "instructions": "x"},
    ),
    (
        "/v1/messages",
        {"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
    ),
    (
        "/v1/messages",
        {
            "model": "tiny",
            "max_tokens": 3,
            "system": "x",
            "messages": [{"role": "user", "content": "hi"}],
        },
    ),
]


@pytest.mark.parametrize(("path", "body"), REQUESTS)
def test_same_shapes_as_real_ollama(
    real_ollama: RealOllama, standin_024: StandinServer, path: str, body: dict[str, Any]
) -> None:
    body = {**body, "temperature": 0}
    answers: list[Any] = []
    for base in (real_ollama.url, standin_024.url):
        r = httpx.post(base + path, json=body, timeout=60)
        assert r.status_code == 200, (base, r.text)
        assert r.headers["content-type"] == "application/json" and r.content.endswith(b"\n")
        data = r.json()
        answers.append((list(data), _shape(data)))
        streamed = _events(base, path, {**body, "stream": True})
        answers.append(_stream_outline(streamed))
    assert answers[:2] == answers[2:]


ERRORS: list[tuple[str, str]] = [
    ("/v1/messages", '{"model":"nope","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}'),
    ("/v1/messages", '{"model":"tiny","messages":[{"role":"user","content":"hi"}]}'),
    ("/v1/messages", '{"model":"tiny","max_tokens":3,"messages":[]}'),
    ("/v1/messages", '{"max_tokens":3}'),
    ("/v1/messages", "{not json"),
    ("/v1/responses", '{"model":"nope","input":"hi"}'),
    ("/v1/responses", '{"model":"tiny","input":[{"content":"hi"}]}'),
    ("/v1/responses", '{"model":"tiny","input":"hi","reasoning":{"effort":"huge"}}'),
]


@pytest.mark.parametrize(("path", "body"), ERRORS)
def test_same_errors_as_real_ollama(
    real_ollama: RealOllama, standin_024: StandinServer, path: str, body: str
) -> None:
    answers = []
    for base in (real_ollama.url, standin_024.url):
        r = httpx.post(base + path, content=body.encode(), timeout=60)
        data = r.json()
        if "request_id" in data:  # random per answer
            assert re.fullmatch(r"req_[0-9a-f]{24}", data.pop("request_id"))
        answers.append((r.status_code, r.headers["content-type"], r.content.endswith(b"\n"), data))
    assert answers[0] == answers[1]

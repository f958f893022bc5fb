"""The Responses API and the Anthropic Messages API through a real gateway, with the
official clients (``openai``, ``anthropic``, LangChain's ``ChatAnthropic``), against the
Ollama stand-in and a real Ollama v0.24 (``backend_alias``, as in test_real_ollama.py).

Assertions about the protocol hold on both backends; those about what the stand-in says
(a tool call for a prompt naming the tool) only where the alias is the stand-in's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message
from langchain_anthropic import ChatAnthropic
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response
from openai.types.shared import ErrorObject

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess
from tollgate_dev.servers.realollama import TINY_MODEL, TINY_TEMPLATE, RealOllama
from tollgate_dev.testdata import ANTHROPIC_WEATHER, WEATHER
from tollgate_standin import StandinConfig, standin_in_thread

from .conformance import assert_conforms

NewKey = Callable[..., dict[str, Any]]

REAL_ALIAS = "tiny-real"
REAL_TOOLS_ALIAS = "tiny-real-tools"
GREEDY: dict[str, Any] = {"temperature": 0}


@pytest.fixture(scope="module")
def real_alias(admin: Admin, real_ollama: RealOllama) -> str:
    admin.ensure_model(REAL_ALIAS, f"{TINY_MODEL}:latest", backend_url=real_ollama.url)
    return REAL_ALIAS


@pytest.fixture(scope="module")
def real_tools_alias(admin: Admin, real_ollama: RealOllama) -> str:
    """The tiny model again, with a template that takes tools (Ollama refuses tools to a
    model whose template has none)."""
    template = (
        "{{- if .Tools }}<|tools|>{{ range .Tools }}{{ .Function.Name }} {{ end }}\n{{ end }}"
    )
    created = httpx.post(
        real_ollama.url + "/api/create",
        json={
            "model": "tiny-tools",
            "from": TINY_MODEL,
            "template": template + TINY_TEMPLATE,
            "stream": False,
        },
        timeout=120,
    )
    assert created.status_code == 200, created.text
    admin.ensure_model(REAL_TOOLS_ALIAS, "tiny-tools:latest", backend_url=real_ollama.url)
    return REAL_TOOLS_ALIAS


@pytest.fixture(scope="module", params=["standin", "real"])
def tools_alias(request: pytest.FixtureRequest, chat_model: str) -> str:
    if request.param == "real":
        alias: str = request.getfixturevalue("real_tools_alias")
        return alias
    return chat_model


@pytest.fixture(scope="module", params=["standin", "real"])
def backend_alias(request: pytest.FixtureRequest, chat_model: str) -> str:
    if request.param == "real":
        alias: str = request.getfixturevalue("real_alias")
        return alias
    return chat_model


def oai(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def claude(gateway: GatewayProcess, key: str, **kw: Any) -> anthropic.Anthropic:
    if kw.pop("bearer", False):
        return anthropic.Anthropic(base_url=gateway.url, auth_token=key, max_retries=0, **kw)
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0, **kw)


# -- Responses ---------------------------------------------------------------------------


def test_responses_plain_and_streamed(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    c = oai(gateway, new_key()["key"])
    raw = c.responses.with_raw_response.create(
        model=backend_alias,
        input="Say hello",
        instructions="Be brief",
        max_output_tokens=5,
        **GREEDY,
    )
    first = assert_conforms(Response, raw.http_response.json())
    second = c.responses.create(model=backend_alias, input="Say hello", max_output_tokens=5)
    assert first.model == backend_alias and first.status == "completed"
    assert first.id.startswith("resp_") and first.id != second.id
    assert len(first.id) == len("resp_") + 32
    assert first.output_text and first.instructions == "Be brief"
    assert first.usage is not None and first.usage.input_tokens > 0
    assert 0 < first.usage.output_tokens <= 5
    assert first.to_dict()["store"] is True and first.previous_response_id is None

    events = list(
        c.responses.create(model=backend_alias, input="Say hello", max_output_tokens=5, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    created, completed = events[0], events[-1]
    assert created.type == "response.created" and completed.type == "response.completed"
    assert created.response.id == completed.response.id and created.response.id.startswith("resp_")
    assert {e.response.model for e in (created, completed)} == {backend_alias}
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert completed.response.output_text == text
    items = {e.item_id for e in events if e.type == "response.output_text.delta"}
    assert items == {completed.response.output[0].id}
    assert completed.response.usage is not None and completed.response.usage.output_tokens > 0
    assert_conforms(Response, completed.response.to_dict(mode="json"))
    # the streamed response was stored like the whole one
    assert c.responses.retrieve(completed.response.id).output_text == text


def test_responses_function_tool(
    gateway: GatewayProcess, new_key: NewKey, tools_alias: str, chat_model: str
) -> None:
    backend_alias = tools_alias
    c = oai(gateway, new_key()["key"])
    tools: Any = [WEATHER]
    result = c.responses.create(
        model=backend_alias, input="get_weather city=Paris", tools=tools, max_output_tokens=8
    )
    assert result.status == "completed" and result.output
    assert result.tools[0].type == "function"
    streamed = list(
        c.responses.create(
            model=backend_alias,
            input="get_weather city=Paris",
            tools=tools,
            max_output_tokens=8,
            stream=True,
        )
    )
    assert streamed[-1].type == "response.completed"
    if backend_alias != chat_model:
        return  # a random-weight model calls tools when it happens to
    call = result.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and str(call.id).startswith("fc_")
    answered = c.responses.create(
        model=backend_alias,
        previous_response_id=result.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=tools,
    )
    assert answered.output[0].type == "message" and answered.output_text
    kinds = [e.type for e in streamed]
    assert "response.function_call_arguments.done" in kinds


def test_responses_chain_retrieve_delete(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    c = oai(gateway, new_key()["key"])
    first = c.responses.create(model=backend_alias, input="My name is Ada.", max_output_tokens=4)
    follow = c.responses.create(
        model=backend_alias,
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=4,
    )
    fresh = c.responses.create(model=backend_alias, input="What is my name?", max_output_tokens=4)
    assert follow.previous_response_id == first.id
    assert follow.usage is not None and fresh.usage is not None
    # the first turn and its answer went to the model too
    assert follow.usage.input_tokens > fresh.usage.input_tokens
    third = c.responses.create(
        model=backend_alias, input="Again?", previous_response_id=follow.id, max_output_tokens=4
    )
    assert third.usage is not None and third.usage.input_tokens > follow.usage.input_tokens
    items = c.responses.input_items.list(third.id)
    texts = [item.to_dict() for item in items.data]
    assert len(texts) == 5  # three user turns and two answers, newest first
    got = c.responses.retrieve(follow.id)
    assert got.id == follow.id and got.output_text == follow.output_text
    assert got.previous_response_id == first.id
    c.responses.delete(follow.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(follow.id)
    with pytest.raises(openai.NotFoundError) as gone:
        c.responses.create(model=backend_alias, input="x", previous_response_id=follow.id)
    assert gone.value.body["param"] == "previous_response_id"  # type: ignore[index]
    unstored = c.responses.create(model=backend_alias, input="hi", store=False, max_output_tokens=2)
    assert unstored.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(unstored.id)


def test_responses_of_another_key_are_not_found(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    mine, theirs = oai(gateway, new_key()["key"]), oai(gateway, new_key()["key"])
    kept = mine.responses.create(model=chat_model, input="secret", max_output_tokens=3)
    for attempt in (
        lambda: theirs.responses.retrieve(kept.id),
        lambda: theirs.responses.delete(kept.id),
        lambda: theirs.responses.create(model=chat_model, input="x", previous_response_id=kept.id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            attempt()
        body = err.value.response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert kept.id in body["error"]["message"]
    assert mine.responses.retrieve(kept.id).id == kept.id  # still there for its key


# -- Messages ----------------------------------------------------------------------------


def test_messages_plain_and_bearer(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    key = new_key()["key"]
    raw = claude(gateway, key).messages.with_raw_response.create(
        model=backend_alias,
        max_tokens=5,
        system="Be brief",
        messages=[{"role": "user", "content": "Say hello"}],
    )
    message = assert_conforms(Message, raw.http_response.json())
    assert message.model == backend_alias and message.role == "assistant"
    assert message.id.startswith("msg_") and len(message.id) == len("msg_") + 32
    assert message.stop_reason in {"end_turn", "max_tokens"}
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 5
    assert message.content and message.content[0].type == "text" and message.content[0].text
    assert raw.http_response.headers["x-request-id"]
    bearer = claude(gateway, key, bearer=True).messages.create(
        model=backend_alias, max_tokens=3, messages=[{"role": "user", "content": "hi"}]
    )
    assert bearer.model == backend_alias and bearer.id != message.id
    versioned = httpx.post(  # as Claude Code sends it
        gateway.url + "/v1/messages?beta=true",
        headers={
            "x-api-key": key,
            "anthropic-version": "2099-01-01",
            "anthropic-beta": "claude-code-20250219",
        },
        json={
            "model": backend_alias,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "a"}],
        },
        timeout=60,
    )
    assert versioned.status_code == 200, versioned.text


def test_messages_stream(gateway: GatewayProcess, new_key: NewKey, backend_alias: str) -> None:
    c = claude(gateway, new_key()["key"])
    with c.messages.stream(
        model=backend_alias, max_tokens=6, messages=[{"role": "user", "content": "Say hello"}]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    start = events[0]
    assert start.type == "message_start" and start.message.model == backend_alias
    assert final.id == start.message.id and final.id.startswith("msg_")
    assert final.content[0].type == "text" and final.content[0].text
    assert final.stop_reason in {"end_turn", "max_tokens"}
    assert 0 < final.usage.output_tokens <= 6


def test_messages_tools(
    gateway: GatewayProcess, new_key: NewKey, tools_alias: str, chat_model: str
) -> None:
    backend_alias = tools_alias
    c = claude(gateway, new_key()["key"])
    tools: Any = [ANTHROPIC_WEATHER]
    used = c.messages.create(
        model=backend_alias,
        max_tokens=20,
        tools=tools,
        messages=[{"role": "user", "content": "get_weather city=Oslo"}],
    )
    assert used.model == backend_alias and used.content
    with c.messages.stream(
        model=backend_alias,
        max_tokens=20,
        tools=tools,
        messages=[{"role": "user", "content": "get_weather city=Oslo"}],
    ) as stream:
        streamed = stream.get_final_message()
    if backend_alias != chat_model:
        return
    assert used.stop_reason == "tool_use"
    block = used.content[0]
    assert block.type == "tool_use" and block.input == {"city": "Oslo"}
    assert streamed.content[0].type == "tool_use" and streamed.content[0].input == {"city": "Oslo"}
    turns: Any = [
        {"role": "user", "content": "get_weather city=Oslo"},
        {"role": "assistant", "content": [block.model_dump()]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sun"}],
        },
    ]
    answered = c.messages.create(model=backend_alias, max_tokens=20, tools=tools, messages=turns)
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"


def test_langchain_chat_anthropic(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    llm = ChatAnthropic(
        model=backend_alias,
        base_url=gateway.url,
        api_key=new_key()["key"],
        max_tokens=6,
        max_retries=0,
        temperature=0,
    )
    answer = llm.invoke("Say hello")
    assert isinstance(answer.content, str | list) and answer.content
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("Say hello"))
    assert "".join(str(ch.content) for ch in chunks if isinstance(ch.content, str))


def test_count_tokens(gateway: GatewayProcess, new_key: NewKey, chat_model: str) -> None:
    c = claude(gateway, new_key()["key"])
    short = c.messages.count_tokens(model=chat_model, messages=[{"role": "user", "content": "hi"}])
    long = c.messages.count_tokens(
        model=chat_model, system="x" * 400, messages=[{"role": "user", "content": "hi"}]
    )
    assert short.input_tokens >= 1 and long.input_tokens == short.input_tokens + 100
    with pytest.raises(anthropic.NotFoundError):
        c.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "hi"}])


# -- bad input, limits, usage ------------------------------------------------------------


def _wait_revoked(gateway: GatewayProcess, key: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        if r.status_code == 401:
            return
        time.sleep(0.1)
    pytest.fail("revoked key still accepted")


def _is_anthropic_error(r: httpx.Response, status: int, kind: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and set(body) <= {"type", "error", "request_id"}
    assert body["error"]["type"] == kind and body["error"]["message"]
    assert "Traceback" not in r.text


def _is_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_bad_input_on_both_paths(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey, chat_model: str
) -> None:
    good = new_key(allowed_models="gpt-*")["key"]
    revoked = new_key()
    admin.http.delete(f"/admin/keys/{revoked['id']}").raise_for_status()
    _wait_revoked(gateway, revoked["key"])
    message = {
        "model": chat_model,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = {"model": chat_model, "input": "hi"}
    post = httpx.Client(base_url=gateway.url, timeout=60).post
    anth = "/v1/messages"
    for headers in ({}, {"x-api-key": "tg-wrong"}, {"x-api-key": revoked["key"]}):
        _is_anthropic_error(post(anth, json=message, headers=headers), 401, "authentication_error")
    for headers in (
        {},
        {"Authorization": "Bearer tg-wrong"},
        {"Authorization": f"Bearer {revoked['key']}"},
    ):
        assert (
            _is_openai_error(post("/v1/responses", json=response, headers=headers), 401)["code"]
            == "invalid_api_key"
        )
    key = {"x-api-key": good}
    bearer = {"Authorization": f"Bearer {good}"}
    other_model = {**message, "model": "test-embedding-small"}
    _is_anthropic_error(post(anth, json=other_model, headers=key), 404, "not_found_error")
    error = _is_openai_error(
        post("/v1/responses", json={**response, "model": "test-embedding-small"}, headers=bearer),
        404,
    )
    assert error["code"] == "model_not_found"
    for raw in (b"{not json", b"", b"[1]"):
        _is_anthropic_error(post(anth, content=raw, headers=key), 400, "invalid_request_error")
        _is_openai_error(post("/v1/responses", content=raw, headers=bearer), 400)
    bad_messages: list[dict[str, Any]] = [
        {"max_tokens": 0},
        {"messages": []},
        {"max_tokens": None},
        {"system": 5},
    ]
    for bad in bad_messages:
        body = {k: v for k, v in {**message, **bad}.items() if v is not None}
        _is_anthropic_error(post(anth, json=body, headers=key), 400, "invalid_request_error")
    bad_responses: list[dict[str, Any]] = [
        {"input": 5},
        {"max_output_tokens": "x"},
        {"store": "yes"},
        {"input": None},
    ]
    for bad in bad_responses:
        body = {k: v for k, v in {**response, **bad}.items() if v is not None}
        _is_openai_error(post("/v1/responses", json=body, headers=bearer), 400)
    huge = b'{"model":"gpt-4","padding":"' + b"x" * (9 * 1024 * 1024) + b'"}'
    _is_anthropic_error(post(anth, content=huge, headers=key), 413, "request_too_large")
    _is_openai_error(post("/v1/responses", content=huge, headers=bearer), 413)
    chunks = [huge[i : i + 65536] for i in range(0, len(huge), 65536)]  # no content-length
    _is_anthropic_error(post(anth, content=iter(chunks), headers=key), 413, "request_too_large")
    _is_openai_error(post("/v1/responses", content=iter(chunks), headers=bearer), 413)
    _is_openai_error(
        post("/v1/responses", json={**response, "previous_response_id": "resp_x"}, headers=bearer),
        404,
    )
    _is_anthropic_error(post(anth + "/nothing", json=message, headers=key), 404, "not_found_error")


def test_rpm_limit_on_messages(gateway: GatewayProcess, new_key: NewKey, chat_model: str) -> None:
    c = claude(gateway, new_key(rate_limit_rpm=2)["key"])
    for _ in range(2):
        c.messages.create(
            model=chat_model, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(anthropic.RateLimitError) as limited:
        c.messages.create(
            model=chat_model, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
    r = limited.value.response
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"


def test_usage_rows_for_messages_and_responses(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str, migrated_dsn: str
) -> None:
    from .test_admin_usage import wait_for_rows

    key = new_key(app="agents")
    msg = claude(gateway, key["key"]).messages.create(
        model=chat_model, max_tokens=4, messages=[{"role": "user", "content": "hi there"}]
    )
    with claude(gateway, key["key"]).messages.stream(
        model=chat_model, max_tokens=3, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        streamed = stream.get_final_message()
    resp = oai(gateway, key["key"]).responses.create(
        model=chat_model, input="hello", max_output_tokens=4
    )
    events = list(
        oai(gateway, key["key"]).responses.create(
            model=chat_model, input="hello", max_output_tokens=2, stream=True
        )
    )
    done = events[-1]
    assert done.type == "response.completed" and done.response.usage is not None
    rows = wait_for_rows(
        migrated_dsn,
        "SELECT endpoint, status, prompt_tokens, completion_tokens, streamed, ttft_ms, app, alias "
        "FROM usage_events WHERE key_id = %s ORDER BY ts",
        (key["id"],),
        4,
    )
    assert resp.usage is not None
    expected = [
        ("messages", 200, msg.usage.input_tokens, msg.usage.output_tokens, False),
        ("messages", 200, streamed.usage.input_tokens, streamed.usage.output_tokens, True),
        ("responses", 200, resp.usage.input_tokens, resp.usage.output_tokens, False),
        (
            "responses",
            200,
            done.response.usage.input_tokens,
            done.response.usage.output_tokens,
            True,
        ),
    ]
    assert [r[:5] for r in rows] == expected
    assert [r[5] is not None for r in rows] == [False, True, False, True]  # TTFT of streams
    assert {(r[6], r[7]) for r in rows} == {("agents", chat_model)}


# -- OpenAI conformance of what was already served ----------------------------------------


def test_openai_bodies_conform_to_the_sdk_types(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    """Every body of /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models and
    the errors, validated strictly against the openai SDK's types (see conformance.py):
    choices carry ``logprobs`` and chat messages ``refusal``, null, as the spec requires."""
    c = oai(gateway, new_key()["key"])
    messages: Any = [{"role": "user", "content": "Say hello"}]
    chat = c.chat.completions.with_raw_response.create(
        model=backend_alias, messages=messages, max_tokens=4
    )
    whole = assert_conforms(ChatCompletion, chat.http_response.json())
    assert whole.choices[0].logprobs is None and whole.choices[0].message.refusal is None
    with c.chat.completions.with_streaming_response.create(
        model=backend_alias,
        messages=messages,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    ) as streamed:
        chunks = _sse_data(streamed.http_response.iter_lines())
    assert chunks and all(assert_conforms(ChatCompletionChunk, ch) for ch in chunks)
    completion = c.completions.with_raw_response.create(
        model=backend_alias, prompt="Once", max_tokens=4
    )
    assert assert_conforms(Completion, completion.http_response.json()).choices[0].logprobs is None
    with c.completions.with_streaming_response.create(
        model=backend_alias, prompt="Once", max_tokens=4, stream=True
    ) as streamed:
        pieces = _sse_data(streamed.http_response.iter_lines())
    # Streamed completions reuse the Completion type, whose finish_reason cannot be null,
    # while every chunk but the last has null there (as OpenAI's own stream does).
    for piece in pieces:
        for choice in piece["choices"]:
            choice["finish_reason"] = choice["finish_reason"] or "stop"
    assert pieces and all(assert_conforms(Completion, p) for p in pieces)
    embedded = c.embeddings.with_raw_response.create(
        model=backend_alias, input=["a", "b"], encoding_format="float"
    )
    assert_conforms(CreateEmbeddingResponse, embedded.http_response.json())
    listed = c.models.with_raw_response.list().http_response.json()
    assert set(listed) == {"object", "data"} and listed["object"] == "list"
    assert [assert_conforms(Model, m).id for m in listed["data"]]
    assert_conforms(Model, c.models.with_raw_response.retrieve(backend_alias).http_response.json())
    for attempt in (
        lambda: c.models.retrieve("no-such-model"),
        lambda: c.chat.completions.create(model=backend_alias, messages=[]),
        lambda: oai(gateway, "tg-wrong").models.list(),
        lambda: c.responses.retrieve("resp_missing"),
    ):
        with pytest.raises(openai.APIStatusError) as err:
            attempt()
        body = err.value.response.json()
        assert set(body) == {"error"}
        assert_conforms(ErrorObject, body["error"])


def _sse_data(lines: Any) -> list[Any]:
    return [
        json.loads(line[6:])
        for line in lines
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


# -- upstream failures -------------------------------------------------------------------


def test_upstream_failures_in_each_apis_shape(
    gateway: GatewayProcess,
    new_key: NewKey,
    chat_model: str,
    standin: StandinProcess,
    migrated_dsn: str,
) -> None:
    from .test_admin_usage import wait_for_rows

    key = new_key()
    faults = standin.url + "/_standin/faults"
    c = claude(gateway, key["key"])
    hi: Any = [{"role": "user", "content": "hi"}]
    httpx.post(
        faults, json={"kind": "fail", "path": "/v1/messages", "status": 503}
    ).raise_for_status()
    with pytest.raises(anthropic.APIStatusError) as busy:
        c.messages.create(model=chat_model, max_tokens=5, messages=hi)
    assert busy.value.status_code == 529 and busy.value.response.headers["retry-after"] == "1"
    assert busy.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]

    broken = {"kind": "stream_error", "after_chunks": 3, "message": "oom"}
    httpx.post(faults, json={**broken, "path": "/v1/messages"}).raise_for_status()
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIError) as cut,
        c.messages.stream(model=chat_model, max_tokens=50, messages=hi) as stream,
    ):
        received.extend(stream.text_stream)  # the stream breaks midway
    assert "mid-stream" in str(cut.value) and len(received) == 3

    httpx.post(faults, json={**broken, "path": "/v1/responses"}).raise_for_status()
    events = list(
        oai(gateway, key["key"]).responses.create(model=chat_model, input="hi", stream=True)
    )
    assert events[-1].type == "error" and "mid-stream" in events[-1].message
    assert [e.type for e in events].count("response.output_text.delta") == 3

    rows = wait_for_rows(
        migrated_dsn,
        "SELECT endpoint, status, completion_tokens, error_class FROM usage_events "
        "WHERE key_id = %s ORDER BY ts",
        (key["id"],),
        3,
    )
    assert rows == [
        ("messages", 529, 0, "upstream_overloaded"),
        ("messages", 502, 3, "upstream_stream_error"),  # the tokens it got, counted
        ("responses", 502, 3, "upstream_stream_error"),
    ]


def test_models_for_both_client_families(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    key = new_key(allowed_models="gpt-*")["key"]
    listed = claude(gateway, key).models.list()
    assert [m.id for m in listed.data] == [chat_model] and listed.data[0].type == "model"
    assert claude(gateway, key, bearer=True).models.retrieve(chat_model).id == chat_model
    with pytest.raises(anthropic.NotFoundError):
        claude(gateway, key).models.retrieve("test-embedding-small")
    with pytest.raises(anthropic.AuthenticationError):
        claude(gateway, "tg-wrong").models.list()
    assert [m.id for m in oai(gateway, key).models.list()] == [chat_model]


def test_disconnect_mid_stream_records_tokens_so_far(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey, migrated_dsn: str
) -> None:
    """A client that leaves mid-stream: the upstream request is closed (the stand-in
    counts it cancelled) and the usage row has status 499 and the tokens received."""
    from .test_admin_usage import wait_for_rows

    config = StandinConfig(port=0, tokens_per_second=20, completion_tokens=400)
    with standin_in_thread(config) as slow:
        admin.ensure_model("slow-" + slow.url[-5:], "llama3:8b", backend_url=slow.url)
        alias = "slow-" + slow.url[-5:]
        key = new_key()
        requests: list[tuple[str, dict[str, str], dict[str, Any], str]] = [
            (
                "/v1/messages",
                {"x-api-key": key["key"]},
                {"max_tokens": 400, "messages": [{"role": "user", "content": "hi"}]},
                "content_block_delta",
            ),
            (
                "/v1/responses",
                {"Authorization": f"Bearer {key['key']}"},
                {"input": "hi"},
                "response.output_text.delta",
            ),
        ]
        for path, headers, body, delta in requests:
            seen = 0
            with httpx.stream(
                "POST",
                gateway.url + path,
                headers=headers,
                json={**body, "model": alias, "stream": True},
                timeout=60,
            ) as r:
                for line in r.iter_lines():
                    if line == f"event: {delta}":
                        seen += 1
                    if seen == 3:
                        break
        rows = wait_for_rows(
            migrated_dsn,
            "SELECT endpoint, status, completion_tokens, error_class FROM usage_events "
            "WHERE key_id = %s ORDER BY ts",
            (key["id"],),
            2,
        )
        assert [r[0] for r in rows] == ["messages", "responses"]
        for row in rows:
            assert row[1] == 499 and row[3] == "client_disconnected", row
            assert 3 <= row[2] < 100, row  # what it got, not the 400 it asked for
        deadline = time.monotonic() + 10
        while slow.state.stats.cancelled < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.state.stats.cancelled == 2


def test_a_client_that_leaves_before_the_stream_starts_frees_its_slot(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey, migrated_dsn: str
) -> None:
    """The client closes its connection while the model server has not answered yet (it
    sends its headers with the first event, as Ollama does): the request is settled at once
    (499, the slot of a concurrency-1 key free again) and the upstream request is closed.
    On the framework's path the stream was never started, so it was never settled: the key
    stayed at its limit for good."""
    from .test_admin_usage import wait_for_rows

    # 1.5 s to the first event, then 20 s of generation should nobody stop it
    config = StandinConfig(port=0, ttft_ms=1500, tokens_per_second=20, completion_tokens=400)
    with standin_in_thread(config) as slow:
        alias = "slow-start-" + slow.url[-5:]
        admin.ensure_model(alias, "llama3:8b", backend_url=slow.url)
        key = new_key(concurrency_limit=1)
        hi = [{"role": "user", "content": "hi"}]
        requests: list[tuple[str, dict[str, str], dict[str, Any], dict[str, Any]]] = [
            (
                "/v1/messages",
                {"x-api-key": key["key"]},
                {"max_tokens": 400, "messages": hi},
                {"max_tokens": 1, "messages": hi},
            ),
            (
                "/v1/responses",
                {"Authorization": f"Bearer {key['key']}"},
                {"input": "hi"},
                {"input": "hi", "max_output_tokens": 16},
            ),
        ]
        for path, headers, body, short in requests:
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes
                httpx.post(
                    gateway.url + path,
                    headers=headers,
                    json={**body, "model": alias, "stream": True},
                    timeout=httpx.Timeout(30, read=0.3),
                )
            deadline = time.monotonic() + 6
            while True:  # the slot comes free without waiting for the model server
                again = httpx.post(
                    gateway.url + path,
                    headers=headers,
                    json={**short, "model": alias},
                    timeout=30,
                )
                if again.status_code == 200:
                    break
                assert again.status_code == 429, again.text
                assert time.monotonic() < deadline, "the slot was never freed"
                time.sleep(0.2)
        rows = wait_for_rows(
            migrated_dsn,
            "SELECT endpoint, status, error_class, prompt_tokens FROM usage_events "
            "WHERE key_id = %s AND status = 499 ORDER BY ts",
            (key["id"],),
            2,
        )
        assert [(r[0], r[1], r[2]) for r in rows] == [
            ("messages", 499, "client_disconnected"),
            ("responses", 499, "client_disconnected"),
        ]
        assert all(r[3] > 0 for r in rows), rows  # the prompt is billed
        deadline = time.monotonic() + 10
        while slow.state.stats.cancelled < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.state.stats.cancelled == 2

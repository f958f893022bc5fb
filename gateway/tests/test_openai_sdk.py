"""The official openai SDK against a real gateway, real Postgres, Valkey and the Ollama stand-in."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tollgate_dev.servers.programs import GatewayProcess

NewKey = Callable[..., dict[str, Any]]


def client(gateway: GatewayProcess, key: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, **kw)


def test_chat_completion_reports_alias_usage_and_unique_ids(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    c = client(gateway, new_key()["key"])
    messages: Any = [{"role": "user", "content": "Say hello"}]
    first = c.chat.completions.create(model=chat_model, messages=messages)
    second = c.chat.completions.create(model=chat_model, messages=messages)
    assert first.model == chat_model
    assert first.object == "chat.completion"
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content
    assert first.choices[0].finish_reason in {"stop", "length"}
    assert first.usage is not None and first.usage.completion_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.id.startswith("chatcmpl-") and first.id != second.id
    # deterministic stand-in: the same prompt gives the same text through the gateway
    assert first.choices[0].message.content == second.choices[0].message.content


def test_request_id_header_on_every_response(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    c = client(gateway, new_key()["key"])
    raw = c.chat.completions.with_raw_response.create(
        model=chat_model,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "my-trace-123"},
    )
    assert raw.headers["x-request-id"] == "my-trace-123"
    with pytest.raises(openai.AuthenticationError) as err:
        client(gateway, "tg-wrong").models.list()
    assert err.value.response.headers["x-request-id"].startswith("req_")


def test_streaming_with_include_usage(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    c = client(gateway, new_key()["key"])
    stream = c.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "Count to five"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = [ch for ch in chunks if ch.choices]
    assert content, "no content chunks"
    assert {ch.id for ch in chunks} == {chunks[0].id}
    assert all(ch.model == chat_model for ch in chunks)
    assert content[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in content)
    assert content[-1].choices[0].finish_reason in {"stop", "length"}
    assert all(ch.usage is None for ch in content)
    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None and final.usage.completion_tokens > 0


def test_streaming_without_include_usage_has_no_usage_chunk(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    c = client(gateway, new_key()["key"])
    chunks = list(
        c.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert chunks and all(ch.choices for ch in chunks)


async def test_async_client_chat_stream_and_embeddings(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    c = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=new_key()["key"], max_retries=0)
    result = await c.chat.completions.create(
        model=chat_model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert result.usage is not None and result.usage.completion_tokens <= 3
    newer = await c.chat.completions.create(
        model=chat_model, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=2
    )
    assert newer.usage is not None and newer.usage.completion_tokens <= 2
    parts = []
    async for chunk in await c.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        parts.append(chunk)
    assert parts[-1].usage is not None
    emb = await c.embeddings.create(model="test-embedding-small", input=["a", "b"])
    assert [d.index for d in emb.data] == [0, 1]
    assert emb.model == "test-embedding-small"
    assert len(emb.data[0].embedding) > 0
    assert emb.usage.prompt_tokens > 0
    await c.close()


def test_completions_endpoint(gateway: GatewayProcess, new_key: NewKey, chat_model: str) -> None:
    c = client(gateway, new_key()["key"])
    result = c.completions.create(model=chat_model, prompt="Once upon a time", max_tokens=5)
    assert result.id.startswith("cmpl-")
    assert result.model == chat_model
    assert result.choices[0].text
    assert result.usage is not None and 0 < result.usage.completion_tokens <= 5
    streamed = list(c.completions.create(model=chat_model, prompt="Once", stream=True))
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices)


def test_models_list_and_retrieve_only_show_allowed(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    everything = client(gateway, new_key()["key"])
    ids = {m.id for m in everything.models.list()}
    assert {chat_model, "test-embedding-small"} <= ids
    limited = client(gateway, new_key(allowed_models="gpt-*")["key"])
    assert {m.id for m in limited.models.list()} == {i for i in ids if i.startswith("gpt-")}
    assert limited.models.retrieve(chat_model).id == chat_model
    with pytest.raises(openai.NotFoundError) as err:
        limited.models.retrieve("test-embedding-small")
    assert err.value.code == "model_not_found"


# -- errors ---------------------------------------------------------------------------------
def _chat(c: openai.OpenAI, model: str = "gpt-4") -> Any:
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def test_missing_and_wrong_keys_are_401(gateway: GatewayProcess, chat_model: str) -> None:
    import httpx

    response = httpx.post(gateway.url + "/v1/chat/completions", json={})
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as err:
        _chat(client(gateway, "tg-" + "x" * 43))
    assert err.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    "fields",
    [
        {"expires_at": "2020-01-01T00:00:00Z"},
        {"disabled": True},
    ],
    ids=["expired", "disabled"],
)
def test_unusable_keys_are_401(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str, fields: dict[str, Any]
) -> None:
    with pytest.raises(openai.AuthenticationError):
        _chat(client(gateway, new_key(**fields)["key"]))


def test_revoked_key_is_401(
    gateway: GatewayProcess, new_key: NewKey, admin: Any, chat_model: str
) -> None:
    key = new_key()
    c = client(gateway, key["key"])
    _chat(c)
    assert admin.http.delete(f"/admin/keys/{key['id']}").status_code == 204
    deadline = time.monotonic() + 10
    while True:
        try:
            _chat(c)
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "revoked key still accepted after 10 s"
        time.sleep(0.05)


def test_unknown_disabled_and_forbidden_models_are_404(
    gateway: GatewayProcess, new_key: NewKey, admin: Any, chat_model: str
) -> None:
    admin.ensure_model("switched-off", "llama3:8b", enabled=False)
    c = client(gateway, new_key(allowed_models=["gpt-4"])["key"])
    for model in ("no-such-model", "switched-off", "test-embedding-small"):
        with pytest.raises(openai.NotFoundError) as err:
            _chat(c, model)
        assert err.value.code == "model_not_found"
        assert f"`{model}`" in err.value.message
        assert "gpt-4" not in err.value.message  # never reveals other aliases


def test_bad_input_is_400_with_param(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    import httpx

    key = new_key()["key"]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = gateway.url + "/v1/chat/completions"
    malformed = httpx.post(url, content=b'{"model": "gpt-4", "messages": [', headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_json"
    c = client(gateway, key)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": chat_model, "messages": "hi"}, "messages"),
        ({"model": 42, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": chat_model, "messages": [{"content": "x"}]}, "messages[0].role"),
        (
            {
                "model": chat_model,
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": "ten",
            },
            "max_tokens",
        ),
        (
            {"model": chat_model, "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            "stream",
        ),
        ({"model": chat_model, "messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ]
    for body, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            c.post("/chat/completions", body=body, cast_to=object)
        assert err.value.param == param, (body, err.value.body)


def test_oversized_body_is_413(gateway: GatewayProcess, new_key: NewKey, chat_model: str) -> None:
    c = client(gateway, new_key()["key"])
    huge = "x" * (9 * 1024 * 1024)
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": huge}])
    assert err.value.status_code == 413
    assert err.value.code == "request_too_large"


def test_unreachable_backend_is_502(gateway: GatewayProcess, new_key: NewKey, admin: Any) -> None:
    from tollgate_dev.proc import free_port

    admin.ensure_model("nowhere", "llama3:8b", backend_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(openai.InternalServerError) as err:
        _chat(client(gateway, new_key()["key"]), "nowhere")
    assert err.value.status_code == 502
    assert err.value.code == "upstream_unreachable"


def test_tools_and_response_format_pass_through(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    import json

    c = client(gateway, new_key()["key"])
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    result = c.chat.completions.create(
        model=chat_model,
        tools=tools,
        messages=[{"role": "user", "content": "What is the weather in Paris? Use get_weather."}],
    )
    calls = result.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments), dict)
    assert result.choices[0].finish_reason == "tool_calls"
    as_json = c.chat.completions.create(
        model=chat_model,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me a JSON object"}],
    )
    assert isinstance(json.loads(as_json.choices[0].message.content or ""), dict)

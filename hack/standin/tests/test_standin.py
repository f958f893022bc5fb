"""The Ollama stand-in, exercised through the official ``ollama`` and ``openai`` clients.

The stand-in is a test double, not Ollama: these tests pin the wire behaviour it copies
from Ollama and the test controls (``/_standin/*``) it adds.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import ollama
import openai
import pytest
import pytest_asyncio

from tollgate_dev.plugins.ollama import TINY_MODEL, RealOllamaPods
from tollgate_dev.servers.realollama import RealOllama
from tollgate_standin import StandinConfig, StandinServer, run_standin, standin_in_thread
from tollgate_standin.__main__ import build_parser, config_from_args
from tollgate_standin.textgen import seed_of, word_pieces

BUSY = "server busy, please try again.  maximum pending requests exceeded"


def get_weather(city: str) -> str:
    """Get the weather for a city.

    Args:
        city: The city to look up.
    """
    return f"sunny in {city}"


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def standin() -> AsyncIterator[StandinServer]:
    async with run_standin(StandinConfig(host="127.10.0.5", port=0, parallel=4)) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def http(standin: StandinServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=standin.url) as session:
        await session.post("/_standin/reset")
        yield session


@pytest.fixture(scope="module")
def threaded() -> Iterator[StandinServer]:
    """A stand-in on its own thread, for the synchronous ``ollama.Client``."""
    with standin_in_thread(StandinConfig(port=0, registry=("*",))) as server:
        yield server


@pytest.fixture
def client(threaded: StandinServer) -> Iterator[ollama.Client]:
    httpx.post(f"{threaded.url}/_standin/reset").raise_for_status()
    with ollama.Client(host=threaded.url) as c:
        yield c


def expected_text(model: str, turns: list[tuple[str, str]], count: int = 12) -> str:
    return "".join(word_pieces(seed_of(model, turns), count))


async def ndjson(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (await response.text()).splitlines() if line]


async def sse(response: aiohttp.ClientResponse) -> list[Any]:
    events = [e for e in (await response.text()).split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in events]


# --- the official ollama client (synchronous) -------------------------------------------


def test_list_show_and_version(client: ollama.Client, threaded: StandinServer) -> None:
    names = [m.model for m in client.list().models]
    assert names == ["nomic-embed-text:latest", "llama3:8b"]
    llama = client.list().models[1]
    assert llama.details is not None and llama.details.family == "llama"
    assert llama.size is not None and llama.size > 1_000_000_000
    assert llama.digest is not None and re.fullmatch(r"[0-9a-f]{64}", llama.digest)

    shown = client.show("llama3:8b")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert shown.details is not None and shown.details.parameter_size == "8.0B"
    assert client.show("nomic-embed-text").capabilities == ["embedding"]

    assert httpx.get(f"{threaded.url}/api/version").json() == {"version": "0.33.0"}


def test_chat_non_stream_and_stream(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    whole = client.chat(model="llama3:8b", messages=messages)
    assert whole.message.content == expected_text("llama3:8b", [("user", "Why is the sky blue?")])
    assert whole.done and whole.done_reason == "stop"
    assert whole.eval_count == 12 and whole.prompt_eval_count == 5 + 4
    assert whole.total_duration and whole.load_duration and whole.eval_duration

    parts = list(client.chat(model="llama3:8b", messages=messages, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert [p.done for p in parts] == [False] * 12 + [True]
    assert parts[-1].eval_count == 12 and parts[-1].prompt_eval_duration


def test_chat_num_predict_and_json_format(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "count"}]
    short = client.chat(model="llama3:8b", messages=messages, options={"num_predict": 3})
    assert short.done_reason == "length" and short.eval_count == 3
    assert len((short.message.content or "").split()) == 3

    as_json = client.chat(model="llama3:8b", messages=messages, format="json")
    assert isinstance(json.loads(as_json.message.content or ""), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}
    structured_reply = client.chat(model="llama3:8b", messages=messages, format=schema)
    structured = json.loads(structured_reply.message.content or "")
    assert structured["n"] == 1 and isinstance(structured["s"], str)


def test_chat_tool_call(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Call get_weather with city=Paris please"}]
    reply = client.chat(model="llama3:8b", messages=messages, tools=[get_weather])
    calls = reply.message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Paris"}

    streamed = list(
        client.chat(model="llama3:8b", messages=messages, tools=[WEATHER_TOOL], stream=True)
    )
    streamed_calls = [c for p in streamed for c in (p.message.tool_calls or [])]
    assert streamed_calls[0].function.arguments == {"city": "Paris", "days": 1}

    follow_up = [*messages, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    answer = client.chat(model="llama3:8b", messages=follow_up, tools=[get_weather])
    assert not answer.message.tool_calls and answer.message.content


def test_generate(client: ollama.Client) -> None:
    whole = client.generate(model="llama3:8b", prompt="Hello")
    assert whole.response == expected_text("llama3:8b", [("user", "Hello")])
    assert whole.context
    parts = list(client.generate(model="llama3:8b", prompt="Hello", stream=True))
    assert "".join(p.response or "" for p in parts) == whole.response
    loaded = client.generate(model="llama3:8b", prompt="")
    assert loaded.done_reason == "load"


def test_embed_and_embeddings(client: ollama.Client) -> None:
    result = client.embed(model="nomic-embed-text", input=["alpha", "beta gamma"])
    assert len(result.embeddings) == 2
    assert all(len(v) == 8 for v in result.embeddings)
    assert all(abs(sum(x * x for x in v) - 1) < 1e-6 for v in result.embeddings)
    assert result.prompt_eval_count == (1 + 2) + (2 + 2)
    again = client.embed(model="nomic-embed-text", input="alpha")
    assert again.embeddings[0] == result.embeddings[0]
    small = client.embed(model="nomic-embed-text", input="alpha", dimensions=4)
    assert len(small.embeddings[0]) == 4

    legacy = client.embeddings(model="nomic-embed-text", prompt="alpha")
    assert list(legacy.embedding) == list(result.embeddings[0])


def test_pull_stream_and_not(client: ollama.Client) -> None:
    progress = list(client.pull("qwen2.5:0.5b", stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [p for p in progress if (p.status or "").startswith("pulling ") and p.digest]
    assert layers and all(p.digest and p.status == f"pulling {p.digest[7:19]}" for p in layers)
    assert layers[0].completed is None and layers[0].total
    assert any(p.completed == p.total for p in layers)
    assert "qwen2.5:0.5b" in [m.model for m in client.list().models]

    final = client.pull("tinyllama", stream=False)
    assert final.status == "success"
    assert "tinyllama:latest" in [m.model for m in client.list().models]


def test_pull_errors() -> None:
    with standin_in_thread(StandinConfig(port=0)) as server, ollama.Client(server.url) as c:
        with pytest.raises(ollama.ResponseError, match="file does not exist"):
            list(c.pull("no-such-model", stream=True))
        with pytest.raises(ollama.ResponseError) as info:
            c.pull("no-such-model")
        assert info.value.status_code == 500
        with pytest.raises(ollama.ResponseError, match="invalid model name") as bad:
            c.pull("bad name!")
        assert bad.value.status_code == 400


def test_copy_delete_and_ps(client: ollama.Client) -> None:
    assert client.copy("llama3:8b", "my-llama").status == "success"
    assert "my-llama:latest" in [m.model for m in client.list().models]
    client.chat(model="my-llama", messages=[{"role": "user", "content": "hi"}])
    running = client.ps().models
    assert "my-llama:latest" in [m.model for m in running]
    assert all(m.expires_at is not None and m.context_length == 4096 for m in running)

    assert client.delete("my-llama").status == "success"
    assert "my-llama:latest" not in [m.model for m in client.list().models]
    assert "my-llama:latest" not in [m.model for m in client.ps().models]
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("my-llama")
    assert missing.value.status_code == 404 and missing.value.error == "model 'my-llama' not found"


def test_create_and_unload(client: ollama.Client) -> None:
    progress = list(client.create(model="custom", from_="llama3:8b", stream=True))
    assert progress[-1].status == "success"
    assert client.show("custom").details is not None
    client.generate(model="custom", prompt="hi")
    assert "custom:latest" in [m.model for m in client.ps().models]
    unloaded = client.generate(model="custom", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert "custom:latest" not in [m.model for m in client.ps().models]


def test_native_errors(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="missing:7b", messages=[{"role": "user", "content": "x"}])
    assert (info.value.status_code, info.value.error) == (404, "model 'missing:7b' not found")
    with pytest.raises(ollama.ResponseError) as info:
        client.show("missing")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nomic-embed-text", messages=[{"role": "user", "content": "x"}])
    assert info.value.error == '"nomic-embed-text" does not support chat'
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3:8b", messages=[{"role": "user", "content": "x"}], think=True)
    assert info.value.error == '"llama3:8b" does not support thinking'


# --- the official ollama client (asynchronous) ------------------------------------------


async def test_async_client(standin: StandinServer, http: aiohttp.ClientSession) -> None:
    async with ollama.AsyncClient(host=standin.url) as c:
        listed = await c.list()
        assert [m.model for m in listed.models] == ["nomic-embed-text:latest", "llama3:8b"]
        messages = [{"role": "user", "content": "hi"}]
        stream = await c.chat(model="llama3:8b", messages=messages, stream=True)
        chunks = [part async for part in stream]
        assert chunks[-1].done and chunks[-1].eval_count == 12
        generated = await c.generate(model="llama3:8b", prompt="hi", options={"num_predict": 2})
        assert generated.done_reason == "length"
        embedded = await c.embed(model="nomic-embed-text", input="hi")
        assert len(embedded.embeddings[0]) == 8
        pulled = [p async for p in await c.pull("llama3.2:1b", stream=True)]
        assert pulled[-1].status == "success"
        assert (await c.show("llama3.2:1b")).details is not None
        running = {m.model for m in (await c.ps()).models}
        assert running == {"llama3:8b", "nomic-embed-text:latest"}


# --- the official openai client ---------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def oai(
    standin: StandinServer, http: aiohttp.ClientSession
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{standin.url}/v1", api_key="standin", max_retries=0
    ) as c:
        yield c


async def test_openai_chat(oai: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Why is the sky blue?"}]
    reply = await oai.chat.completions.create(model="llama3:8b", messages=messages)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.choices[0].message.content == expected_text(
        "llama3:8b", [("user", "Why is the sky blue?")]
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 12

    stream = await oai.chat.completions.create(
        model="llama3:8b",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=4,
    )
    chunks = [c async for c in stream]
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert [c.choices[0].delta.role for c in content] == ["assistant", None, None, None]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


async def test_openai_tool_call(oai: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "use get_weather city: Oslo"}]
    tools: Any = [WEATHER_TOOL]
    reply = await oai.chat.completions.create(model="llama3:8b", messages=messages, tools=tools)
    call = (reply.choices[0].message.tool_calls or [])[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo", "days": 1}


async def test_openai_completions(oai: openai.AsyncOpenAI) -> None:
    whole = await oai.completions.create(model="llama3:8b", prompt="Once upon", max_tokens=5)
    assert whole.choices[0].finish_reason == "length" and whole.usage is not None
    assert (
        whole.choices[0].text
        == expected_text("llama3:8b", [("user", "Once upon")], 12)[: len(whole.choices[0].text)]
    )
    stream = await oai.completions.create(model="llama3:8b", prompt="Once upon", stream=True)
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == expected_text("llama3:8b", [("user", "Once upon")])


async def test_openai_embeddings(oai: openai.AsyncOpenAI) -> None:
    floats = await oai.embeddings.create(
        model="nomic-embed-text", input=["a", "b"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 8
    assert floats.usage.prompt_tokens == 6
    default = await oai.embeddings.create(model="nomic-embed-text", input="a")  # base64
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    shorter = await oai.embeddings.create(model="nomic-embed-text", input="a", dimensions=3)
    assert len(shorter.data[0].embedding) == 3


async def test_openai_models_and_errors(oai: openai.AsyncOpenAI) -> None:
    models = [m async for m in oai.models.list()]
    assert [m.id for m in models] == ["nomic-embed-text:latest", "llama3:8b"]
    assert all(m.owned_by == "library" for m in models)
    retrieved = await oai.models.retrieve("llama3:8b")
    assert retrieved.id == "llama3:8b" and retrieved.object == "model"

    with pytest.raises(openai.NotFoundError) as missing:
        await oai.chat.completions.create(
            model="missing", messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.status_code == 404
    body = missing.value.response.json()
    assert body == {
        "error": {
            "message": "model 'missing' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("missing")
    with pytest.raises(openai.BadRequestError, match="too short"):
        await oai.chat.completions.create(model="llama3:8b", messages=[])


# --- raw protocol details ---------------------------------------------------------------


async def test_root_head_and_unknown_path(http: aiohttp.ClientSession) -> None:
    async with http.get("/") as r:
        assert (r.status, await r.text()) == (200, "Ollama is running")
    async with http.head("/") as r:
        assert r.status == 200
    async with http.get("/api/nothing") as r:
        assert (r.status, await r.text()) == (404, "404 page not found")


async def test_native_stream_shape(http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post("/api/chat", json=body) as r:
        assert r.headers["Content-Type"] == "application/x-ndjson"
        lines = await ndjson(r)
    assert set(lines[0]) == {"model", "created_at", "message", "done"}
    assert lines[0]["created_at"].endswith("Z")
    final = lines[-1]
    assert final["done"] is True and final["message"] == {"role": "assistant", "content": ""}
    metrics = ["total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration"]
    assert all(isinstance(final[k], int) and final[k] > 0 for k in [*metrics, "eval_count"])


async def test_v1_and_native_agree(http: aiohttp.ClientSession) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    native_body = {"model": "llama3:8b", "messages": messages, "stream": False}
    async with http.post("/api/chat", json=native_body) as r:
        native = (await r.json())["message"]["content"]
    body = {"model": "llama3:8b", "messages": messages, "stream": True}
    async with http.post("/v1/chat/completions", json=body) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events = await sse(r)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == native
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert all("usage" not in e for e in events[:-1])
    assert len({e["id"] for e in events[:-1]}) == 1


async def test_bad_requests(http: aiohttp.ClientSession) -> None:
    cases = [
        ("/api/chat", b"", 400, "missing request body"),
        ("/api/chat", b'{"messages": []}', 400, "model is required"),
        ("/api/generate", b'{"prompt": "x"}', 404, "model '' not found"),
        ("/api/show", b"{}", 400, "model is required"),
        ("/api/chat", b'{"model": "bad name!"}', 400, "invalid model name"),
        ("/api/embeddings", b'{"model": "x"}', 404, 'model "x" not found, try pulling it first'),
    ]
    for path, raw, status, message in cases:
        async with http.post(path, data=raw) as r:
            assert (r.status, (await r.json())["error"]) == (status, message), path
    async with http.post("/api/chat", data=b"{not json") as r:
        assert r.status == 400 and "error" in await r.json()
    async with http.post("/v1/chat/completions", data=b"[1]") as r:
        error = (await r.json())["error"]
    assert r.status == 400 and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


async def test_loopback_host_header_not_checked_by_default(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/version", headers={"Host": "evil.example.com"}) as r:
        assert r.status == 200
    async with (
        run_standin(StandinConfig(port=0, strict_host=True)) as strict,
        aiohttp.ClientSession() as s,
        s.get(f"{strict.url}/api/version", headers={"Host": "evil.example.com"}) as r,
    ):
        assert (r.status, await r.text()) == (403, "")


# --- admission control, stats, faults, cancellations -------------------------------------


async def post_status(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with session.post(url, json=body) as response:
        await response.read()
        return response.status


async def test_queue_full_returns_503() -> None:
    config = StandinConfig(port=0, parallel=1, max_queue=1, ttft_ms=300, tokens_per_second=20)
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    async with run_standin(config) as server, aiohttp.ClientSession(server.url) as s:
        statuses = await asyncio.gather(*(post_status(s, "/api/chat", body) for _ in range(3)))
        assert sorted(statuses) == [200, 200, 503]
        async with s.get("/_standin/stats") as r:
            stats = await r.json()
        assert stats["busy_rejections"] == 1 and stats["max_in_flight"] == 1
        assert stats["max_queued"] == 1
        async with s.get("/_standin/requests", params={"path": "/api/chat"}) as r:
            logged = (await r.json())["requests"]
        assert sorted(e["status"] for e in logged) == [200, 200, 503]


async def test_busy_error_body_native_and_v1() -> None:
    config = StandinConfig(port=0, parallel=1, max_queue=0, ttft_ms=30_000)
    chat = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    async with run_standin(config) as server, aiohttp.ClientSession(server.url) as s:
        holder = asyncio.create_task(post_status(s, "/api/chat", chat))
        await wait_for_stat(s, "in_flight", 1)
        async with s.post("/api/chat", json=chat) as r:
            assert (r.status, await r.json()) == (503, {"error": BUSY})
            assert "Retry-After" not in r.headers
        async with s.post("/v1/chat/completions", json=chat) as r:
            assert r.status == 503 and (await r.json())["error"]["message"] == BUSY
        holder.cancel()  # the client goes away; the stand-in cancels the generation
        stats = await wait_for_stat(s, "cancelled", 1)
        assert stats["in_flight"] == 0 and stats["busy_rejections"] == 2


async def wait_for_stat(session: aiohttp.ClientSession, key: str, value: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        async with session.get("/_standin/stats") as r:
            stats: dict[str, Any] = await r.json()
        if stats[key] == value or time.monotonic() > deadline:
            assert stats[key] == value, stats
            return stats
        await asyncio.sleep(0.02)


async def test_in_flight_counting() -> None:
    config = StandinConfig(port=0, parallel=2, ttft_ms=500, tokens_per_second=50)
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    async with run_standin(config) as server, aiohttp.ClientSession(server.url) as s:
        statuses = await asyncio.gather(*(post_status(s, "/api/chat", body) for _ in range(5)))
        assert statuses == [200] * 5
        stats = await wait_for_stat(s, "in_flight", 0)
        assert stats["max_in_flight"] == 2 and stats["max_queued"] == 3
        assert stats["requests"]["/api/chat"] == 5
        await s.post("/_standin/reset")
        assert (await wait_for_stat(s, "max_in_flight", 0))["requests"] == {}


async def test_client_disconnect_counts_as_cancelled() -> None:
    config = StandinConfig(port=0, parallel=1, tokens_per_second=5)
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    async with run_standin(config) as server, aiohttp.ClientSession(server.url) as s:
        response = await s.post("/api/chat", json=body)
        assert json.loads(await response.content.readline())["done"] is False
        response.close()
        stats = await wait_for_stat(s, "cancelled", 1)
        assert stats["in_flight"] == 0
        quick = {**body, "stream": False, "options": {"num_predict": 1}}
        assert await post_status(s, "/api/chat", quick) == 200


async def test_fault_fail_and_delay(http: aiohttp.ClientSession) -> None:
    faults = [
        {"kind": "fail", "times": 2, "path": "/api/tags", "status": 502, "message": "boom"},
        {"kind": "fail", "path": "/v1/", "status": 500},
        {"kind": "delay", "path": "/api/version", "delay_ms": 50},
    ]
    async with http.post("/_standin/faults", json=faults) as r:
        assert len((await r.json())["faults"]) == 3
    for _ in range(2):
        async with http.get("/api/tags") as r:
            assert (r.status, await r.json()) == (502, {"error": "boom"})
    async with http.get("/api/tags") as r:
        assert r.status == 200
    async with http.get("/v1/models") as r:
        assert r.status == 500 and (await r.json())["error"]["type"] == "api_error"
    started = time.monotonic()
    async with http.get("/api/version") as r:
        assert r.status == 200
    assert time.monotonic() - started >= 0.04
    async with http.get("/_standin/faults") as r:
        assert (await r.json())["faults"] == []
    async with http.get("/_standin/stats") as r:
        assert (await r.json())["faults_applied"] == 4


async def test_fault_stream_error(standin: StandinServer, http: aiohttp.ClientSession) -> None:
    fault = {"kind": "stream_error", "path": "/api/chat", "after_chunks": 2, "message": "oom"}
    await http.post("/_standin/faults", json=fault)
    messages = [{"role": "user", "content": "x"}]
    seen: list[ollama.ChatResponse] = []

    async def consume(c: ollama.AsyncClient) -> None:
        async for part in await c.chat(model="llama3:8b", messages=messages, stream=True):
            seen.append(part)

    async with ollama.AsyncClient(host=standin.url) as c:
        with pytest.raises(ollama.ResponseError, match="oom"):
            await consume(c)
        assert len(seen) == 2

        await http.post("/_standin/faults", json={**fault, "after_chunks": 0})
        with pytest.raises(ollama.ResponseError) as info:
            await c.chat(model="llama3:8b", messages=messages)
        assert (info.value.status_code, info.value.error) == (500, "oom")

    v1 = {"kind": "stream_error", "path": "/v1/chat", "after_chunks": 1}
    await http.post("/_standin/faults", json=v1)
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with http.post("/v1/chat/completions", json=body) as r:
        events = await sse(r)
    assert r.status == 200 and len(events) == 2 and "[DONE]" not in events
    assert events[1]["choices"][0]["delta"] == {"content": ""}


async def test_fault_drop(http: aiohttp.ClientSession) -> None:
    await http.post("/_standin/faults", json={"kind": "drop", "after_chunks": 3})
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post("/api/chat", json=body) as r:
            await r.read()
    await http.post("/_standin/faults", json={"kind": "drop"})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post("/api/chat", json={**body, "stream": False}) as r:
            await r.read()
    async with http.post("/api/chat", json={**body, "stream": False}) as r:
        assert r.status == 200
    async with http.get("/_standin/stats") as r:
        assert (await r.json())["cancelled"] == 0


async def test_request_log(http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3:8b", "prompt": "hi", "options": {"num_predict": 1}}
    await post_status(http, "/api/generate", body)
    async with http.get("/_standin/requests", params={"path": "/api/generate"}) as r:
        logged = (await r.json())["requests"]
    assert len(logged) == 1 and logged[0]["body"] == body and logged[0]["status"] == 200


async def test_bound_address_and_determinism(standin: StandinServer) -> None:
    assert standin.url.startswith("http://127.10.0.5:")
    assert expected_text("llama3:8b", [("user", "a")]) != expected_text(
        "llama3:8b", [("user", "b")]
    )
    assert expected_text("llama3:8b", [("user", "a")]) != expected_text("other", [("user", "a")])


def test_cli_starts_and_labels_itself() -> None:
    args = build_parser().parse_args(
        ["--models", "a:1b,b", "--parallel", "3", "--max-queue", "7", "--ttft-ms", "5"]
    )
    config = config_from_args(args)
    assert (config.models, config.parallel, config.max_queue, config.ttft_ms) == (
        ("a:1b", "b"),
        3,
        7,
        5.0,
    )
    command = [sys.executable, "-m", "tollgate_standin", "--port", "0", "--host", "127.0.0.9"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            assert "Ollama stand-in (not Ollama)" in line
            url = re.search(r"http://\S+", line)
            assert url is not None
            assert httpx.get(url.group(0)).text == "Ollama is running"
        finally:
            process.terminate()
            process.wait(timeout=10)
    assert process.returncode == 0


# --- what the comparison with real Ollama (v0.24.0) changed ----------------------------------


async def test_go_json_errors(http: aiohttp.ClientSession) -> None:
    cases = [
        (
            "/api/chat",
            b"{not json",
            "invalid character 'n' looking for beginning of object key string",
        ),
        ("/api/chat", b'{"model":"x" "y"}', "invalid character '\"' after object key:value pair"),
        ("/api/chat", b'{"model":tru}', "invalid character '}' in literal true (expecting 'e')"),
        ("/api/chat", b'{"model":"', "unexpected EOF"),
        ("/api/chat", b'{"model": 42}', GO_NUMBER + "ChatRequest.model of type string"),
        (
            "/api/chat",
            b'{"messages": "hi"}',
            GO_STRING + "ChatRequest.messages of type []api.Message",
        ),
        ("/api/chat", b'{"messages": [1]}', GO_NUMBER + "ChatRequest.messages of type api.Alias"),
        (
            "/api/chat",
            b'{"messages": [{"content": 5}]}',
            GO_NUMBER + "ChatRequest.messages.content of type string",
        ),
        (
            "/api/generate",
            b'{"context": [1.5]}',
            GO_NUMBER_15 + "GenerateRequest.context of type int",
        ),
        ("/api/create", b'{"files": {"a": 1}}', GO_NUMBER + "CreateRequest.files of type string"),
    ]
    for path, raw, message in cases:
        async with http.post(path, data=raw) as r:
            assert (r.status, (await r.json())["error"]) == (400, message), raw
    async with http.post("/api/chat", data=b'{"model": "llama3:8b"} trailing') as r:
        assert (await r.json())["done_reason"] == "load"  # Go decodes the first value only
    v1 = [
        (b"", "EOF"),
        (b'{"messages": [{"role": 1}]}', GO_NUMBER + "Message.messages.role of type string"),
        (b'{"max_tokens": "a"}', GO_STRING + "ChatCompletionRequest.max_tokens of type int"),
    ]
    for raw, message in v1:
        async with http.post("/v1/chat/completions", data=raw) as r:
            assert (await r.json())["error"]["message"] == message, raw


GO_NUMBER = "json: cannot unmarshal number into Go struct field "
GO_STRING = "json: cannot unmarshal string into Go struct field "
GO_NUMBER_15 = "json: cannot unmarshal number 1.5 into Go struct field "


async def test_wire_framing_like_go(http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post("/v1/chat/completions", json=body) as r:
        raw = await r.read()
        assert r.headers["Content-Type"] == "application/json" and raw.endswith(b"}\n")
        assert "Server" not in r.headers
    async with http.post("/v1/chat/completions", json={**body, "model": "missing"}) as r:
        assert r.headers["Content-Type"] == "application/json"  # from the native handler
        assert (await r.read()).endswith(b"}\n")
    bad = {"model": "llama3:8b", "messages": [{"role": "user"}]}
    async with http.post("/v1/chat/completions", json=bad) as r:  # refused by the middleware
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        raw = await r.read()
        assert raw.endswith(b"}}") and b"type: \\u003cnil\\u003e" in raw  # HTML-escaped
    async with http.get("/api/nothing") as r:
        assert r.headers["Content-Type"] == "text/plain"
    async with http.get("/api/chat") as r:
        assert (r.status, r.headers["Allow"]) == (405, "POST")
    async with http.post("/api/tags") as r:
        assert (r.status, r.headers["Allow"]) == (405, "HEAD, GET")
    async with http.get("/v1/models/", allow_redirects=False) as r:
        assert (r.status, r.headers["Location"]) == (301, "/v1/models")
        assert await r.text() == '<a href="/v1/models">Moved Permanently</a>.\n\n'
    async with http.post("/api/chat/", json=body, allow_redirects=False) as r:
        assert (r.status, r.headers["Location"]) == (307, "/api/chat")
    async with http.post("/api/embed", json={"model": "missing", "input": "x"}) as r:
        error = (await r.json())["error"]
        assert error == 'model "missing" not found, try pulling it first'


async def test_v1_stream_shape_before_0_32_6() -> None:
    body = {
        "model": "llama3:8b",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 2,
        "stream_options": {"include_usage": True},
    }
    config = StandinConfig(port=0, version="0.24.0")
    async with (
        run_standin(config) as server,
        aiohttp.ClientSession(server.url) as s,
        s.post("/v1/chat/completions", json=body) as r,
    ):
        events = await sse(r)
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]
    assert all(set(d) == {"role", "content"} for d in deltas)
    assert deltas[-1] == {"role": "assistant", "content": ""}
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["choices"] == [] and events[-1] == "[DONE]"


def test_pull_from_a_local_registry() -> None:
    name = "127.0.0.1:5000/library/tiny:latest"
    config = StandinConfig(port=0, registry=("127.0.0.1:*",), cpu=True)
    with standin_in_thread(config) as server, ollama.Client(server.url) as c:
        with pytest.raises(ollama.ResponseError) as refused:
            list(c.pull(name, stream=True))
        assert refused.value.error == (
            'pull model manifest: Get "https://127.0.0.1:5000/v2/library/tiny/manifests/latest":'
            " http: server gave HTTP response to HTTPS client"
        )
        with pytest.raises(ollama.ResponseError) as quiet:
            c.pull(name)
        assert quiet.value.status_code == 500
        progress = list(c.pull(name, insecure=True, stream=True))
        statuses = [p.status for p in progress]
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        first = [p for p in progress if p.status == statuses[1]]
        assert first[0].completed is None and first[-1].completed == first[-1].total
        assert first[-1] == first[-2]  # the last numbers arrive more than once
        assert name in [m.model for m in c.list().models]
        again = list(c.pull(name, insecure=True, stream=True))
        assert all(p.completed == p.total for p in again if p.digest)
        with pytest.raises(ollama.ResponseError, match="file does not exist"):
            c.pull("127.0.0.2:5000/library/tiny", insecure=True)


def test_create_show_and_ps_like_ollama(client: ollama.Client, threaded: StandinServer) -> None:
    url = threaded.url
    neither = httpx.post(f"{url}/api/create", json={"model": "x"})
    assert (neither.status_code, neither.json()) == (
        400,
        {"error": "neither 'from' or 'files' was specified"},
    )
    assert httpx.post(f"{url}/api/create", json={}).json() == {"error": "invalid model name"}
    lines = [
        p.status
        for p in client.create(model="from-files", files={"m.gguf": "sha256:ab"}, stream=True)
    ]
    assert lines == [
        "parsing GGUF",
        "using existing layer sha256:ab",
        "writing manifest",
        "success",
    ]
    shown = httpx.post(f"{url}/api/show", json={"model": "from-files"}).json()
    assert "license" not in shown and shown["tensors"][0]["name"] == "token_embd.weight"
    assert "license" in httpx.post(f"{url}/api/show", json={"model": "llama3:8b"}).json()
    pulled = [p.status for p in client.create(model="copy", from_="qwen3:0.6b", stream=True)]
    assert pulled[0] == "pulling manifest" and pulled[-1] == "success"
    assert sum(s.startswith("using existing layer") for s in pulled) == 4  # all but the config

    client.chat(model="llama3:8b", messages=[], options={"num_ctx": 2048}, keep_alive=-1)
    (running,) = client.ps().models
    assert running.context_length == 2048 and running.size_vram == running.size
    assert running.expires_at is not None and running.expires_at.year > 2300
    cpu = StandinConfig(port=0, cpu=True, context_length=99999)
    with standin_in_thread(cpu) as on_cpu, ollama.Client(on_cpu.url) as c:
        c.generate(model="llama3:8b", prompt="")
        (loaded,) = c.ps().models
    assert loaded.size_vram == 0 and loaded.context_length == 8192  # capped at training


# --- side by side with the real Ollama ---------------------------------------------------------

USER_X = '{"role":"user","content":"x"}'
PARITY_CASES: list[tuple[str, str, str]] = [
    ("GET", "/", ""),
    ("GET", "/api/version", ""),
    ("POST", "/api/chat", ""),
    ("POST", "/api/chat", '{"messages": []}'),
    ("POST", "/api/chat", '{"model": "bad name!"}'),
    ("POST", "/api/chat", "{not json"),
    ("POST", "/api/chat", '{"model": 42}'),
    ("POST", "/api/chat", "[1]"),
    ("POST", "/api/chat", '{"model":"tiny","messages":"hi"}'),
    ("POST", "/api/chat", '{"model":"tiny","messages":[1]}'),
    ("POST", "/api/chat", '{"model":"tiny","messages":[{"role":"user","content":5}]}'),
    ("POST", "/api/chat", '{"model":"tiny","keep_alive":"bogus"}'),
    ("POST", "/api/chat", '{"model":"tiny","messages":[' + USER_X + '],"think":true}'),
    ("POST", "/api/chat", '{"model":"nope","messages":[' + USER_X + ']}'),
    ("POST", "/api/chat", '{"model":"tiny" "x"}'),
    ("POST", "/api/chat", '{"model":1.}'),
    ("POST", "/api/chat", '{"model":"'),
    ("POST", "/api/generate", '{"prompt": "x"}'),
    ("POST", "/api/generate", '{"model":"tiny","context":[1.5]}'),
    ("POST", "/api/embed", '{"model":"nope","input":"x"}'),
    ("POST", "/api/embed", '{"model":"tiny","input":[1]}'),
    ("POST", "/api/embeddings", '{"model":"nope","prompt":"x"}'),
    ("POST", "/api/show", "{}"),
    ("POST", "/api/show", '{"model":"nope"}'),
    ("POST", "/api/copy", '{"source":"nope","destination":"x"}'),
    ("DELETE", "/api/delete", '{"model":"nope"}'),
    ("POST", "/api/pull", '{"model":"bad name!"}'),
    ("POST", "/api/create", "{}"),
    ("POST", "/api/create", '{"model":"x"}'),
    ("POST", "/api/create", '{"model":"x","files":{"a":1}}'),
    ("POST", "/v1/chat/completions", ""),
    ("POST", "/v1/chat/completions", "[1]"),
    ("POST", "/v1/chat/completions", '{"model":"tiny","messages":[]}'),
    ("POST", "/v1/chat/completions", '{"messages":[' + USER_X + ']}'),
    ("POST", "/v1/chat/completions", '{"model":"tiny","messages":[{"role":"user"}]}'),
    ("POST", "/v1/chat/completions", '{"model":"tiny","messages":[{"role":1}]}'),
    ("POST", "/v1/chat/completions", '{"model":"tiny","max_tokens":"a"}'),
    ("POST", "/v1/chat/completions", '{"model":"nope","messages":[' + USER_X + ']}'),
    ("POST", "/v1/completions", '{"model":"nope","prompt":"x"}'),
    ("POST", "/v1/embeddings", '{"model":"tiny"}'),
    ("POST", "/v1/embeddings", '{"model":"nope","input":"x"}'),
    ("GET", "/v1/models/nope", ""),
    ("GET", "/api/nothing", ""),
    ("GET", "/api/chat", ""),
    ("GET", "/api/tags/", ""),
    ("POST", "/api/chat/", "{}"),
]  # fmt: skip


@pytest.fixture(scope="module")
def standin_024() -> Iterator[StandinServer]:
    """The stand-in set up like the real Ollama of the test bed: 0.24.0, CPU, only ``tiny``."""
    config = StandinConfig(port=0, models=("tiny",), version="0.24.0", cpu=True)
    with standin_in_thread(config) as server:
        yield server


def _answer(base: str, method: str, path: str, body: bytes) -> tuple[Any, ...]:
    r = httpx.request(method, base + path, content=body, follow_redirects=False, timeout=60)
    headers = ("content-type", "allow", "location", "server")
    return (r.status_code, r.content, *(r.headers.get(h) for h in headers))


@pytest.mark.parametrize(("method", "path", "body"), PARITY_CASES)
def test_same_answer_as_real_ollama(
    real_ollama: RealOllama, standin_024: StandinServer, method: str, path: str, body: str
) -> None:
    real = _answer(real_ollama.url, method, path, body.encode())
    assert _answer(standin_024.url, method, path, body.encode()) == real


def _shape(value: Any) -> Any:
    """Keys and types, not values: what must agree between the two servers' answers."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


CACHE_SLOT = re.compile(r'msg="loading cache slot" id=(\d+) cache=(\d+) prompt=(\d+) used=(\d+)')


def test_real_ollama_prompt_cache_slots(ollama_binaries: tuple[Path, Path], tmp_path: Path) -> None:
    """What the stand-in's prompt cache models (README, difference 30), read from the
    runner's own account of each request (``OLLAMA_DEBUG``'s "loading cache slot": slot,
    tokens it held, prompt tokens, tokens reused): a slot keeps what its request generated
    after the prompt, and a prompt never takes a slot a running request uses."""
    server = RealOllama(
        root=tmp_path / "ollama",
        binary=ollama_binaries[0],
        env={"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_DEBUG": "1"},
    )
    server.start()
    try:
        server.create_tiny(TINY_MODEL)
        url = server.url + "/api/chat"
        question = {"role": "user", "content": "Tell me about Lisbon."}

        def loads() -> list[tuple[int, ...]]:
            text = server.log_path.read_text(errors="replace")
            return [tuple(int(g) for g in m.groups()) for m in CACHE_SLOT.finditer(text)]

        def chat(messages: list[dict[str, str]], predict: int) -> dict[str, Any]:
            body = {"model": "tiny", "stream": False, "messages": messages}
            body["options"] = {"num_predict": predict, "temperature": 0, "seed": 1}
            answer: dict[str, Any] = httpx.post(url, json=body, timeout=120).json()
            return answer

        first = chat([question], 8)
        prompt, generated = first["prompt_eval_count"], first["eval_count"]
        chat([question], 8)
        slot, held, asked, used = loads()[-1]
        # The slot holds the prompt and the answer (its last token was never decoded), and
        # the same prompt again reuses all of it but the one token Ollama always evaluates.
        assert (slot, held, asked, used) == (0, prompt + generated - 1, prompt, prompt - 1)
        # Slot 0 holds the question. A follow-up of it (which extends it) takes slot 0 and
        # generates for a while; the question itself, asked meanwhile, cannot share that
        # slot however much it holds: it takes the other, empty one and evaluates it all.
        follow = [question, {"role": "assistant", "content": "Sure."}, question]
        with httpx.stream(
            "POST",
            url,
            json={"model": "tiny", "messages": follow, "options": {"num_predict": 70}},
            timeout=120,
        ) as running:
            lines = running.iter_lines()
            next(lines)  # it is generating now
            chat([question], 4)
            for _ in lines:
                pass
        busy, meanwhile = loads()[-2:]
        assert busy[0] == 0 and busy[3] >= prompt - 1  # the follow-up reused the question
        assert (meanwhile[0], meanwhile[3]) == (1, 0)
    finally:
        server.stop()


def test_same_stream_shapes_as_real_ollama(
    real_ollama: RealOllama, standin_024: StandinServer
) -> None:
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    v1 = {**chat, "stream": True, "max_tokens": 3, "stream_options": {"include_usage": True}}
    native = {**chat, "options": {"num_predict": 3}}
    for base in (real_ollama.url, standin_024.url):
        with httpx.stream("POST", base + "/v1/chat/completions", json=v1) as r:
            events = [e for e in r.read().decode().split("\n\n") if e]
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert events[-1] == "data: [DONE]" and len(chunks) == 5, base
        reasons = [c["choices"][0].pop("finish_reason") for c in chunks[:-1]]
        assert reasons == [None, None, None, "length"], base
        assert [_shape(c) for c in chunks[:-1]] == [_shape(chunks[0])] * 4, base
        assert chunks[-2]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert chunks[-1]["choices"] == [] and set(chunks[-1]["usage"]) == {
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        }
    shapes = []
    for base in (real_ollama.url, standin_024.url):
        lines = [
            json.loads(x) for x in httpx.post(base + "/api/chat", json=native).text.splitlines()
        ]
        whole = httpx.post(base + "/api/generate", json={**native, "prompt": "x", "stream": False})
        shown = httpx.post(base + "/api/show", json={"model": "tiny"}).json()
        shown.pop("license", None)
        running = httpx.get(base + "/api/ps").json()["models"]
        assert running[0]["size_vram"] == 0, base
        shapes.append(
            [
                _shape(lines[0]),
                _shape(lines[-1]),
                list(whole.json()),
                list(shown),
                _shape(shown["tensors"][0]),
                _shape(running[0]),
            ]
        )
    assert shapes[0] == shapes[1]


def test_pull_into_a_pod_like_real_ollama(
    real_ollama_pods: RealOllamaPods, registry_tiny: str
) -> None:
    """A pool Pod's Ollama (its own loopback IP, port 11434) pulls from the local registry."""
    pod = real_ollama_pods.start("127.10.0.7")
    assert pod.url == "http://127.10.0.7:11434"
    config = StandinConfig(host="127.10.0.8", port=11434, models=(), registry=("*",))
    with standin_in_thread(config) as standin:
        for base in (pod.url, standin.url):
            refused = httpx.post(base + "/api/pull", json={"model": registry_tiny}).text
            assert "http: server gave HTTP response to HTTPS client" in refused, base
            body = {"model": registry_tiny, "insecure": True}
            lines = [
                json.loads(x) for x in httpx.post(base + "/api/pull", json=body).text.splitlines()
            ]
            statuses = list(dict.fromkeys(line.get("status") for line in lines))
            assert statuses[0] == "pulling manifest", base
            assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
            layers = [line for line in lines if line.get("digest")]
            assert all(line["status"] == f"pulling {line['digest'][7:19]}" for line in layers)
            assert layers[-1]["completed"] == layers[-1]["total"]
            assert [m["name"] for m in httpx.get(base + "/api/tags").json()["models"]] == [
                registry_tiny
            ]
    chat = {"model": registry_tiny, "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(pod.url + "/api/chat", json={**chat, "stream": False}, timeout=60).json()
    assert reply["done"] and reply["eval_count"] > 0


# --- residency: OLLAMA_MAX_LOADED_MODELS and the prompt cache ---------------------------


async def chat_once(session: aiohttp.ClientSession, model: str, *messages: str) -> dict[str, Any]:
    body = {
        "model": model,
        "stream": False,
        "messages": [{"role": "user", "content": m} for m in messages],
    }
    async with session.post("/api/chat", json=body) as r:
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


async def ps_names(session: aiohttp.ClientSession) -> list[str]:
    async with session.get("/api/ps") as r:
        return [m["name"] for m in (await r.json())["models"]]


async def test_max_loaded_models_evicts_the_idle_model() -> None:
    config = StandinConfig(port=0, models=("a:1b", "b:1b"), max_loaded_models=1, load_ms=20)
    async with run_standin(config) as server, aiohttp.ClientSession(server.url) as s:
        await chat_once(s, "a:1b", "hi")
        assert await ps_names(s) == ["a:1b"]
        await chat_once(s, "b:1b", "hi")
        assert await ps_names(s) == ["b:1b"]
        await chat_once(s, "b:1b", "again")  # resident: no load
        await chat_once(s, "a:1b", "back")
        stats = await wait_for_stat(s, "in_flight", 0)
        assert (stats["loads"], stats["evictions"]) == (3, 2)
        assert stats["load_seconds"] > 0


async def test_a_busy_model_is_evicted_only_after_its_requests_end() -> None:
    config = StandinConfig(
        port=0, models=("a:1b", "b:1b"), max_loaded_models=1, parallel=2, tokens_per_second=40
    )
    finished: list[str] = []

    async def run(session: aiohttp.ClientSession, model: str) -> None:
        await chat_once(session, model, "count to twelve")
        finished.append(model)

    async with run_standin(config) as server, aiohttp.ClientSession(server.url) as s:
        first = asyncio.create_task(run(s, "a:1b"))
        await wait_for_stat(s, "in_flight", 1)
        await run(s, "b:1b")
        await first
        assert finished == ["a:1b", "b:1b"]  # b's load waited for a's generation
        assert await ps_names(s) == ["b:1b"]


async def test_unlimited_by_default_keeps_every_model_loaded() -> None:
    async with (
        run_standin(StandinConfig(port=0, models=("a:1b", "b:1b"))) as server,
        aiohttp.ClientSession(server.url) as s,
    ):
        await chat_once(s, "a:1b", "hi")
        await chat_once(s, "b:1b", "hi")
        assert sorted(await ps_names(s)) == ["a:1b", "b:1b"]
        assert (await wait_for_stat(s, "evictions", 0))["loads"] == 2


async def test_prompt_cache_hits_on_a_shared_prefix_and_dies_with_the_runner() -> None:
    config = StandinConfig(port=0, models=("a:1b",), prefill_ms_per_token=0.1, parallel=2)
    async with run_standin(config) as server, aiohttp.ClientSession(server.url) as s:
        await chat_once(s, "a:1b", "You are a travel agent. Plan Lisbon.")
        await chat_once(s, "a:1b", "You are a travel agent. Plan Lisbon.", "And Porto?")
        stats = await wait_for_stat(s, "prompt_cache_hits", 1)
        assert stats["prompt_cached_tokens"] == 7  # the seven words of turn one
        await chat_once(s, "a:1b", "Something else entirely")
        assert (await wait_for_stat(s, "prompt_cache_hits", 1))["prompt_cached_tokens"] == 7
        async with s.post("/api/generate", json={"model": "a:1b", "keep_alive": 0}) as r:
            assert r.status == 200  # unload: the runner and its cache go
        await chat_once(s, "a:1b", "You are a travel agent. Plan Lisbon.", "And Porto?")
        assert (await wait_for_stat(s, "prompt_cache_hits", 1))["loads"] == 2


def test_prompt_cache_slots_take_the_longest_prefix() -> None:
    from tollgate_standin.promptcache import PromptCache, prompt_words

    cache = PromptCache(slots=2)

    def use(model: str, words: tuple[str, ...]) -> int:
        slot, cached = cache.acquire(model, words)
        assert slot is not None
        slot.release(words)
        return cached

    one = prompt_words([("user", "a b c")])
    two = prompt_words([("user", "x y")])
    assert use("m", one) == 0
    # Nothing shared with the first slot's "a b c": the first free slot with the longest
    # prefix (0 words) is the first slot again, in slot order, as Ollama's
    # findLongestCacheSlot takes it (not the empty second one).
    assert use("m", two) == 0
    assert use("m", one) == 0  # "a b c" was overwritten by "x y"
    assert use("m", prompt_words([("user", "a b c"), ("user", "d")])) == 3
    assert use("m", prompt_words([("user", "a q")])) == 1
    assert use("m", prompt_words([("system", "a b c")])) == 0  # roles differ
    assert use("other", one) == 0  # caches are per model
    cache.drop("m")
    assert use("m", one) == 0


def test_prompt_cache_skips_slots_in_use_and_keeps_the_answer() -> None:
    """Two of Ollama's runner behaviours the stand-in once lacked: a prompt never shares a
    slot another request is using (it takes a free one, whatever that holds), and a
    generation's answer stays in its slot, so a conversation's next turn finds it cached."""
    from tollgate_standin.promptcache import PromptCache, answer_words, prompt_words

    cache = PromptCache(slots=2)
    system = prompt_words([("system", "rules one two three"), ("user", "hi")])
    busy, cached = cache.acquire("m", system)
    assert busy is not None and cached == 0
    other, cached = cache.acquire("m", system)  # the same prompt while the first runs
    assert other is not None and other is not busy and cached == 0
    assert cache.acquire("m", system) == (None, 0)  # both in use
    busy.release(system + answer_words("hello there"))
    other.release(system)
    turn_two = prompt_words(
        [("system", "rules one two three"), ("user", "hi"), ("assistant", "hello there")]
    ) + prompt_words([("user", "and then?")])
    slot, cached = cache.acquire("m", turn_two)
    assert slot is busy and cached == len(system) + 2  # the prompt and the answer's 2 words


async def test_prompt_cache_holds_the_answer_for_the_next_turn() -> None:
    config = StandinConfig(port=0, models=("a:1b",), prefill_ms_per_token=0.1, parallel=1)
    async with run_standin(config) as server, aiohttp.ClientSession(server.url) as s:
        question = {"role": "user", "content": "You are a travel agent. Plan Lisbon."}
        body = {"model": "a:1b", "stream": False, "messages": [question]}
        async with s.post("/api/chat", json=body) as r:
            answer = (await r.json())["message"]["content"]
        follow = {"role": "user", "content": "And Porto?"}
        body["messages"] = [question, {"role": "assistant", "content": answer}, follow]
        async with s.post("/api/chat", json=body) as r:
            assert r.status == 200
        stats = await wait_for_stat(s, "prompt_cache_hits", 1)
        assert stats["prompt_cached_tokens"] == 7 + len(answer.split())


def test_residency_flags_parse() -> None:
    config = config_from_args(
        build_parser().parse_args(["--max-loaded-models", "1", "--prefill-ms-per-token", "2.5"])
    )
    assert (config.max_loaded_models, config.prefill_ms_per_token) == (1, 2.5)
    with pytest.raises(ValueError, match="max_loaded_models"):
        StandinConfig(max_loaded_models=-1)


def test_max_loaded_models_evicts_like_real_ollama(
    ollama_binaries: tuple[Path, Path], tmp_path: Path
) -> None:
    """With OLLAMA_MAX_LOADED_MODELS=1, loading a second model unloads the first, in real
    Ollama v0.24 and in the stand-in alike (what /api/ps shows after each request)."""
    real = RealOllama(
        root=tmp_path / "real", binary=ollama_binaries[0], env={"OLLAMA_MAX_LOADED_MODELS": "1"}
    )
    config = StandinConfig(
        port=0, models=("tiny-a", "tiny-b"), version="0.24.0", cpu=True, max_loaded_models=1
    )
    try:
        real.start()
        real.create_tiny("tiny-a", seed=1)
        real.create_tiny("tiny-b", seed=2)
        with standin_in_thread(config) as standin:
            seen: dict[str, list[list[str]]] = {}
            for base in (real.url, standin.url):
                steps = []
                for model in ("tiny-a", "tiny-b", "tiny-b", "tiny-a"):
                    body = {
                        "model": model,
                        "prompt": "hi",
                        "stream": False,
                        "options": {"num_predict": 2},
                    }
                    assert httpx.post(base + "/api/generate", json=body, timeout=120).is_success
                    ps = httpx.get(base + "/api/ps", timeout=10).json()["models"]
                    steps.append([m["name"] for m in ps])
                seen[base] = steps
        assert (
            seen[real.url]
            == seen[standin.url]
            == [["tiny-a:latest"], ["tiny-b:latest"], ["tiny-b:latest"], ["tiny-a:latest"]]
        )
    finally:
        real.stop()

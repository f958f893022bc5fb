"""Official clients through a real gateway, against the real Ollama as well as the stand-in.

Each test body runs twice (``backend_alias``): once with an alias served by the Ollama
stand-in, once with an alias served by a real Ollama (built from source) running a tiny
random-weight model. Assertions are about the protocol, never about the stand-in's
words: non-empty text, token counts, ``done_reason``/``finish_reason``, ids, aliases.

Generation is greedy (``temperature`` 0) and short, so the tiny model always answers
with some text in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ollama
import openai
import pytest
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess
from tollgate_dev.servers.realollama import TINY_MODEL, RealOllama

NewKey = Callable[..., dict[str, Any]]

REAL_ALIAS = "tiny-real"
MAX_TOKENS = 6
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def real_alias(admin: Admin, real_ollama: RealOllama) -> str:
    """An alias for the tiny model on the real Ollama (its own ``backend_url``)."""
    admin.ensure_model(REAL_ALIAS, f"{TINY_MODEL}:latest", backend_url=real_ollama.url)
    return REAL_ALIAS


@pytest.fixture(scope="module", params=["standin", "real"])
def backend_alias(request: pytest.FixtureRequest, chat_model: str) -> str:
    """The alias under test: the stand-in's ``gpt-4`` or the real Ollama's ``tiny-real``."""
    if request.param == "real":
        alias: str = request.getfixturevalue("real_alias")
        return alias
    return chat_model


def openai_client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def ollama_client(gateway: GatewayProcess, key: str) -> ollama.Client:
    return ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}"})


# -- the openai client -------------------------------------------------------------------


def test_openai_chat_with_usage(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    c = openai_client(gateway, new_key()["key"])
    first = c.chat.completions.create(
        model=backend_alias, messages=MESSAGES, max_tokens=MAX_TOKENS, **GREEDY
    )
    second = c.chat.completions.create(
        model=backend_alias, messages=MESSAGES, max_tokens=MAX_TOKENS, **GREEDY
    )
    assert first.model == backend_alias
    assert first.object == "chat.completion"
    assert first.id.startswith("chatcmpl-") and first.id != second.id
    choice = first.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    usage = first.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_stream_with_include_usage(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    c = openai_client(gateway, new_key()["key"])

    def stream() -> list[Any]:
        return list(
            c.chat.completions.create(
                model=backend_alias,
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
                **GREEDY,
            )
        )

    chunks, again = stream(), stream()
    assert {ch.id for ch in chunks} == {chunks[0].id}, "one id per stream"
    assert chunks[0].id.startswith("chatcmpl-") and chunks[0].id != again[0].id
    assert all(ch.model == backend_alias for ch in chunks)
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    content = [ch for ch in chunks if ch.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in content)
    finishes = [ch.choices[0].finish_reason for ch in content if ch.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in {"stop", "length"}
    assert content[-1].choices[0].finish_reason == finishes[0]
    assert all(ch.usage is None for ch in content)
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.prompt_tokens > 0 and 0 < final.usage.completion_tokens <= MAX_TOKENS
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens


def test_openai_completions(gateway: GatewayProcess, new_key: NewKey, backend_alias: str) -> None:
    c = openai_client(gateway, new_key()["key"])
    result = c.completions.create(
        model=backend_alias, prompt="Once upon a time", max_tokens=MAX_TOKENS, **GREEDY
    )
    assert result.id.startswith("cmpl-")
    assert result.model == backend_alias
    assert result.choices[0].text
    assert result.choices[0].finish_reason in {"stop", "length"}
    assert result.usage is not None and 0 < result.usage.completion_tokens <= MAX_TOKENS
    streamed = list(
        c.completions.create(
            model=backend_alias,
            prompt="Once upon a time",
            max_tokens=MAX_TOKENS,
            stream=True,
            **GREEDY,
        )
    )
    assert all(ch.model == backend_alias for ch in streamed)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices)


def test_openai_embeddings(gateway: GatewayProcess, new_key: NewKey, backend_alias: str) -> None:
    c = openai_client(gateway, new_key()["key"])
    many = c.embeddings.create(model=backend_alias, input=["hello", "world"])
    assert many.model == backend_alias
    assert [d.index for d in many.data] == [0, 1]
    width = len(many.data[0].embedding)
    assert width > 0 and len(many.data[1].embedding) == width
    assert many.data[0].embedding != many.data[1].embedding
    assert many.usage.prompt_tokens > 0
    one = c.embeddings.create(model=backend_alias, input="hello", encoding_format="float")
    assert one.data[0].embedding == pytest.approx(many.data[0].embedding, abs=1e-5)


def test_openai_models_list_and_retrieve(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    c = openai_client(gateway, new_key(allowed_models=[backend_alias])["key"])
    assert [m.id for m in c.models.list()] == [backend_alias]
    assert c.models.retrieve(backend_alias).id == backend_alias


async def test_async_openai_client(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=new_key()["key"], max_retries=0
    ) as c:
        reply = await c.chat.completions.create(
            model=backend_alias, messages=MESSAGES, max_completion_tokens=3, **GREEDY
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 3
        chunks = [
            chunk
            async for chunk in await c.chat.completions.create(
                model=backend_alias,
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
                **GREEDY,
            )
        ]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        emb = await c.embeddings.create(model=backend_alias, input="hello")
        assert emb.model == backend_alias and len(emb.data[0].embedding) > 0


# -- the ollama client ---------------------------------------------------------------------


def test_ollama_chat(gateway: GatewayProcess, new_key: NewKey, backend_alias: str) -> None:
    c = ollama_client(gateway, new_key()["key"])
    options = {"num_predict": MAX_TOKENS, **GREEDY}
    reply = c.chat(model=backend_alias, messages=MESSAGES, options=options, stream=False)
    assert reply.model == backend_alias
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.done_reason in {"stop", "length"}
    assert reply.prompt_eval_count and reply.prompt_eval_count > 0
    assert reply.eval_count and 0 < reply.eval_count <= MAX_TOKENS
    assert reply.total_duration and reply.eval_duration
    pieces = list(c.chat(model=backend_alias, messages=MESSAGES, options=options, stream=True))
    assert all(p.model == backend_alias for p in pieces)
    assert [p.done for p in pieces] == [False] * (len(pieces) - 1) + [True]
    last = pieces[-1]
    assert last.done_reason in {"stop", "length"}
    assert last.eval_count and 0 < last.eval_count <= MAX_TOKENS
    # greedy decoding: the stream spells the same answer as the whole reply
    assert "".join(p.message.content or "" for p in pieces) == reply.message.content


def test_ollama_generate(gateway: GatewayProcess, new_key: NewKey, backend_alias: str) -> None:
    c = ollama_client(gateway, new_key()["key"])
    options = {"num_predict": MAX_TOKENS, **GREEDY}
    whole = c.generate(model=backend_alias, prompt="Why is the sky blue?", options=options)
    assert whole.model == backend_alias
    assert whole.response and whole.done and whole.done_reason in {"stop", "length"}
    assert whole.eval_count and 0 < whole.eval_count <= MAX_TOKENS
    assert whole.prompt_eval_count and whole.prompt_eval_count > 0
    parts = list(
        c.generate(model=backend_alias, prompt="Why is the sky blue?", options=options, stream=True)
    )
    assert parts[-1].done and "".join(p.response or "" for p in parts) == whole.response


def test_ollama_embed(gateway: GatewayProcess, new_key: NewKey, backend_alias: str) -> None:
    c = ollama_client(gateway, new_key()["key"])
    result = c.embed(model=backend_alias, input=["hello", "world"])
    assert result.model == backend_alias
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == len(result.embeddings[1]) > 0
    assert result.prompt_eval_count and result.prompt_eval_count > 0
    legacy = c.embeddings(model=backend_alias, prompt="hello")
    assert len(legacy.embedding) == len(result.embeddings[0])


def test_ollama_list_and_show(gateway: GatewayProcess, new_key: NewKey, backend_alias: str) -> None:
    c = ollama_client(gateway, new_key(allowed_models=[backend_alias])["key"])
    assert [m.model for m in c.list().models] == [backend_alias]
    shown = c.show(backend_alias)
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.details.format == "gguf"
    assert shown.capabilities is not None and "completion" in shown.capabilities
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"


# -- LangChain ----------------------------------------------------------------------------


def test_langchain_chat_openai(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    llm = ChatOpenAI(
        model=backend_alias,
        base_url=gateway.url + "/v1",
        api_key=new_key()["key"],
        max_retries=0,
        max_completion_tokens=MAX_TOKENS,
        temperature=0,
        seed=7,
        stream_usage=True,
    )
    message = llm.invoke("Tell me a joke")
    assert message.content
    assert message.usage_metadata is not None
    assert 0 < message.usage_metadata["output_tokens"] <= MAX_TOKENS
    streamed = list(llm.stream("Tell me a joke"))
    assert "".join(str(c.content) for c in streamed) == message.content
    assert any(c.usage_metadata for c in streamed)


def test_langchain_chat_ollama(
    gateway: GatewayProcess, new_key: NewKey, backend_alias: str
) -> None:
    key = new_key()["key"]
    llm = ChatOllama(
        model=backend_alias,
        base_url=gateway.url,
        client_kwargs={"headers": {"Authorization": f"Bearer {key}"}},
        num_predict=MAX_TOKENS,
        temperature=0,
        seed=7,
    )
    message = llm.invoke("Tell me a joke")
    assert message.content
    assert message.usage_metadata is not None
    assert 0 < message.usage_metadata["output_tokens"] <= MAX_TOKENS
    assert "".join(str(c.content) for c in llm.stream("Tell me a joke")) == message.content


# -- a backend model that does not exist ---------------------------------------------------


@pytest.fixture(scope="module")
def ghost_alias(request: pytest.FixtureRequest, admin: Admin, backend_alias: str) -> str:
    """An alias, on the same backend as ``backend_alias``, whose backend model is missing."""
    if backend_alias == REAL_ALIAS:
        real: RealOllama = request.getfixturevalue("real_ollama")
        admin.ensure_model("ghost-real", "no-such-model:latest", backend_url=real.url)
        return "ghost-real"
    admin.ensure_model("ghost-standin", "no-such-model:latest")
    return "ghost-standin"


def test_missing_backend_model_is_404_model_not_found(
    gateway: GatewayProcess, new_key: NewKey, ghost_alias: str
) -> None:
    key = new_key()["key"]
    with pytest.raises(openai.NotFoundError) as err:
        openai_client(gateway, key).chat.completions.create(
            model=ghost_alias, messages=MESSAGES, max_tokens=2
        )
    assert err.value.code == "model_not_found"
    assert f"`{ghost_alias}`" in err.value.message
    assert "model 'no-such-model:latest' not found" in err.value.message  # Ollama's own text
    with pytest.raises(ollama.ResponseError) as native:
        ollama_client(gateway, key).chat(model=ghost_alias, messages=MESSAGES)
    assert native.value.status_code == 404
    assert "model 'no-such-model:latest' not found" in native.value.error

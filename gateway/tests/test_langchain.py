"""LangChain's ChatOpenAI and ChatOllama through the gateway."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from tollgate_dev.servers.programs import GatewayProcess

NewKey = Callable[..., dict[str, Any]]


def test_chat_openai(gateway: GatewayProcess, new_key: NewKey, chat_model: str) -> None:
    llm = ChatOpenAI(
        model=chat_model,
        base_url=gateway.url + "/v1",
        api_key=new_key()["key"],
        max_retries=0,
        stream_usage=True,
    )
    message = llm.invoke("Tell me a joke")
    assert message.content
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    streamed = list(llm.stream("Tell me a joke"))
    assert "".join(str(c.content) for c in streamed) == message.content
    assert any(c.usage_metadata for c in streamed)


def test_openai_embeddings(gateway: GatewayProcess, new_key: NewKey, chat_model: str) -> None:
    emb = OpenAIEmbeddings(
        model="test-embedding-small",
        base_url=gateway.url + "/v1",
        api_key=new_key()["key"],
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    vectors = emb.embed_documents(["a", "b"])
    assert len(vectors) == 2 and len(vectors[0]) > 0


def test_chat_ollama(gateway: GatewayProcess, new_key: NewKey, chat_model: str) -> None:
    key = new_key()["key"]
    llm = ChatOllama(
        model=chat_model,
        base_url=gateway.url,
        client_kwargs={"headers": {"Authorization": f"Bearer {key}"}},
    )
    message = llm.invoke("Tell me a joke")
    assert message.content
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    assert "".join(str(c.content) for c in llm.stream("Tell me a joke")) == message.content

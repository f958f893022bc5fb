"""The official `ollama` client against the gateway's native API, with a Bearer key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import ollama
import pytest

from tollgate_dev.servers.programs import GatewayProcess

NewKey = Callable[..., dict[str, Any]]


def client(gateway: GatewayProcess, key: str) -> ollama.Client:
    return ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}"})


def test_chat_generate_embed_through_gateway(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    c = client(gateway, new_key()["key"])
    reply = c.chat(model=chat_model, messages=[{"role": "user", "content": "hi"}], stream=False)
    assert reply.model == chat_model
    assert reply.message.content
    assert reply.done and reply.eval_count and reply.eval_count > 0
    pieces = list(
        c.chat(model=chat_model, messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert pieces[-1].done and all(p.model == chat_model for p in pieces)
    assert "".join(p.message.content or "" for p in pieces) == reply.message.content
    gen = c.generate(model=chat_model, prompt="Why is the sky blue?", options={"num_predict": 4})
    assert gen.response and gen.eval_count is not None and gen.eval_count <= 4
    emb = c.embed(model="test-embedding-small", input=["one", "two"])
    assert len(emb.embeddings) == 2


def test_list_shows_only_allowed_aliases(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    everything = {m.model for m in client(gateway, new_key()["key"]).list().models}
    assert chat_model in everything
    limited = client(gateway, new_key(allowed_models="test-embedding-*")["key"]).list()
    assert {m.model for m in limited.models} == {"test-embedding-small"}


def test_show_and_version(gateway: GatewayProcess, new_key: NewKey, chat_model: str) -> None:
    c = client(gateway, new_key()["key"])
    shown = c.show(chat_model)
    assert shown.details is not None
    assert c.ps() is not None


def test_native_errors_are_ollama_shaped(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client(gateway, "tg-nope").chat(model=chat_model, messages=[])
    assert err.value.status_code == 401
    assert "API key" in err.value.error
    c = client(gateway, new_key(allowed_models="test-*")["key"])
    with pytest.raises(ollama.ResponseError) as err:
        c.chat(model=chat_model, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    assert chat_model in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        c.pull("llama3:70b")
    assert err.value.status_code == 403


def test_ollama_client_against_the_standin_directly(standin: Any) -> None:
    c = ollama.Client(host=standin.url)
    assert any(m.model == "llama3:8b" for m in c.list().models)
    assert c.chat(model="llama3:8b", messages=[{"role": "user", "content": "hi"}]).message.content


def test_show_reveals_the_alias_not_the_backend(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str
) -> None:
    """The stand-in's /api/show names its blob path and the backend tag (llama3:8b), as
    Ollama's does; a key sees the alias, what the model is, and how to prompt it."""
    response = httpx.post(
        gateway.url + "/api/show",
        json={"model": chat_model},
        headers={"Authorization": f"Bearer {new_key()['key']}"},
    )
    assert response.status_code == 200, response.text
    text = response.text
    assert "blobs" not in text and "sha256" not in text
    assert "llama3:8b" not in text
    assert "/usr/share/ollama" not in text
    shown = response.json()
    assert "tensors" not in shown
    assert shown["modelfile"].startswith(f"FROM {chat_model}\n")
    assert shown["details"]["family"] and shown["details"]["parent_model"] == ""
    assert shown["template"] and shown["capabilities"]
    assert shown["model_info"]["general.architecture"]

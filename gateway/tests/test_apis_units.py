"""The pure translation cores of the Responses and Messages APIs, in-process (no servers)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tollgate_gateway.errors import ApiError, anthropic_body, error_body
from tollgate_gateway.messages import schemas as messages
from tollgate_gateway.responses import schemas as responses
from tollgate_gateway.sse import EventSplitter, frame, frame_raw


def test_event_splitter_across_reads() -> None:
    wire = frame("a", {"x": 1}) + b": comment\n\n" + frame("b", {"y": "two\nlines"})
    for cut in range(1, len(wire)):
        splitter = EventSplitter()
        events = splitter.feed(wire[:cut]) + splitter.feed(wire[cut:]) + splitter.close()
        assert [(n, orjson.loads(d)) for n, d in events] == [
            ("a", {"x": 1}),
            ("b", {"y": "two\nlines"}),
        ], cut
    crlf = EventSplitter().feed(b"event: c\r\ndata: {}\r\n\r\n")
    assert crlf == [("c", b"{}")]
    unterminated = EventSplitter()
    assert unterminated.feed(b"event: d\ndata: [1]") == []
    assert unterminated.close() == [("d", b"[1]")]


# -- Messages ----------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "model": "m",
    "max_tokens": 5,
    "messages": [{"role": "user", "content": "hi"}],
}


def test_messages_key_from_either_header() -> None:
    assert messages.api_key("k1", "Bearer k2") == "k1"
    assert messages.api_key(None, "Bearer k2") == "k2"
    assert messages.api_key(" ", "bearer  k3 ") == "k3"
    assert messages.api_key(None, "Basic x") is None
    assert messages.api_key(None, None) is None


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0"),
        ({"system": 5}, "system"),
        ({"stream": "yes"}, "stream"),
        ({"tools": [{"description": "no name"}]}, "tools.0"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": "x"}, "stop_sequences"),
    ],
)
def test_messages_request_errors_name_the_field(change: dict[str, Any], param: str) -> None:
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ApiError) as err:
        messages.parse_request(orjson.dumps(body))
    assert err.value.status == 400 and err.value.param == param
    assert err.value.message.startswith(param)


def test_messages_request_accepted() -> None:
    parsed = messages.parse_request(orjson.dumps({**GOOD, "stream": True, "system": "s"}))
    assert (parsed.model, parsed.stream, parsed.max_tokens) == ("m", True, 5)
    for raw in (b"", b"{x", b"[]"):
        with pytest.raises(ApiError):
            messages.parse_request(raw)


def test_messages_token_estimate_is_characters_over_four() -> None:
    base = messages.estimate_tokens(GOOD)
    assert base == max(len("user" + "hi") // 4, 1)
    assert messages.estimate_tokens({**GOOD, "system": "x" * 400}) == (6 + 400) // 4
    tool = {"name": "t", "description": "d", "input_schema": {"type": "object"}}
    with_tool = messages.estimate_tokens({**GOOD, "system": "x" * 400, "tools": [tool]})
    assert with_tool == (6 + 400 + 2 + len(orjson.dumps(tool["input_schema"]))) // 4
    assert messages.estimate_tokens({"messages": []}) == 0


def test_messages_stream_rewrite() -> None:
    state = messages.StreamState("msg_ours", "alias")
    start = {
        "type": "message_start",
        "message": {"id": "msg_up", "model": "tag", "content": [], "usage": {"input_tokens": 3}},
    }
    out = state.rewrite("message_start", start)
    assert out.endswith(messages.PING) and b'"id":"msg_ours"' in out and b'"alias"' in out
    assert state.input_tokens == 3
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
    state.rewrite("content_block_delta", delta)
    assert state.first_delta and state.deltas == 1
    state.rewrite("content_block_delta", delta)
    assert not state.first_delta and state.deltas == 2
    end = {"type": "message_delta", "delta": {}, "usage": {"input_tokens": 9, "output_tokens": 2}}
    state.rewrite("message_delta", end)
    assert (state.input_tokens, state.output_tokens, state.complete) == (9, 2, False)
    state.rewrite("message_stop", {"type": "message_stop"})
    assert state.complete and not state.failed


def test_messages_stream_passes_deltas_through_undecoded() -> None:
    state = messages.StreamState("msg_ours", "alias")
    # what Ollama sends, byte for byte (orjson would write it differently)
    delta = b'{"type": "content_block_delta", "index": 0, "delta": {"text": "Hi"}}'
    out = state.passthrough("content_block_delta", delta)
    assert out == b"event: content_block_delta\ndata: " + delta + b"\n\n"
    assert state.first_delta and state.deltas == 1
    assert state.passthrough("content_block_delta", delta) is not None
    assert not state.first_delta and state.deltas == 2
    block = b'{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t"}}'
    assert state.passthrough("content_block_start", block) == frame_raw(
        "content_block_start", block
    )
    assert state.passthrough("ping", b'{"type":"ping"}') is not None
    # ours to rewrite (ids, usage, the end), or unnamed: decoded
    for name in ("message_start", "message_delta", "message_stop", "error", ""):
        assert state.passthrough(name, b"{}") is None
    assert state.deltas == 2 and not state.complete


def test_message_rewrite_fills_what_ollama_leaves_out() -> None:
    data: dict[str, Any] = {"id": "msg_x", "model": "tag", "content": None, "usage": {}}
    assert messages.rewrite_message(data, "msg_ours", "alias") == (0, 0)
    assert data["content"] == [] and data["stop_sequence"] is None and data["model"] == "alias"


def test_anthropic_error_bodies_by_path_and_status() -> None:
    expected = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        502: "api_error",
        503: "overloaded_error",
        529: "overloaded_error",
    }
    for status, kind in expected.items():
        body = orjson.loads(anthropic_body(status, "m"))
        assert body == {"type": "error", "error": {"type": kind, "message": "m"}}
    assert orjson.loads(error_body("/v1/messages", 401, "m", "t", None, None))["type"] == "error"
    openai_shape = orjson.loads(error_body("/v1/responses", 401, "m", "t", "c", None))
    assert openai_shape == {"error": {"message": "m", "type": "t", "param": None, "code": "c"}}


# -- Responses ---------------------------------------------------------------------------


def test_responses_request() -> None:
    parsed = responses.parse_request(b'{"model":"m","input":"hi","max_output_tokens":3}')
    assert parsed.store is True and parsed.previous_response_id is None
    assert parsed.input == [{"type": "message", "role": "user", "content": "hi"}]
    assert parsed.parsed.max_tokens == 3
    off = responses.parse_request(b'{"model":"m","input":[],"store":false,"stream":true}')
    assert off.store is False and off.parsed.stream is True and off.input == []
    for raw, param in (
        (b'{"input":"x"}', "model"),
        (b'{"model":"m"}', "input"),
        (b'{"model":"m","input":5}', "input"),
        (b'{"model":"m","input":[1]}', "input[0]"),
        (b'{"model":"m","input":"x","store":1}', "store"),
        (b'{"model":"m","input":"x","max_output_tokens":0}', "max_output_tokens"),
        (b'{"model":"m","input":"x","max_output_tokens":true}', "max_output_tokens"),
        (b'{"model":"m","input":"x","previous_response_id":5}', "previous_response_id"),
        (b'{"model":"m","input":"x","temperature":3}', "temperature"),
        (b'{"model":"m","input":"x","tools":[{}]}', "tools[0]"),
        (b'{"model":"m","input":"x","background":true}', "background"),
    ):
        with pytest.raises(ApiError) as err:
            responses.parse_request(raw)
        assert (err.value.status, err.value.param) == (400, param), raw


def test_conversation_replays_the_previous_answer() -> None:
    history = [{"type": "message", "role": "user", "content": "My name is Ada."}]
    output = [
        {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "think"},
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi Ada", "annotations": []}],
        },
        {"id": "fc_1", "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ]
    new = [{"type": "function_call_output", "call_id": "c1", "output": "ok"}]
    assert responses.conversation(None, None, new) == new
    assert responses.conversation(history, output, new) == [
        *history,
        {"type": "reasoning", "summary": [], "encrypted_content": "think"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi Ada"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        *new,
    ]
    body = responses.upstream_body(
        {"model": "a", "input": "x", "store": True, "previous_response_id": "r", "stream": True},
        "tag",
        new,
    )
    assert body == {"model": "tag", "input": new, "stream": True}


def test_rewriter_mints_consistent_ids() -> None:
    rewriter = responses.Rewriter("resp_ours", "alias", "resp_prev", True)
    added = rewriter.event({"type": "response.output_item.added", "item": {"id": "msg_7"}})
    delta = rewriter.event({"type": "response.output_text.delta", "item_id": "msg_7"})
    call = rewriter.event({"type": "response.output_item.added", "item": {"id": "fc_7_0"}})
    ours = added["item"]["id"]
    assert ours.startswith("msg_") and len(ours) == 36 and delta["item_id"] == ours
    assert call["item"]["id"].startswith("fc_") and call["item"]["id"] != ours
    done = rewriter.event(
        {
            "type": "response.completed",
            "response": {
                "id": "resp_1",
                "model": "tag",
                "store": False,
                "previous_response_id": None,
                "output": [{"id": "msg_7", "type": "message"}],
                "usage": {"input_tokens": 2, "output_tokens": 3, "input_tokens_details": {}},
            },
        }
    )["response"]
    assert (done["id"], done["model"], done["store"]) == ("resp_ours", "alias", True)
    assert done["previous_response_id"] == "resp_prev" and done["output"][0]["id"] == ours
    assert done["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert responses.usage_tokens(done) == (2, 3)


def test_listed_items_have_ids_and_parts() -> None:
    user = responses.listed_item({"role": "user", "content": "hi"}, "item_1")
    assert user == {
        "id": "item_1",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hi"}],
        "status": "completed",
    }
    answer = responses.listed_item({"type": "message", "role": "assistant", "content": "a"}, "i")
    assert answer["content"] == [{"type": "output_text", "text": "a"}]
    output = {"type": "function_call_output", "call_id": "c", "output": "o"}
    assert responses.listed_item(output, "i") == {"id": "i", **output}

"""The hot path's pieces in process, no server: reading and checking a request body,
splitting an upstream stream into lines, the usage row's COPY line, the Redis wire format."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import hiredis
import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tollgate_gateway.chat.schemas import MAX_DEPTH, MAX_INT, Endpoint, parse, parse_json
from tollgate_gateway.chat.service import ProxyService
from tollgate_gateway.errors import ApiError
from tollgate_gateway.limits.service import _pack, _Pipe
from tollgate_gateway.middleware import BodyTooLarge, _read_body
from tollgate_gateway.usage.writer import UsageRow, copy_line

# -- the request body ------------------------------------------------------------------------


def receiver(*chunks: bytes) -> Any:
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return receive


async def test_a_body_in_several_messages_is_read_whole() -> None:
    assert await _read_body(receiver(b'{"a":', b" 1", b"}"), 100) == b'{"a": 1}'
    assert await _read_body(receiver(b"x" * 100), 100) == b"x" * 100


async def test_a_body_over_the_limit_is_refused_as_soon_as_it_passes_it() -> None:
    with pytest.raises(BodyTooLarge):
        await _read_body(receiver(b"x" * 101), 100)
    with pytest.raises(BodyTooLarge):
        await _read_body(receiver(b"x" * 60, b"x" * 60, b"never read"), 100)


async def test_a_client_that_leaves_while_sending_gives_no_body() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    assert await _read_body(receive, 100) is None


def test_json_bodies_are_objects_and_never_too_deep() -> None:
    assert parse_json(b'{"model": "m"}') == {"model": "m"}
    for raw, message in [
        (b"", "empty"),
        (b"[1]", "must be a JSON object"),
        (b"{", "could not parse"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "JSON object"),
        (
            b'{"a":' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}",
            f"deeper than {MAX_DEPTH}",
        ),
    ]:
        with pytest.raises(ApiError, match=message) as refused:
            parse_json(raw)
        assert refused.value.status == 400
    # Many brackets side by side are not depth.
    wide = {"model": "m", "a": [[0]] * (MAX_DEPTH * 2)}
    assert parse_json(orjson.dumps(wide)) == wide


def test_parse_names_the_parameter_it_refuses() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    parsed = parse(Endpoint.CHAT, {**chat, "stream": True, "max_tokens": 5})
    assert (parsed.model, parsed.stream, parsed.max_tokens) == ("m", True, 5)
    for change, param in [
        ({"model": 3}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"max_tokens": MAX_INT + 1}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"n": 2}, "n"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ]:
        with pytest.raises(ApiError) as refused:
            parse(Endpoint.CHAT, {**chat, **change})
        assert (refused.value.status, refused.value.param) == (400, param), change


# -- the upstream stream -----------------------------------------------------------------


def test_stream_lines_are_split_across_reads_and_blank_lines_dropped() -> None:
    split = ProxyService._split
    assert split(b"", b'data: {"a"') == ([], b'data: {"a"')
    lines, rest = split(b'data: {"a"', b": 1}\n\ndata: [DO")
    assert (lines, rest) == ([b'data: {"a": 1}'], b"data: [DO")
    lines, rest = split(rest, b"NE]\n")
    assert (lines, rest) == ([b"data: [DONE]"], b"")
    lines, rest = split(b"", b'{"x":1}\n{"x":2}\n  \n{"x"')  # NDJSON, Ollama's native stream
    assert (lines, rest) == ([b'{"x":1}', b'{"x":2}'], b'{"x"')


# -- the usage row -------------------------------------------------------------------------


def row(**change: Any) -> UsageRow:
    values: dict[str, Any] = {
        "ts": datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        "request_id": "req-1",
        "key_id": uuid.UUID(int=1),
        "app": None,
        "alias": "llama3",
        "backend_tag": "llama3:8b",
        "endpoint": "chat",
        "status": 200,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "cost": Decimal("0.00000100"),
        "latency_ms": 12.5,
        "ttft_ms": None,
        "streamed": True,
        "error_class": None,
    }
    return UsageRow(**{**values, **change})


def test_copy_line_is_postgres_text_format() -> None:
    fields = copy_line(row()).split("\t")
    assert fields == [
        "2026-12-01T12:00:00+00:00",
        "req-1",
        str(uuid.UUID(int=1)),
        "\\N",
        "llama3",
        "llama3:8b",
        "chat",
        "200",
        "3",
        "4",
        "0.00000100",
        "12.5",
        "\\N",
        "t",
        "\\N",
    ]


def test_copy_line_escapes_what_would_break_a_row() -> None:
    line = copy_line(row(request_id="a\tb\nc\\d\re", key_id=None, streamed=False))
    assert "\n" not in line and "\r" not in line
    fields = line.split("\t")
    assert len(fields) == 15
    assert fields[1] == "a\\tb\\nc\\\\d\\re"
    assert (fields[2], fields[13]) == ("\\N", "f")


# -- the Redis wire format -------------------------------------------------------------------


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    packed = _pack(("EVALSHA", "abc", 2, "k1", b"k\r\n2", 10))
    assert packed == (
        b"*6\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n2\r\n$2\r\nk1\r\n$4\r\nk\r\n2\r\n$2\r\n10\r\n"
    )
    reader = hiredis.Reader()  # the server's view: the same bytes parse back to the arguments
    reader.feed(packed)
    assert reader.gets() == [b"EVALSHA", b"abc", b"2", b"k1", b"k\r\n2", b"10"]
    # Text only (the fast path) and text that is not ASCII: lengths are bytes either way.
    for args in [("EVALSHA", "abc", 1, "k1", -2, 0.5, "row\tx\n"), ("EVAL", "s", 0, "café ✓")]:
        reader.feed(_pack(args))
        assert reader.gets() == [str(a).encode() for a in args]


class Transport(asyncio.Transport):
    """What the pipe writes, kept (the pipe against a real server: tests/test_lua_scripts)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True


async def test_pipe_writes_one_turns_commands_at_once_and_answers_in_order() -> None:
    pipe = _Pipe(asyncio.get_running_loop(), timeout=5)
    transport = Transport()
    pipe.connection_made(transport)
    first, second = pipe.send(b"A"), pipe.send(b"B")
    assert transport.written == []  # not yet: the rest of this loop turn may add more
    await asyncio.sleep(0)
    assert transport.written == [b"AB"]
    urgent = pipe.send(b"C", urgent=True)
    assert transport.written == [b"AB", b"C"]
    pipe.data_received(b":1\r\n+OK\r\n-ERR no")  # replies split anywhere
    assert (await first, await second) == (1, b"OK")
    assert not urgent.done()
    pipe.data_received(b"SCRIPT\r\n")
    reply = await urgent
    assert isinstance(reply, ResponseError) and str(reply) == "ERR noSCRIPT"


async def test_pipe_failure_fails_every_pending_call_and_refuses_new_ones() -> None:
    pipe = _Pipe(asyncio.get_running_loop(), timeout=0.05)
    transport = Transport()
    pipe.connection_made(transport)
    pending = pipe.send(b"A", urgent=True)
    with pytest.raises(RedisTimeoutError, match="Timeout reading from Redis"):
        await pending
    assert transport.aborted and pipe.closed
    with pytest.raises(RedisConnectionError):
        await pipe.send(b"B")
    unasked = _Pipe(asyncio.get_running_loop(), timeout=5)
    unasked.connection_made(Transport())
    unasked.data_received(b"+OK\r\n")
    assert unasked.closed  # a reply nobody asked for: the connection is out of step

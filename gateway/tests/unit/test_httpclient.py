"""The upstream HTTP client (storage/httpclient.py) against a real socket server whose
answers each test writes byte by byte: framing, keep-alive, failures before and during
the body, the read timeout, the connection cap and back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tollgate_gateway.storage.httpclient import HIGH_WATER, Pool, Target, request_bytes
from tollgate_gateway.storage.upstream import Upstream, UpstreamError, read_body

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[["Server", Reader, Writer], Awaitable[None]]


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.closed.set()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def client(read_timeout: float = 5.0, limit: int = 10) -> Upstream:
    return Upstream(connect_timeout=2.0, read_timeout=read_timeout, max_connections=limit)


def test_request_bytes_carry_host_length_and_extra_headers() -> None:
    target = Target.parse("http://ollama:11434/api/chat?x=1")
    data = request_bytes("POST", target, b"{}", {"traceparent": "00-ab-cd-01"})
    assert data == (
        b"POST /api/chat?x=1 HTTP/1.1\r\nHost: ollama:11434\r\nAccept-Encoding: identity\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n"
        b"traceparent: 00-ab-cd-01\r\n\r\n{}"
    )
    assert Target.parse("https://example.com").host_header == b"example.com"
    assert Target.parse("https://example.com").port == 443
    with pytest.raises(ValueError, match="line break"):
        request_bytes("GET", target, None, {"x": "a\r\nInjected: 1"})
    with pytest.raises(ValueError, match="not an http"):
        Target.parse("ftp://example.com/")


async def test_keep_alive_reuses_one_connection_for_sequential_requests() -> None:
    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        while True:
            await server.read_request(reader)
            writer.write(ok(b'{"n": %d}' % len(server.requests)))

    async with serving(handler) as server:
        upstream = client()
        for n in (1, 2, 3):
            resp = await upstream.request("POST", server.url + "/api/chat", b'{"a":1}')
            assert resp.status == 200
            assert await read_body(resp) == b'{"n": %d}' % n
            resp.release()
        assert server.connections == 1
        assert server.requests[0].endswith(b'{"a":1}')
        await upstream.close()


async def test_chunked_stream_arrives_piece_by_piece() -> None:
    step = asyncio.Event()

    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"one\n", b"two\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await step.wait()
            step.clear()
        writer.write(b"0\r\n\r\n")
        await server.read_request(reader)  # the connection is reused
        writer.write(ok(b"again"))
        await writer.drain()

    async with serving(handler) as server:
        upstream = client()
        resp = await upstream.request("POST", server.url + "/api/chat", b"{}")
        pieces = resp.iter_any()
        assert await pieces.__anext__() == b"one\n"  # before the server sends the rest
        step.set()
        assert await pieces.__anext__() == b"two\n"
        step.set()
        with pytest.raises(StopAsyncIteration):
            await pieces.__anext__()
        resp.release()
        resp = await upstream.request("POST", server.url + "/api/chat", b"{}")
        assert await resp.read() == b"again"
        resp.release()
        assert server.connections == 1
        await upstream.close()


async def test_a_body_that_ends_with_the_connection_is_read_whole() -> None:
    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with serving(handler) as server:
        upstream = client()
        resp = await upstream.request("GET", server.url + "/")
        assert await read_body(resp) == b"all of it"
        resp.release()
        assert upstream.pool.open_connections == 0  # not kept: the server closed it
        await upstream.close()


async def test_failures_before_the_answer_are_told_apart() -> None:
    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)  # and hang up without a word

    async with serving(handler) as server:
        upstream = client()
        with pytest.raises(UpstreamError) as failed:
            await upstream.request("POST", server.url + "/api/chat", b"{}")
        assert failed.value.kind == "failed"
        assert failed.value.detail == "ServerDisconnectedError"
        url = server.url
    with pytest.raises(UpstreamError) as refused:  # nothing listens there any more
        await upstream.request("POST", url + "/api/chat", b"{}")
    assert refused.value.kind == "unreachable"
    await upstream.close()


async def test_silence_past_the_read_timeout_is_a_timeout() -> None:
    release = asyncio.Event()

    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        if len(server.requests) == 2:  # the second: a head, then silence mid-body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await release.wait()

    async with serving(handler) as server:
        upstream = client(read_timeout=0.3)
        with pytest.raises(UpstreamError) as silent:
            await upstream.request("POST", server.url + "/api/chat", b"{}")
        assert silent.value.kind == "timeout"
        resp = await upstream.request("POST", server.url + "/api/chat", b"{}")
        with pytest.raises(UpstreamError) as mid_body:
            await read_body(resp)
        assert mid_body.value.kind == "timeout"
        resp.close()
        release.set()
        await upstream.close()


async def test_a_body_cut_short_or_closed_by_us_fails_the_reader() -> None:
    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n")
        await writer.drain()
        if len(server.requests) == 1:
            return  # hang up mid-body
        await reader.read()  # the second: wait until the client closes

    async with serving(handler) as server:
        upstream = client()
        resp = await upstream.request("POST", server.url + "/api/chat", b"{}")
        pieces = resp.iter_any()
        assert await pieces.__anext__() == b"part"
        with pytest.raises(aiohttp.ClientPayloadError):
            await pieces.__anext__()
        resp.close()

        # A revocation closes the response while its stream waits for the next piece.
        server.closed.clear()
        resp = await upstream.request("POST", server.url + "/api/chat", b"{}")
        pieces = resp.iter_any()
        assert await pieces.__anext__() == b"part"
        waiting = asyncio.ensure_future(pieces.__anext__())
        await asyncio.sleep(0.05)
        resp.close()
        with pytest.raises(aiohttp.ClientPayloadError):
            await waiting
        await asyncio.wait_for(server.closed.wait(), 2)  # the server saw the close
        await upstream.close()


async def test_a_caller_cancelled_before_the_answer_closes_the_connection() -> None:
    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await reader.read()  # until the client hangs up

    async with serving(handler) as server:
        upstream = client()
        task = asyncio.ensure_future(upstream.request("POST", server.url + "/api/chat", b"{}"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 2)
        await asyncio.sleep(0)
        assert upstream.pool.open_connections == 0
        await upstream.close()


async def test_callers_past_the_connection_cap_wait_for_one() -> None:
    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        while True:
            await server.read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(ok(b"done"))

    async with serving(handler) as server:
        upstream = client(limit=2)

        async def one() -> bytes:
            resp = await upstream.request("POST", server.url + "/api/chat", b"{}")
            try:
                return await resp.read()
            finally:
                resp.release()

        assert await asyncio.gather(*(one() for _ in range(6))) == [b"done"] * 6
        assert server.connections == 2
        await upstream.close()


async def test_a_stream_nobody_reads_stops_being_read() -> None:
    sent = 0
    TOTAL = 512 * 65536  # 32 MiB

    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        nonlocal sent
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        while sent < TOTAL:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()  # blocks once the client stops reading
            sent += len(piece)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serving(handler) as server:
        upstream = client()
        resp = await upstream.request("POST", server.url + "/api/chat", b"{}")
        pieces = resp.iter_any()
        first = await pieces.__anext__()
        await asyncio.sleep(0.5)  # nobody reads: the server is held back
        assert sent < TOTAL / 2  # the kernel's socket buffers hold a few MB
        assert resp._size <= HIGH_WATER + 4 * 65536
        total = len(first)
        async for piece in pieces:  # reading again lets it finish
            total += len(piece)
        assert total == TOTAL
        resp.release()
        await upstream.close()


async def test_idle_connections_close_after_the_keep_alive_time() -> None:
    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        while True:
            await server.read_request(reader)
            writer.write(ok(b"{}"))

    async with serving(handler) as server:
        pool = Pool(asyncio.get_running_loop(), 2.0, 5.0, 10, keepalive=0.2)
        target = Target.parse(server.url + "/api/ps")
        resp = await pool.request("GET", target, None)
        await resp.read()
        resp.release()
        assert pool.open_connections == 1
        # No traffic follows: the timer, not a later request, closes it.
        await asyncio.wait_for(server.closed.wait(), 2)
        await asyncio.sleep(0)
        assert pool.open_connections == 0
        await pool.close()

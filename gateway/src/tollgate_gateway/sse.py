"""Named server-sent events (``event: x`` / ``data: {...}``) as the Responses and Anthropic
Messages streams use them: splitting an upstream byte stream into events, framing them,
and relaying one stream through a translator with the proxy's accounting.

`EventSplitter` and `frame` are pure; `relay` is the only part that does I/O.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson

from tollgate_gateway import metrics

if TYPE_CHECKING:
    from tollgate_gateway.chat.service import Call, ProxyService
    from tollgate_gateway.storage.upstream import UpstreamResponse


def frame(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def frame_raw(name: str, data: bytes) -> bytes:
    """An event whose data goes out as it came (already JSON)."""
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class EventSplitter:
    """Feed it reads as they come; it hands back each complete event as (name, data).

    Events end with a blank line; a read may hold several events or part of one. Lines
    other than ``event:`` and ``data:`` (comments, ``id:``, ``retry:``) are ignored; several
    ``data:`` lines are joined with newlines, as the SSE specification says.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        data = self._pending + chunk
        if b"\n\n" not in data and b"\r\n\r\n" not in data:
            self._pending = data
            return []
        data = data.replace(b"\r\n", b"\n")
        *blocks, self._pending = data.split(b"\n\n")
        events = []
        for block in blocks:
            event = self._parse(block)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[tuple[str, bytes]]:
        """The last event, should the stream end without its blank line."""
        block, self._pending = self._pending, b""
        event = self._parse(block)
        return [event] if event is not None else []

    @staticmethod
    def _parse(block: bytes) -> tuple[str, bytes] | None:
        name = ""
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode(errors="replace")
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        if not data:
            return None
        return name, b"\n".join(data)


class Translator(Protocol):
    """Rewrites one stream's events for the client and reads its usage into the call."""

    complete: bool  # the stream's last event was seen

    def passthrough(self, name: str, data: bytes) -> bytes | None:
        """The event as the client gets it when it needs no rewriting (its data untouched,
        not even decoded), else None: then `event` gets it decoded."""

    async def event(self, name: str, data: dict[str, Any]) -> bytes: ...

    def broken(self, message: str) -> bytes: ...

    def settle(self) -> None: ...


async def relay(
    proxy: ProxyService, call: Call, resp: UpstreamResponse, translator: Translator
) -> AsyncGenerator[bytes, None]:
    """The client's stream: each upstream read answered by one write of the events it
    completed, rewritten; a broken upstream ends it with the translator's error event."""
    splitter = EventSplitter()
    proxy.hold_stream(call, resp)  # a revocation closes resp, ending the read below
    try:
        reads = resp.iter_any()
        ended = False
        while not translator.complete and not ended:
            try:
                chunk = await reads.__anext__()
            except StopAsyncIteration:
                events, ended = splitter.close(), True
            else:
                events = splitter.feed(chunk)
            out = []
            for name, data in events:
                piece = translator.passthrough(name, data)
                if piece is not None:
                    out.append(piece)
                    continue
                decoded = orjson.loads(data)
                if isinstance(decoded, dict):
                    piece = await translator.event(name, decoded)
                    if piece:
                        out.append(piece)
                if translator.complete:
                    break
            if out:
                yield b"".join(out)
        if not translator.complete:
            raise aiohttp.ClientPayloadError("stream ended before its last event")
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
        if call.revoked:
            call.status, call.error_class = 401, "key_revoked"
            yield translator.broken("This API key was revoked or disabled.")
        else:
            call.status, call.error_class = 502, "upstream_stream_error"
            metrics.UPSTREAM_ERRORS.labels("stream").inc()
            yield translator.broken("The model server connection broke mid-stream.")
    except BaseException:
        if not translator.complete:  # else the client had it all and left at the very end
            call.status, call.error_class = 499, "client_disconnected"
        raise
    finally:
        translator.settle()
        proxy.release_stream(call)
        if not translator.complete:  # left early: the prompt is billed even if not counted
            call.prompt_tokens = call.prompt_tokens or call.prompt_estimate
        if translator.complete:
            resp.release()
        else:
            resp.close()  # closing the connection tells Ollama to stop generating
        proxy.finish(call)

"""Chunked responses (NDJSON or SSE) with pacing, stream faults and disconnect accounting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from .faults import STREAMING, Fault
from .state import StandinState

DROPPED_KEY: web.RequestKey[bool] = web.RequestKey("tollgate_standin_dropped", bool)


class StreamEnded(Exception):
    """The stream stopped early (fault or client gone); ``response`` is what to return."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("stream ended")
        self.response = response


class PreStreamFailure(Exception):
    """A fault hit before any byte was sent: answer with an ordinary error response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def take_stream_fault(state: StandinState, request: web.Request) -> Fault | None:
    taken = state.faults.take(request.path, STREAMING)
    if not taken:
        return None
    state.stats.faults_applied += 1
    return taken[0]


async def pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def drop_connection(request: web.Request) -> web.StreamResponse:
    """Abort the TCP connection (RST, no response) as a fault; returns a placeholder."""
    request[DROPPED_KEY] = True
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)


class ChunkWriter:
    """Writes chunks; buffers them when unpaced so a fast stream costs one write."""

    def __init__(
        self,
        request: web.Request,
        state: StandinState,
        content_type: str,
        *,
        paced: bool,
        fault: Fault | None,
        error_chunk: Callable[[str, bool], bytes],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.request = request
        self.response = web.StreamResponse(
            headers={"Content-Type": content_type, **(headers or {})}
        )
        self.sent = 0
        self._state = state
        self._paced = paced
        self._fault = fault
        self._error_chunk = error_chunk
        self._buffer: list[bytes] = []

    async def send(self, chunk: bytes) -> None:
        """Queue one logical chunk, applying a pending stream fault at its position."""
        if self._fault is not None and self.sent == self._fault.after_chunks:
            await self._apply_fault(self._fault)
        self._buffer.append(chunk)
        self.sent += 1
        if self._paced:
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        try:
            if not self.response.prepared:
                await self.response.prepare(self.request)
            await self.response.write(data)
        except ConnectionResetError:
            self._state.stats.cancelled += 1
            raise StreamEnded(self.response) from None

    async def finish(self) -> web.StreamResponse:
        await self.flush()
        try:
            await self.response.write_eof()
        except ConnectionResetError:
            self._state.stats.cancelled += 1
        return self.response

    async def _apply_fault(self, fault: Fault) -> None:
        if fault.kind == "drop":
            await self.flush()
            raise StreamEnded(drop_connection(self.request))
        if self.sent == 0:
            raise PreStreamFailure(500, fault.message)
        self._buffer.append(self._error_chunk(fault.message, False))
        raise StreamEnded(await self.finish())

"""The HTTP server's own limits: what uvicorn's httptools protocol does not enforce.

uvicorn with httptools has no limit on the size or number of request headers (httptools
buffers a header value whole, so an unfinished 100 MB header is 100 MB of memory), no
timeout for reading a request head or body, starts its keep-alive timer only after a first
response (a connection that never sends a byte stays open), and its `limit_concurrency`
still accepts and holds every connection. `GuardedHttpToolsProtocol` adds, per connection:

* a request head larger than `max_header_bytes`, or with more than `max_headers` fields:
  431, connection closed, before the rest is read;
* no complete request head within `header_timeout` seconds of the connection, or of the
  first byte of a request: closed (408 when part of a head came);
* a request body that stalls for `body_timeout` seconds (while the server is reading it):
  408 and closed;
* more than `max_connections` open connections in this worker: the new one is answered 503
  with Retry-After and closed.

The keep-alive idle timeout is uvicorn's own `timeout_keep_alive` (see `cli.serve`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tollgate_gateway import metrics

log = logging.getLogger(__name__)
REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    max_connections: int


def _limits() -> ServerLimits:
    from tollgate_gateway.config import get_settings

    s = get_settings()
    return ServerLimits(
        s.max_header_bytes,
        s.max_headers,
        s.header_timeout_seconds,
        s.body_timeout_seconds,
        s.max_connections,
    )


def raw_error(status: int, message: str, code: str, retry_after: int | None = None) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    head = [
        b"HTTP/1.1 %d %s" % (status, REASONS[status]),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d" % retry_after)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ServerLimits | None = None  # read once per process from the settings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if GuardedHttpToolsProtocol.limits is None:
            GuardedHttpToolsProtocol.limits = _limits()
        self._limits = GuardedHttpToolsProtocol.limits
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connection ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            metrics.CONNECTIONS_REFUSED.labels("max_connections").inc()
            self._refuse(
                503,
                "The server has too many open connections; retry in a moment.",
                "too_many_connections",
                retry_after=1,
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            if self._head_timer is None:
                self._arm_head_timer()  # the first byte of a request on a kept-alive connection
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self._limits.max_header_bytes:
                metrics.CONNECTIONS_REFUSED.labels("header_too_large").inc()
                self._refuse(
                    431,
                    f"The request head is larger than {self._limits.max_header_bytes} bytes.",
                    "request_header_too_large",
                )
                return
        super().data_received(data)

    # -- parser callbacks ------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count <= self._limits.max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._header_count > self._limits.max_headers:
            metrics.CONNECTIONS_REFUSED.labels("too_many_headers").inc()
            self._refuse(
                431,
                f"The request has more than {self._limits.max_headers} header fields.",
                "too_many_headers",
            )
            return
        self._header_count = 0
        super().on_headers_complete()
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._arm_body_timer()
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._in_head = True
        if self._refused:
            return
        super().on_message_complete()

    # -- timers --------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self._limits.header_timeout, self._head_timeout)

    def _arm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(self._limits.body_timeout, self._body_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still being sent (pipelining): the head waits for it
        metrics.CONNECTIONS_REFUSED.labels("header_timeout").inc()
        if self._head_bytes:
            self._refuse(
                408,
                f"The request head did not arrive within {self._limits.header_timeout:g} s.",
                "request_timeout",
            )
        else:
            self.transport.close()  # an idle connection: nothing to answer

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._in_head:
            return
        if self.flow.read_paused:  # the application is not reading: not the client's stall
            self._arm_body_timer()
            return
        metrics.CONNECTIONS_REFUSED.labels("body_timeout").inc()
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(
                408,
                f"The request body stalled for {self._limits.body_timeout:g} s.",
                "request_timeout",
            )
        else:
            self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _refuse(self, status: int, message: str, code: str, retry_after: int | None = None) -> None:
        self._refused = True
        self._cancel_timers()
        if not self.transport.is_closing():
            self.transport.write(raw_error(status, message, code, retry_after))
            self.transport.close()
